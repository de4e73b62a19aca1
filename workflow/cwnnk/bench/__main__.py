"""`python -m cwnnk.bench <command>`: the command line of the benchmarks (see cwnnk.bench)."""

import argparse

import torch

import cwnnk.bench
from cwnnk.bench.estimate import bench_estimate
from cwnnk.bench.gpu import bench_gpu
from cwnnk.bench.nnk import bench_nnk
from cwnnk.bench.pipeline import bench_pipeline
from cwnnk.bench.scale import bench_scale
from cwnnk.bench.train import bench_train
from cwnnk.bench.verify import bench_verify


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m cwnnk.bench", description=cwnnk.bench.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("nnk", help="NNK engine vs the reference approach and the kNN floor")
    p.add_argument("--n", type=int, default=4000, help="points per channel")
    p.add_argument("--c", type=int, default=16, help="channels")
    p.add_argument("--d", type=int, default=256, help="dimension of each channel's points")
    p.add_argument("--k", type=int, default=25, help="kNN candidates per node")
    p.add_argument("--kernel", choices=("gaussian", "cosine"), default="gaussian")
    p.add_argument("--solver", choices=("exact", "pynnk"), default="exact", help="engine solver of the speed-up")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeat", type=int, default=3, help="rounds of floor and engine runs; the best counts")
    p.add_argument("--baseline-nodes", type=int, default=4000,
                   help="nodes the baseline's per-node loop runs on (its time is scaled to all nodes)")
    p.add_argument("--check-nodes", type=int, default=200,
                   help="nodes whose exact-solver result is checked against the float64 reference")
    p.set_defaults(func=bench_nnk)

    p = commands.add_parser("pipeline", help="wall time and peak memory per stage of the default experiment")
    p.add_argument("--config", default="config.yaml", help="the experiment whose first model is run")
    p.add_argument("--device", default="cpu", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--check-nodes", type=int, default=200,
                   help="channel nodes per layer checked against the float64 reference "
                        "(a quarter as many aggregate nodes)")
    p.add_argument("--repeat", type=int, default=3,
                   help="runs of the graph stage and of the kNN floor; the best counts")
    p.set_defaults(func=bench_pipeline)

    p = commands.add_parser("scale", help="the graphs stage of one full-size layer on the CPU")
    p.add_argument("--n", type=int, default=10_000, help="images (nodes per graph)")
    p.add_argument("--layer", default="stem",
                   help="ResNet-18 layer (stem and layer1.* have 64 channels of 32x32), or with --torchvision an FX "
                        "node name (python -m cwnnk layers lists them), e.g. layer1.2.relu_2 of resnet50")
    p.add_argument("--torchvision", metavar="MODEL", default=None,
                   help="a torchvision classification model (random weights) instead of cwnnk's ResNet-18")
    p.add_argument("--image-size", type=int, default=None, help="with --torchvision: image side (default 224)")
    p.add_argument("--stream", choices=("auto", "always", "never"), default="auto",
                   help="read the layer a block of channels at a time: where it is large (cwnnk.graphs.streams), "
                        "always or never")
    p.add_argument("--work", default=None, help="folder for the store and graphs (default: the system's temporary one)")
    p.add_argument("--k", type=int, default=25)
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="CPU threads of the stage")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-mib", type=float, default=4096, help="peak RSS the stage must stay under (exit 1 if not)")
    p.add_argument("--extract-only", action="store_true",
                   help="time the extract stage and measure its peak alone (the graphs stage is not run)")
    p.add_argument("--check-nodes", type=int, default=100,
                   help="channel nodes checked against the float64 reference (a tenth as many aggregate nodes)")
    p.set_defaults(func=bench_scale)

    p = commands.add_parser("gpu", help="CW-NNK of every ResNet-18 layer on a device vs the CPU")
    p.add_argument("--n", type=int, default=10_000, help="images (nodes per graph)")
    p.add_argument("--k", type=int, default=25)
    p.add_argument("--device", default="cuda", help="cuda, cuda:N, or cpu (to test the command)")
    p.add_argument("--check-n", type=int, default=1000, help="nodes of the CPU agreement check")
    p.add_argument("--cpu-n", type=int, default=1000, help="nodes of the CPU timing, scaled to --n")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="CPU threads")
    p.set_defaults(func=bench_gpu)

    p = commands.add_parser("estimate", help="the graph stage's cost estimate against measured time, 3 layer shapes")
    p.add_argument("--n", type=int, default=1000, help="images (nodes per graph)")
    p.add_argument("--k", type=int, default=25)
    p.add_argument("--threads", type=int, default=2, help="CPU threads (the estimate is for 2)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=bench_estimate)

    p = commands.add_parser("train", help="one training run on each CPU code path and thread count (cwnnk.cpu)")
    p.add_argument("--config", default="config.yaml", help="the experiment whose first model is trained")
    p.set_defaults(func=bench_train)

    p = commands.add_parser("verify", help="what content verification (checksums) costs a finished run")
    p.add_argument("--results", default="results", help="the run's results folder")
    p.set_defaults(func=bench_verify)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(0 if main() is not False else 1)
