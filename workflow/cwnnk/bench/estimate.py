"""`bench estimate`: the graph stage's cost estimate (`python -m cwnnk layers`) against measured time.

Three ResNet-18 layer shapes at 128 px (layer1: 64 x 32 x 32, layer2: 128 x 16 x 16, layer4: 512 x 4 x 4),
N images of a synthetic ReLU-like layer each; the graphs stage's engine (cwnnk.graphs.cw_nnk) is timed
once per shape and set beside cwnnk.graphs.estimate_cost. The estimate is for 2 CPU cores: it passes
when every ratio estimate / measured lies in [0.5, 2].
"""

import time

import numpy as np
import torch

from cwnnk.bench.common import make_layer

SHAPES = (("layer1 at 128 px", 64, 32 * 32), ("layer2 at 128 px", 128, 16 * 16), ("layer4 at 128 px", 512, 4 * 4))


def bench_estimate(args):
    from cwnnk.graphs import cw_nnk, estimate_cost
    from cwnnk.params import GraphParams

    torch.set_num_threads(args.threads)
    print(f"graph stage, N = {args.n}, k = {args.k}, {args.threads} threads: estimate (python -m cwnnk layers) "
          "against measured")
    print(f"{'layer':>18s} {'C':>5s} {'D':>6s} {'estimate':>9s} {'measured':>9s} {'ratio':>6s}")
    ok = True
    for name, C, D in SHAPES:
        X = np.ascontiguousarray(make_layer(args.n, C, D, args.seed).transpose(1, 0, 2), dtype=np.float32)
        start = time.perf_counter()
        cw_nnk(X, GraphParams(k=args.k), lambda *a, **kw: None)
        measured = time.perf_counter() - start
        estimate = estimate_cost(args.n, C, D, args.k)[0]
        ratio = estimate / measured
        ok &= 0.5 <= ratio <= 2
        print(f"{name:>18s} {C:>5d} {D:>6d} {estimate:8.1f}s {measured:8.1f}s {ratio:6.2f}")
    print("every ratio within [0.5, 2]" if ok else "FAILED: a ratio outside [0.5, 2]")
    return ok
