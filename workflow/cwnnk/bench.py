"""Benchmarks, run as `python -m cwnnk.bench <command>`.

Each command is a function of the parsed arguments with its own subparser in `main`. It checks
its results (against cwnnk.reference, or the GPU's against the CPU's) and prints that check before
any time; it returns False when a check fails (the exit status is then 1).

    nnk      the NNK engine (solvers `pynnk` and `exact`) against the authors' reference approach
             (brute-force kNN, then a Python loop over nodes with scipy's Cholesky) and against
             the floor of the kNN step (one float32 product per channel plus torch.topk)
    pipeline wall time and peak memory of each stage of the default experiment, the engine's
             time by part, the kNN floor and the float64 Gram the exact kernels need (the graph
             stage and the floor run --repeat times, interleaved; the fastest of each counts)
    scale    the graphs stage of one full-size ResNet-18 layer on the CPU: wall time and peak memory
    gpu      CW-NNK of every ResNet-18 layer on a GPU, against the CPU's time and results
"""

import argparse
import sys
import time

import numpy as np
import scipy.linalg
import torch

from cwnnk.device import resolve_device
from cwnnk.engine import nnk
from cwnnk.engine.blocks import row_blocks
from cwnnk.reference import KKT_TOL, candidates, check_nodes, kkt_violation, problem, sample_nodes


def make_layer(n, c, d, seed):
    """A ReLU-like layer (C, N, D): max(0, gaussian) driven by a few latent factors.

    Each point has 4 latent factors shared by all channels and 4 of each channel's own; a channel
    maps them linearly to D values, adds noise and a negative offset, and clips at 0. One map in
    twenty is all zero (a dead map), as after a ReLU.
    """
    rng = np.random.default_rng(seed)
    shared = rng.normal(size=(n, 4))
    X = np.empty((c, n, d))
    for ch in range(c):
        z = np.concatenate([shared, rng.normal(size=(n, 4))], 1)
        X[ch] = np.maximum(0, z @ rng.normal(size=(8, d)) + 0.5 * rng.normal(size=(n, d)) - 0.5)
        X[ch, rng.random(n) < 0.05] = 0
    return X


def _peak_mib():
    """This process's own peak resident memory so far, MiB.

    Linux's VmHWM, where there is one: ru_maxrss would do elsewhere, but on Linux a spawned child's
    ru_maxrss starts at its parent's peak (the forked copy's high-water mark survives the exec)."""
    import resource

    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (2**20 if sys.platform == "darwin" else 1024)


