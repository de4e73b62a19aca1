"""`bench gpu`: CW-NNK of every ResNet-18 layer on a GPU, against the CPU's time and results."""

import numpy as np
import torch

from cwnnk.bench.common import timed
from cwnnk.bench.reference import KKT_TOL, candidates, kkt_violation, problem
from cwnnk.device import resolve_device
from cwnnk.engine import nnk


def resnet18_layers(n, device, seed=0, batch=500):
    """Post-ReLU activations (N, C, H*W) float32 of every analysable ResNet-18 layer (CIFAR stem,
    random weights, eval mode) on n random 32x32 RGB images, computed and kept on `device`."""
    from torchvision.models.feature_extraction import create_feature_extractor

    from cwnnk.models import build_model

    torch.manual_seed(seed)
    model = build_model({"arch": "resnet18", "input_shape": [3, 32, 32], "num_classes": 10, "cifar_stem": True})
    model = model.to(device).eval()
    extractor = create_feature_extractor(model, {node: name for name, node in model.layers.items()})
    images = torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
    parts = {name: [] for name in model.layers}
    with torch.inference_mode():
        for start in range(0, n, batch):
            for name, value in extractor(images[start : start + batch].to(device)).items():
                parts[name].append(value.flatten(2))
    return {name: torch.cat(values) for name, values in parts.items()}


def layer_nnk(acts, k, device, timings=None):
    """CW-NNK of one layer: every channel in one engine call, then the aggregate."""
    N, C, D = acts.shape
    channels = nnk(acts.transpose(0, 1), k, device=device, timings=timings)
    aggregate = nnk(acts.reshape(N, C * D), k, device=device, timings=timings)
    return channels, aggregate


# Weights agree to 1e-9 only where float64 rounding allows it: a solve's relative forward error is
# about cond(K) * eps, so beyond this condition number two devices may round to different optima.
ILL_CONDITIONED = 1e-9 / np.finfo(np.float64).eps


def agreement(X, a, b):
    """Where two engine results a, b on the point sets X (C, N, D) disagree; a and b are pairs
    (indices, weights), each (C, N, k).

    Returns (nodes that differ, the largest weight difference outside the ill-conditioned nodes,
    ill-conditioned nodes). A node differs where its candidates, its support or its weights (by
    more than 1e-9) differ, unless it is ill-conditioned: its candidates are the reference's, both
    weights meet the reference KKT conditions, and K over the union of both supports has
    cond >= ILL_CONDITIONED, so that its optimum is not numerically unique.
    """
    (ia, wa), (ib, wb) = a, b
    gap = np.abs(wa - wb).max(-1)
    differ = ~((ia == ib).all(-1) & ((wa > 0) == (wb > 0)).all(-1)) | (gap > 1e-9)
    ill = np.zeros_like(differ)
    for c, i in zip(*np.nonzero(differ)):
        S, d2 = candidates(X[c], i, ia.shape[-1])
        if not (np.array_equal(ia[c, i], ib[c, i]) and np.array_equal(S, ia[c, i][ia[c, i] >= 0])):
            continue
        K, k_i, usable = problem(X[c], i, S, d2, "gaussian")
        ta, tb = wa[c, i][: len(S)], wb[c, i][: len(S)]
        union = (ta > 0) | (tb > 0)
        optimal = max(kkt_violation(K, k_i, usable, ta), kkt_violation(K, k_i, usable, tb)) <= KKT_TOL
        ill[c, i] = optimal and np.linalg.cond(K[np.ix_(union, union)]) >= ILL_CONDITIONED
    return int((differ & ~ill).sum()), float(gap[~ill].max(initial=0)), int(ill.sum())


def layers_agreement(acts, a, b):
    """agreement of two layer_nnk results on the activations acts (N, C, D), channels and
    aggregate together."""
    N, C, D = acts.shape
    X = acts.cpu().numpy()
    channels = agreement(X.transpose(1, 0, 2), *[(r[0].indices, r[0].weights) for r in (a, b)])
    aggregate = agreement(X.reshape(1, N, C * D), *[(r[1].indices[None], r[1].weights[None]) for r in (a, b)])
    return tuple(f(pair) for f, pair in zip((sum, max, sum), zip(channels, aggregate)))


def bench_gpu(args, out=print):
    device = resolve_device(args.device)
    torch.set_num_threads(args.threads)
    out(f"ResNet-18 (CIFAR stem, random weights), all 17 post-ReLU layers, N={args.n}, k={args.k}, "
        f"device {device}{' (' + torch.cuda.get_device_name(device) + ')' if device.type == 'cuda' else ''}, "
        f"CPU threads {torch.get_num_threads()}")
    layers = resnet18_layers(args.n, device)
    check_n, cpu_n = min(args.check_n, args.n), min(args.cpu_n, args.n)

    # 1. agreement with the CPU path on a subset, printed before any time
    ok = True
    for name, acts in layers.items():
        sub = acts[:check_n]
        differ, gap, ill = layers_agreement(sub, layer_nnk(sub, args.k, device), layer_nnk(sub.cpu(), args.k, "cpu"))
        ok &= differ == 0
        out(f"agreement {name:14s} N={check_n}: nodes with other supports or weights {differ}, max weight "
            f"difference {gap:.1e}, ill-conditioned nodes with other optimal weights {ill}"
            + ("" if differ == 0 else "  <-- DIFFERS"))

    # 2. the whole computation on the device
    t_dev, per_layer = 0.0, {}
    for name, acts in layers.items():
        seconds, _ = timed(lambda: layer_nnk(acts, args.k, device))
        per_layer[name], t_dev = seconds, t_dev + seconds
        out(f"  {name:14s} C={acts.shape[1]:4d} D={acts.shape[2]:5d}  {seconds:7.2f} s")
    out(f"{device} time, all layers, N={args.n}: {t_dev:.1f} s"
        + (f", peak memory {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB" if device.type == "cuda" else ""))

    # 3. the same work on the CPU at cpu_n nodes, scaled to N: kNN ~ N^2, kernels and solver ~ N
    parts = {}
    t_cpu_sub, _ = timed(lambda: [layer_nnk(a[:cpu_n].cpu(), args.k, "cpu", parts) for a in layers.values()])
    scale = args.n / cpu_n
    knn = parts.get("knn", 0.0)
    t_cpu = knn * scale**2 + (t_cpu_sub - knn) * scale
    out(f"CPU time at N={cpu_n}: {t_cpu_sub:.1f} s (kNN {knn:.1f} s); scaled to N={args.n} "
        f"(kNN x{scale**2:.0f}, the rest x{scale:.0f}): {t_cpu:.0f} s")
    out(f"speedup {t_cpu / t_dev:.1f}")
    return ok
