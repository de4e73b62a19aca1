"""NNKResult: the NNK graphs of one or many point sets, as numpy arrays."""

from dataclasses import dataclass, fields

import numpy as np

# The degenerate cases counted per point set (docs/engine.md, Degenerate input).
COUNTS = ("duplicates", "zero_vectors", "zero_sigma", "not_pd", "kkt_failed")


@dataclass
class NNKResult:
    """NNK graphs of C point sets as numpy arrays; leading axis C absent for a single (N, D) set.

    indices (..., N, k) int64 kNN candidates, -1 where fewer than k exist; distances (..., N, k)
    float64, inf where padded; weights (..., N, k) float64 theta_ij, exactly 0 off the support;
    degree (..., N) support sizes; error (..., N) reconstruction errors e_i (nan for a zero vector
    under cosine); sigma (..., N) the gaussian width used by each query (nan when it has no
    candidate; None for cosine); counts: name -> int64 array (...) of degenerate cases per set.
    """

    indices: np.ndarray
    distances: np.ndarray
    weights: np.ndarray
    degree: np.ndarray
    error: np.ndarray
    sigma: np.ndarray | None
    counts: dict
    kernel: str
    solver: str

    @property
    def n_sets(self) -> int | None:
        """Number of point sets, or None for a single (N, D) input."""
        return self.indices.shape[0] if self.indices.ndim == 3 else None

    def channel(self, c: int) -> "NNKResult":
        """The result of point set c alone, as if nnk had been called on X[c]."""
        if self.n_sets is None:
            raise ValueError("channel(c) needs a result of several point sets; this one is a single (N, D) set")
        pick = {f.name: getattr(self, f.name) for f in fields(self)}
        for name in ("indices", "distances", "weights", "degree", "error"):
            pick[name] = pick[name][c]
        pick["sigma"] = None if self.sigma is None else self.sigma[c]
        pick["counts"] = {name: value[c] for name, value in self.counts.items()}
        return NNKResult(**pick)
