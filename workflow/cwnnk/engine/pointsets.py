"""The point sets searched together by the exact kNN (cwnnk.engine.knn), in named parts.

- DistinctRows: B point sets of N points merged into their distinct rows (exactly equal points
  are one row that stands for its members), numbered one set after another, with the bookkeeping
  from rows to sets and members and back to points (unfold, to_points) and the tiles of queries.
- PointSets: the distinct rows centred on each set's mean, with their squared norms and, for
  small sets, their float64 Gram matrix H (cwnnk.engine.gram); the differences of rows and the
  Gram matrices of a query's candidates.
- bounds and pools: lower bounds on the squared distances of a tile of query rows to every row of
  their sets (one product, or read from H), and each query's pool of the rows of smallest bound.
- rerank: a pool re-ranked in float64 (from H, or from direct differences), with its certificate.
- brute: the float64 brute force over whole rows, for the rows nothing certifies.
cwnnk.engine.knn runs these passes; docs/engine.md describes the algorithm.
"""

import math

import numpy as np
import torch

from cwnnk.engine.blocks import CONVERT_BYTES, row_blocks, sq_norms
from cwnnk.engine.gram import gram_fits, self_products

# Point sets whose centred copy (in a search pass's dtype) is at most this large keep it; larger
# ones (a whole layer's aggregate) are centred block by block on every tile instead. It also caps
# the point sets searched together (most_sets_per_batch).
CENTRED_BYTES = 1 << 28
# A row's candidates' Gram is read from H only where H's rounding error bound is at most this share
# of the row's k-th squared distance; otherwise it comes from direct differences (docs/engine.md).
GRAM_SCALE = 2.0**-36


