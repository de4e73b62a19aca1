"""What the benchmarks share: a synthetic ReLU-like layer, the kNN and Gram floors, peak memory
measured per process, and the agreement check against cwnnk.bench.reference."""

import sys
import time

import numpy as np
import torch

from cwnnk.bench.reference import check_nodes, sample_nodes
from cwnnk.engine.blocks import row_blocks


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


def peak_mib():
    """This process's own peak resident memory so far, MiB.

    Linux's VmHWM, where there is one: ru_maxrss would do elsewhere, but on Linux a spawned child's
    ru_maxrss starts at its parent's peak (the forked copy's high-water mark survives the exec)."""
    import resource

    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (2**20 if sys.platform == "darwin" else 1024)


def in_fresh_process(fn, *args):
    """fn(*args) in a new (spawned) process, so that its peak memory is its own."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def timed(fn):
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


def report_check(X, indices, weights, nodes, params, what, out):
    """Check an engine result on C point sets X (C, N, D) against the float64 reference on `nodes`
    (cwnnk.bench.reference); print one line and return whether it agrees."""
    exact = params.solver == "exact"
    checked, other, failed, worst = check_nodes(X, indices, weights if exact else None, nodes, params.k,
                                                params.kernel, params.duplicates)
    ok = other == 0 and failed == 0
    kkt = (f", weights meet the reference problem's KKT conditions on {checked - other - failed} "
           f"(largest violation {worst:.1e})") if exact else " (solver pynnk: weights not checked)"
    out(f"agreement: {what} on {checked} nodes: candidates equal the brute force's on {checked - other}{kkt}"
        + ("" if ok else "  <-- DIFFERS"))
    return ok


def check_graphs(store_path, folders, params, n_channel, n_aggregate, out):
    """Check the graphs stage's output folders {layer: folder} against the reference on n_channel
    random channel nodes and n_aggregate aggregate nodes per layer; False if any disagrees.

    A layer the stage streamed is checked as it was built, without holding it whole: the channels
    of the sampled nodes are read alone, and the aggregate nodes against the rows their reference
    needs (_aggregate_rows)."""
    from cwnnk.activations import open_activations
    from cwnnk.graphs import StoredLayer, load_layer_graphs, read_layer

    if params.sigma != "local":
        out(f"agreement: not checked (the reference builds sigma local only; this run has {params.sigma!r})")
        return True
    store, ok = open_activations(store_path), True
    for layer, folder in folders.items():
        arrays, summary = load_layer_graphs(folder)
        if not summary.get("streamed"):
            acts = read_layer(store, layer, arrays["positions"])
            N, C, _ = acts.shape
            ok &= report_check(acts.transpose(1, 0, 2), arrays["channel_indices"], arrays["channel_weights"],
                               sample_nodes(C, N, n_channel), params, f"{layer} channels", out)
            ok &= report_check(acts.reshape(1, N, -1), arrays["agg_indices"][None], arrays["agg_weights"][None],
                               sample_nodes(1, N, n_aggregate), params, f"{layer} aggregate", out)
            continue
        acts = StoredLayer(store, layer, arrays["positions"])
        N, C, _ = acts.shape
        ok &= report_check(_Channels(acts), arrays["channel_indices"], arrays["channel_weights"],
                           sample_nodes(C, N, n_channel), params, f"{layer} channels (streamed)", out)
        queries = [i for _, i in sample_nodes(1, N, n_aggregate)]
        rows = _aggregate_rows(acts, queries, params.k, params.duplicates)
        # the stage's candidates in the rows' numbering; one outside them (len(rows)) cannot match
        local = np.searchsorted(rows, np.arange(N)).clip(max=len(rows) - 1)
        agg = arrays["agg_indices"].clip(min=0)
        mapped = np.where(arrays["agg_indices"] < 0, -1, np.where(rows[local[agg]] == agg, local[agg], len(rows)))
        indices = np.full((len(rows), params.k), -1)
        weights = np.zeros((len(rows), params.k))
        indices[local[queries]], weights[local[queries]] = mapped[queries], arrays["agg_weights"][queries]
        # the rows in one read: each chunk that holds some of them is read once
        Xa = store.samples(layer, arrays["positions"][rows]).reshape(1, len(rows), -1)
        ok &= report_check(Xa, indices[None], weights[None], [(0, int(local[q])) for q in queries], params,
                           f"{layer} aggregate (streamed, from the rows its reference needs)", out)
    return ok


def _aggregate_rows(acts, queries, k, duplicates):
    """The aggregate rows (ascending) the reference of the query nodes needs: the queries and each
    one's k nearest others by float64 differences, summed a block of channels at a time from the
    StoredLayer `acts` (so the brute force over the N x (C*D) matrix is never held)."""
    from cwnnk.bench.reference import nearest
    from cwnnk.graphs import channel_blocks

    N, C, D = acts.shape
    d2 = np.zeros((len(queries), N))
    for block in channel_blocks(C, N, D):
        values = acts[:, block.start : block.stop].reshape(N, -1)
        for j, q in enumerate(queries):
            d2[j] += ((values - values[q]) ** 2).sum(1, dtype=np.float64)
    rows = set(queries)
    for j, q in enumerate(queries):
        rows.update(nearest(d2[j], q, k, duplicates).tolist())
    return np.array(sorted(rows))


class _Channels:
    """The point sets (C, N, D) of a StoredLayer as the reference reads them, X[c]: channel c,
    read when asked (the last one kept: the sampled nodes come channel by channel)."""

    def __init__(self, acts):
        self.acts, self.last = acts, (None, None)

    def __getitem__(self, c):
        if self.last[0] != c:
            self.last = (c, self.acts[:, c : c + 1][:, 0])
        return self.last[1]
