"""A graph folder's kNN in the conventions of scikit-dimension and DADApy.

knn.npz holds, per point set (channel c, or the aggregate), the k nearest candidates of each of
the N sampled points, self excluded, with index -1 / distance inf where a point has fewer than k
candidates (a dead channel, all-zero maps, has none), and TwoNN's input under cwnnk's duplicate
policy (`channel_twonn`, `agg_twonn`: each distinct row's two nearest other distinct rows, at its
first copy; docs/overlap.md). The tools expect other things:

- scikit-dimension: `fit_pw(X, precomputed_knn=idx)` takes (n, k) neighbour indices into X,
  self excluded, and indexes X with them (so -1 silently picks the last row);
  `TwoNN(dist=True).fit(r)` takes (n, 2) finite distances to the first two neighbours.
- DADApy: `Data(distances=(dist, idx))` takes (N, k + 1) arrays whose column 0 is the point
  itself (distance 0, its own index) and whose indices number the N rows given; no padding.

`skdim_knn` and `dadapy_distances` hand out only the rows a tool can take, say which rows they
left out, and raise ValueError naming the folder and the point set when nothing is left.
TwoNN on their `two_nn` output (scikit-dimension) or on `dadapy_distances(...)` (DADApy) equals
cwnnk's `id_twonn` / `id_layer` to about 1e-10.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cwnnk.graphs import load_layer_graphs


@dataclass(frozen=True)
class SkdimKNN:
    """One point set's kNN for scikit-dimension; row numbers are those of the folder's N samples
    (knn.npz `positions` order), the rows of the X to pass to `fit_pw`."""

    indices: np.ndarray  # (n, k) int64: `fit_pw(X, precomputed_knn=indices)`, self excluded
    distances: np.ndarray  # (n, k) float64, ascending per row
    rows: np.ndarray  # (n,) int64: the points with k candidates; dimension_pw_[j] is rows[j]'s
    skipped: np.ndarray  # (N - n,) int64: the points with fewer than k candidates (padding)
    two_nn: np.ndarray  # (m, 2) float64: `TwoNN(dist=True).fit(two_nn)`, the duplicate policy's input
    two_nn_rows: np.ndarray  # (m,) int64: the first copies of the distinct rows in two_nn


@dataclass(frozen=True)
class DadapyDistances:
    """One point set's neighbours for `dadapy.Data(distances=(distances, indices))`."""

    distances: np.ndarray  # (n, k + 1) float64, column 0 is 0 (the point itself)
    indices: np.ndarray  # (n, k + 1) int64 in 0..n-1, column 0 is arange(n)
    rows: np.ndarray  # (n,) int64: the folder's point behind DADApy's point j is rows[j]
    skipped: np.ndarray  # int64: the folder's points left out (see dadapy_distances)


def _point_set(graph_dir, channel):
    """(name, kNN indices (N, k), distances (N, k), TwoNN distances (N, 2), TwoNN indices (N, 2))."""
    arrays, summary = load_layer_graphs(graph_dir)
    if channel is None:
        name, prefix = f"{Path(graph_dir)}, aggregate", "agg"
        pick = slice(None)
    else:
        C = summary["n_channels"]
        if isinstance(channel, bool) or not isinstance(channel, (int, np.integer)) or not 0 <= channel < C:
            raise ValueError(f"{graph_dir}: channel={channel!r} is not allowed; "
                             f"give 0..{C - 1} or None (the aggregate)")
        name, prefix = f"{Path(graph_dir)}, channel {channel}", "channel"
        pick = int(channel)
    return (name, *(np.asarray(arrays[f"{prefix}_{field}"][pick])
                    for field in ("indices", "distances", "twonn", "twonn_indices")))


def _full_rows(name, indices, what):
    full = np.flatnonzero((indices >= 0).all(axis=1))
    if len(full) == 0:
        raise ValueError(f"{name}: no point has {indices.shape[1]} candidates (a dead channel: all maps "
                         f"equal, e.g. all zero); nothing to hand to {what}")
    return full


def skdim_knn(graph_dir, channel=None):
    """Channel `channel` (None: the aggregate) of a graph folder, for scikit-dimension.

    Returns a SkdimKNN: the kNN rows of the points with all k candidates (for
    `est.fit_pw(X, precomputed_knn=r.indices)`, X the (N, D) points in the folder's sample order;
    estimates come for r.rows only) and TwoNN's input under the duplicate policy (for
    `skdim.id.TwoNN(dist=True).fit(r.two_nn)`, equal to cwnnk's TwoNN of the set; empty where
    fewer than three distinct rows exist). Points with padding are listed in r.skipped.
    Raises ValueError naming the folder and channel when no point has k candidates.
    """
    name, indices, distances, r12, _ = _point_set(graph_dir, channel)
    rows = _full_rows(name, indices, "scikit-dimension")
    distinct = np.flatnonzero(np.isfinite(r12).all(axis=1))
    return SkdimKNN(indices=indices[rows].astype(np.int64), distances=distances[rows].astype(np.float64),
                    rows=rows, skipped=np.setdiff1d(np.arange(len(indices)), rows),
                    two_nn=r12[distinct].astype(np.float64), two_nn_rows=distinct)


def dadapy_distances(graph_dir, channel=None, distinct=True):
    """Channel `channel` (None: the aggregate) of a graph folder, for DADApy.

    distinct=True (default; TwoNN's input under the duplicate policy, which DADApy's own
    `remove_identical_points` also asks for): the first copies of the distinct rows with two other
    distinct rows, each with its two nearest other distinct rows (k = 2), so that
    `Data(distances=(r.distances, r.indices)).compute_id_2NN()[0]` equals cwnnk's TwoNN.
    distinct=False: the stored kNN (k neighbours, the copies of equal rows being separate
    points), for DADApy's other estimators; points with fewer than k candidates are left out, and
    so, repeatedly, are points with a left-out neighbour (DADApy has no padding).
    Column 0 is the point itself, and indices are renumbered 0..n-1 in r.rows order.
    Raises ValueError naming the folder and channel when no point is left.
    """
    name, indices, distances, r12, i12 = _point_set(graph_dir, channel)
    if distinct:
        indices, distances = i12, r12
    keep = np.zeros(len(indices), dtype=bool)
    keep[_full_rows(name, indices, "DADApy")] = True
    while True:  # a kept point may only have kept neighbours
        ok = keep & keep[np.where(indices >= 0, indices, 0)].all(axis=1)
        if (ok == keep).all():
            break
        keep = ok
    rows = np.flatnonzero(keep)
    if len(rows) == 0:
        raise ValueError(f"{name}: no point has all its neighbours among the points DADApy can take")
    number = np.full(len(indices), -1, dtype=np.int64)
    number[rows] = np.arange(len(rows))
    own = np.arange(len(rows))[:, None]
    return DadapyDistances(
        distances=np.hstack([np.zeros((len(rows), 1)), distances[rows].astype(np.float64)]),
        indices=np.hstack([own, number[indices[rows]]]), rows=rows, skipped=np.flatnonzero(~keep))
