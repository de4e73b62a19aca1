"""TwoNN, the degree -> dimension calibration, and the synthetic manifolds."""

import numpy as np
import pytest
from scipy.spatial import cKDTree

from cwnnk.intrinsic_dim import DegreeCalibration, calibrate_degree, twonn
from cwnnk.manifolds import curved, linear, sample


def knn_distances(x, k=2):
    """(N, k) sorted distances to the k nearest other points."""
    dist, _ = cKDTree(x).query(x, k=k + 1)
    return dist[:, 1:]


@pytest.mark.parametrize("kind", ["linear", "curved"])
@pytest.mark.parametrize("d", [2, 5, 10])
def test_twonn_recovers_manifold_dimension(kind, d):
    x = sample(kind, 3000, d, seed=1)
    dim, n_used = twonn(knn_distances(x))
    assert abs(dim - d) <= 0.15 * d, f"{kind} d={d}: TwoNN gave {dim:.2f}"
    assert n_used == int(0.9 * 3000)


def test_twonn_exact_on_constructed_ratios():
    # mu_(i) = (1 - i/n)^(-1/d) puts every point exactly on -log(1 - F) = d log mu.
    n, d = 100, 3.7
    i = np.arange(1, n + 1)
    mu = np.append((1 - i[:-1] / n) ** (-1 / d), 1e6)
    r1 = np.full(n, 2.0)
    dist = np.stack([r1, r1 * mu, np.full(n, np.inf)], axis=1)
    dim, n_used = twonn(np.random.default_rng(0).permutation(dist))
    assert dim == pytest.approx(d, rel=1e-12)
    assert n_used == 90


def test_twonn_discards_undefined_ratios_and_vectorises():
    rng = np.random.default_rng(2)
    dist = np.sort(rng.uniform(1, 2, (3, 200, 4)), axis=-1)
    dist[0, :10, 0] = 0.0  # duplicates: r1 = 0
    dist[0, 10:20, 1] = dist[0, 10:20, 0]  # r1 = r2: mu = 1 is kept, as scikit-dimension and DADApy keep it
    dist[0, 20:30, :] = np.inf  # no neighbours (padding)
    dist[2] = np.inf  # a dead channel: nothing to fit
    dims, n_used = twonn(dist)
    assert dims.shape == n_used.shape == (3,)
    assert n_used.tolist() == [int(0.9 * 180), int(0.9 * 200), 0]
    assert dims[0] == pytest.approx(twonn(dist[0, 10:])[0], rel=1e-12)
    assert dims[1] == twonn(dist[1])[0]
    assert np.isnan(dims[2])


def test_twonn_rejects_bad_input():
    with pytest.raises(ValueError, match=r"k >= 2.*\(10, 1\)"):
        twonn(np.ones((10, 1)))
    with pytest.raises(ValueError, match="sorted ascending"):
        twonn(np.array([[2.0, 1.0]] * 5))
    with pytest.raises(ValueError, match="fraction"):
        twonn(np.ones((5, 2)), fraction=0)


def test_calibration_interpolates_and_refuses_to_extrapolate():
    cal = calibrate_degree([1, 2, 4, 8], [2, 3, 5, 9])
    assert isinstance(cal, DegreeCalibration)
    # between the knots (3, 2) and (5, 4): 2 + (4 - 3) / (5 - 3) * 2
    assert cal(4.0) == pytest.approx(3.0)
    np.testing.assert_allclose(cal([2, 9]), [1, 8])
    assert np.isnan(cal(1.9)) and np.isnan(cal(9.1))


def test_calibration_is_monotone():
    # Ordered by degree: (2, 1), (4, 3), (5, 2), (5, 4); degree 5 averages to dimension 3,
    # which ties with degree 4, so both pool into one knot at degree 4.5, dimension 3.
    cal = calibrate_degree([1, 3, 2, 4], [2, 4, 5, 5])
    np.testing.assert_allclose(cal.degrees, [2, (4 + 5 + 5) / 3])
    np.testing.assert_allclose(cal.dimensions, [1, 3])
    # Weighted pooling: the pair at degree 5 counts twice.
    cal = calibrate_degree([1, 3, 2], [2, 4, 5])
    np.testing.assert_allclose(cal.degrees, [2, 4.5])
    np.testing.assert_allclose(cal.dimensions, [1, 2.5])


def test_calibration_rejects_bad_input():
    with pytest.raises(ValueError, match="increases"):
        calibrate_degree([3, 2, 1], [1, 2, 3])
    with pytest.raises(ValueError, match=r"same length.*\(3,\).*\(2,\)"):
        calibrate_degree([1, 2, 3], [1, 2])


@pytest.mark.parametrize("kind", ["linear", "curved"])
def test_manifolds_are_deterministic_with_known_rank(kind):
    x = sample(kind, 500, 4, D=20, seed=7)
    assert x.shape == (500, 20)
    np.testing.assert_array_equal(x, sample(kind, 500, 4, D=20, seed=7))
    assert not np.allclose(x, sample(kind, 500, 4, D=20, seed=8))
    # linear spans d directions of R^D, curved 2d (d curled axes, each in a plane).
    rank = np.linalg.matrix_rank(x - x.mean(axis=0), tol=1e-8)
    assert rank == (4 if kind == "linear" else 8)


def test_curved_is_locally_isometric_to_the_cube():
    # Same seed, same intrinsic coordinates: near neighbours of the cube (linear, an exact
    # isometry) keep their distances once curled, up to the chord/arc ratio (<= 1).
    flat, bent = linear(2000, 2, seed=3), curved(2000, 2, seed=3)
    dist, nb = cKDTree(flat).query(flat, k=2)
    ratio = np.linalg.norm(bent - bent[nb[:, 1]], axis=1) / dist[:, 1]
    assert np.all(ratio <= 1 + 1e-12) and np.all(ratio > 0.99)


def test_manifolds_reject_bad_arguments():
    with pytest.raises(ValueError, match="d must be in"):
        linear(10, 17)
    with pytest.raises(ValueError, match="D must be at least 20"):
        curved(10, 10, D=16)
    with pytest.raises(ValueError, match="kind must be one of"):
        sample("sphere", 10, 2)