def default_margin(k):
    """Pool entries beyond k: a few are enough for the certificate to succeed almost always."""
    return max(2, k // 12)


def whole_gram(P, k):
    """Whether the re-rank keeps the whole Gram of a pool of P (a pool of the usual size) rather
    than computing its chosen candidates' Gram anew (a widened pool, whose P x P Gram is large)."""
    return P <= k + default_margin(k)


def most_sets_per_batch(N, D):
    """The most point sets of N points in D dimensions searched together: as many as their float64
    centred copy fits in CENTRED_BYTES, and 2^13 at most (a set's number is held in the top bits of
    a row's hash)."""
    return min(1 << 13, max(1, CENTRED_BYTES // (N * D * 8)))


def bound_constant(D, dtype, device):
    """c such that S_ij = 2 u_i.u_j - (1 - 2c)|u_j|^2, computed in `dtype`, gives the lower bound
    (1 - 2c)|u_i|^2 - S_ij <= ||u_i - u_j||^2.

    The float computation of S (inputs rounded to `dtype`, dot products of length D) errs by at
    most about (D/2 + 4) eps (|u_i| + |u_j|)^2 <= 2 c (|u_i|^2 + |u_j|^2) for unit roundoff eps with
    c = (D + 8) eps, which the two (1 - 2c) factors absorb. The bound is negated so that the pool
    is torch.topk's faster `largest` end, and its query term is left out of the ranking.
    """
    return (D + 8) * _unit_roundoff(dtype, device)


def _unit_roundoff(dtype, device):
    if dtype == torch.float64:
        return 2.0**-53
    # float32 products may be allowed to run in TF32 or bfloat16; then bound with bfloat16's roundoff
    exact_fp32 = torch.get_float32_matmul_precision() == "highest" and not (
        device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32
    )
    return 2.0**-24 if exact_fp32 else 2.0**-8


class DistinctRows:
    """B point sets of N points (B, N, D), merged into their distinct rows U.

    A distinct row has a global id (the rows of set 0, then those of set 1, ...) and a local one
    within its set; points are numbered b * N + i. group: each point's distinct row; mult: each
    row's number of members; members: each row's first k + 1 members, ascending (-1 past them);
    owner: each row's set; size, start: each set's number of rows and first row; width: the
    largest size. Every search step works on a tile of global query rows, whatever their sets: on
    a GPU, one step for many small sets costs the kernel launches of one.
    """

    def __init__(self, X, k):
        B, N, D = X.shape
        U, self.group, self.mult = _distinct_rows(X)
        self.U, self.k, self.n_points = U, k, N
        n_u, dev = len(U), U.device
        self.owner = torch.empty(n_u, dtype=torch.int64, device=dev).scatter_(
            0, self.group, torch.arange(B * N, device=dev) // N)
        self.size = torch.bincount(self.owner, minlength=B)  # distinct rows per set
        self.start = self.size.cumsum(0) - self.size
        self.local = torch.arange(n_u, device=dev) - self.start[self.owner]
        self.width = int(self.size.max())
        # members of each distinct row, ascending index; only the first k + 1 can reach a list
        width = int(self.mult.max().clamp(max=k + 1))
        order = torch.argsort(self.group, stable=True)
        start = torch.cumsum(self.mult, 0) - self.mult
        j = torch.arange(width, device=dev)
        members = order[(start[:, None] + j).clamp(max=len(order) - 1)]
        self.members = torch.where(j < self.mult[:, None], members, -1)

    def unfold(self, cand_u, d2_u, pos):
        """Sorted distinct rows (B, P), -1 past a set's rows -> the first k point candidates: their
        members, in order."""
        k, (B, P) = self.k, cand_u.shape
        count = torch.where(cand_u >= 0, self.mult[cand_u.clamp(min=0)], 0).clamp(max=k)
        end = count.cumsum(1)
        slot = torch.arange(k, device=cand_u.device).repeat(B, 1)
        j = torch.searchsorted(end, slot, right=True)  # the distinct row that fills each slot
        inside = j < P
        j = j.clamp(max=P - 1)
        offset = (slot - (end - count).gather(1, j)).clamp(max=self.members.shape[1] - 1)
        member = self.members[cand_u.gather(1, j).clamp(min=0), offset]
        return (
            torch.where(inside, member, -1),
            torch.where(inside, d2_u.gather(1, j), math.inf),
            torch.where(inside, pos.gather(1, j), -1),
        )

    def tiles(self, rows, limit):
        """The query rows (ascending global ids) in tiles of at most `limit` rows, counted as the
        bound product pads them (each set of a tile to the tile's largest): whole sets together
        while they fit, a larger set in pieces of its own."""
        counts = torch.unique_consecutive(self.owner[rows], return_counts=True)[1].tolist()
        spans, lo, at, sets, tallest = [], 0, 0, 0, 0
        for n in counts:
            if n > limit:
                spans += [(lo, at)] + [(a, min(at + n, a + limit)) for a in range(at, at + n, limit)]
                lo, sets, tallest = at + n, 0, 0
            elif (sets + 1) * max(tallest, n) > limit:
                spans.append((lo, at))
                lo, sets, tallest = at, 1, n
            else:
                sets, tallest = sets + 1, max(tallest, n)
            at += n
        spans.append((lo, at))
        return [rows[a:b] for a, b in spans if b > a]

    def to_points(self, cand, d2, G, keep):
        """Distinct-row results (candidates as point numbers b * N + j) -> one row per point, with
        candidates j within its set; policy keep puts each point's duplicates first.

        G (B * N, k, k) holds each distinct row's Gram at its first member's slot and is completed
        in place. Returns (indices, sqdist, n_dup), each with one row per point.
        """
        k, g = self.k, self.group
        n = len(g)
        me = torch.arange(n, device=g.device)
        base = (me // self.n_points * self.n_points)[:, None]
        n_dup = self.mult[g] - 1
        slot = self.members[:, 0][g]
        if not keep or not n_dup.any():
            copies = (slot != me).nonzero()[:, 0]
            G[copies] = G[slot[copies]]
            indices, sqdist = cand[g], d2[g]
        else:
            shift = n_dup.clamp(max=k)
            j = torch.arange(k, device=g.device)
            src = (j[None, :] - shift[:, None]).clamp(min=0)
            first = j[None, :] < shift[:, None]
            # the duplicates of point i: the members of its group other than i, ascending
            mates = torch.cat([self.members[g], torch.full((n, 1), -1, device=g.device)], 1)
            mates = mates.gather(1, torch.argsort((mates == me[:, None]) | (mates < 0), dim=1, stable=True))
            indices = torch.where(first, _pad(mates, k, -1), cand[g].gather(1, src))
            sqdist = torch.where(first, 0.0, d2[g].gather(1, src))
            # their Gram rows and columns are 0 (x_j - x_i = 0), the rest moves down by the shift
            moved = (n_dup > 0).nonzero()[:, 0]
            m, s = len(moved), src[moved]
            sub = G[slot[moved]].gather(1, s[:, :, None].expand(m, k, k)).gather(2, s[:, None, :].expand(m, k, k))
            G[moved] = sub.masked_fill_(first[moved][:, :, None] | first[moved][:, None, :], 0)
        return torch.where(indices >= 0, indices - base, -1), sqdist, n_dup


class PointSets(DistinctRows):
    """DistinctRows centred on each set's mean m (mean: (B, D), in the points' dtype), with their
    squared norms sq, and H (B, width, width), the float64 v_i.v_j of each set's centred rows v,
    where it fits GRAM_BYTES or want_gram is set (else None). gram_from: a GramSum of which X (1, N, D) is the
    concatenation, whose H (and centre) it then takes instead of computing its own.
    """

    def __init__(self, X, k, buffers, gram_from=None, want_gram=False):
        super().__init__(X, k)
        B, _, D = X.shape
        U, n_u, dev = self.U, len(self.U), self.U.device
        gram = want_gram or gram_fits(B, self.width, dev)  # H fits (see below), or a GramSum(always=True) needs it
        summed = gram and gram_from is not None and gram_from.covers(X)
        # the bounds are computed on centred points v = u - m: the same distances, but rounding
        # errors that scale with |v|^2 instead of |u|^2 (activations sit far from the origin)
        if summed:  # H summed from the sets that X concatenates is centred on their centres
            self.mean = gram_from.mean.to(U.dtype)[None]
        else:
            mean = torch.zeros((B, D), dtype=torch.float64, device=dev)
            for part in row_blocks(n_u, 8 * D, CONVERT_BYTES):
                mean.index_add_(0, self.owner[part], U[part].to(torch.float64))
            self.mean = (mean / self.size[:, None]).to(U.dtype)  # float32 m keeps u - m exact in float64
        self.held = {}  # the centred points in each search dtype, (B, width, D), where they fit CENTRED_BYTES
        # H: v_i.v_j of each set's centred rows, where it fits; its diagonal is then the squared norms
        self.H = None
        if gram:
            self.H = gram_from.gram(self.members[:, 0]) if summed else self.gram_matrix(buffers)
            self.sq = self.H.diagonal(dim1=1, dim2=2)[self.owner, self.local]
        else:
            self.sq = torch.cat([sq_norms(self.centred(part, torch.float64))
                                 for part in row_blocks(n_u, 8 * D, CONVERT_BYTES)])
        self.slack = 1 + 4 * (D + 2) * 2.0**-53  # a float64 squared distance's relative error

    def gram_matrix(self, buffers):
        """H (B, width, width) float64: v_i.v_j of each set's centred rows (0 past its rows), made
        a block of coordinates at a time (a single set's H is one of `buffers`)."""
        B, W, D = len(self.size), self.width, self.U.shape[1]
        H = torch.zeros((B, W, W), dtype=torch.float64, device=self.U.device) if B > 1 else None
        for b, (lo, n) in enumerate(zip(self.start.tolist(), self.size.tolist())):
            blocks = (self.U[lo:lo + n, cols].to(torch.float64) - self.mean[b, cols].to(torch.float64)
                      for cols in row_blocks(D, 8 * n, CONVERT_BYTES))
            Hb = self_products(blocks, n, buffers)
            if H is None:
                return Hb[None]
            H[b, :n, :n] = Hb
        return H

    def centred(self, rows, dtype):
        """v = u - m of the given rows (a slice or an index tensor), rounded to `dtype`."""
        m = self.mean[0] if len(self.mean) == 1 else self.mean[self.owner[rows]]
        if self.U.dtype == dtype:  # one correctly rounded subtraction: fl(u - m), no float64 detour
            return self.U[rows] - m
        return (self.U[rows].to(torch.float64) - m.to(torch.float64)).to(dtype)

    def differences(self, rows, targets, buffers):
        """y = u_t - u_i (B, T, D) in float64, exact for float32 points, of distinct query rows (B,)
        to distinct target rows (B, T); targets < 0 give y = 0."""
        U, (B, T) = self.U, targets.shape
        Y = buffers.get("diff", (B * T, U.shape[1]), torch.float64)
        pick = targets.reshape(-1).clamp(min=0)
        if U.dtype == torch.float64:
            torch.index_select(U, 0, pick, out=Y)
        else:
            Y.copy_(torch.index_select(U, 0, pick, out=buffers.get("pick", (B * T, U.shape[1]), U.dtype)))
        Y = Y.view(B, T, -1).sub_(U.index_select(0, rows).to(torch.float64)[:, None, :])
        return Y.masked_fill_((targets < 0)[:, :, None], 0) if bool((targets < 0).any()) else Y

    def candidate_grams(self, rows, cand, buffers, tile_bytes):
        """Gram matrices (B, k, k) of the point candidates' (B, k) differences to their query rows
        (0 where a candidate is -1), made a tile of differences at a time."""
        k, D = self.k, self.U.shape[1]
        G = torch.empty((len(rows), k, k), dtype=torch.float64, device=cand.device)
        targets = torch.where(cand >= 0, self.group[cand.clamp(min=0)], -1)
        for part in row_blocks(len(rows), k * D * (16 + self.U.element_size()), tile_bytes):
            Y = self.differences(rows[part], targets[part], buffers)
            torch.bmm(Y, Y.mT, out=G[part])
        return G


# Bounds and pools: the first step of a search pass, for one tile of query rows.


def bounds(sets, rows, dtype, c, buffers):
    """S (R, width) in `dtype` of bound_constant: 2 v_i.v_j - (1 - 2c)|v_j|^2 for the query rows
    (one tile) against the local rows j of their own set; -inf at the query and past its set.
    Read from H where the sets have it (their only pass is float64), else one product."""
    B = len(sets.size)
    S = buffers.get("bound", (len(rows), sets.width), dtype)
    bias = (-(1 - 2 * c) * sets.sq).to(dtype)
    padded_bias = (bias if B == 1
                   else bias.new_full((B, sets.width), -math.inf).index_put_((sets.owner, sets.local), bias))
    owner, local = sets.owner[rows], sets.local[rows]
    if sets.H is not None:
        W = sets.width
        at = owner * W + local
        H, lo = sets.H.view(B * W, W), int(at[0])
        column = padded_bias if B == 1 else padded_bias.view(B, W)[owner]
        if int(at[-1]) - lo + 1 == len(at):  # consecutive rows (the usual tile): H's rows themselves
            torch.add(column, H[lo:lo + len(at)], alpha=2, out=S)
        else:
            torch.index_select(H, 0, at, out=S).mul_(2).add_(column)
    else:
        _product_bounds(sets, S, rows, dtype, bias, padded_bias, buffers)
    S[torch.arange(len(rows), device=S.device), local] = -math.inf  # the query itself
    return S


def _product_bounds(sets, S, rows, dtype, bias, padded_bias, buffers):
    """bounds by one product of the tile's centred rows with their sets' rows."""
    B, n_u, D = len(sets.size), len(sets.U), sets.U.shape[1]
    size = torch.finfo(dtype).bits // 8
    if dtype not in sets.held and (B > 1 or n_u * D * size <= CENTRED_BYTES):
        V = torch.cat([sets.centred(part, dtype) for part in row_blocks(n_u, 8 * D, CONVERT_BYTES)])
        sets.held[dtype] = (V[None] if B == 1
                            else V.new_zeros((B, sets.width, D)).index_put_((sets.owner, sets.local), V))
    if dtype not in sets.held:  # too large to hold twice: centred a block of columns at a time
        Q = sets.centred(rows, dtype)
        for part in row_blocks(n_u, 8 * D, CONVERT_BYTES):
            S[:, part] = torch.addmm(bias[part], Q, sets.centred(part, dtype).T, alpha=2)
    elif B == 1:
        V = sets.held[dtype][0]
        torch.addmm(bias, V.index_select(0, rows), V.T, alpha=2, out=S)
    else:
        V = sets.held[dtype]
        owner, local = sets.owner[rows], sets.local[rows]
        in_tile, counts = torch.unique_consecutive(owner, return_counts=True)
        T = int(counts.max())
        which = torch.repeat_interleave(torch.arange(len(in_tile), device=S.device), counts)
        rank = torch.arange(len(rows), device=S.device) - (counts.cumsum(0) - counts)[which]
        Q = V.new_zeros((len(in_tile), T, D)).index_put_((which, rank), V[owner, local])
        if len(in_tile) * T == len(rows):  # a tile of whole sets of one size: S itself
            torch.baddbmm(padded_bias[in_tile, None, :], Q, V[in_tile].mT, alpha=2,
                          out=S.view(len(in_tile), T, sets.width))
        else:  # computed padded, then the real rows copied out
            padded = buffers.get("padded", (len(in_tile), T, sets.width), dtype)
            torch.baddbmm(padded_bias[in_tile, None, :], Q, V[in_tile].mT, alpha=2, out=padded)
            S.copy_(padded[which, rank])


def pools(sets, S, rows, c, P):
    """The pools of query rows from their bounds S: the P distinct rows of smallest lower bound
    (-1 past the rows of a smaller set), and for each query the P-th smallest bound (no distinct
    row left out of the pool is nearer)."""
    low, col = _largest(S, P) if sets.H is not None else torch.topk(S, P, dim=1, sorted=False)
    cand_u = torch.where(low == -math.inf, -1, col + sets.start[sets.owner[rows]][:, None])
    outside = (1 - 2 * c) * sets.sq[rows] - low.amin(1).double()
    return cand_u, outside.masked_fill_(sets.size[sets.owner[rows]] <= P + 1, math.inf)  # nothing left out


# The float64 re-rank of the pools, and its certificate.


def rerank(sets, rows, cand_u, outside, buffers, tile_bytes):
    """Certified candidates of query rows from their pools: (cand, d2, gram, certified), from
    H where the sets have it, else (and for the rows H leaves) from the pool's differences."""
    if sets.H is None:
        return _rerank_differences(sets, rows, cand_u, outside, buffers, tile_bytes)
    found = _rerank_gram(sets, rows, cand_u, outside)
    redo = (~found[3]).nonzero()[:, 0]
    if len(redo):
        again = _rerank_differences(sets, rows[redo], cand_u[redo], outside[redo], buffers, tile_bytes)
        for t, value in zip(found, again):
            t[redo] = value
    return found


def _rerank_gram(sets, rows, cand_u, outside):
    """rerank with every distance and Gram entry read from H, nothing gathered from the points.

    H's values err by at most c (|v_a|^2 + |v_b|^2) (c of bound_constant), so each squared
    distance sq_i + sq_a - 2 H_ia lies within err = 2c (sq_i + sq_a) of its own. A row is
    certified where these intervals fix its ranking: each chosen distinct row is below every
    later one's interval and the P-th lower bound (ties stay uncertified), and where the Gram
    G_ab = H_ab - H_ai - H_ib + H_ii, whose error is below 6 c max(sq), is within GRAM_SCALE of
    the k-th squared distance (rows far from their set's mean relative to it are not)."""
    k = sets.k
    c = bound_constant(sets.U.shape[1], torch.float64, cand_u.device)
    W, pool = sets.width, cand_u.clamp(min=0)
    local = (lambda u: u) if len(sets.size) == 1 else (lambda u: sets.local[u])  # noqa: E731
    top = (sets.owner[rows] * W + local(rows)) * W  # where each query's row of H starts
    h = _take(sets.H, top[:, None] + local(pool))  # (R, P) v_i . v_a
    sq_i, sq_a = sets.sq[rows], sets.sq[pool]
    d2_u = (sq_i[:, None] + sq_a).sub_(h, alpha=2).masked_fill_(cand_u < 0, math.inf)
    d2_u, order = d2_u.sort(dim=1)
    sq_a = sq_a.gather(1, order)
    err = (2 * c) * (sq_i[:, None] + sq_a)
    cand, d2, pos = sets.unfold(cand_u.gather(1, order), d2_u, order)
    count = torch.where(cand_u >= 0, sets.mult[pool], 0).clamp(max=k).gather(1, order)
    used = (count > 0) & (count.cumsum(1) - count < k)  # distinct rows whose members are chosen
    # the least lower bound after each pool entry, the rows outside the pool included
    beyond = torch.cat([d2_u - err, outside[:, None]], 1).flip(1).cummin(1).values.flip(1)[:, 1:]
    ranked = ((d2_u + err < beyond) | ~used).all(1)
    kth = torch.where(used, d2_u - err, -math.inf).amax(1)
    far = torch.where(used, sq_a, 0).amax(1).maximum(sq_i)
    certified = ranked & (6 * c * far <= GRAM_SCALE * kth)
    # the chosen candidates' Gram, 0 where a candidate is -1 and for rows not certified
    at = pos.clamp(min=0)
    mine = local(pool.gather(1, at))
    h = h.gather(1, at)
    corner = top - local(rows) * W  # where each query's set's H starts
    G = _take(sets.H, (corner[:, None] + mine * W)[:, :, None] + mine[:, None, :])
    G.sub_(h[:, :, None]).sub_(h[:, None, :] - sq_i[:, None, None])
    ok = pos >= 0
    if not bool(ok.all() & certified.all()):
        G.masked_fill_(~(ok[:, :, None] & ok[:, None, :] & certified[:, None, None]), 0)
    return cand, d2, G, certified


def _rerank_differences(sets, rows, cand_u, outside, buffers, tile_bytes):
    """rerank from the direct differences of each pool.

    The pool's differences are made a tile of `tile_bytes` at a time (on a CPU, one that stays
    in the cache), which gives their squared norms and, for a pool of the usual size, their
    whole Gram. The ranking and the certificate then run once over all the rows. A widened
    pool's Gram would be too large: its rows get the Gram of their chosen candidates alone.
    """
    k, (B, P), D = sets.k, cand_u.shape, sets.U.shape[1]
    whole = whole_gram(P, k)
    d2_u = torch.empty((B, P), dtype=torch.float64, device=cand_u.device)
    G_pool = torch.empty((B, P, P) if whole else (0,), dtype=torch.float64, device=cand_u.device)
    for part in row_blocks(B, P * D * (16 + sets.U.element_size()), tile_bytes):
        Y = sets.differences(rows[part], cand_u[part], buffers)
        torch.sum(torch.mul(Y, Y, out=buffers.get("square", Y.shape, torch.float64)), -1, out=d2_u[part])
        if whole:
            torch.bmm(Y, Y.mT, out=G_pool[part])
    d2_u.masked_fill_(cand_u < 0, math.inf)  # past a small set's rows: never chosen
    # distinct rows by distance (a row's members are tied with each other, in index order);
    # members of two distinct rows at one distance would interleave: left to the brute force
    d2_u, order = d2_u.sort(dim=1)
    cand, d2, pos = sets.unfold(cand_u.gather(1, order), d2_u, order)
    tied = ((d2_u[:, 1:] == d2_u[:, :-1]) & (d2_u[:, 1:] < math.inf)).any(1)
    # the float64 squared distance itself may be off by a few ulps per coordinate
    certified = ~tied & ((d2[:, -1] * sets.slack < outside) | (outside == math.inf))
    if whole:
        return cand, d2, _chosen_gram(G_pool, pos, certified), certified
    G = torch.zeros((B, k, k), dtype=torch.float64, device=cand.device)
    chosen = certified.nonzero()[:, 0]
    G[chosen] = sets.candidate_grams(rows[chosen], cand[chosen], buffers, tile_bytes)
    return cand, d2, G, certified


# The float64 brute force: the reference definition.


def brute(sets, rows, buffers, tile_bytes):
    """Float64 brute force over whole rows: the reference definition, for rows nothing certifies."""
    U, k, N = sets.U, sets.k, sets.n_points
    n_u, D = U.shape
    out = []
    for part in row_blocks(len(rows), 8 * (3 * N + sets.width + k * D), tile_bytes):
        part = rows[part]
        owner, Up = sets.owner[part], U[part].to(torch.float64)
        d2_u = torch.empty((len(part), sets.width), dtype=torch.float64, device=U.device)
        for cols in row_blocks(sets.width, 8 * len(part) * D, tile_bytes):
            col = torch.arange(cols.start, cols.stop, device=U.device)
            if len(sets.size) == 1:
                d2_u[:, cols] = ((U[cols].to(torch.float64)[None, :, :] - Up[:, None, :]) ** 2).sum(-1)
            else:  # the rows of each query's own set; inf past them
                at = (sets.start[owner][:, None] + col).clamp(max=n_u - 1)
                d2 = ((U[at].to(torch.float64) - Up[:, None, :]) ** 2).sum(-1)
                d2_u[:, cols] = d2.masked_fill_(col >= sets.size[owner][:, None], math.inf)
        d2_u[torch.arange(len(part), device=U.device), sets.local[part]] = math.inf
        # to every point of the set (members of a distinct row share its distance)
        points = sets.group.view(-1, N)[owner]
        d2 = d2_u.gather(1, points - sets.start[owner][:, None])
        point = torch.arange(N, device=U.device).expand_as(d2)
        cand, d2 = (t[:, :k] for t in _sort_by_distance_then_index(point, d2))
        cand = torch.where(d2 == math.inf, -1, cand + owner[:, None] * N)
        out.append((cand, d2, sets.candidate_grams(part, cand, buffers, tile_bytes)))
    return [torch.cat(t) for t in zip(*out)]


def _distinct_rows(X):
    """(distinct rows U, global group id of each of the B * N points, group sizes) of B point sets
    X (B, N, D): equal rows of one set share a group, and the groups are numbered set after set.

    Rows are grouped by a hash of their bits (integer arithmetic: equal rows always get equal
    hashes, whatever the BLAS), with the set's number in the top bits, then checked to be equal;
    only if some are not (a collision) does the slower lexicographic unique run, set by set. U is
    the points themselves, without a copy, when no rows are equal.
    """
    B, N, D = X.shape
    flat = X.reshape(B * N, D)
    bits = torch.int32 if X.element_size() == 4 else torch.int64
    factor = torch.randint(1, 2**62, (D,), generator=_generator(X.device), device=X.device)
    code = torch.empty(B * N, dtype=torch.int64, device=X.device)
    for part in row_blocks(B * N, 24 * D, CONVERT_BYTES):
        # + 0.0 turns -0.0 into 0.0, the one pair of equal floats with different bits. int64 wraps:
        # the sum is the same in any order, so on a CPU an integer product (5x faster than a product
        # and a sum) is safe; CUDA has no integer matmul
        word = (flat[part] + 0.0).view(bits).to(torch.int64)
        code[part] = word @ factor if X.device.type == "cpu" else (word * factor).sum(1)
    # the set's number in the top bits: sorted codes keep each set's groups together, in set order
    code = (code & (2**50 - 1)) | (torch.arange(B * N, device=X.device) // N << 50)
    _, group, mult = torch.unique(code, return_inverse=True, return_counts=True)
    index = torch.arange(B * N, device=X.device)
    first = torch.full_like(mult, B * N).scatter_reduce_(0, group, index, "amin")
    if len(first) == len(group):  # all distinct: each row is its own group
        return flat, index, torch.ones_like(mult)
    copy = (first[group] != index).nonzero()[:, 0]
    if torch.equal(flat[copy], flat[first[group[copy]]]):
        return flat[first], group, mult
    sets = [torch.unique(X[b], dim=0, return_inverse=True, return_counts=True) for b in range(B)]
    offsets = torch.tensor([0] + [len(u) for u, _, _ in sets], device=X.device).cumsum(0)
    return (torch.cat([u for u, _, _ in sets]), torch.cat([g + offsets[b] for b, (_, g, _) in enumerate(sets)]),
            torch.cat([m for _, _, m in sets]))


def _generator(device):
    return torch.Generator(device=device).manual_seed(0)  # the same hash on every call


def _largest(S, P):
    """The P largest entries of each row of S (R, W) and their columns, in no particular order.

    On a CPU, numpy's introselect finds each row's P-th largest value and numpy's flatnonzero the
    entries at least as large, which are the P largest unless ties make them more (faster than
    torch.topk, and the flat positions faster than torch's nonzero; docs/engine.md). It works on
    a copy of S: used for the bounds read from H, whose tiles are small."""
    if S.device.type != "cpu" or P >= S.shape[1]:
        return torch.topk(S, P, dim=1, sorted=False)
    A = S.numpy()
    R, W = A.shape
    pth = np.partition(A, W - P, axis=1)[:, W - P]
    at = np.flatnonzero(A >= pth[:, None])
    if len(at) != P * R:
        return torch.topk(S, P, dim=1, sorted=False)
    at = at.reshape(R, P)
    return torch.from_numpy(A.reshape(-1)[at]), torch.from_numpy(at % W)


def _take(T, at):
    """The elements of T at the flat positions `at`, shaped like it (faster than T.view(-1)[at])."""
    return T.view(-1).index_select(0, at.reshape(-1)).view(at.shape)


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


def _chosen_gram(G_pool, pos, rows):
    """Gram matrices (B, k, k) of the chosen pool entries pos (B, k), taken from the pool's Gram
    G_pool (B, P, P), for the rows selected by the mask `rows` (0 elsewhere, and where pos < 0)."""
    B, k = pos.shape
    at = pos.clamp(min=0)
    G = G_pool.gather(1, at[:, :, None].expand(B, k, G_pool.shape[2])).gather(2, at[:, None, :].expand(B, k, k))
    ok = pos >= 0
    return G.masked_fill_(~(ok[:, :, None] & ok[:, None, :] & rows[:, None, None]), 0)
