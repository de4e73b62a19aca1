"""The exact kNN of a point set given by its Gram matrix alone (a streamed layer's aggregate).

A layer of C channels of D values is never held as an N x (C*D) matrix when it streams: its
aggregate (x_i = vec(A[i]), the channels concatenated) is known through the centred Gram matrix
H = V V^T that GramSum(always=True) sums from the channels' own (cwnnk.engine.gram), and through
which points are equal in every channel (exactly: GramSum.group). From these,

    d2(i, j) = H_ii + H_jj - 2 H_ij,    G_i[a, b] = H_ab - H_ai - H_bi + H_ii

give every squared distance and every candidate's Gram of differences to its query, so the
search and the kernels need no coordinates. Candidates follow the engine's rules: ties by lower
index, equal points by the duplicate policy (drop: left out; keep: first, distance 0), and every
member of a group of equal points reads its distances from the group's first member, so equal
points stay exactly equal.

What it cannot do without coordinates is the float64 re-rank from differences that certifies the
engine's other searches: its distances carry H's rounding error, at most
4 (D_total + 8) u (|v_i|^2 + |v_j|^2) for unit roundoff u (the bound of GramSum's sum). A row
whose k-th and (k+1)-th distances are closer than twice that could in exact arithmetic swap its
last candidate; such rows are counted (GramPoints.uncertain after the search), not hidden.
"""

import math
from dataclasses import dataclass

import torch

from cwnnk.engine.blocks import row_blocks

# Bytes of a tile of query rows' distances to every point (float64, with its sort's scratch).
TILE_BYTES = 1 << 26


@dataclass
class GramPoints:
    """N points given by their centred float64 Gram matrix instead of coordinates.

    H (N, N) symmetric float64 v_i.v_j of the centred points; group (N,) int64, equal ids for
    exactly equal points; zero (N,) bool, the points that are the zero vector (uncentred); sq (N,)
    float64 their uncentred squared norms (needed by the cosine kernel only, else None); dim the
    number of coordinates (for the rounding-error bound). `uncertain` is set by gram_knn.
    """

    H: torch.Tensor
    group: torch.Tensor
    zero: torch.Tensor
    sq: torch.Tensor | None
    dim: int
    uncertain: int | None = None

    @property
    def n_points(self):
        return self.H.shape[0]


def gram_knn(points, k, duplicates="drop"):
    """The exact kNN of GramPoints `points` from H alone, as the engine's KNN (one point set)."""
    from cwnnk.engine.knn import KNN

    H, group = points.H, points.group
    N, dev = points.n_points, H.device
    index = torch.arange(N, device=dev)
    first = torch.full((N,), N, dtype=torch.int64, device=dev).scatter_reduce_(0, group, index, "amin")
    rep = first[group]  # each point's group's first member: equal points read the same row of H
    n_dup = torch.bincount(group, minlength=N)[group] - 1
    in_order = bool((rep == index).all())
    diag = H.diagonal()
    slack = 4 * (points.dim + 8) * 2.0**-53  # H's error per unit of |v_i|^2 + |v_j|^2
    top = float(diag.max()) if N else 0.0
    indices = torch.full((N, k), -1, dtype=torch.int64, device=dev)
    sqdist = torch.full((N, k), math.inf, dtype=torch.float64, device=dev)
    gram = torch.zeros((N, k, k), dtype=torch.float64, device=dev)
    P = min(N, k + max(2, k // 12) + 1)  # one beyond k: the certificate's next distance
    uncertain = 0
    for tile in row_blocks(N, 8 * N * 3, TILE_BYTES):
        q = rep[tile]
        rows = H[q] if in_order else H[q][:, rep]
        d2 = (diag[q, None] + diag[rep][None, :] - 2 * rows).clamp_(min=0)
        same = group[tile, None] == group[None, :]
        d2.masked_fill_(same, math.inf if duplicates == "drop" else 0.0)
        d2[torch.arange(len(q), device=dev), index[tile]] = math.inf  # the query itself
        vals, cand = torch.topk(d2, P, largest=False, sorted=True)
        # the engine's order: by distance, then index. Rows whose P-th value ties the k-th (equal
        # points, or exact ties) may have left equal entries out of topk: sort them whole.
        tied = vals[:, P - 1] == vals[:, k - 1]
        by_index = torch.argsort(cand, dim=1)
        cand, vals = cand.gather(1, by_index), vals.gather(1, by_index)
        order = torch.argsort(vals, dim=1, stable=True)
        cand, vals = cand.gather(1, order), vals.gather(1, order)
        if tied.any():
            whole = torch.sort(d2[tied], dim=1, stable=True)
            cand[tied], vals[tied] = whole.indices[:, :P], whole.values[:, :P]
        valid = torch.isfinite(vals[:, :k])
        c = torch.where(valid, cand[:, :k], -1)
        indices[tile], sqdist[tile] = c, torch.where(valid, vals[:, :k], math.inf)
        if P > k:  # a gap below H's error at the k-th candidate (not between equal points): uncertain
            err = 2 * slack * (diag[q] + top)
            apart = group[cand[:, k]] != group[cand[:, k - 1]]
            uncertain += int(((vals[:, k] - vals[:, k - 1] <= err) & torch.isfinite(vals[:, k]) & apart).sum())
        ra = rep[c.clamp(min=0)]
        Hab = H[ra[:, :, None], ra[:, None, :]]
        Hai = H[ra, q[:, None]]
        G = Hab - Hai[:, :, None] - Hai[:, None, :] + diag[q][:, None, None]
        gram[tile] = G.masked_fill_(~(valid[:, :, None] & valid[:, None, :]), 0.0)
    points.uncertain = uncertain
    return KNN(indices[None], sqdist[None], gram[None], group[None], n_dup[None],
               {"float32": 0, "float64": 0, "brute": 0, "gram": N})
