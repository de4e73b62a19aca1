"""Solver `pynnk`: equal to a plain per-node loop written here from docs/method.md (section 2).

Nothing of the engine is used by the reference: its kNN, kernel and solver are rebuilt in numpy.
"""

import numpy as np
import pytest
import scipy.linalg

from cwnnk.engine import nnk

TAU = 1e-10


def reference_knn(X, k):
    """k nearest other points by float64 distance, ties by lower index, zero distance dropped."""
    d2 = ((X[:, None] - X[None]) ** 2).sum(-1)
    out = []
    for i in range(len(X)):
        d = np.where(d2[i] > 0, d2[i], np.inf)
        order = np.argsort(d, kind="stable")[:k]
        out.append(order[np.isfinite(d[order])])
    return out


def reference_pynnk(K, b):
    """Start from x = K_Si; return x on {x_j > 1 - tau} if any; else prune by Cholesky solves."""
    x = b.copy()
    if (x > 1 - TAU).any():
        return np.where(x > 1 - TAU, x, 0)
    F = x > TAU
    for _ in range(50 * len(b)):
        x = np.zeros_like(b)
        x[F] = scipy.linalg.cho_solve(scipy.linalg.cho_factor(K[np.ix_(F, F)], lower=True), b[F])
        dropped = F & (x < TAU)
        F = F & ~dropped
        if not dropped.any() or np.abs(x[dropped]).max() <= TAU:
            break
    return np.where(x < TAU, 0, x)


def reference_graph(X, k, kernel="gaussian", sigma="local"):
    """Per-node loop: weights (N, k) in the order of the reference kNN."""
    cands = reference_knn(X, k)
    last = np.array([np.linalg.norm(X[i] - X[S[-1]]) for i, S in enumerate(cands)])
    weights = np.zeros((len(X), k))
    for i, S in enumerate(cands):
        P = np.concatenate([X[S], X[i][None]])
        if kernel == "gaussian":
            s = last[i] / 3 if sigma == "local" else last.mean() / 3
            K = np.exp(-((P[:, None] - P[None]) ** 2).sum(-1) / (2 * s**2))
        else:
            U = P / np.linalg.norm(P, axis=1, keepdims=True)
            K = 0.5 + 0.5 * U @ U.T
        assert np.linalg.cond(K[:-1, :-1]) < 1e10  # the test data keep K_SS positive definite
        weights[i, : len(S)] = reference_pynnk(K[:-1, :-1], K[:-1, -1])
    return cands, weights


def relu(n, d, seed):
    """ReLU-like data with a little noise on top, so that no two points coincide."""
    rng = np.random.default_rng(seed)
    return np.maximum(0, rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) + 0.5) + 0.01 * rng.random((n, d))


@pytest.mark.parametrize(
    "X, k, kwargs",
    [
        (relu(300, 16, 0), 20, {}),
        (relu(300, 4, 1), 10, {}),
        (relu(250, 8, 2), 15, {"sigma": "global"}),
        (relu(250, 16, 3), 12, {"kernel": "cosine"}),
    ],
)
def test_equals_the_per_node_reference_loop(X, k, kwargs):
    result = nnk(X, k, solver="pynnk", **kwargs)
    cands, weights = reference_graph(X, k, **kwargs)
    for i, S in enumerate(cands):
        np.testing.assert_array_equal(result.indices[i, : len(S)], S)
        np.testing.assert_array_equal(result.weights[i] > 0, weights[i] > 0)
        np.testing.assert_allclose(result.weights[i], weights[i], rtol=1e-9, atol=1e-12)


def test_batched_point_sets_equal_separate_calls():
    X = np.stack([relu(200, 8, s) for s in range(3)])
    together = nnk(X, 12, solver="pynnk")
    for c in range(3):
        np.testing.assert_array_equal(together.weights[c], nnk(X[c], 12, solver="pynnk").weights)


def test_pruning_only_supports_are_not_larger_and_kkt_misses_are_counted():
    X = relu(400, 3, 4)
    pynnk, exact = nnk(X, 20, solver="pynnk"), nnk(X, 20)
    assert pynnk.degree.mean() <= exact.degree.mean()
    # the exact solver's KKT points are optimal; pynnk's differ from them exactly where it misses KKT
    differs = ((pynnk.weights > 0) != (exact.weights > 0)).any(1)
    assert pynnk.counts["kkt_failed"] == differs.sum() > 0
