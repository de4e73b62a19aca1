"""Intrinsic dimension: TwoNN from kNN distances, and a degree -> dimension calibration.

TwoNN follows Facco et al. 2017, as scikit-dimension's `TwoNN` and DADApy's `compute_id_2NN`
compute it: mu = r2 / r1 from the two nearest neighbours; points with a non-finite ratio
(r1 = 0, or padding) are discarded; with n points left, mu sorted ascending and
F_emp(mu_(i)) = i / n, the dimension is the slope of the least-squares line through the
origin of -log(1 - F_emp) against log(mu), fitted on the floor(fraction * n) smallest mu.

Duplicate policy: TwoNN is estimated on the distinct rows of a point set (each set of equal
points counted once, with its two nearest *other distinct* rows), as the TwoNN literature does
(Facco et al. remove duplicates; DADApy's `remove_identical_points`). `distinct_two_nn` builds
that input from the points; the graphs stage stores it in knn.npz (`channel_twonn`,
`agg_twonn`), and `twonn` is the estimator on it. See docs/overlap.md.
"""

from dataclasses import dataclass

import numpy as np


def twonn(distances, fraction=0.9):
    """TwoNN intrinsic dimension of one or many point sets.

    distances: (..., N, k) kNN distances sorted ascending per row, self excluded, k >= 2;
    padding (missing neighbours, or rows left out, such as the later copies of a distinct row in
    `distinct_two_nn`'s output) is +inf. Leading axes (e.g. channels) are independent sets.
    Equals scikit-dimension's `TwoNN(discard_fraction=1 - fraction, dist=True)` on the finite
    rows of distances[..., :2] (mu = 1 is kept, as there).
    Returns (dimension, n_used), each of shape (...): the slope (float; NaN, with n_used 0,
    when fewer than 2 points are left for the fit) and the number of points in the fit.
    """
    d = np.asarray(distances, dtype=np.float64)
    if d.ndim < 2 or d.shape[-1] < 2:
        raise ValueError(f"distances must have shape (..., N, k) with k >= 2, got {d.shape}")
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    r1, r2 = d[..., 0], d[..., 1]
    if np.any(r2 < r1):
        raise ValueError("distances must be sorted ascending along the last axis")
    with np.errstate(divide="ignore", invalid="ignore"):
        mu = r2 / r1
    valid = np.isfinite(mu)  # r1 = 0 gives inf (or NaN with r2 = 0), padding inf or NaN
    n_valid = valid.sum(axis=-1)
    # Invalid points sort to the end, so ranks 1..n_valid are the valid mu in order.
    mu = np.sort(np.where(valid, mu, np.inf), axis=-1)
    n_used = np.floor(fraction * n_valid).astype(np.int64)
    n_used = np.minimum(n_used, n_valid - 1)  # 1 - F_emp must stay > 0
    rank = np.arange(1, mu.shape[-1] + 1)
    used = rank <= n_used[..., None]
    with np.errstate(divide="ignore", invalid="ignore"):
        x = np.where(used, np.log(mu), 0.0)
        y = np.where(used, -np.log1p(-rank / n_valid[..., None]), 0.0)
        dim = (x * y).sum(axis=-1) / (x * x).sum(axis=-1)
    defined = (n_used >= 2) & (dim == dim)  # NaN where every used mu is 1 (x = 0)
    return np.where(defined, dim, np.nan), np.where(defined, n_used, 0)


