"""The overlap stage: channel overlap of one CW-NNK layer (per-node metrics, chance levels,
summaries), from a graphs folder to one JSON (`analyse_layer`).

Inputs are the NNK engine's arrays: for C channels and N nodes, channel `indices` (C, N, k)
int (-1 = padding), `weights` (C, N, k) float and `distances` (C, N, k) float sorted per row
(inf on padding); the aggregate arrays are the same without the C axis. The neighbours of
node i in channel c are the indices[c, i, j] with weights[c, i, j] > tol; the indices of a
row are distinct (a kNN list). Definitions, chance levels and the NaN policy: docs/overlap.md.
"""

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy.stats import hypergeom

from cwnnk.atomic import write_json
from cwnnk.intrinsic_dim import twonn
from cwnnk.loo import cw_loo, loo_columns
from cwnnk.params import TOL, OverlapParams
from cwnnk.redundancy import CHANNEL_OVERLAP, PairOverlap, channel_overlap, interval, keep_order

STATS = ("mean", "std", "q25", "median", "q75")
# Bounds on one block of nodes: C * block * k neighbour-list entries, block * N (node,
# point) counters, and block * C * C channel pairs in the per-node intersection counts.
_MAX_ENTRIES = 1 << 22
_MAX_PAIRS = 1 << 21  # also keeps the dense path's (b, C, C) arrays in cache
# rho_hat is flagged as saturated when random sets of the observed sizes already cover this share
# of the other points: it has then almost no room above chance (docs/overlap.md).
SATURATED = 0.9


@dataclass(frozen=True, eq=False)
class NodeMetrics:
    """Per-node overlap metrics of one layer (NaN where undefined, see docs/overlap.md)."""

    degree_channel: np.ndarray  # (C, N) d_c(i)
    degree_agg: np.ndarray  # (N,) d_agg(i)
    union: np.ndarray  # (N,) U(i) = |union_c N_i^c|
    sum: np.ndarray  # (N,) S(i) = sum_c d_c(i)
    rho: np.ndarray  # (N,) 1 - U / S; NaN where S = 0
    rho_hat: np.ndarray  # (N,) rho / (1 - 1/C); NaN where S = 0
    kappa: np.ndarray  # (N,) |N_agg & U| / d_agg; NaN where d_agg = 0
    gamma: np.ndarray  # (N,) d_agg / mean_c d_c; NaN where S = 0
    pairwise_overlap: np.ndarray  # (N,) mean over channel pairs a != b of J_ab(i)
    pairwise: np.ndarray  # (C, C) mean over nodes of J_ab(i); diagonal 1


def _shape_error(name, array, expected):
    return ValueError(f"{name} must have shape {expected}, got {np.shape(array)}")


def _validate(ch_indices, ch_weights, agg_indices, agg_weights, ch_distances=None,
              agg_distances=None):
    """Check shapes, dtypes and index range; return (C, N, k)."""
    ch_indices = np.asarray(ch_indices)
    if ch_indices.ndim != 3:
        raise ValueError(f"ch_indices must have shape (C, N, k), got {ch_indices.shape}")
    C, N, k = ch_indices.shape
    ch = {"ch_weights": ch_weights, "ch_distances": ch_distances}
    agg = {"agg_indices": agg_indices, "agg_weights": agg_weights,
           "agg_distances": agg_distances}
    for name, array in ch.items():
        if array is not None and np.shape(array) != (C, N, k):
            raise _shape_error(name, array, f"(C, N, k) = {(C, N, k)} like ch_indices")
    for name, array in agg.items():
        if array is not None and np.shape(array) != (N, k):
            raise _shape_error(name, array,
                               f"(N, k) = {(N, k)} to match ch_indices {(C, N, k)}")
    if C < 2:
        raise ValueError(f"ch_indices must hold C >= 2 channels (rho_hat divides by "
                         f"1 - 1/C), got shape {(C, N, k)}")
    if N < 2 or k < 1:
        raise ValueError(f"ch_indices must hold N >= 2 nodes and k >= 1 candidates, got "
                         f"shape {(C, N, k)}")
    for name, array in (("ch_indices", ch_indices), ("agg_indices", np.asarray(agg_indices))):
        if not np.issubdtype(array.dtype, np.integer):
            raise ValueError(f"{name} must be an integer array, got dtype {array.dtype}")
        if array.size and (array.min() < -1 or array.max() >= N):
            raise ValueError(f"{name} must lie in [-1, N - 1] = [-1, {N - 1}], got values "
                             f"in [{array.min()}, {array.max()}] (shape {array.shape})")
    return C, N, k


