"""to_sparse: each symmetrisation on small graphs whose expected matrices are worked out by hand."""

import numpy as np
import pytest
import scipy.sparse

from cwnnk.engine import NNKResult, nnk
from cwnnk.sparse import to_sparse


def result(indices, weights, error):
    indices, weights, error = np.asarray(indices), np.asarray(weights, float), np.asarray(error, float)
    return NNKResult(indices=indices, distances=np.where(indices >= 0, 1.0, np.inf), weights=weights,
                     degree=(weights > 0).sum(-1), error=error, sigma=None, counts={}, kernel="gaussian",
                     solver="exact")


# Three nodes, k = 2. Candidates: 0 -> {1, 2}, 1 -> {0, 2}, 2 -> {0, -1 (padding)}.
# Weights: theta_01 = 0.5, theta_02 = 0.2, theta_10 = 0.3, theta_12 = 0 (off the support),
# theta_20 = 0.4. Errors: e_0 = 0.1, e_1 = 0.2, e_2 = 0.1 (a tie between 0 and 2).
GRAPH = result([[1, 2], [0, 2], [0, -1]], [[0.5, 0.2], [0.3, 0.0], [0.4, 0.0]], [0.1, 0.2, 0.1])


def test_none_is_the_directed_graph():
    expected = [[0, 0.5, 0.2],
                [0.3, 0, 0],
                [0.4, 0, 0]]
    W = to_sparse(GRAPH)
    assert scipy.sparse.isspmatrix_csr(W) and W.nnz == 4  # no stored zeros
    np.testing.assert_array_equal(W.toarray(), expected)


def test_max_takes_the_larger_direction():
    # (0,1): max(0.5, 0.3) = 0.5; (0,2): max(0.2, 0.4) = 0.4; (1,2): max(0, 0) = 0
    expected = [[0, 0.5, 0.4],
                [0.5, 0, 0],
                [0.4, 0, 0]]
    np.testing.assert_array_equal(to_sparse(GRAPH, "max").toarray(), expected)


def test_pynnk_keeps_mutual_candidates_weighted_by_the_lower_error():
    # mutual candidate pairs: (0,1) (each in the other's list) and (0,2); (1,2) is not mutual
    # (1 lists 2, but 2 does not list 1).
    # (0,1): e_0 = 0.1 < e_1 = 0.2, so node 0's weight theta_01 = 0.5.
    # (0,2): e_0 = e_2 (tie), so the larger of theta_02 = 0.2 and theta_20 = 0.4.
    expected = [[0, 0.5, 0.4],
                [0.5, 0, 0],
                [0.4, 0, 0]]
    np.testing.assert_array_equal(to_sparse(GRAPH, "pynnk").toarray(), expected)


def test_pynnk_drops_one_sided_edges_and_uses_the_better_endpoint():
    # Four nodes, k = 1: 0 -> 1, 1 -> 0, 2 -> 1, 3 -> 2. Only (0,1) is mutual.
    # e_1 = 0.05 < e_0 = 0.3, so the edge weighs theta_10 = 0.9 (not theta_01 = 0.6).
    g = result([[1], [0], [1], [2]], [[0.6], [0.9], [0.7], [0.8]], [0.3, 0.05, 0.1, 0.1])
    expected = np.zeros((4, 4))
    expected[0, 1] = expected[1, 0] = 0.9
    np.testing.assert_array_equal(to_sparse(g, "pynnk").toarray(), expected)
    # max keeps every edge: (0,1) = max(0.6, 0.9), (1,2) = 0.7, (2,3) = 0.8
    expected_max = [[0, 0.9, 0, 0],
                    [0.9, 0, 0.7, 0],
                    [0, 0.7, 0, 0.8],
                    [0, 0, 0.8, 0]]
    np.testing.assert_array_equal(to_sparse(g, "max").toarray(), expected_max)


def test_several_point_sets_give_a_list_and_rows_hold_theta():
    X = np.random.default_rng(0).normal(size=(2, 30, 3))
    res = nnk(X, 5)
    graphs = to_sparse(res)
    assert len(graphs) == 2
    for c, W in enumerate(graphs):
        assert W.shape == (30, 30)
        for i in range(30):
            np.testing.assert_array_equal(W[i, res.indices[c, i]].toarray().ravel(), res.weights[c, i])


def test_bad_symmetrize_is_named():
    with pytest.raises(ValueError, match=r"symmetrize='mean'.*'none', 'max', 'pynnk'"):
        to_sparse(GRAPH, "mean")
