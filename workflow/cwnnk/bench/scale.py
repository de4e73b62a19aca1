"""`bench scale`: the graphs stage of one full-size layer on the CPU, from a real activation store:
cwnnk's ResNet-18 (CIFAR stem) at 32 x 32, or any torchvision model (random weights) at 224 x 224.
Its peak memory is set against the layer's own size, what holding it whole would take."""

import time

import torch

from cwnnk.bench.common import check_graphs, in_fresh_process, peak_mib, timed
from cwnnk.params import GraphParams


def _graph_stage(store, layer, out, params, threads, stream):
    """The graphs stage of one layer in this (fresh) process: (wall seconds, peak RSS MiB, summary)."""
    from cwnnk.graphs import build_layer_graphs

    torch.set_num_threads(threads)
    start = time.perf_counter()
    _, aggregate = build_layer_graphs(store, layer, out, params, log=lambda *a, **k: None, stream=stream)
    seconds = time.perf_counter() - start
    return seconds, peak_mib(), aggregate.degree.mean()


def _check_graphs_here(*args):
    """check_graphs in this (fresh) process: (verdict, its lines, peak RSS MiB)."""
    lines = []
    ok = check_graphs(*args, out=lines.append)
    return ok, lines, peak_mib()


def bench_scale(args, out=print):
    """The graphs stage of one layer at full size, from a real activation store."""
    import tempfile
    from pathlib import Path

    from cwnnk.datasets import load_synthetic
    from cwnnk.extract import extract_to_store
    from cwnnk.models import build_model

    torch.manual_seed(args.seed)
    if args.torchvision:
        import torchvision

        model = torchvision.models.get_model(args.torchvision, weights=None).eval()
        node, size, name = args.layer, args.image_size or 224, f"torchvision {args.torchvision}"
    else:
        model = build_model({"arch": "resnet18", "input_shape": [3, 32, 32], "num_classes": 10, "cifar_stem": True}).eval()
        node, size, name = model.layers[args.layer], 32, "ResNet-18 (CIFAR stem)"
    data = load_synthetic(n_train=args.n, n_test=1, num_classes=10, image_size=size, channels=3, seed=args.seed)
    with tempfile.TemporaryDirectory(dir=args.work) as work:
        store, graphs = Path(work) / "store.zarr", Path(work) / "graphs"
        t_store, _ = timed(lambda: extract_to_store(model, {args.layer: node}, data, store,
                                                     batch_size=100 if size > 64 else 500, log=lambda *a, **k: None))
        del data
        params = GraphParams(k=args.k, device="cpu")
        stream = {"auto": None, "always": True, "never": False}[args.stream]
        seconds, peak, degree = in_fresh_process(_graph_stage, store, args.layer, graphs, params, args.threads, stream)
        summary = __import__("json").loads((graphs / "summary.json").read_text())
        # the check holds the whole layer too: apart from the extract's memory, as the stage is
        ok, lines, peak_check = in_fresh_process(_check_graphs_here, store, {args.layer: graphs}, params,
                                                  args.check_nodes, max(1, args.check_nodes // 10))
        for line in lines:
            out(line)
    out(f"{name} (random weights) layer {args.layer} on {args.n} synthetic {size}x{size} RGB images: "
        f"store written in {t_store:.0f} s")
    C, N, D = summary["n_channels"], summary["n_samples"], summary["dim_channel"]
    out(f"graphs stage: C={C} channels x N={N} x D={D} (aggregate D={C * D}), k={args.k}, CPU threads {args.threads}"
        + (", streamed (a block of channels at a time)" if summary["streamed"] else ", the layer held whole"))
    out(f"wall {seconds:.0f} s (reading the store {summary['seconds']['read']:.0f} s, NNK graphs "
        f"{summary['seconds']['nnk']:.0f} s), peak RSS {peak:.0f} MiB, aggregate mean degree {degree:.2f}")
    layer_mib = N * C * D * 4 / 2**20
    out(f"peak RSS / the layer's float32 size ({layer_mib:.0f} MiB, what holding it whole takes): "
        f"{peak / layer_mib:.2f}x" + (f"; aggregate rows within H's rounding error of a swap: "
                                      f"{summary['aggregate_uncertain_rows']}" if summary["streamed"] else ""))
    out(f"peak RSS of the bench's other processes: extract {peak_mib():.0f} MiB, check {peak_check:.0f} MiB")
    return ok and peak < args.max_mib
