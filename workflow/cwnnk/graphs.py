"""The graphs stage: CW-NNK graphs of one layer (every channel plus the aggregate).

Output folder, per (model, layer):
    channel_0000.npz ...   one scipy CSR N x N matrix per channel (row i holds theta_i)
    aggregate.npz          the NNK graph of the whole layer (x_i = vec(A[i]))
    knn.npz                kNN candidates, distances and NNK weights, channels (C, N, k) and
                           aggregate (N, k), the positions of the samples used, and TwoNN's
                           input: each distinct row's two nearest other distinct rows
                           (channel_twonn[_indices] (C, N, 2), agg_twonn[_indices] (N, 2))
    summary.json           parameters, per-channel degenerate counts, zero-map fractions,
                           provenance and timings
The folder is written under a temporary name and renamed into place when complete.

A layer too large to hold whole (streams()) is read from the store a block of channels at a time;
its aggregate's kNN is then read from the sum of the channels' Gram matrices
(cwnnk.engine.gramknn), so the N x (C*H*W) matrix is never made (docs/performance.md).
"""

import time

import numpy as np
import scipy.sparse

from cwnnk.activations import StoreError, open_activations
from cwnnk.atomic import DamagedArtifact, atomic_path, read_json, write_json
from cwnnk.intrinsic_dim import distinct_two_nn, gram_two_nn
from cwnnk.logs import Progress
from cwnnk.provenance import now, sha256_array, sha256_file, versions
from cwnnk.sparse import to_sparse

GRAPH_FILES = ("aggregate.npz", "knn.npz", "summary.json")
RERUN = "the graphs stage (snakemake --forcerun graphs)"
# TwoNN's input (the duplicate policy, cwnnk.intrinsic_dim); folders written before it lack these
TWONN_ARRAYS = ("channel_twonn", "channel_twonn_indices", "agg_twonn", "agg_twonn_indices")
# Channels per engine call: bounds the (block, N, D) float32 copy handed to the engine.
BLOCK_BYTES = 64 << 20
# The aggregate is solved after the channels where their results (RESULT_BYTES per candidate: its
# index, distance and weight) take at most AGGREGATE_LAST_BYTES; see cw_nnk.
RESULT_BYTES = 24
AGGREGATE_LAST_BYTES = 1 << 28
# A layer streams where holding it whole (N*C*D float32) would take more than STREAM_BYTES and
# more than the streamed path's N x N float64 matrices (GRAM_COPIES of them: the channels' summed
# Gram matrix, one channel's own, and the aggregate's tile of distances at its search).
STREAM_BYTES = 1 << 30
GRAM_COPIES = 3


class NonFiniteData(StoreError):
    """NaN or Inf in a stored layer; the message names the store, layer, channel and sample."""


def channel_file(c):
    return f"channel_{c:04d}.npz"


def streams(N, C, D):
    """Whether the graphs stage streams a layer of C channels of D values at N samples."""
    layer = N * C * D * 4
    return layer > STREAM_BYTES and layer > GRAM_COPIES * 8 * N * N


def read_layer(store, layer, positions):
    """(N, C, D) float32 activations of the chosen samples, D = H*W.

    Row i flattened is the aggregate feature x_i = vec(A[i]); [:, c] is channel c. Both
    are views of this one array, so the layer is held in memory once.
    """
    values = _read(store, layer, positions)
    return values.reshape(values.shape[0], values.shape[1], -1)


class StoredLayer:
    """A layer of a store read a block of channels at a time (the streamed graphs stage).

    shape (N, C, D) as read_layer's; [:, a:b] reads channels a to b - 1, (N, b - a, D), checked finite."""

    def __init__(self, store, layer, positions):
        self.store, self.layer, self.positions = store, layer, positions
        N, C, H, W = store.shapes[layer]
        self.shape = (len(positions), C, H * W)

    def __getitem__(self, key):
        rows, block = key
        if rows != slice(None) or not isinstance(block, slice) or block.step not in (None, 1):
            raise TypeError("StoredLayer reads [:, a:b] (a run of channels) only")
        values = _read(self.store, self.layer, self.positions, block)
        values = values.reshape(values.shape[0], values.shape[1], -1)
        check_finite_layer(values, self.store, self.layer, self.positions, first_channel=block.start or 0)
        return values