def distinct_two_nn(points, knn=None, equal_rows=None):
    """TwoNN's input under the duplicate policy: each distinct row's two nearest other distinct rows.

    points: (N, ...) one point set (trailing axes are flattened). knn: optional (distances,
    indices), each (N, k), the exact kNN of the same points (self excluded, candidates in
    increasing distance, as the engine returns them).
    Returns (distances (N, 2) float64, indices (N, 2) int64): for the first copy of each distinct
    row (lowest index), the distances to its two nearest other distinct rows and those rows'
    first copies; +inf / -1 on the later copies and where fewer than two other distinct rows exist.

    equal_rows=False says that no two points are equal (the engine counts them: NNKResult.counts
    ["duplicates"] == 0), which spares the search for them; the kNN's first two columns are then
    the answer. The answer is read off the kNN where its k candidates reach two other distinct rows (a
    candidate's distance is its distinct row's); rows whose candidates are all copies of one row
    are measured against every distinct row directly (float64 differences). Without knn, the
    engine's exact kNN (cwnnk.engine.knn.exact_knn) runs on the distinct rows.
    """
    if equal_rows is False and knn is not None and np.asarray(knn[0]).shape[-1] >= 2:
        d, i = (np.asarray(a) for a in knn)
        return d[:, :2].astype(np.float64), i[:, :2].astype(np.int64)
    P = np.asarray(points)
    P = P.reshape(len(P), -1) + P.dtype.type(0)  # -0.0 + 0 = 0.0: equal values, equal bits
    N = len(P)
    _, first, group = np.unique(P, axis=0, return_index=True, return_inverse=True)
    group = group.reshape(-1)
    order = np.argsort(first)  # groups by their first copy, so that ties go to the lower index
    first, rank = first[order], np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    group = rank[group]  # group g's first copy is first[g]
    dist = np.full((N, 2), np.inf)
    idx = np.full((N, 2), -1, dtype=np.int64)
    if len(first) < 2:
        return dist, idx
    if knn is None:
        return _two_nn_exact(P, first, dist, idx)
    d, i = (np.asarray(a) for a in knn)
    if len(first) == N and d.shape[-1] >= 2 and np.all(d[:, 0] > 0):
        return d[:, :2].astype(np.float64), i[:, :2].astype(np.int64)
    U = None

    def distances_from(g):  # distinct row g to every distinct row, float64 differences
        nonlocal U
        U = P[first].astype(np.float64) if U is None else U  # made once, where a row needs it
        return np.sqrt(((U - U[g]) ** 2).sum(1))

    return _two_nn_from_knn(first, group, d, i, dist, idx, distances_from)


def gram_two_nn(points, knn, equal_rows=None):
    """distinct_two_nn for a point set given by its Gram matrix (cwnnk.engine.gramknn.GramPoints,
    a streamed layer's aggregate), with its exact kNN `knn` (distances, indices) (N, k): equal
    points are those of one GramPoints.group, and a row whose candidates are all copies of one
    row is measured against every distinct row from H."""
    d, i = (np.asarray(a) for a in knn)
    N = len(d)
    if equal_rows is False and d.shape[-1] >= 2:
        return d[:, :2].astype(np.float64), i[:, :2].astype(np.int64)
    _, ids = np.unique(points.group.cpu().numpy(), return_inverse=True)
    first = np.full(ids.max() + 1, N, dtype=np.int64)
    np.minimum.at(first, ids, np.arange(N))
    order = np.argsort(first)  # groups numbered by their first copy, as distinct_two_nn does
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    first, group = first[order], rank[ids]
    dist, idx = np.full((N, 2), np.inf), np.full((N, 2), -1, dtype=np.int64)
    if len(first) < 2:
        return dist, idx
    H = points.H

    def distances_from(g):
        f = int(first[g])
        row = H[f, first].cpu().numpy()
        diag = H.diagonal()[first].cpu().numpy()
        return np.sqrt(np.maximum(diag + float(H[f, f]) - 2 * row, 0))

    return _two_nn_from_knn(first, group, d, i, dist, idx, distances_from)


