"""Benchmarks, run as `python -m cwnnk.bench <command>`.

Each command is a function of the parsed arguments with its own subparser in `main`. It checks
its results (against cwnnk.bench.reference, or the GPU's against the CPU's) and prints that check before
any time; it returns False when a check fails (the exit status is then 1).

    nnk      the NNK engine (solvers `pynnk` and `exact`) against the authors' reference approach
             (brute-force kNN, then a Python loop over nodes with scipy's Cholesky) and against
             the floor of the kNN step (one float32 product per channel plus torch.topk)
    pipeline wall time and peak memory of each stage of the default experiment, the engine's
             time by part, the kNN floor and the float64 Gram the exact kernels need (the graph
             stage and the floor run --repeat times, interleaved; the fastest of each counts)
    scale    the graphs stage of one full-size ResNet-18 layer on the CPU: wall time and peak memory
    gpu      CW-NNK of every ResNet-18 layer on a GPU, against the CPU's time and results
    estimate the graph stage's cost estimate (python -m cwnnk layers) against measured time, 3 layer shapes
    train    one training run on the pinned and the native CPU code path, 1 and 2 threads: time
             and whether the weights are bitwise equal (cwnnk.cpu)
    verify   what content verification (checkpoint, store, graph and JSON checksums) costs a finished
             run, against the run's own job time
"""