def _in_fresh_process(fn, *args):
    """fn(*args) in a new (spawned) process, so that its peak memory is its own."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def _timed(fn):
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def knn_floor(X, k, device):
    """The kNN step with nothing else: one float32 product per channel and torch.topk."""
    X = torch.as_tensor(X, dtype=torch.float32, device=device)
    for Xc in X:
        top = torch.topk(torch.addmm(-(Xc * Xc).sum(1)[None, :], Xc, Xc.T, alpha=2), k + 1, dim=1)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return top


def gram_floor(X, indices, tile_bytes=1 << 23):
    """The float64 Gram of each node's candidates' differences, (x_a - x_i).(x_b - x_i), that the
    exact kernels need: one gather, one subtraction and one k x k product per node, nothing else.

    X (C, N, D) float32, indices (C, N, k) of the candidates (a padding -1 stands for point 0).
    """
    X, idx = torch.as_tensor(X), torch.as_tensor(indices).clamp(min=0)
    C, N, k = idx.shape
    for c in range(C):
        Xc = X[c].double()
        for rows in row_blocks(N, 16 * k * X.shape[2], tile_bytes):
            Y = Xc[idx[c, rows]] - Xc[rows, None]
            torch.bmm(Y, Y.mT)


def _reference_pynnk(K, b, tol):
    """One node's problem as the authors' code solves it (METHOD.md section 2), scipy Cholesky.

    As in the engine: candidates that repeat one point (equal rows of K, a singular K_SS) share one
    variable whose weight is split equally, and a Cholesky that fails gets a ridge
    eps * trace / k, grown tenfold until it succeeds.
    """
    if (b > 1 - tol).any():
        return np.where(b > 1 - tol, b, 0)
    _, first, inverse, mult = np.unique(K, axis=0, return_index=True, return_inverse=True, return_counts=True)
    if len(first) < len(b):
        x = _reference_pynnk(K[np.ix_(first, first)], b[first], tol)
        return np.where(x[inverse] / mult[inverse] > tol, x[inverse] / mult[inverse], 0)
    base, ridge = np.finfo(float).eps * np.trace(K) / len(K), 0.0
    F = b > tol
    for _ in range(50 * len(b)):
        x = np.zeros_like(b)
        while True:
            try:
                factor = scipy.linalg.cho_factor(K[np.ix_(F, F)] + ridge * np.eye(F.sum()), lower=True)
                break
            except np.linalg.LinAlgError:
                ridge = 10 * ridge if ridge else base
        x[F] = scipy.linalg.cho_solve(factor, b[F])
        dropped = F & (x < tol)
        F &= ~dropped
        if not dropped.any() or np.abs(x[dropped]).max() <= tol:
            break
    return np.where(x < tol, 0, x)


def baseline(X, k, kernel, n_loop, tol=1e-10):
    """Brute-force float64 kNN of every channel, then the per-node loop on the first n_loop nodes.

    Returns (knn seconds, loop seconds, supports of the looped nodes as {(channel, node): set}).
    """
    C, N, _ = X.shape
    supports, t_knn, t_loop = {}, 0.0, 0.0
    per_set = -(-n_loop // C)
    for c in range(C):
        Xc = X[c]

        def knn():
            sq = (Xc * Xc).sum(1)
            D2 = np.maximum(sq[:, None] + sq[None, :] - 2 * Xc @ Xc.T, 0)
            search = np.where(D2 == 0, np.inf, D2)  # self and duplicates are no candidates (drop)
            np.fill_diagonal(search, np.inf)
            part = np.argpartition(search, k - 1, axis=1)[:, :k]
            idx = np.take_along_axis(part, np.argsort(np.take_along_axis(search, part, 1), axis=1), 1)
            # ties at the k-th distance (e.g. all-zero maps): break them by lower index
            kth = np.take_along_axis(search, idx[:, -1:], 1)
            tied = np.nonzero((search == kth).sum(1) > 1)[0]
            idx[tied] = np.argsort(search[tied], axis=1, kind="stable")[:, :k]
            return D2, np.where(np.take_along_axis(search, idx, 1) < np.inf, idx, -1)

        dt, (D2, idx) = _timed(knn)
        t_knn += dt
        unit = Xc / np.maximum(np.linalg.norm(Xc, axis=1, keepdims=True), 1e-300)

        def loop():
            for i in range(min(per_set, N)):
                S = idx[i][idx[i] >= 0]
                if kernel == "gaussian":
                    width = 2 * (np.sqrt(D2[i, S[-1]]) / 3) ** 2
                    K, b = np.exp(-D2[np.ix_(S, S)] / width), np.exp(-D2[i, S] / width)
                else:
                    if not unit[i].any():
                        supports[c, i] = set()
                        continue
                    S = S[unit[S].any(1)]
                    K, b = 0.5 + 0.5 * unit[S] @ unit[S].T, 0.5 + 0.5 * unit[S] @ unit[i]
                supports[c, i] = set(S[_reference_pynnk(K, b, tol) > 0].tolist())

        t_loop += _timed(loop)[0]
    return t_knn, t_loop, supports


def bench_nnk(args, out=print):
    """Time the engine against the reference approach and the kNN floor; last line `speedup <x>`."""

    device = resolve_device(args.device)
    X = make_layer(args.n, args.c, args.d, args.seed)
    C, N, D = X.shape
    out(f"data: C={C} channels x N={N} points x D={D}, ReLU-like, {np.mean(~X.any(-1)):.1%} all-zero maps; "
        f"k={args.k}, kernel={args.kernel} (sigma local)")
    out(f"machine: device={device}, torch threads={torch.get_num_threads()}; floor and engine "
        f"are timed in {args.repeat} interleaved rounds, the best round of each counts")
    nnk(X[:1, :50], min(args.k, 10), device=device)  # warm-up: first-call costs are not the engine's

    runs = {
        "floor": lambda: knn_floor(X, args.k, device),
        "pynnk": lambda: nnk(X, args.k, kernel=args.kernel, solver="pynnk", device=device),
        "exact": lambda: nnk(X, args.k, kernel=args.kernel, solver="exact", device=device),
    }
    best, result = {}, {}
    for _ in range(args.repeat):  # interleaved, so that a busy spell of the machine hits all alike
        for name, run in runs.items():
            dt, result[name] = _timed(run)
            best[name] = min(best.get(name, dt), dt)
    n_loop = min(args.baseline_nodes, C * N)
    t_knn, t_loop, supports = baseline(X, args.k, args.kernel, n_loop)

    # agreement first, then the times
    ours = result["pynnk"]
    equal = sum(set(ours.indices[c, i][ours.weights[c, i] > 0].tolist()) == s for (c, i), s in supports.items())
    out(f"agreement: engine pynnk supports equal the baseline's on {equal}/{len(supports)} nodes")
    exact = result["exact"]
    exact_ok = report_check(X, exact.indices, exact.weights, sample_nodes(C, N, args.check_nodes, args.seed),
                            dict(k=args.k, kernel=args.kernel, duplicates="drop"), "engine exact", out)
    t_floor = best["floor"]
    out(f"floor (float32 product + topk per channel): {t_floor:.2f} s")
    for solver in ("pynnk", "exact"):
        res = result[solver]
        out(f"engine {solver}: {best[solver]:.2f} s, mean degree {res.degree.mean():.2f}, "
            f"kkt_failed {int(res.counts['kkt_failed'].sum())}, not_pd {int(res.counts['not_pd'].sum())}")
    scale = C * N / len(supports)
    t_base = t_knn + t_loop * scale
    how = "all nodes" if len(supports) == C * N else f"{len(supports)} of {C * N} nodes, scaled x{scale:.1f}"
    out(f"baseline: knn {t_knn:.2f} s (all channels) + per-node loop {t_loop:.2f} s on {how} = {t_base:.2f} s")
    t_engine = best[args.solver]
    out(f"engine {args.solver} / floor: {t_engine / t_floor:.2f}")
    out(f"speedup {t_base / t_engine:.2f}")
    return equal == len(supports) and exact_ok


def report_check(X, indices, weights, nodes, params, what, out):
    """Check an engine result on C point sets X (C, N, D) against the float64 reference on `nodes`
    (cwnnk.reference); print one line and return whether it agrees."""
    exact = params.get("solver", "exact") == "exact"
    checked, other, failed, worst = check_nodes(X, indices, weights if exact else None, nodes, params["k"],
                                                params["kernel"], params["duplicates"])
    ok = other == 0 and failed == 0
    kkt = (f", weights meet the reference problem's KKT conditions on {checked - other - failed} "
           f"(largest violation {worst:.1e})") if exact else " (solver pynnk: weights not checked)"
    out(f"agreement: {what} on {checked} nodes: candidates equal the brute force's on {checked - other}{kkt}"
        + ("" if ok else "  <-- DIFFERS"))
    return ok


def check_graphs(store_path, folders, params, n_channel, n_aggregate, out):
    """Check the graphs stage's output folders {layer: folder} against the reference on n_channel
    random channel nodes and n_aggregate aggregate nodes per layer; False if any disagrees."""
    from cwnnk.activations import open_activations
    from cwnnk.graphs import load_layer_graphs, read_layer

    if params["sigma"] != "local":
        out(f"agreement: not checked (the reference builds sigma local only; this run has {params['sigma']!r})")
        return True
    store, ok = open_activations(store_path), True
    for layer, folder in folders.items():
        arrays, _ = load_layer_graphs(folder)
        acts = read_layer(store, layer, arrays["positions"])
        N, C, _ = acts.shape
        ok &= report_check(acts.transpose(1, 0, 2), arrays["channel_indices"], arrays["channel_weights"],
                           sample_nodes(C, N, n_channel), params, f"{layer} channels", out)
        ok &= report_check(acts.reshape(1, N, -1), arrays["agg_indices"][None], arrays["agg_weights"][None],
                           sample_nodes(1, N, n_aggregate), params, f"{layer} aggregate", out)
    return ok


# ------------------------------------------------------------------------- pipeline

def _stage(name, cfg, workdir, timings):
    """Run one stage of the default experiment on one model in this (fresh) process."""
    from pathlib import Path

    from cwnnk.analysis import analyse_layer
    from cwnnk.config import expand_models
    from cwnnk.extract import resolve_layers, run_extract
    from cwnnk.graphs import build_layer_graphs, read_layer
    from cwnnk.train import run_train

    torch.set_num_threads(cfg["threads"])
    quiet = lambda *a, **k: None  # noqa: E731
    work = Path(workdir)
    entry = next(iter(expand_models(cfg).values()))
    layers = resolve_layers(entry["spec"], cfg["extract"]["layers"])
    ckpt, store = work / "checkpoint.pt", work / "store.zarr"
    graph_params = dict(cfg["graphs"], seed=cfg["extract"]["seed"], device=cfg["device"])
    start = time.perf_counter()
    if name == "train":
        run_train(entry, cfg["dataset"], cfg["training"], cfg["device"], ckpt, work / "metrics.json", quiet)
    elif name == "extract":
        run_extract(entry, ckpt, store, layers, cfg["dataset"], cfg["extract"], cfg["device"], quiet)
    elif name == "graphs":
        for layer in layers:
            build_layer_graphs(store, layer, work / "graphs" / layer, graph_params, quiet, timings)
    elif name == "overlap":
        for layer in layers:
            analyse_layer(work / "graphs" / layer, work / "overlap" / f"{layer}.json")
    elif name in ("knn floor", "gram floor"):
        from cwnnk.activations import open_activations
        from cwnnk.graphs import load_layer_graphs

        acts = {layer: read_layer(open_activations(store), layer, None) for layer in layers}
        found = {layer: load_layer_graphs(work / "graphs" / layer)[0] for layer in layers if name == "gram floor"}
        start = time.perf_counter()
        for layer, a in acts.items():
            channels, aggregate = a.transpose(1, 0, 2), a.reshape(1, a.shape[0], -1)
            if name == "knn floor":
                knn_floor(channels, cfg["graphs"]["k"], torch.device("cpu"))
                knn_floor(aggregate, cfg["graphs"]["k"], torch.device("cpu"))
            else:
                gram_floor(channels, found[layer]["channel_indices"])
                gram_floor(aggregate, found[layer]["agg_indices"][None])
    seconds = time.perf_counter() - start
    return seconds, _peak_mib(), timings, entry["name"], layers


def bench_pipeline(args, out=print):
    """Wall time and peak memory of each stage of the default experiment, on its first model."""
    import shutil
    import tempfile
    from pathlib import Path

    import yaml

    from cwnnk.config import validate

    cfg = validate(yaml.safe_load(open(args.config)))
    cfg["device"] = args.device
    rows, runs = {}, {"graphs": [], "knn floor": []}
    with tempfile.TemporaryDirectory() as workdir:
        work = Path(workdir)

        def run(name):
            return _in_fresh_process(_stage, name, cfg, workdir, {})

        for name in ("train", "extract"):
            rows[name] = run(name)
        for _ in range(args.repeat):  # interleaved, so that a slow spell of the machine slows both
            shutil.rmtree(work / "graphs", ignore_errors=True)
            runs["graphs"].append(run("graphs"))
            runs["knn floor"].append(run("knn floor"))
        for name, done in runs.items():  # the fastest run counts, with the highest peak of all
            best = min(done, key=lambda row: row[0])
            rows[name] = (best[0], max(row[1] for row in done), *best[2:])
        for name in ("overlap", "gram floor"):
            rows[name] = run(name)
        model, layers = rows["train"][3], rows["train"][4]
        out(f"default experiment ({args.config}), model {model}, layers {layers}, device {args.device}, "
            f"threads {cfg['threads']}")
        ok = check_graphs(work / "store.zarr", {layer: work / "graphs" / layer for layer in layers},
                          cfg["graphs"], args.check_nodes, args.check_nodes // 4, out)
    out(f"{'stage':10s} {'wall s':>8s} {'peak RSS MiB':>13s}")
    for name in ("train", "extract", "graphs", "overlap"):
        out(f"{name:10s} {rows[name][0]:8.2f} {rows[name][1]:13.0f}")
    parts = rows["graphs"][2]
    busy = sum(parts.values())
    out("graph stage, engine busy time by part: " + ", ".join(
        f"{part} {seconds:.2f} s ({100 * seconds / busy:.0f}%)" for part, seconds in parts.items()))
    out(f"runs, interleaved (the fastest of each counts): graph stage "
        + ", ".join(f"{row[0]:.2f}" for row in runs["graphs"]) + " s; kNN floor "
        + ", ".join(f"{row[0]:.2f}" for row in runs["knn floor"]) + " s")
    floor = rows["knn floor"][0]
    out(f"kNN floor of the same layers (float32 product + topk per channel and aggregate): {floor:.2f} s")
    gram = rows["gram floor"][0]
    out(f"float64 Gram of each node's {cfg['graphs']['k']} candidates' differences (the exact kernels' input, "
        f"k^2 D per node): {gram:.2f} s; graph stage / (kNN floor + Gram): {rows['graphs'][0] / (floor + gram):.2f}")
    out(f"graph stage / kNN floor: {rows['graphs'][0] / floor:.2f}")
    return ok


# ---------------------------------------------------------------------------- scale

def _graph_stage(store, layer, out, params, threads):
    """The graphs stage of one layer in this (fresh) process: (wall seconds, peak RSS MiB, summary)."""
    from cwnnk.graphs import build_layer_graphs

    torch.set_num_threads(threads)
    start = time.perf_counter()
    _, aggregate = build_layer_graphs(store, layer, out, params, log=lambda *a, **k: None)
    seconds = time.perf_counter() - start
    return seconds, _peak_mib(), aggregate.degree.mean()


def _check_graphs_here(*args):
    """check_graphs in this (fresh) process: (verdict, its lines, peak RSS MiB)."""
    lines = []
    ok = check_graphs(*args, out=lines.append)
    return ok, lines, _peak_mib()


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
        t_store, _ = _timed(lambda: extract_to_store(model, {args.layer: model.layers[args.layer]}, data, store,
                                                     batch_size=500, log=lambda *a, **k: None))
        params = dict(k=args.k, kernel="gaussian", sigma="local", solver="exact", duplicates="drop",
                      n_samples=None, seed=0, symmetrize="none", device="cpu")
        seconds, peak, degree = _in_fresh_process(_graph_stage, store, args.layer, graphs, params, args.threads)
        summary = __import__("json").loads((graphs / "summary.json").read_text())
        # the check holds the whole layer too: apart from the extract's memory, as the stage is
        ok, lines, peak_check = _in_fresh_process(_check_graphs_here, store, {args.layer: graphs}, params,
                                                  args.check_nodes, max(1, args.check_nodes // 10))
        for line in lines:
            out(line)
    out(f"ResNet-18 (CIFAR stem, random weights) layer {args.layer} on {args.n} synthetic 32x32 RGB images: "
        f"store written in {t_store:.0f} s")
    C, N, D = summary["n_channels"], summary["n_samples"], summary["dim_channel"]
    out(f"graphs stage: C={C} channels x N={N} x D={D} (aggregate D={C * D}), k={args.k}, CPU threads {args.threads}")
    out(f"wall {seconds:.0f} s (reading the store {summary['seconds']['read']:.0f} s, NNK graphs "
        f"{summary['seconds']['nnk']:.0f} s), peak RSS {peak:.0f} MiB, aggregate mean degree {degree:.2f}")
    out(f"peak RSS of the bench's other processes: extract {_peak_mib():.0f} MiB, check {peak_check:.0f} MiB")
    return ok and peak < args.max_mib


# ------------------------------------------------------------------------------ gpu

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
        seconds, _ = _timed(lambda: layer_nnk(acts, args.k, device))
        per_layer[name], t_dev = seconds, t_dev + seconds
        out(f"  {name:14s} C={acts.shape[1]:4d} D={acts.shape[2]:5d}  {seconds:7.2f} s")
    out(f"{device} time, all layers, N={args.n}: {t_dev:.1f} s"
        + (f", peak memory {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB" if device.type == "cuda" else ""))

    # 3. the same work on the CPU at cpu_n nodes, scaled to N: kNN ~ N^2, kernels and solver ~ N
    parts = {}
    t_cpu_sub, _ = _timed(lambda: [layer_nnk(a[:cpu_n].cpu(), args.k, "cpu", parts) for a in layers.values()])
    scale = args.n / cpu_n
    knn = parts.get("knn", 0.0)
    t_cpu = knn * scale**2 + (t_cpu_sub - knn) * scale
    out(f"CPU time at N={cpu_n}: {t_cpu_sub:.1f} s (kNN {knn:.1f} s); scaled to N={args.n} "
        f"(kNN x{scale**2:.0f}, the rest x{scale:.0f}): {t_cpu:.0f} s")
    out(f"speedup {t_cpu / t_dev:.1f}")
    return ok


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m cwnnk.bench", description=__doc__,
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
                   help="channel nodes per layer checked against the float64 reference (a quarter as many aggregate nodes)")
    p.add_argument("--repeat", type=int, default=3, help="runs of the graph stage and of the kNN floor; the best counts")
    p.set_defaults(func=bench_pipeline)

    p = commands.add_parser("scale", help="the graphs stage of one full-size ResNet-18 layer on the CPU")
    p.add_argument("--n", type=int, default=10_000, help="images (nodes per graph)")
    p.add_argument("--layer", default="stem", help="ResNet-18 layer (stem and layer1.* have 64 channels of 32x32)")
    p.add_argument("--k", type=int, default=25)
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="CPU threads of the stage")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-mib", type=float, default=4096, help="peak RSS the stage must stay under (exit 1 if not)")
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
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(0 if main() is not False else 1)