def _two_nn_from_knn(first, group, d, i, dist, idx, distances_from):
    """The two nearest other distinct rows of each distinct row (first: each distinct row's first
    copy, ascending; group: each point's distinct row), read off the kNN (d, i) where its
    candidates reach two, else measured by distances_from(g) (distinct row g to all distinct rows)."""
    cand = i[first]
    cg = np.where(cand >= 0, group[np.maximum(cand, 0)], -1)  # each candidate's distinct row
    k = cg.shape[1]
    seen = ((cg[:, :, None] == cg[:, None, :]) & np.tri(k, k, -1, dtype=bool)).any(2)
    new = (cg >= 0) & (cg != np.arange(len(first))[:, None]) & ~seen
    pick = np.argsort(~new, axis=1, kind="stable")[:, :2]  # the first two new distinct rows
    ok = np.take_along_axis(new, pick, 1).all(1)
    dist[first[ok]] = np.take_along_axis(d[first], pick, 1)[ok]
    idx[first[ok]] = first[np.take_along_axis(cg, pick, 1)[ok]]
    for g in np.flatnonzero(~ok):  # all candidates copies of one row (k < its copies): measure
        r = distances_from(g)
        r[g] = np.inf
        nearest = np.lexsort((np.arange(len(r)), r))[:2]
        dist[first[g]] = r[nearest]
        idx[first[g]] = np.where(np.isfinite(r[nearest]), first[nearest], -1)
    return dist, idx


def _two_nn_exact(P, first, dist, idx):
    """distinct_two_nn without a kNN: the engine's exact kNN on the distinct rows."""
    import torch  # the engine's exact kNN; imported only here, readers of graphs need no torch

    from cwnnk.engine.knn import exact_knn

    U = P[first]
    if U.dtype not in (np.float32, np.float64):
        U = U.astype(np.float64)
    nn = exact_knn(torch.from_numpy(np.ascontiguousarray(U))[None], min(2, len(U) - 1), duplicates="drop")
    j = nn.indices[0].numpy()
    dist[first, : j.shape[1]] = nn.sqdist[0].sqrt().numpy()
    idx[first, : j.shape[1]] = np.where(j >= 0, first[j], -1)
    return dist, idx


@dataclass(frozen=True, eq=False)
class DegreeCalibration:
    """Monotone map from mean NNK degree to intrinsic dimension.

    Piecewise linear through the knots (degrees strictly increasing, dimensions
    non-decreasing); NaN outside [degrees[0], degrees[-1]]: no extrapolation.
    """

    degrees: np.ndarray
    dimensions: np.ndarray

    def __call__(self, degree):
        degree = np.asarray(degree, dtype=np.float64)
        inside = (degree >= self.degrees[0]) & (degree <= self.degrees[-1])
        return np.where(inside, np.interp(degree, self.degrees, self.dimensions), np.nan)


def calibrate_degree(dimensions, degrees):
    """Fit a DegreeCalibration from (dimension, mean degree) pairs of synthetic manifolds.

    Pairs with the same degree are averaged; the dimension as a function of degree is then
    made non-decreasing by isotonic regression (pool adjacent violators, weighted by the
    number of pairs), and each pooled block becomes one knot at its mean degree.
    """
    dims = np.asarray(dimensions, dtype=np.float64).ravel()
    degs = np.asarray(degrees, dtype=np.float64).ravel()
    if dims.shape != degs.shape:
        raise ValueError(f"dimensions and degrees must have the same length, got "
                         f"{dims.shape} and {degs.shape}")
    if not (np.all(np.isfinite(dims)) and np.all(np.isfinite(degs))):
        raise ValueError("dimensions and degrees must be finite")
    knots_x, inverse, weight = np.unique(degs, return_inverse=True, return_counts=True)
    knots_y = np.bincount(inverse, weights=dims) / weight
    # Pool adjacent violators: blocks of (sum of x * w, sum of y * w, w), merged while
    # the last block's mean dimension is not below the one before it.
    blocks = []
    for x, y, w in zip(knots_x, knots_y, weight):
        blocks.append([x * w, y * w, w])
        while len(blocks) > 1 and blocks[-2][1] / blocks[-2][2] >= blocks[-1][1] / blocks[-1][2]:
            x2, y2, w2 = blocks.pop()
            blocks[-1] = [blocks[-1][0] + x2, blocks[-1][1] + y2, blocks[-1][2] + w2]
    if len(blocks) < 2:
        raise ValueError("need at least two distinct degrees along which the dimension "
                         f"increases; got degrees {knots_x.tolist()} with dimensions "
                         f"{knots_y.tolist()}")
    sx, sy, w = np.array(blocks).T
    return DegreeCalibration(degrees=sx / w, dimensions=sy / w)
