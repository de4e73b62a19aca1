"""The float64 reference the benchmarks check the engine against (cwnnk.bench.reference): it must find
the definition's candidates and tell optimal weights from wrong ones."""

import numpy as np
import pytest

from cwnnk.bench.reference import KKT_TOL, candidates, check_nodes, kkt_violation, problem, sample_nodes
from cwnnk.engine import nnk


def test_candidates_on_a_line_break_ties_by_index_and_drop_or_keep_duplicates():
    X = np.array([[0.0], [1.0], [2.0], [3.0], [4.0], [2.0]])  # point 5 duplicates point 2
    S, d2 = candidates(X, 2, 3)
    assert S.tolist() == [1, 3, 0] and d2[5] == np.inf  # 1 and 3 tie at distance 1: lower index first
    S, _ = candidates(X, 2, 3, duplicates="keep")
    assert S.tolist() == [5, 1, 3]


def test_kkt_tells_the_optimum_from_wrong_weights():
    # on a line, the nearer neighbour on each side shadows the farther ones: only 4 and 6 get weight
    X = np.arange(10.0)[:, None]
    S, d2 = candidates(X, 5, 4)
    K, b, usable = problem(X, 5, S, d2, "gaussian")
    theta = np.zeros(4)
    theta[:2] = np.linalg.solve(K[:2, :2], b[:2])
    assert S[:2].tolist() == [4, 6] and (theta[:2] > 0).all()
    assert kkt_violation(K, b, usable, theta) < 1e-12
    assert kkt_violation(K, b, usable, theta * 1.001) > KKT_TOL  # off the optimum
    assert kkt_violation(K, b, usable, np.r_[theta[:2], 0.01, 0]) > KKT_TOL  # a shadowed point with weight
    assert kkt_violation(K, b, usable, -theta) == np.inf


@pytest.mark.parametrize("kernel", ["gaussian", "cosine"])
def test_check_nodes_passes_the_engine_and_catches_corruption(kernel):
    rng = np.random.default_rng(0)
    X = np.maximum(rng.normal(size=(3, 80, 6)) - 0.3, 0)
    X[1, :5] = 0  # dead maps: duplicates (dropped), zero vectors under cosine
    result = nnk(X, 7, kernel=kernel, device="cpu")
    nodes = sample_nodes(3, 80, 120, seed=1)
    assert check_nodes(X, result.indices, result.weights, nodes, 7, kernel)[1:3] == (0, 0)

    weights = result.weights.copy()
    weights[nodes[0]] *= 1.01
    indices = result.indices.copy()
    indices[nodes[1]] = indices[nodes[1]][::-1]
    checked, other, failed, worst = check_nodes(X, indices, weights, nodes, 7, kernel)
    assert (checked, other, failed) == (120, 1, 1) and worst > KKT_TOL
