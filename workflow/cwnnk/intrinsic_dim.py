"""Intrinsic dimension: TwoNN from kNN distances, and a degree -> dimension calibration.

TwoNN follows Facco et al. 2017 as implemented by Ansuini et al. 2019: mu = r2 / r1 from the
two nearest neighbours; points with r1 = 0, r1 = r2 or a non-finite ratio are discarded;
with n valid points, mu sorted ascending and F_emp(mu_(i)) = i / n, the dimension is the
slope of the least-squares line through the origin of -log(1 - F_emp) against log(mu),
fitted on the floor(fraction * n) smallest mu.
"""

from dataclasses import dataclass

import numpy as np


def twonn(distances, fraction=0.9):
    """TwoNN intrinsic dimension of one or many point sets.

    distances: (..., N, k) kNN distances sorted ascending per row, self excluded, k >= 2;
    padding (missing neighbours) is +inf. Leading axes (e.g. channels) are independent sets.
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
    valid = (r1 > 0) & (r2 > r1) & np.isfinite(mu)
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
        dim = (x * y).sum(axis=-1) / (x * x).sum(axis=-1)  # mu > 1, so x > 0 where used
    defined = n_used >= 2
    return np.where(defined, dim, np.nan), np.where(defined, n_used, 0)


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