def open_layer(store, layer, positions, stream=None):
    """A layer's activations for cw_nnk: read whole as (N, C, D) and checked finite, or, where it
    streams (default: streams(N, C, D)), a StoredLayer that reads and checks a block at a time."""
    store.num_channels(layer)  # an unknown layer: the store's KeyError, naming the stored ones
    _, C, H, W = store.shapes[layer]
    if streams(len(positions), C, H * W) if stream is None else stream:
        return StoredLayer(store, layer, positions)
    acts = read_layer(store, layer, positions)
    check_finite_layer(acts, store, layer, positions)
    return acts


def _read(store, layer, positions, channels=None):
    """store.samples, a damaged chunk's error turned into a StoreError that says what to do."""
    try:
        return store.samples(layer, positions, channels)
    except (KeyError, IndexError):
        raise
    except Exception as err:  # noqa: BLE001 - a damaged chunk: zarr and the codecs raise anything
        raise StoreError(f"{store.path}: layer {layer!r} cannot be read ({type(err).__name__}: {err}); a chunk of "
                         "the store is damaged (truncated or overwritten): rerun the extract stage "
                         "(snakemake --forcerun extract)") from err


def check_finite_layer(acts, store, layer, positions, first_channel=0):
    """Raise NonFiniteData naming the store, layer, channel and sample if acts (N, C, D) holds NaN/Inf.

    acts may be a block of the layer's channels, the first of them channel `first_channel`."""
    N, C, D = acts.shape
    # Channel blocks bound the boolean mask's memory (a quarter of the block's).
    bad = [block for block in channel_blocks(C, N, D) if not np.isfinite(acts[:, block.start : block.stop]).all()]
    if not bad:
        return
    first = ~np.isfinite(acts[:, bad[0].start : bad[0].stop])
    n, c, d = (int(v) for v in np.argwhere(first)[0])
    c += bad[0].start
    channels = [ch for block in bad for ch in block if not np.isfinite(acts[:, ch]).all()]
    count = sum(int((~np.isfinite(acts[:, ch])).sum()) for ch in channels)
    raise NonFiniteData(
        f"{store.path}: non-finite data ({acts[n, c, d]}) in layer {layer!r}, channel {c + first_channel}, stored "
        f"sample {int(positions[n])} (source index {int(store.indices[positions[n]])}), value {d} of the channel's "
        f"map; {count} non-finite values in channel(s) {[ch + first_channel for ch in channels[:10]]}"
        f"{' ...' if len(channels) > 10 else ''}. The extract stage refuses these, so the store was changed "
        "after it was written: rerun the extract stage (snakemake --forcerun extract)")


