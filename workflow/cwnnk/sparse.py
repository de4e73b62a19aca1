"""NNK results as scipy sparse graphs (docs/method.md section 2, "Graph")."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse

if TYPE_CHECKING:
    from cwnnk.engine.result import NNKResult  # the engine package imports torch

SYMMETRIZE = ("none", "max", "pynnk")


def to_sparse(result: NNKResult, symmetrize: str = "none") -> scipy.sparse.csr_matrix | list[scipy.sparse.csr_matrix]:
    """CSR N x N matrix W with W[i, j] = theta_ij (a list of C matrices for C point sets).

    symmetrize: "none" (directed, the default used for all counting); "max": max(W, W^T);
    "pynnk": an edge only between mutual kNN candidates, weighted by the endpoint with the lower
    reconstruction error e_i (the larger weight where the errors are equal or undefined).
    """
    if symmetrize not in SYMMETRIZE:
        raise ValueError(f"symmetrize={symmetrize!r} is not allowed; choose one of {', '.join(map(repr, SYMMETRIZE))}")
    if result.n_sets is None:
        return _graph(result.indices, result.weights, result.error, symmetrize)
    return [_graph(result.indices[c], result.weights[c], result.error[c], symmetrize) for c in range(result.n_sets)]


def _graph(indices, weights, error, symmetrize):
    N, k = indices.shape
    rows = np.repeat(np.arange(N), k)
    edge = weights.ravel() > 0
    W = scipy.sparse.csr_matrix((weights.ravel()[edge], (rows[edge], indices.ravel()[edge])), shape=(N, N))
    if symmetrize == "none":
        return W
    if symmetrize == "max":
        return W.maximum(W.T).tocsr()
    cand = indices.ravel() >= 0
    S = scipy.sparse.csr_matrix((np.ones(cand.sum()), (rows[cand], indices.ravel()[cand])), shape=(N, N))
    i, j = S.multiply(S.T).nonzero()  # mutual candidate pairs, both orders
    w_ij, w_ji = np.asarray(W[i, j]).ravel(), np.asarray(W[j, i]).ravel()
    w = np.where(error[i] < error[j], w_ij, np.where(error[j] < error[i], w_ji, np.maximum(w_ij, w_ji)))
    out = scipy.sparse.csr_matrix((w, (i, j)), shape=(N, N))
    out.eliminate_zeros()
    return out