def node_metrics(ch_indices, ch_weights, agg_indices, agg_weights, tol=TOL):
    """Every per-node metric of docs/method.md section 4 for one layer, and the C x C matrix.

    Nodes are processed in blocks so that memory stays bounded (C = 512, N = 10^4, k = 50
    are routine): a block counts, for each of its (node i, point j) pairs, the channels
    that choose j (giving U and the aggregate coverage), then gets every intersection
    |N_i^a & N_i^b| from an incidence Gram matrix, sparse when channels overlap little and
    dense (BLAS) when they overlap heavily, whichever costs less; never an N x C x C array.
    """
    C, N, k = _validate(ch_indices, ch_weights, agg_indices, agg_weights)
    degree = np.empty((C, N), dtype=np.int64)
    degree_agg = np.empty(N, dtype=np.int64)
    union = np.empty(N, dtype=np.int64)
    covered = np.empty(N, dtype=np.int64)  # |N_agg & U| per node
    pair_sum = np.zeros(C * C)  # sum over nodes of J_ab(i), a < b, at a * C + b
    node_pair_sum = np.empty(N)  # sum over a < b of J_ab(i)
    block = max(1, min(_MAX_ENTRIES // (C * k), _MAX_ENTRIES // N, _MAX_PAIRS // (C * C)))
    for start in range(0, N, block):
        nodes = slice(start, min(N, start + block))
        b = nodes.stop - start
        idx = np.asarray(ch_indices[:, nodes])
        is_nb = (np.asarray(ch_weights[:, nodes]) > tol) & (idx >= 0)
        deg = is_nb.sum(axis=-1)
        degree[:, nodes] = deg
        c, node, slot = np.nonzero(is_nb)
        # Pair (i, j) of the block as one column, node * N + j, so that nodes share none.
        pair = node * N + idx[c, node, slot]
        chosen_by = np.bincount(pair, minlength=b * N).reshape(b, N)  # channels per pair
        union[nodes] = np.count_nonzero(chosen_by, axis=1)

        agg_idx = np.asarray(agg_indices[nodes])
        agg_nb = (np.asarray(agg_weights[nodes]) > tol) & (agg_idx >= 0)
        degree_agg[nodes] = agg_nb.sum(axis=-1)
        agg_node, agg_slot = np.nonzero(agg_nb)
        hit = chosen_by[agg_node, agg_idx[agg_node, agg_slot]] > 0
        covered[nodes] = np.bincount(agg_node[hit], minlength=b)

        u_max = int(union[nodes].max(initial=0))
        if _dense_is_cheaper(chosen_by, C, u_max):
            jac = _jaccard_dense(c, node, idx[c, node, slot], chosen_by > 0, deg, u_max)
            pair_sum += np.triu(jac.sum(axis=0, dtype=np.float64), k=1).ravel()
            node_pair_sum[nodes] = (jac.sum(axis=(1, 2), dtype=np.float64)
                                    - np.trace(jac, axis1=1, axis2=2, dtype=np.float64)) / 2
        else:
            a, bb, pair_node, jac = _jaccard_sparse(c, node, pair, deg, b, N)
            pair_sum += np.bincount(a * C + bb, weights=jac, minlength=C * C)
            node_pair_sum[nodes] = np.bincount(pair_node, weights=jac, minlength=b)

    total = degree.sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        rho = np.where(total > 0, 1 - union / total, np.nan)
        kappa = np.where(degree_agg > 0, covered / degree_agg, np.nan)
        gamma = np.where(total > 0, degree_agg * C / total, np.nan)
    pairwise = pair_sum.reshape(C, C) / N
    pairwise = pairwise + pairwise.T
    np.fill_diagonal(pairwise, 1.0)
    return NodeMetrics(
        degree_channel=degree, degree_agg=degree_agg, union=union, sum=total, rho=rho,
        rho_hat=rho / (1 - 1 / C), kappa=kappa, gamma=gamma,
        pairwise_overlap=node_pair_sum / (C * (C - 1) / 2), pairwise=pairwise,
    )


def _dense_is_cheaper(chosen_by, C, u_max):
    """Pick the intersection path of a block from its (node, point) channel counts.

    The sparse product costs one term per (a, b, j) with j chosen by both a and b: the sum
    of squared counts. Measured against that unit, the dense path costs about 1/2 per
    channel pair and node, plus u_max / 64 for its Gram matrix; its (b, C, u_max)
    incidence array must also fit the pair budget.
    """
    b = chosen_by.shape[0]
    dense_cost = b * C * C * (0.5 + u_max / 64)
    return dense_cost < np.sum(chosen_by**2) and b * C * u_max <= _MAX_PAIRS


def _jaccard_sparse(c, node, pair, deg, b, N):
    """Nonzero J_ab(i), a < b, of a block: returns (a, b, node, J) of equal length.

    Q has one row per (node, channel) and one column per (node, point): Q Q^T is block
    diagonal (one C x C block per node) and its strict upper triangle holds
    |N_i^a & N_i^b| only where it is nonzero (J = 0 elsewhere, also when both are empty).
    """
    C = deg.shape[0]
    q = sp.csr_matrix((np.ones(c.size), (node * C + c, pair)), shape=(b * C, b * N))
    q.sum_duplicates()
    if q.nnz != c.size:
        raise ValueError("ch_indices repeats a neighbour within a row; rows must be distinct")
    inter = sp.triu(q @ q.T, k=1).tocoo()
    pair_node, a, bb = inter.row // C, inter.row % C, inter.col % C
    jac = inter.data / (deg[a, pair_node] + deg[bb, pair_node] - inter.data)
    return a, bb, pair_node, jac


def _jaccard_dense(c, node, point, chosen, deg, u_max):
    """J_ab(i) of a block as a dense (b, C, C) float32 array, for heavily overlapping channels.

    Each node's union is numbered 0..U(i)-1, giving a dense 0/1 incidence array
    (b, C, u_max) whose batched Gram matrix (BLAS) holds every |N_i^a & N_i^b|.
    float32 is exact for these counts and halves the memory traffic of the C x C work.
    """
    C, b = deg.shape
    local = np.cumsum(chosen, axis=1) - 1  # (node, point) -> position in the node's union
    incidence = np.zeros((b, C, u_max), dtype=np.float32)
    incidence[node, c, local[node, point]] = 1
    if np.count_nonzero(incidence) != c.size:
        raise ValueError("ch_indices repeats a neighbour within a row; rows must be distinct")
    jac = incidence @ np.ascontiguousarray(incidence.transpose(0, 2, 1))
    d = deg.T.astype(np.float32)
    union = d[:, :, None] + d[:, None, :]
    union -= jac
    # Where both sets are empty the intersection is 0 already, which is J by definition.
    np.divide(jac, union, out=jac, where=union > 0)
    return jac


def jaccard_chance_table(max_degree, m):
    """E[|A & B| / |A | B|] for uniform random A, B of sizes a, b out of m points.

    Returns T of shape (max_degree + 1, max_degree + 1) with T[a, b] the expectation;
    |A & B| is hypergeometric (population m, a marked, b drawn); T[0, 0] = 0.
    """
    x = np.arange(max_degree + 1)
    a, b, i = x[:, None, None], x[None, :, None], x[None, None, :]
    union = a + b - i
    with np.errstate(divide="ignore", invalid="ignore"):
        jac = np.where(union > 0, i / union, 0.0)
    return (hypergeom.pmf(i, m, a, b) * jac).sum(axis=-1)


def chance_levels(degree_channel, degree_agg):
    """Per-node chance levels of the set metrics, given the observed degrees.

    Null model: each channel's neighbour set of node i is a uniform random subset of size
    d_c(i) of the M = N - 1 other points, independent across channels. Returns a dict of
    (N,) arrays: union_chance = E[U], rho_chance, rho_hat_chance, kappa_chance and
    pairwise_overlap_chance (exact expectations, derivations in docs/overlap.md), NaN on
    the same nodes as the measured metric; and pairwise_chance, the (C, C) mean over nodes of
    E[J_ab(i)] (the chance level of the pairwise matrix, diagonal 1 like it).
    """
    degree = np.asarray(degree_channel, dtype=np.int64)
    C, N = degree.shape
    m = N - 1
    total = degree.sum(axis=0)
    p_in_union = 1 - np.prod(1 - degree / m, axis=0)  # P(a fixed other point is in U)
    union = m * p_in_union
    with np.errstate(divide="ignore", invalid="ignore"):
        rho = np.where(total > 0, 1 - union / total, np.nan)
    table = jaccard_chance_table(int(degree.max()), m)
    # Per node, the histogram h of channel degrees turns the sum over pairs a < b of
    # T[d_a, d_b] into (h^T T h - sum_d h_d T[d, d]) / 2.
    width = table.shape[0]
    hist = np.bincount((np.arange(N) * width + degree).ravel(), minlength=N * width)
    hist = hist.reshape(N, width).astype(np.float64)
    pair_sum = (np.einsum("nd,de,ne->n", hist, table, hist) - hist @ np.diag(table)) / 2
    return {
        "pairwise_chance": _pairwise_chance(table, degree),
        "union_chance": union,
        "rho_chance": rho,
        "rho_hat_chance": rho / (1 - 1 / C),
        "kappa_chance": np.where(np.asarray(degree_agg) > 0, p_in_union, np.nan),
        "pairwise_overlap_chance": pair_sum / (C * (C - 1) / 2),
    }


def _pairwise_chance(table, degree):
    """(C, C) mean over nodes of table[d_a(i), d_b(i)], in blocks of nodes (never N x C x C)."""
    C, N = degree.shape
    total = np.zeros((C, C))
    block = max(1, _MAX_PAIRS // (C * C))
    for start in range(0, N, block):
        d = degree[:, start:start + block].T  # (b, C)
        total += table[d[:, :, None], d[:, None, :]].sum(axis=0)
    total /= N
    np.fill_diagonal(total, 1.0)
    return total


def zero_degree_fraction(degree_channel):
    """(C,) fraction of nodes with no neighbour in each channel."""
    return (np.asarray(degree_channel) == 0).mean(axis=1)


def summarize(values):
    """mean, std (ddof 0), q25, median, q75 of the non-NaN values, and their count n.

    All statistics are NaN (and n = 0) when no value is defined.
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[~np.isnan(v)]
    if v.size == 0:
        return {**{s: np.nan for s in STATS}, "n": 0}
    q25, median, q75 = np.quantile(v, [0.25, 0.5, 0.75])
    return {"mean": float(v.mean()), "std": float(v.std()), "q25": float(q25),
            "median": float(median), "q75": float(q75), "n": int(v.size)}


def _stats_columns(name, values):
    s = summarize(values)
    return {f"{name}_{stat}": s[stat] for stat in STATS}


# Metrics of the channel set that need two live channels (NaN with fewer, see docs/overlap.md).
_CHANNEL_SET_METRICS = ("rho", "rho_hat", "gamma", "pairwise_overlap", "rho_chance", "rho_hat_chance",
                        "pairwise_overlap_chance")


def dead_mask(dead, n_channels):
    """(C,) bool: the dead channels (all-zero maps on every sample); None means none is dead."""
    if dead is None:
        return np.zeros(n_channels, dtype=bool)
    dead = np.asarray(dead, dtype=bool)
    if dead.shape != (n_channels,):
        raise _shape_error("dead", dead, f"(C,) = ({n_channels},) like ch_indices")
    return dead


def _live_layer_metrics(ch_indices, ch_weights, agg_indices, agg_weights, dead, tol):
    """node_metrics and chance_levels over the live channels, the (C, C) pairwise matrix and the
    live channels' PairOverlap (what the headline's interval resamples).

    A dead channel has no neighbour, so it adds nothing to U or S, but it would count in C
    (the normalisation of rho_hat and gamma) and as C - 1 pairs of J = 0. The metrics are
    therefore computed on the live channels only; the C x C matrix keeps every channel
    (J = 0 off the diagonal for a dead one, as its empty set gives). With fewer than two
    live channels the channel-set metrics are NaN.
    """
    C = dead.size
    live = ~dead
    subset = live.sum() >= 2 and dead.any()
    pick = (lambda a: np.asarray(a)[live]) if subset else (lambda a: a)
    nm = node_metrics(pick(ch_indices), pick(ch_weights), agg_indices, agg_weights, tol=tol)
    chance = chance_levels(nm.degree_channel, nm.degree_agg)
    pairwise = nm.pairwise
    if subset:
        pairwise = np.eye(C)
        pairwise[np.ix_(live, live)] = nm.pairwise
    pairs = PairOverlap(nm.pairwise, chance.pop("pairwise_chance"), nm.pairwise_overlap,
                        chance["pairwise_overlap_chance"])
    metrics = {name: getattr(nm, name) for name in ("degree_channel", "degree_agg", "union", "sum", "rho",
                                                     "rho_hat", "kappa", "gamma", "pairwise_overlap")}
    metrics.update(chance)
    if live.sum() < 2:
        metrics.update({name: np.full_like(metrics[name], np.nan, dtype=np.float64)
                        for name in _CHANNEL_SET_METRICS})
        metrics["degree_channel"] = nm.degree_channel[live]
        empty = np.full(pairs.node.shape, np.nan)
        pairs = PairOverlap(np.zeros((0, 0)), np.zeros((0, 0)), empty, empty)
    return nm, metrics, pairwise, pairs


def dead_channels(zero_map_fraction, constant_map=None):
    """(C,) bool: the channels that carry nothing: their maps are all zero on every sample (the (C,)
    zero-map fractions are 1), or the same on every sample (constant_map, (C,) bool; None: not known).
    A constant map puts every sample at one point, with no neighbourhood to compare."""
    dead = np.asarray(zero_map_fraction) >= 1.0
    return dead if constant_map is None else dead | np.asarray(constant_map, dtype=bool)


def layer_summary(ch_indices, ch_weights, ch_distances, agg_indices, agg_weights,
                  agg_distances, tol=TOL, dead=None, ch_twonn=None, agg_twonn=None):
    """One flat row of layer-level columns, the (C, C) pairwise overlap matrix and the live
    channels' PairOverlap (cwnnk.redundancy: what the headline's interval and a twin comparison
    resample).

    dead: optional (C,) bool, the dead channels (all-zero maps on every sample; the overlap
    stage takes them from the graphs' zero_map_fraction). They are counted
    (`n_dead_channels`) and left out of the per-channel summaries (docs/overlap.md, "Dead
    channels"). ch_twonn (C, N, 2), agg_twonn (N, 2): TwoNN's input under the duplicate policy
    (knn.npz channel_twonn, agg_twonn); by default the kNN distances, the same where no rows are
    equal. The columns are listed, with definition, range and NaN policy, in docs/overlap.md.
    """
    C, N, k = _validate(ch_indices, ch_weights, agg_indices, agg_weights, ch_distances,
                        agg_distances)
    dead = dead_mask(dead, C)
    nm, metrics, pairwise, pairs = _live_layer_metrics(ch_indices, ch_weights, agg_indices, agg_weights, dead, tol)
    row = {"n_nodes": N, "n_channels": C, "k": k, "n_dead_channels": int(dead.sum())}
    row.update(interval(pairs))
    for name, values in metrics.items():
        row.update(_stats_columns(name, values))
    # rho_hat's room: the share of the other points a union of random sets of the same sizes covers.
    row["union_saturation"] = float(np.nanmean(metrics["union_chance"]) / (N - 1))
    row["rho_hat_saturated"] = int(row["union_saturation"] >= SATURATED)
    row["n_nodes_no_channel_neighbours"] = int(np.sum(nm.sum == 0))
    row["n_nodes_no_agg_neighbours"] = int(np.sum(nm.degree_agg == 0))
    degree = nm.degree_channel  # over every channel, dead ones included
    if degree.shape[0] < C:
        degree = np.empty((C, N), dtype=np.int64)
        degree[~dead] = nm.degree_channel
        degree[dead] = ((np.asarray(ch_weights)[dead] > tol) & (np.asarray(ch_indices)[dead] >= 0)).sum(-1)
    zero = zero_degree_fraction(degree)
    row["zero_degree_channel_mean"] = float(zero.mean())
    row["zero_degree_channel_max"] = float(zero.max())
    id_layer, id_layer_n = twonn(agg_distances if agg_twonn is None else agg_twonn)
    row["id_layer"] = float(id_layer)
    row["id_layer_n"] = int(id_layer_n)
    id_channel = summarize(twonn(ch_distances if ch_twonn is None else ch_twonn)[0])
    row.update({f"id_channel_{stat}": id_channel[stat] for stat in (*STATS, "n")})
    return row, pairwise, pairs


@dataclass(frozen=True, eq=False)
class LayerSummary:
    """What the overlap stage and cwnnk.overlap_summary report for one layer.

    row: the layer-level columns of docs/overlap.md; pairwise: the (C, C) mean Jaccard matrix;
    pairs: the live channels' PairOverlap (the headline's interval, a twin comparison); loo:
    cw_loo's result, or None without labels; channels: channel_scores (per-channel redundancy, pruning order).
    """

    row: dict
    pairwise: np.ndarray
    pairs: PairOverlap
    loo: dict | None
    channels: dict


def channel_scores(pairs, dead):
    """{name: (C,)} per-channel redundancy of a layer: channel_overlap's columns and the greedy CW-NNK pruning
    order (prune_order, prune_score; cwnnk.redundancy.keep_order) from the live channels' PairOverlap."""
    if pairs.n_channels:
        scores = channel_overlap(pairs.pairwise, pairs.pairwise_chance, dead)
        scores["prune_order"], scores["prune_score"] = keep_order(pairs.pairwise, pairs.pairwise_chance, dead)
    else:  # fewer than two live channels: no overlap to rank by; dead ones first, then by index
        scores = {name: np.full(dead.size, np.nan) for name in (*CHANNEL_OVERLAP, "prune_score")}
        scores["prune_order"] = np.argsort(np.argsort(~dead, kind="stable"), kind="stable")
    return scores


def graphs_summary(arrays, zero_map_fraction, counts, aggregate_counts, tol=TOL, constant_map=None):
    """graphs of one layer -> LayerSummary: what the overlap stage and cwnnk.overlap_summary report.

    arrays: the layer's graph arrays under knn.npz's names: channel_indices, channel_weights,
    channel_distances (C, N, k), agg_indices, agg_weights, agg_distances (N, k), channel_twonn
    (C, N, 2) and agg_twonn (N, 2) (TwoNN's input under the duplicate policy; absent or None: the
    kNN distances) and labels (N,) int (absent or None: no LOO columns). zero_map_fraction: (C,) fraction
    of all-zero maps per channel and constant_map (C,) bool, the channels whose map is the same on every
    sample (None: not known): dead_channels of the two gives layer_summary's `dead`. counts: {name:
    (C,)} and aggregate_counts {name: int}, the engine's degenerate counts (kkt_failed, not_pd).
    The row is layer_summary's plus zero_map_fraction_mean/max, kkt_failed, not_pd and, with labels,
    the loo_* columns.
    """
    zero_maps = np.asarray(zero_map_fraction, dtype=np.float64)
    dead = dead_channels(zero_maps, constant_map)
    row, pairwise, pairs = layer_summary(
        arrays["channel_indices"], arrays["channel_weights"], arrays["channel_distances"],
        arrays["agg_indices"], arrays["agg_weights"], arrays["agg_distances"], tol=tol,
        dead=dead, ch_twonn=arrays.get("channel_twonn"), agg_twonn=arrays.get("agg_twonn"),
    )
    row["zero_map_fraction_mean"] = float(zero_maps.mean())
    row["zero_map_fraction_max"] = float(zero_maps.max())
    row["kkt_failed"] = int(np.sum(counts["kkt_failed"]) + aggregate_counts["kkt_failed"])
    row["not_pd"] = int(np.sum(counts["not_pd"]) + aggregate_counts["not_pd"])
    labels = arrays.get("labels")
    loo = None
    if labels is not None:
        loo = cw_loo(arrays["channel_indices"], arrays["channel_weights"], arrays["agg_indices"],
                     arrays["agg_weights"], labels, tol=tol)
        row.update(loo_columns(loo))
    return LayerSummary(row, pairwise, pairs, loo, channel_scores(pairs, dead))


def width_sweep(ch_indices, ch_weights, agg_indices, agg_weights, sizes, n_draws=10, seed=0, tol=TOL):
    """The headline and rho_hat of random channel subsets of one layer: the saturation curve.

    For each size in `sizes` (2 to C), n_draws seeded random subsets of that many channels (the
    whole layer once at size C) are analysed alone. Returns one dict per subset: n_channels,
    draw, redundancy, redundancy_chance, rho_hat, rho_hat_chance, union_saturation. The
    headline's expectation does not move with the size; rho_hat's does once the union saturates.
    """
    C, N, _ = _validate(ch_indices, ch_weights, agg_indices, agg_weights)
    sizes = sorted({int(s) for s in sizes})
    if not sizes or sizes[0] < 2 or sizes[-1] > C:
        raise ValueError(f"sizes must lie in [2, C] = [2, {C}], got {sizes}")
    rng = np.random.default_rng(seed)
    rows = []
    for size in sizes:
        for draw in range(1 if size == C else n_draws):
            pick = np.sort(rng.choice(C, size, replace=False))
            nm = node_metrics(np.asarray(ch_indices)[pick], np.asarray(ch_weights)[pick], agg_indices, agg_weights,
                              tol=tol)
            chance = chance_levels(nm.degree_channel, nm.degree_agg)
            rows.append(dict(n_channels=size, draw=draw, redundancy=float(nm.pairwise_overlap.mean()),
                             redundancy_chance=float(chance["pairwise_overlap_chance"].mean()),
                             rho_hat=float(np.nanmean(nm.rho_hat)),
                             rho_hat_chance=float(np.nanmean(chance["rho_hat_chance"])),
                             union_saturation=float(chance["union_chance"].mean() / (N - 1))))
    return rows


def analyse_layer(graph_dir, out_json, params=OverlapParams(), log=None):
    """The `overlap` job: every docs/method.md section 4 metric of one layer's graphs folder,
    written to out_json: layer-level columns (`row`), per-channel rows and the C x C pairwise
    overlap matrix. params: OverlapParams (tol, the support threshold tau); log: optional
    callable taking one progress message."""
    import time

    from cwnnk.graphs import load_layer_graphs

    start = time.perf_counter()
    arrays, summary = load_layer_graphs(graph_dir)
    if log:
        C, N, k = arrays["channel_indices"].shape
        log(f"{graph_dir}: {C} channels x {N} nodes, k = {k}, read in {time.perf_counter() - start:.1f}s")
    zero_maps = np.asarray(summary["zero_map_fraction"])
    constant = summary.get("constant_map")  # absent in graphs folders written before it was recorded
    result = graphs_summary(arrays, zero_maps, summary["counts"], summary["aggregate_counts"], tol=params.tol,
                            constant_map=constant)
    loo = result.loo
    dead = dead_channels(zero_maps, constant)
    degree = (arrays["channel_weights"] > params.tol).sum(-1)
    channel_ids, _ = twonn(arrays["channel_twonn"])
    channels = [
        dict(channel=c, degree_mean=float(degree[c].mean()), degree_agg_mean=result.row["degree_agg_mean"],
             zero_map_fraction=float(zero_maps[c]), dead=int(dead[c]), id_twonn=float(channel_ids[c]),
             loo_error=float(loo["channel"][c]),
             **{name: (int(v[c]) if name == "prune_order" else float(v[c])) for name, v in result.channels.items()})
        for c in range(degree.shape[0])
    ]
    write_json(out_json, dict(layer=summary["layer"], row=result.row, channels=channels,
                              pairwise=result.pairwise.tolist(),
                              redundancy=result.pairs.to_dict(), sample_index=arrays["sample_index"].tolist(),
                              params=summary["params"]))
    if log:
        log(f"overlap metrics, chance levels and TwoNN done in {time.perf_counter() - start:.1f}s")