def channel_blocks(C, N, D, block_bytes=None):
    """Runs of channels (ranges) whose (block, N, D) float32 copy takes at most block_bytes (BLOCK_BYTES)."""
    size = max(1, int((block_bytes or BLOCK_BYTES) // max(1, N * D * 4)))
    return [range(start, min(C, start + size)) for start in range(0, C, size)]


def cw_nnk(acts, params, log=print, timings=None, stream=None):
    """NNK graphs of every channel (in blocks of channels) and of the aggregate.

    acts: (N, C, D) float32 (see read_layer), or a StoredLayer (read block by block). params:
    GraphParams (its engine settings are used). timings: optional dict receiving the engine's
    seconds per part (see cwnnk.engine.nnk). stream: take the channels a block at a time and read
    the aggregate's kNN from the sum of their Gram matrices, never making the N x (C*D) matrix
    (default: streams(N, C, D); a StoredLayer always streams).
    Returns (the channels' NNKResult, stacked over C; maps: {"zero_map_fraction": (C,) share of all-zero
    maps per channel, "constant_map": (C,) bool, every sample's map the same}; the aggregate NNKResult;
    where streamed, the aggregate's GramPoints, else None).
    """
    from cwnnk.engine import GramSum, nnk_stream  # torch: imported by the jobs that solve, not by readers (overlap)

    N, C, D = acts.shape
    stored = isinstance(acts, StoredLayer)
    stream = stored or (streams(N, C, D) if stream is None else stream)
    engine = dict(params.engine(), timings=timings)
    # One stream for the channel blocks and the aggregate: each one's solves overlap the next one's
    # search. Held whole, the aggregate's search is the largest working set: it goes first where the
    # channels' results would be large to hold beside it (it bounds the peak of large layers, `bench
    # scale`), else last, so that the channels' queued solves keep the other core busy during it.
    # Streamed, it goes last: its kNN is read from the channels' summed Gram matrices.
    aggregate_first = not stream and C * N * params.k * RESULT_BYTES > AGGREGATE_LAST_BYTES
    order = [None, *channel_blocks(C, N, D)] if aggregate_first else [*channel_blocks(C, N, D), None]
    zero_maps, constant = np.empty(C), np.empty(C, dtype=bool)
    zero_rows = np.ones(N, dtype=bool)  # streamed: the aggregate's zero vectors,
    sq_rows = np.zeros(N) if params.kernel == "cosine" else None  # and its squared norms, summed over blocks
    held = {}

    def inputs():
        for block in order:
            if block is None:
                if stream:
                    held["points"] = gram.points(zero_rows, sq_rows)
                    yield held["points"]
                else:
                    yield acts.reshape(N, C * D)
                continue
            X = np.ascontiguousarray(acts[:, block.start : block.stop].transpose(1, 0, 2))
            zero = (X == 0).all(axis=2)
            zero_maps[block.start : block.stop] = zero.mean(axis=1)
            constant[block.start : block.stop] = (X == X[:, :1]).all(axis=(1, 2))
            if stream:
                zero_rows[:] &= zero.all(axis=0)
                if sq_rows is not None:
                    sq_rows[:] += np.einsum("bnd,bnd->n", X, X, dtype=np.float64)
            yield X
            del X  # the block's copy goes before the next one is made

    channels = aggregate = None
    progress = Progress(C + 1, "point set", log, desc=f"CW-NNK graphs, {C} channels")  # and the aggregate
    # aggregate last: its Gram matrix is summed from the channels' (the aggregate concatenates them)
    gram = GramSum(always=True) if stream else None if aggregate_first else GramSum()
    for block, part in zip(order, nnk_stream(inputs(), **engine, gram=gram)):
        if block is None:
            aggregate = part
            progress.step(detail=f"the aggregate, {N} x {C * D}" + (" (from the Gram matrix)" if stream else ""))
            continue
        if channels is None:  # filled block by block: the channels' results are held once
            channels = _stacked_like(part, C)
        for field in ("indices", "distances", "weights", "degree", "error", "sigma"):
            if getattr(part, field) is not None:
                getattr(channels, field)[block.start : block.stop] = getattr(part, field)
        for name, values in part.counts.items():
            channels.counts[name][block.start : block.stop] = values
        progress.step(len(block), detail=f"channels {block.start}-{block.stop - 1} of {C}")
    return channels, {"zero_map_fraction": zero_maps, "constant_map": constant}, aggregate, held.get("points")


def twonn_inputs(acts, channels, aggregate, points=None):
    """TwoNN's input under the duplicate policy (cwnnk.intrinsic_dim) for every channel and the aggregate.

    acts: the (N, C, D) activations cw_nnk was given (array or StoredLayer); channels, aggregate,
    points: its results (points: the streamed aggregate's GramPoints, else None). Returns
    (channel distances (C, N, 2), channel indices (C, N, 2), aggregate distances (N, 2), aggregate
    indices (N, 2)), as knn.npz stores them (channel_twonn[_indices], agg_twonn[_indices]).
    """
    N, C, D = acts.shape
    k = channels.indices.shape[-1]
    # the engine counts equal rows: sets without any need no search for them, nor their points
    equal = channels.counts["duplicates"] > 0
    two_nn = []
    for block in channel_blocks(C, N, D):
        values = acts[:, block.start : block.stop] if equal[block.start : block.stop].any() or k < 2 else None
        two_nn += [distinct_two_nn(None if values is None else values[:, c - block.start],
                                   (channels.distances[c], channels.indices[c]), equal_rows=bool(equal[c]))
                   for c in block]
    knn = (aggregate.distances, aggregate.indices)
    equal_rows = bool(aggregate.counts["duplicates"])
    agg = gram_two_nn(points, knn, equal_rows) if points is not None else distinct_two_nn(acts, knn, equal_rows)
    return np.stack([t[0] for t in two_nn]), np.stack([t[1] for t in two_nn]), agg[0], agg[1]


def _stacked_like(part, C):
    """An empty NNKResult of C point sets with the fields and dtypes of `part` (a block's result)."""
    from cwnnk.engine import NNKResult

    def empty(a):
        return None if a is None else np.empty((C, *a.shape[1:]), dtype=a.dtype)

    return NNKResult(indices=empty(part.indices), distances=empty(part.distances), weights=empty(part.weights),
                     degree=empty(part.degree), error=empty(part.error), sigma=empty(part.sigma),
                     counts={name: empty(values) for name, values in part.counts.items()},
                     kernel=part.kernel, solver=part.solver)


def build_layer_graphs(store_path, layer, out_dir, params, log=print, timings=None, stream=None):
    """The `graphs` job of one (model, layer): read the store, build CW-NNK, write out_dir atomically.

    params: GraphParams. stream: read the layer a block of channels at a time (cw_nnk); default
    streams(N, C, D).
    """
    from cwnnk.datasets import stratified_subset

    start = time.perf_counter()
    store = open_activations(store_path)
    positions = stratified_subset(store.labels, params.n_samples, params.seed)
    acts = open_layer(store, layer, positions, stream)
    stream = isinstance(acts, StoredLayer)
    N, C, D = acts.shape
    if params.k >= N:
        raise ValueError(f"graphs.k = {params.k} needs more than k samples; {store_path} layer {layer!r} has N = {N}")
    log(f"{store_path} layer {layer}: C={C} channels, N={N} samples, D={D} per channel; k={params.k}, "
        f"{params.kernel}/{params.sigma}, solver {params.solver}"
        + ("; streamed a block of channels at a time" if stream else ""))
    seconds = {"read": time.perf_counter() - start}
    start = time.perf_counter()
    channels, maps, aggregate, points = cw_nnk(acts, params, log, timings, stream=stream)
    seconds["nnk"] = time.perf_counter() - start
    start = time.perf_counter()
    channel_twonn, channel_twonn_indices, agg_twonn, agg_twonn_indices = twonn_inputs(acts, channels, aggregate,
                                                                                      points)
    seconds["twonn"] = time.perf_counter() - start
    uncertain = None if points is None else points.uncertain
    points = None  # the aggregate's N x N Gram matrix goes before the files are written

    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        # uncompressed: float64 weights hardly compress, and zlib costs more time than the space it saves
        for c in range(C):
            scipy.sparse.save_npz(tmp / channel_file(c), to_sparse(channels.channel(c), params.symmetrize),
                                  compressed=False)
        scipy.sparse.save_npz(tmp / "aggregate.npz", to_sparse(aggregate, params.symmetrize), compressed=False)
        np.savez(
            tmp / "knn.npz", positions=positions, labels=store.labels[positions], sample_index=store.indices[positions],
            channel_indices=channels.indices, channel_distances=channels.distances,
            channel_weights=channels.weights, channel_error=channels.error,
            agg_indices=aggregate.indices, agg_distances=aggregate.distances, agg_weights=aggregate.weights,
            agg_error=aggregate.error,
            channel_twonn=channel_twonn, channel_twonn_indices=channel_twonn_indices,
            agg_twonn=agg_twonn, agg_twonn_indices=agg_twonn_indices,
        )
        # each file's sha256, checked where it is read (verify_graph_file: knn.npz by load_layer_graphs)
        files_sha256 = {path.name: sha256_file(path) for path in sorted(tmp.glob("*.npz"))}
        write_json(tmp / "summary.json", dict(
            files_sha256=files_sha256, layer=layer, n_channels=C, n_samples=N, dim_channel=D, params=params.to_dict(),
            counts={name: values.tolist() for name, values in channels.counts.items()},
            aggregate_counts={name: int(value) for name, value in aggregate.counts.items()},
            zero_map_fraction=maps["zero_map_fraction"].tolist(), constant_map=maps["constant_map"].tolist(),
            seconds=seconds,
            streamed=stream, aggregate_uncertain_rows=uncertain,
            store=str(store_path), checkpoint_sha256=store.attrs.get("checkpoint", {}).get("sha256"),
            sample_positions_sha256=sha256_array(positions), versions=versions(), created=now(),
        ))
    failed = int(channels.counts["kkt_failed"].sum() + aggregate.counts["kkt_failed"])
    if failed:
        log(f"WARNING: {failed} nodes missed the KKT tolerance (counted in summary.json)")
    return channels, aggregate


def verify_graph_file(folder, name, summary):
    """Raise DamagedArtifact if a graphs folder's file differs from the sha256 its summary.json recorded
    (folders written before it was recorded are not checked)."""
    recorded = summary.get("files_sha256", {}).get(name)
    if recorded is not None and sha256_file(folder / name) != recorded:
        raise DamagedArtifact(f"{folder / name}: its content is not what was written (sha256 differs from "
                              f"files_sha256 in {folder / 'summary.json'}): the file was damaged since; rerun {RERUN}")


def load_layer_graphs(folder):
    """The arrays of knn.npz and the parsed summary.json of a graphs folder; refuses an incomplete one."""
    from pathlib import Path

    folder = Path(folder)
    missing = [name for name in GRAPH_FILES if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{folder}: incomplete graph folder, missing {missing}; rerun the graphs stage")
    summary = read_json(folder / "summary.json", rerun=RERUN)
    verify_graph_file(folder, "knn.npz", summary)
    absent = [channel_file(c) for c in range(summary["n_channels"]) if not (folder / channel_file(c)).is_file()]
    if absent:
        raise FileNotFoundError(f"{folder}: missing channel graphs {absent[:5]}; rerun the graphs stage")
    with np.load(folder / "knn.npz") as data:
        arrays = dict(data)
    lacking = [name for name in (*TWONN_ARRAYS, "sample_index") if name not in arrays]
    if lacking:
        raise ValueError(f"{folder}: knn.npz lacks {lacking} (written by an older cwnnk, before TwoNN's duplicate "
                         "policy or the images' sample_index, docs/overlap.md); rerun the graphs stage")
    return arrays, summary


# The graph stage's measured cost on the 2-core dev machine (docs/performance.md, `bench scale`),
# at k = 25. A layer held whole (ResNet-18's stem, C = 64 channels of D = 1,024 at N = 10,000):
# 712 s, peak 3,950 MiB, 2,500 MiB of it the layer; time grows as N^2 C D (the exact kNN), memory
# with the layer (N C D float32) and the results (C N k). A streamed layer (cwnnk.graphs.streams;
# ResNet-50's layer1, C = 256 of D = 3,136 at N = 10,000): 2,147 s, peak 5,086 MiB; time grows as
# N^2 C D (one float64 product per channel), memory with N^2 (the N x N float64 matrices and their
# scratch: 27 bytes per N^2 beside the base and the results), not with the layer.
# Besides the kNN, every point set (the C channels and the aggregate) solves one NNK problem per node:
# about 40 us per node at k = 25 on 2 cores (`python -m cwnnk.bench estimate`), growing as k^1.4
# (k = 50: 2.6x). That term dominates wide layers with small maps (ResNet-18's layer4).
_REF_SECONDS, _REF_N, _REF_CD = 712.0, 10_000, 64 * 1024
_SOLVE_SECONDS, _SOLVE_K, _SOLVE_POWER = 40e-6, 25, 1.4
_STREAM_SECONDS, _STREAM_CD = 2147.0, 256 * 3136
_STREAM_N2_BYTES = 27.2
_BASE_MIB = 1024.0
_RESULT_BYTES = 24


def estimate_cost(n, channels, dim, k):
    """(seconds, MiB, streamed): the graph stage's rough time on 2 CPU cores and peak memory for one layer of
    N = n images, C = channels of D = dim values, and whether it streams. Time: the kNN (N^2 C D) plus the
    per-node solves (N (C + 1), k^1.4)."""
    results = channels * n * k * _RESULT_BYTES
    solves = _SOLVE_SECONDS * n * (channels + 1) * (k / _SOLVE_K) ** _SOLVE_POWER
    if streams(n, channels, dim):
        seconds = _STREAM_SECONDS * (n / _REF_N) ** 2 * (channels * dim / _STREAM_CD)
        return seconds + solves, _BASE_MIB + (_STREAM_N2_BYTES * n * n + results) / 2**20, True
    seconds = _REF_SECONDS * (n / _REF_N) ** 2 * (channels * dim / _REF_CD)
    return seconds + solves, _BASE_MIB + (n * channels * dim * 4 + results) / 2**20, False
