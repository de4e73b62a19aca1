"""`bench scale`: the graphs stage of one full-size layer on the CPU, from a real activation store:
cwnnk's ResNet-18 (CIFAR stem) at 32 x 32, or any torchvision model (random weights) at 224 x 224.
Its peak memory is set against the layer's own size, what holding it whole would take."""

import time

import numpy as np
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


class _GeneratedImages:
    """The synthetic task's image i (its class template, scaled, plus pixel noise), made on demand
    from (seed, i): the 10,000 224-px images (6 GB) are never held, so the extract process's peak
    is the extract stage's own."""

    def __init__(self, n, size, seed, num_classes=10, noise=0.3):
        from cwnnk.datasets import synthetic_templates

        gen = torch.Generator().manual_seed(seed)
        self.templates = synthetic_templates(num_classes, 3, size, gen)
        self.labels = torch.randperm(n, generator=gen) % num_classes
        self.seed, self.noise = seed, noise

    def __getitem__(self, i):
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + i)
        label = int(self.labels[i])
        image = self.templates[label] * (0.7 + 0.6 * torch.rand(1, generator=gen))
        return (image + self.noise * torch.randn(image.shape, generator=gen)).clamp(0, 1), label


def _model(args):
    """(model in eval mode, its FX node of args.layer, image side, name), random weights seeded by args.seed."""
    from cwnnk.models import build_model

    torch.manual_seed(args.seed)
    if args.torchvision:
        import torchvision

        model = torchvision.models.get_model(args.torchvision, weights=None).eval()
        return model, args.layer, args.image_size or 224, f"torchvision {args.torchvision}"
    model = build_model({"arch": "resnet18", "input_shape": [3, 32, 32], "num_classes": 10, "cifar_stem": True}).eval()
    return model, model.layers[args.layer], 32, "ResNet-18 (CIFAR stem)"


def _extract_stage(args, store, threads):
    """The extract stage of args.layer into `store` in this (fresh) process: (wall seconds, peak RSS MiB)."""
    from cwnnk.datasets import Dataset, LazyImages, Split
    from cwnnk.extract import extract_to_store

    torch.set_num_threads(threads)
    model, node, size, _ = _model(args)
    images = _GeneratedImages(args.n, size, args.seed)
    positions = np.arange(args.n)
    train = Split(LazyImages(images, positions, lambda image: image, (3, size, size)), images.labels.clone(), positions)
    data = Dataset("synthetic", train, None, tuple(f"class{c}" for c in range(10)))
    seconds, _ = timed(lambda: extract_to_store(model, {args.layer: node}, data, store,
                                                batch_size=100 if size > 64 else 500, log=lambda *a, **k: None))
    return seconds, peak_mib()


def _check_store(args, store, n_check, out):
    """The stored activations of n_check spread samples against a direct forward pass of the same
    model on the same images; True when they agree to float32 rounding."""
    from torchvision.models.feature_extraction import create_feature_extractor

    from cwnnk.activations import open_activations
    from cwnnk.extract import full_float32

    model, node, size, _ = _model(args)
    images = _GeneratedImages(args.n, size, args.seed)
    stored = open_activations(store)
    positions = np.linspace(0, stored.n_samples - 1, n_check).astype(int)
    batch = torch.stack([images[int(i)][0] for i in stored.indices[positions]])
    with full_float32(), torch.inference_mode():
        direct = create_feature_extractor(model, {node: "x"})(batch)["x"]
    error = float((torch.from_numpy(stored.samples(args.layer, positions)) - direct).abs().max())
    scale = float(direct.abs().max())
    ok = error <= 1e-5 * max(scale, 1.0)
    out(f"agreement: {args.layer} of {n_check} stored samples against a direct forward pass: largest difference "
        f"{error:.1e} (values up to {scale:.1e}){'' if ok else ' - DISAGREES'}")
    return ok


def _check_graphs_here(*args):
    """check_graphs in this (fresh) process: (verdict, its lines, peak RSS MiB)."""
    lines = []
    ok = check_graphs(*args, out=lines.append)
    return ok, lines, peak_mib()


def bench_scale(args, out=print):
    """The graphs stage of one layer at full size, from a real activation store."""
    import tempfile
    from pathlib import Path

    from cwnnk.activations import open_activations

    name = f"torchvision {args.torchvision}" if args.torchvision else "ResNet-18 (CIFAR stem)"
    size = (args.image_size or 224) if args.torchvision else 32
    with tempfile.TemporaryDirectory(dir=args.work) as work:
        store, graphs = Path(work) / "store.zarr", Path(work) / "graphs"
        t_store, peak_store = in_fresh_process(_extract_stage, args, store, args.threads)
        layer_mib = np.prod(open_activations(store).shapes[args.layer]) * 4 / 2**20
        extract_line = (f"{name} (random weights) layer {args.layer} on {args.n} synthetic {size}x{size} RGB images: "
                        f"extract stage {t_store:.0f} s, peak RSS {peak_store:.0f} MiB = {peak_store / layer_mib:.3f}x "
                        f"the layer's float32 size ({layer_mib:.0f} MiB)")
        if args.extract_only:
            ok = _check_store(args, store, 4, out)
            out(extract_line)
            return ok and peak_store < args.max_mib
        params = GraphParams(k=args.k, device="cpu")
        stream = {"auto": None, "always": True, "never": False}[args.stream]
        seconds, peak, degree = in_fresh_process(_graph_stage, store, args.layer, graphs, params, args.threads, stream)
        summary = __import__("json").loads((graphs / "summary.json").read_text())
        # the check holds the whole layer too: apart from the extract's memory, as the stage is
        ok, lines, peak_check = in_fresh_process(_check_graphs_here, store, {args.layer: graphs}, params,
                                                  args.check_nodes, max(1, args.check_nodes // 10))
        for line in lines:
            out(line)
    out(extract_line)
    C, N, D = summary["n_channels"], summary["n_samples"], summary["dim_channel"]
    out(f"graphs stage: C={C} channels x N={N} x D={D} (aggregate D={C * D}), k={args.k}, CPU threads {args.threads}"
        + (", streamed (a block of channels at a time)" if summary["streamed"] else ", the layer held whole"))
    out(f"wall {seconds:.0f} s (reading the store {summary['seconds']['read']:.0f} s, NNK graphs "
        f"{summary['seconds']['nnk']:.0f} s), peak RSS {peak:.0f} MiB, aggregate mean degree {degree:.2f}")
    out(f"peak RSS / the layer's float32 size ({layer_mib:.0f} MiB, what holding it whole takes): "
        f"{peak / layer_mib:.2f}x" + (f"; aggregate rows within H's rounding error of a swap: "
                                      f"{summary['aggregate_uncertain_rows']}" if summary["streamed"] else ""))
    out(f"peak RSS of the check's process: {peak_check:.0f} MiB")
    return ok and peak < args.max_mib
