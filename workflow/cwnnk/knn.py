"""Exact k-nearest neighbours of every point of C point sets, tiled, with a certified fast pass.

The candidates of query i are the k nearest *other* points by Euclidean distance, ties broken by
lower index, as a float64 brute force on direct differences finds them. Points exactly equal to
the query (duplicates, e.g. all-zero maps after ReLU) follow the policy: `drop` leaves them out,
`keep` puts them first (distance 0, ascending index).

Exactly equal points are merged first (grouped by a random projection, then verified), so the
search runs over the distinct rows U, a group of m equal points being one entry that stands for
its m members (ties inside a group cost nothing). Per point set, over tiles of distinct query
rows (no N x N matrix is held):
1. one float32 product gives, for every pair, a *lower bound* on the squared distance (the float32
   value minus a rounding-error bound); the P = k + margin smallest bounds form a pool;
2. the pool is re-ranked in float64 from the direct differences y_j = u_j - u_i (their Gram matrix
   Y Y^T gives the squared distances on its diagonal and is kept for the kernels);
3. certificate: if the k-th re-ranked squared distance is below the P-th lower bound, no point
   outside the pool can be nearer, so the set is exact. Rows that fail repeat step 1 in float64
   (a far smaller error bound), and rows that still fail (true ties at the k-th distance) are
   solved by a float64 brute force over the whole row.
"""

import math
from dataclasses import dataclass

import torch

# Bytes a query tile may use (bound block, pool differences and Gram), by device; see docs/engine.md.
TILE_BYTES = {"cpu": 1 << 27, "cuda": 1 << 30}


@dataclass
class KNN:
    """Candidate sets of C point sets of N points (torch tensors on the search device)."""

    indices: torch.Tensor  # (C, N, k) int64, -1 where fewer than k candidates exist
    sqdist: torch.Tensor  # (C, N, k) float64 squared distances, inf where padded
    gram: torch.Tensor  # (C, N, k, k) float64 (x_a - x_i) . (x_b - x_i), 0 where padded
    group: torch.Tensor  # (C, N) int64, equal ids for exactly equal points
    n_dup: torch.Tensor  # (C, N) int64, how many other points equal point i
    rows_by_pass: dict  # distinct query rows settled by each pass: float32, float64, brute


