"""`bench scale`: the graphs stage of one full-size ResNet-18 layer on the CPU."""

import time

import torch

from cwnnk.bench.common import check_graphs, in_fresh_process, peak_mib, timed
from cwnnk.params import GraphParams


def _graph_stage(store, layer, out, params, threads):
    """The graphs stage of one layer in this (fresh) process: (wall seconds, peak RSS MiB, summary)."""
    from cwnnk.graphs import build_layer_graphs

    torch.set_num_threads(threads)
    start = time.perf_counter()
    _, aggregate = build_layer_graphs(store, layer, out, params, log=lambda *a, **k: None)
    seconds = time.perf_counter() - start
    return seconds, peak_mib(), aggregate.degree.mean()


def _check_graphs_here(*args):
    """check_graphs in this (fresh) process: (verdict, its lines, peak RSS MiB)."""
    lines = []
    ok = check_graphs(*args, out=lines.append)
    return ok, lines, peak_mib()


def bench_scale(args, out=print):
    """The graphs stage of one ResNet-18 layer at full size, from a real activation store."""
    import tempfile
    from pathlib import Path

    from cwnnk.datasets import load_synthetic
    from cwnnk.extract import extract_to_store
    from cwnnk.models import build_model

    torch.manual_seed(args.seed)
    model = build_model({"arch": "resnet18", "input_shape": [3, 32, 32], "num_classes": 10, "cifar_stem": True}).eval()
    data = load_synthetic(n_train=args.n, n_test=1, num_classes=10, image_size=32, channels=3, seed=args.seed)
    with tempfile.TemporaryDirectory() as work:
        store, graphs = Path(work) / "store.zarr", Path(work) / "graphs"
        t_store, _ = timed(lambda: extract_to_store(model, {args.layer: model.layers[args.layer]}, data, store,
                                                     batch_size=500, log=lambda *a, **k: None))
        params = GraphParams(k=args.k, device="cpu")
        seconds, peak, degree = in_fresh_process(_graph_stage, store, args.layer, graphs, params, args.threads)
        summary = __import__("json").loads((graphs / "summary.json").read_text())
        # the check holds the whole layer too: apart from the extract's memory, as the stage is
        ok, lines, peak_check = in_fresh_process(_check_graphs_here, store, {args.layer: graphs}, params,
                                                  args.check_nodes, max(1, args.check_nodes // 10))
        for line in lines:
            out(line)
    out(f"ResNet-18 (CIFAR stem, random weights) layer {args.layer} on {args.n} synthetic 32x32 RGB images: "
        f"store written in {t_store:.0f} s")
    C, N, D = summary["n_channels"], summary["n_samples"], summary["dim_channel"]
    out(f"graphs stage: C={C} channels x N={N} x D={D} (aggregate D={C * D}), k={args.k}, CPU threads {args.threads}")
    out(f"wall {seconds:.0f} s (reading the store {summary['seconds']['read']:.0f} s, NNK graphs "
        f"{summary['seconds']['nnk']:.0f} s), peak RSS {peak:.0f} MiB, aggregate mean degree {degree:.2f}")
    out(f"peak RSS of the bench's other processes: extract {peak_mib():.0f} MiB, check {peak_check:.0f} MiB")
    return ok and peak < args.max_mib