def default_margin(k):
    """Pool entries beyond k: a few are enough for the certificate to succeed almost always."""
    return max(2, k // 12)


def _unit_roundoff(dtype, device):
    if dtype == torch.float64:
        return 2.0**-53
    # float32 products may be allowed to run in TF32 or bfloat16; then bound with bfloat16's roundoff
    exact_fp32 = torch.get_float32_matmul_precision() == "highest" and not (
        device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32
    )
    return 2.0**-24 if exact_fp32 else 2.0**-8


def _bound_factors(U, sq, dtype):
    """Q, R, c such that (1 - c)|u_i|^2 - Q_i . R_j <= ||u_i - u_j||^2, Q and R in `dtype`.

    Q_i . R_j = 2 u_i . u_j + 2 c |u_i| |u_j| - (1 - c)|u_j|^2: one product gives the float
    computation of |u_i|^2 + |u_j|^2 - 2 u_i . u_j (inputs rounded to `dtype`, dot products of
    length D + 2), which errs by at most about (D/2 + 6) eps (|u_i| + |u_j|)^2 for unit roundoff
    eps; c = (D + 8) eps covers that with room, and c (|u_i| + |u_j|)^2 is subtracted through the
    columns sqrt(c) |u|. The bound is negated so that the pool is torch.topk's faster `largest` end.
    """
    n, D = U.shape
    c = (D + 8) * _unit_roundoff(dtype, U.device)
    Q = torch.empty((n, D + 2), dtype=dtype, device=U.device)
    Q[:, :D], Q[:, D], Q[:, D + 1] = U, math.sqrt(c) * sq.sqrt(), 1
    R = Q.clone()
    R[:, : D + 1] *= 2  # exact in binary floating point
    R[:, D + 1] = -(1 - c) * sq
    return Q, R, c


def _sort_by_distance_then_index(index, d2, *more):
    """Sort each row by (d2, index); `more` are permuted alike."""
    order = index.argsort(dim=1)
    d2, order2 = d2.gather(1, order).sort(dim=1, stable=True)
    order = order.gather(1, order2)
    return (index.gather(1, order), d2, *(m.gather(1, order) for m in more))


def _pad(t, k, value):
    """The first k columns of t, padded with `value` where t has fewer."""
    if t.shape[1] < k:
        t = torch.cat([t, t.new_full((t.shape[0], k - t.shape[1]), value)], 1)
    return t[:, :k]


def _take_gram(G, pos):
    """G[b, pos[b, a], pos[b, c]] for each row b, and 0 where pos < 0."""
    B, k = pos.shape
    p = pos.clamp(min=0)
    rows = G.gather(1, p[:, :, None].expand(B, k, G.shape[2]))
    sub = rows.gather(2, p[:, None, :].expand(B, k, k))
    ok = pos >= 0
    return sub.masked_fill_(~(ok[:, :, None] & ok[:, None, :]), 0)


def _pool_gram(Y, G, pos, k):
    """Gram matrices of the candidates from the pool's differences Y (B, P, D) and the Gram G of its
    first k entries (the pool is in the order of the bounds).

    Mostly the candidates are those first k entries in order; rows with repeated members or holes
    are rearranged, and rows that reach beyond the first k entries get the whole P x P Gram.
    """
    if Y.shape[1] <= k:  # tiny point sets: G is the whole Gram
        return _take_gram(G, pos)
    tail = (pos >= k).any(1)
    moved = (pos != torch.arange(k, device=pos.device)).any(1) & ~tail
    if moved.any():
        G[moved] = _take_gram(G[moved], pos[moved])
    if tail.any():
        G[tail] = _take_gram(Y[tail] @ Y[tail].mT, pos[tail])
    return G


class Buffers:
    """Scratch tensors reused from tile to tile: fresh large allocations page-fault on every tile."""

    def __init__(self, device):
        self.device, self.store = device, {}

    def get(self, name, shape, dtype):
        size = math.prod(shape)
        held = self.store.get(name)
        if held is None or held.numel() < size or held.dtype != dtype:
            held = self.store[name] = torch.empty(size, dtype=dtype, device=self.device)
        return held[:size].view(shape)


def _distinct_rows(Xc):
    """(distinct rows U, group id of each row, group sizes): equal rows share a group.

    Equal rows have equal random projections; rows grouped by projection are then checked to be
    equal, and only if some are not (a collision) does the slower lexicographic unique run.
    """
    direction = torch.randn(Xc.shape[1], dtype=Xc.dtype, device=Xc.device, generator=_generator(Xc.device))
    _, group, mult = torch.unique(Xc @ direction, return_inverse=True, return_counts=True)
    index = torch.arange(len(group), device=Xc.device)
    first = torch.full_like(mult, len(group)).scatter_reduce_(0, group, index, "amin")
    if torch.equal(Xc, Xc[first[group]]):
        return Xc[first], group, mult
    return torch.unique(Xc, dim=0, return_inverse=True, return_counts=True)


def _generator(device):
    return torch.Generator(device=device).manual_seed(0)  # the same grouping on every call


class _PointSet:
    """One point set merged into distinct rows, with what the search passes share."""

    def __init__(self, Xc, k):
        U, self.group, self.mult = _distinct_rows(Xc)
        self.U, self.k = U, k
        self.sq = (U * U).sum(1)
        # members of each distinct row, ascending index; only the first k + 1 can reach a list
        width = int(self.mult.max().clamp(max=k + 1))
        order = torch.argsort(self.group, stable=True)
        start = torch.cumsum(self.mult, 0) - self.mult
        j = torch.arange(width, device=U.device)
        members = order[(start[:, None] + j).clamp(max=len(order) - 1)]
        self.members = torch.where(j < self.mult[:, None], members, -1)

    def unfold(self, cand_u, d2_u, pos):
        """Sorted distinct rows (B, P) -> the first k point candidates: their members, in order."""
        k, (B, P) = self.k, cand_u.shape
        count = self.mult[cand_u].clamp(max=k)
        end = count.cumsum(1)
        slot = torch.arange(k, device=cand_u.device).repeat(B, 1)
        j = torch.searchsorted(end, slot, right=True)  # the distinct row that fills each slot
        inside = j < P
        j = j.clamp(max=P - 1)
        offset = (slot - (end - count).gather(1, j)).clamp(max=self.members.shape[1] - 1)
        member = self.members[cand_u.gather(1, j), offset]
        return (
            torch.where(inside, member, -1),
            torch.where(inside, d2_u.gather(1, j), math.inf),
            torch.where(inside, pos.gather(1, j), -1),
        )

    def pool_pass(self, rows, Q, R, c, P, buffers):
        """Certified candidates of distinct query rows: (cand, d2, gram, certified)."""
        U, k, B = self.U, self.k, len(rows)
        S = torch.mm(Q.index_select(0, rows), R.T, out=buffers.get("bound", (B, len(U)), Q.dtype))
        S[torch.arange(B, device=S.device), rows] = -math.inf  # the query itself
        low, cand_u = torch.topk(S, P, dim=1)
        # P-th smallest lower bound: no distinct row left out of the pool is nearer than this
        outside = (1 - c) * self.sq[rows] - low[:, -1].double()
        if P == len(U) - 1:
            outside.fill_(math.inf)  # nothing was left out
        Y = torch.index_select(U, 0, cand_u.view(-1), out=buffers.get("diff", (B * P, U.shape[1]), U.dtype))
        Y = Y.view(B, P, -1).sub_(U.index_select(0, rows)[:, None, :])
        # squared distances: the diagonal of the first k entries' Gram (kept for the kernels), then the rest
        G = Y[:, :k] @ Y[:, :k].mT
        d2_u = torch.cat([G.diagonal(dim1=1, dim2=2), (Y[:, k:] * Y[:, k:]).sum(-1)], 1)
        # distinct rows by distance (a row's members are tied with each other, in index order);
        # members of two distinct rows at one distance would interleave: left to the brute force
        d2_u, order = d2_u.sort(dim=1)
        cand, d2, pos = self.unfold(cand_u.gather(1, order), d2_u, order)
        tied = (d2_u[:, 1:] == d2_u[:, :-1]).any(1)
        # the float64 squared distance itself may be off by a few ulps per coordinate
        slack = 1 + 4 * (U.shape[1] + 2) * 2.0**-53
        certified = ~tied & ((d2[:, -1] * slack < outside) | (outside == math.inf))
        return cand, d2, _pool_gram(Y, G, pos, k), certified

    def brute(self, rows, tile_bytes):
        """Float64 brute force over whole rows: the reference definition, for rows nothing certifies."""
        U, k = self.U, self.k
        out = []
        for part in torch.split(rows, max(1, tile_bytes // (8 * len(U) * U.shape[1]))):
            d2_u = ((U[None, :, :] - U[part][:, None, :]) ** 2).sum(-1)
            d2_u[torch.arange(len(part), device=U.device), part] = math.inf
            d2 = d2_u[:, self.group]  # to every point (members of a distinct row share its distance)
            point = torch.arange(d2.shape[1], device=U.device).expand_as(d2)
            cand, d2 = (t[:, :k] for t in _sort_by_distance_then_index(point, d2))
            cand = cand.masked_fill(d2 == math.inf, -1)
            Y = (U[self.group[cand.clamp(min=0)]] - U[part][:, None, :]).masked_fill_((cand < 0)[:, :, None], 0)
            out.append((cand, d2, Y @ Y.mT))
        return [torch.cat(t) for t in zip(*out)]

    def to_points(self, cand, d2, G, keep):
        """Distinct-row results -> one row per point; policy keep puts each point's duplicates first.

        G (N, k, k) holds each distinct row's Gram at its first member's slot and is completed in
        place. Returns (indices, sqdist, n_dup).
        """
        k, g = self.k, self.group
        N = len(g)
        me = torch.arange(N, device=g.device)
        n_dup = self.mult[g] - 1
        slot = self.members[:, 0][g]
        if not keep or not n_dup.any():
            copies = (slot != me).nonzero()[:, 0]
            G[copies] = G[slot[copies]]
            return cand[g], d2[g], n_dup
        shift = n_dup.clamp(max=k)
        j = torch.arange(k, device=g.device)
        src = (j[None, :] - shift[:, None]).clamp(min=0)
        first = j[None, :] < shift[:, None]
        # the duplicates of point i: the members of its group other than i, ascending
        mates = torch.cat([self.members[g], torch.full((N, 1), -1, device=g.device)], 1)
        mates = mates.gather(1, torch.argsort((mates == me[:, None]) | (mates < 0), dim=1, stable=True))
        indices = torch.where(first, _pad(mates, k, -1), cand[g].gather(1, src))
        sqdist = torch.where(first, 0.0, d2[g].gather(1, src))
        # their Gram rows and columns are 0 (x_j - x_i = 0), the rest moves down by the shift
        moved = (n_dup > 0).nonzero()[:, 0]
        n, s = len(moved), src[moved]
        sub = G[slot[moved]].gather(1, s[:, :, None].expand(n, k, k)).gather(2, s[:, None, :].expand(n, k, k))
        G[moved] = sub.masked_fill_(first[moved][:, :, None] | first[moved][:, None, :], 0)
        return indices, sqdist, n_dup


def exact_knn(X, k, *, duplicates="drop", margin=None, tile_bytes=None, buffers=None):
    """Exact kNN of every point of each point set in X (C, N, D) float64; see the module docstring.

    Also returns, per point, the Gram matrix of its candidates' differences to it, from which
    the kernels are built without touching the data again. `buffers` (a Buffers) lets repeated
    calls share their scratch memory.
    """
    C, N, D = X.shape
    tile_bytes = tile_bytes or TILE_BYTES.get(X.device.type, TILE_BYTES["cuda"])
    indices = torch.empty((C, N, k), dtype=torch.int64, device=X.device)
    sqdist = torch.empty((C, N, k), dtype=torch.float64, device=X.device)
    grams = torch.empty((C, N, k, k), dtype=torch.float64, device=X.device)
    groups = torch.empty((C, N), dtype=torch.int64, device=X.device)
    n_dups = torch.empty((C, N), dtype=torch.int64, device=X.device)
    rows_by_pass = {"float32": 0, "float64": 0, "brute": 0}
    buffers = buffers or Buffers(X.device)
    for c in range(C):
        ps = _PointSet(X[c], k)
        # float32 would overflow on huge values; such data go straight to the float64 pass
        passes = [torch.float32, torch.float64] if ps.sq.max() < 1e30 else [torch.float64]
        n_u = len(ps.U)
        cand = torch.full((n_u, k), -1, dtype=torch.int64, device=X.device)
        d2 = torch.full((n_u, k), math.inf, dtype=torch.float64, device=X.device)
        G, slot = grams[c], ps.members[:, 0]  # a distinct row's Gram goes to its first member's slot
        P = min(k + (default_margin(k) if margin is None else margin), n_u - 1)
        if P == 0:  # all points equal: no candidates
            G.zero_()
        pending = torch.arange(n_u if P > 0 else 0, device=X.device)
        for dtype in passes:
            if len(pending) == 0:
                break
            Q, R, cst = _bound_factors(ps.U, ps.sq, dtype)
            row_bytes = n_u * Q.element_size() * 2 + P * D * 8 * 2 + k * k * 8 * 4
            failed = []
            for rows in torch.split(pending, max(1, tile_bytes // row_bytes)):
                cand_t, d2_t, G_t, ok = ps.pool_pass(rows, Q, R, cst, P, buffers)
                if not ok.all():
                    rows, cand_t, d2_t, G_t, failed = rows[ok], cand_t[ok], d2_t[ok], G_t[ok], failed + [rows[~ok]]
                cand.index_copy_(0, rows, cand_t)
                d2.index_copy_(0, rows, d2_t)
                G.index_copy_(0, slot[rows], G_t)
            name = str(dtype).removeprefix("torch.")
            rows_by_pass[name] += len(pending)
            pending = torch.cat(failed) if failed else pending[:0]
            rows_by_pass[name] -= len(pending)
        if len(pending):
            cand[pending], d2[pending], G[slot[pending]] = ps.brute(pending, tile_bytes)
            rows_by_pass["brute"] += len(pending)
        indices[c], sqdist[c], n_dups[c] = ps.to_points(cand, d2, G, duplicates == "keep")
        groups[c] = ps.group
    return KNN(indices, sqdist, grams, groups, n_dups, rows_by_pass)
