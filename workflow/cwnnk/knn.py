"""Exact k-nearest neighbours of every point of C point sets, tiled, with a certified fast pass.

The candidates of query i are the k nearest *other* points by Euclidean distance, ties broken by
lower index, as a float64 brute force on direct differences finds them. Points exactly equal to
the query (duplicates, e.g. all-zero maps after ReLU) follow the policy: `drop` leaves them out,
`keep` puts them first (distance 0, ascending index).

The points may be float32 (kept as they are: the data is held once) or float64; every float64
quantity is computed from them converted tile by tile.

Exactly equal points are merged first (grouped by an integer hash of their bits, then verified), so the
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
   solved by a float64 brute force over the whole row. Where the float32 pass settles fewer than
   half of its first tile's rows (bounds too loose for the data, as for a whole layer's aggregate
   of D = 65,536), the set's other rows go to the float64 pass at once; where the first pass
   leaves only a few rows (BRUTE_ELEMENTS), they go straight to the brute force.
"""

import contextlib
import math
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch

# Bytes a query tile may use (bound block, pool differences and Gram), by device; see docs/engine.md.
TILE_BYTES = {"cpu": 1 << 26, "cuda": 1 << 30}
# Bytes of a tile of the pool differences in the float64 re-rank, per CPU thread. On a CPU it stays
# in the cache while the subtraction, the squared norms and the Gram pass over it; smaller tiles
# were measured slower (each op's cost per call, more so with several threads).
RERANK_BYTES = {"cpu": 1 << 23, "cuda": 1 << 30}
# Bytes of the float64 (or float32) copy of a block of points made where the dtypes differ.
CONVERT_BYTES = 1 << 26
# The fraction of the distinct rows a missed row's pool may grow to before the float64 pass takes
# it instead (see exact_knn), by device: a GPU's float64 products are fast next to a wide re-rank's
# gathers (an H200 spent 6.8 s on ResNet-18's stem aggregate at N = 10,000 with 1/64).
WIDER_POOL = {"cpu": 1 / 8, "cuda": 0}
# Rows the first pass leaves go straight to the float64 brute force when their differences to all
# distinct rows number at most this many elements (by device): then another pass's fixed cost
# (its product, top-k and re-rank, each a few kernel launches on a GPU) exceeds the brute force's.
BRUTE_ELEMENTS = {"cpu": 1 << 20, "cuda": 1 << 26}
# Threads, each with its own stream, that search the point sets of one call on a GPU (see _each_set).
SEARCH_STREAMS = {"cpu": 1, "cuda": 4}
# Point sets whose centred copy (in a search pass's dtype) is at most this large keep it; larger
# ones (a whole layer's aggregate) are centred block by block on every tile instead.
CENTRED_BYTES = 1 << 28


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


def _bound_constant(D, dtype, device):
    """c such that S_ij = 2 u_i.u_j - (1 - 2c)|u_j|^2, computed in `dtype`, gives the lower bound
    (1 - 2c)|u_i|^2 - S_ij <= ||u_i - u_j||^2.

    The float computation of S (inputs rounded to `dtype`, dot products of length D) errs by at
    most about (D/2 + 4) eps (|u_i| + |u_j|)^2 <= 2 c (|u_i|^2 + |u_j|^2) for unit roundoff eps with
    c = (D + 8) eps, which the two (1 - 2c) factors absorb. The bound is negated so that the pool
    is torch.topk's faster `largest` end, and its query term is left out of the ranking.
    """
    return (D + 8) * _unit_roundoff(dtype, device)


def row_blocks(n, row_bytes, budget):
    """Slices of range(n) whose rows take at most `budget` bytes (one row at least)."""
    step = max(1, budget // max(1, row_bytes))
    return [slice(lo, min(n, lo + step)) for lo in range(0, n, step)]


def sq_norms(X):
    """Squared norms of the rows of X (..., D) in float64, converted block by block."""
    flat = X.reshape(-1, X.shape[-1])
    out = torch.empty(len(flat), dtype=torch.float64, device=X.device)
    for part in row_blocks(len(flat), 8 * flat.shape[1], CONVERT_BYTES):
        block = flat[part].to(torch.float64)
        out[part] = torch.einsum("nd,nd->n", block, block)
    return out.view(X.shape[:-1])


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


def _whole_gram(P, k):
    """Whether the re-rank keeps the whole Gram of a pool of P (a pool of the usual size) rather
    than computing its chosen candidates' Gram anew (a widened pool, whose P x P Gram is large)."""
    return P <= k + default_margin(k)


def _chosen_gram(G_pool, pos, rows):
    """Gram matrices (B, k, k) of the chosen pool entries pos (B, k), taken from the pool's Gram
    G_pool (B, P, P), for the rows selected by the mask `rows` (0 elsewhere, and where pos < 0)."""
    B, k = pos.shape
    at = pos.clamp(min=0)
    G = G_pool.gather(1, at[:, :, None].expand(B, k, G_pool.shape[2])).gather(2, at[:, None, :].expand(B, k, k))
    ok = pos >= 0
    return G.masked_fill_(~(ok[:, :, None] & ok[:, None, :] & rows[:, None, None]), 0)


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

    Rows are grouped by a hash of their bits (integer arithmetic: equal rows always get equal
    hashes, whatever the BLAS), then checked to be equal; only if some are not (a collision) does
    the slower lexicographic unique run. U is Xc itself, without a copy, when no rows are equal.
    """
    bits = torch.int32 if Xc.element_size() == 4 else torch.int64
    factor = torch.randint(1, 2**62, (Xc.shape[1],), generator=_generator(Xc.device), device=Xc.device)
    code = torch.empty(len(Xc), dtype=torch.int64, device=Xc.device)
    for part in row_blocks(len(Xc), 24 * Xc.shape[1], CONVERT_BYTES):
        # + 0.0 turns -0.0 into 0.0, the one pair of equal floats with different bits; int64 wraps
        code[part] = ((Xc[part] + 0.0).view(bits).to(torch.int64) * factor).sum(1)
    _, group, mult = torch.unique(code, return_inverse=True, return_counts=True)
    index = torch.arange(len(group), device=Xc.device)
    first = torch.full_like(mult, len(group)).scatter_reduce_(0, group, index, "amin")
    if len(first) == len(group):  # all distinct: each row is its own group
        return Xc, index, torch.ones_like(mult)
    copy = (first[group] != index).nonzero()[:, 0]
    if torch.equal(Xc[copy], Xc[first[group[copy]]]):
        return Xc[first], group, mult
    return torch.unique(Xc, dim=0, return_inverse=True, return_counts=True)


def _generator(device):
    return torch.Generator(device=device).manual_seed(0)  # the same hash on every call


class _PointSet:
    """One point set merged into distinct rows, with what the search passes share."""

    def __init__(self, Xc, k):
        U, self.group, self.mult = _distinct_rows(Xc)
        self.U, self.k = U, k
        # the bounds are computed on centred points v = u - m: the same distances, but rounding
        # errors that scale with |v|^2 instead of |u|^2 (activations sit far from the origin)
        mean = sum(U[part].to(torch.float64).sum(0) for part in row_blocks(len(U), 8 * U.shape[1], CONVERT_BYTES))
        self.mean = (mean / len(U)).to(U.dtype)  # float32 m keeps u - m exact in float64
        self.sq = torch.cat([sq_norms(self.centred(part, torch.float64))
                             for part in row_blocks(len(U), 8 * U.shape[1], CONVERT_BYTES)])
        self.held = {}  # the centred points in each search dtype, where they fit CENTRED_BYTES
        self.slack = 1 + 4 * (U.shape[1] + 2) * 2.0**-53  # a float64 squared distance's relative error
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

    def centred(self, rows, dtype):
        """v = u - m of the given rows (a slice or an index tensor), rounded to `dtype`."""
        if self.U.dtype == dtype:  # one correctly rounded subtraction: fl(u - m), no float64 detour
            return self.U[rows] - self.mean
        return (self.U[rows].to(torch.float64) - self.mean.to(torch.float64)).to(dtype)

    def bounds(self, rows, dtype, c, buffers):
        """S (B, n_u) in `dtype` of _bound_constant: 2 v_i.v_j - (1 - 2c)|v_j|^2 for the query rows."""
        n_u, D = self.U.shape
        S = buffers.get("bound", (len(rows), n_u), dtype)
        bias = (-(1 - 2 * c) * self.sq).to(dtype)
        size = torch.finfo(dtype).bits // 8
        if dtype not in self.held and n_u * D * size <= CENTRED_BYTES:
            self.held[dtype] = torch.cat([self.centred(part, dtype) for part in row_blocks(n_u, 8 * D, CONVERT_BYTES)])
        if dtype in self.held:
            V = self.held[dtype]
            torch.addmm(bias, V.index_select(0, rows), V.T, alpha=2, out=S)
        else:  # too large to hold twice: centred a block of columns at a time
            Q = self.centred(rows, dtype)
            for part in row_blocks(n_u, 8 * D, CONVERT_BYTES):
                S[:, part] = torch.addmm(bias[part], Q, self.centred(part, dtype).T, alpha=2)
        S[torch.arange(len(rows), device=S.device), rows] = -math.inf  # the query itself
        return S

    def pools(self, S, rows, c, P):
        """The pools of query rows from their bounds S: the P distinct rows of smallest lower bound,
        and for each query the P-th smallest bound (no distinct row left out of the pool is nearer)."""
        low, cand_u = torch.topk(S, P, dim=1)
        outside = (1 - 2 * c) * self.sq[rows] - low[:, -1].double()
        if P == len(self.U) - 1:
            outside.fill_(math.inf)  # nothing was left out
        return cand_u, outside

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

    def gram(self, rows, cand, buffers, tile_bytes):
        """Gram matrices (B, k, k) of the point candidates' (B, k) differences to their query rows
        (0 where a candidate is -1), made a tile of differences at a time."""
        k, D = self.k, self.U.shape[1]
        G = torch.empty((len(rows), k, k), dtype=torch.float64, device=cand.device)
        targets = torch.where(cand >= 0, self.group[cand.clamp(min=0)], -1)
        for part in row_blocks(len(rows), k * D * (16 + self.U.element_size()), tile_bytes):
            Y = self.differences(rows[part], targets[part], buffers)
            torch.bmm(Y, Y.mT, out=G[part])
        return G

    def rerank(self, rows, cand_u, outside, buffers, tile_bytes):
        """Certified candidates of query rows from their pools: (cand, d2, gram, certified).

        The pool's differences are made a tile of `tile_bytes` at a time (on a CPU, one that stays
        in the cache), which gives their squared norms and, for a pool of the usual size, their
        whole Gram. The ranking and the certificate then run once over all the rows. A widened
        pool's Gram would be too large: its rows get the Gram of their chosen candidates alone.
        """
        k, (B, P), D = self.k, cand_u.shape, self.U.shape[1]
        whole = _whole_gram(P, k)
        d2_u = torch.empty((B, P), dtype=torch.float64, device=cand_u.device)
        G_pool = torch.empty((B, P, P) if whole else (0,), dtype=torch.float64, device=cand_u.device)
        for part in row_blocks(B, P * D * (16 + self.U.element_size()), tile_bytes):
            Y = self.differences(rows[part], cand_u[part], buffers)
            torch.sum(torch.mul(Y, Y, out=buffers.get("square", Y.shape, torch.float64)), -1, out=d2_u[part])
            if whole:
                torch.bmm(Y, Y.mT, out=G_pool[part])
        # distinct rows by distance (a row's members are tied with each other, in index order);
        # members of two distinct rows at one distance would interleave: left to the brute force
        d2_u, order = d2_u.sort(dim=1)
        cand, d2, pos = self.unfold(cand_u.gather(1, order), d2_u, order)
        tied = (d2_u[:, 1:] == d2_u[:, :-1]).any(1)
        # the float64 squared distance itself may be off by a few ulps per coordinate
        certified = ~tied & ((d2[:, -1] * self.slack < outside) | (outside == math.inf))
        if whole:
            return cand, d2, _chosen_gram(G_pool, pos, certified), certified
        G = torch.zeros((B, k, k), dtype=torch.float64, device=cand.device)
        chosen = certified.nonzero()[:, 0]
        G[chosen] = self.gram(rows[chosen], cand[chosen], buffers, tile_bytes)
        return cand, d2, G, certified

    def brute(self, rows, buffers, tile_bytes):
        """Float64 brute force over whole rows: the reference definition, for rows nothing certifies."""
        U, k = self.U, self.k
        n_u, D = U.shape
        out = []
        for part in row_blocks(len(rows), 8 * (3 * len(self.group) + k * D), tile_bytes):
            part = rows[part]
            Up = U[part].to(torch.float64)
            d2_u = torch.empty((len(part), n_u), dtype=torch.float64, device=U.device)
            for cols in row_blocks(n_u, 8 * len(part) * D, tile_bytes):
                d2_u[:, cols] = ((U[cols].to(torch.float64)[None, :, :] - Up[:, None, :]) ** 2).sum(-1)
            d2_u[torch.arange(len(part), device=U.device), part] = math.inf
            d2 = d2_u[:, self.group]  # to every point (members of a distinct row share its distance)
            point = torch.arange(d2.shape[1], device=U.device).expand_as(d2)
            cand, d2 = (t[:, :k] for t in _sort_by_distance_then_index(point, d2))
            cand = cand.masked_fill(d2 == math.inf, -1)
            out.append((cand, d2, self.gram(part, cand, buffers, tile_bytes)))
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
    """Exact kNN of every point of each point set in X (C, N, D) float32 or float64; see the module
    docstring.

    Also returns, per point, the Gram matrix of its candidates' differences to it, from which
    the kernels are built without touching the data again. `buffers` (a Buffers) lets repeated
    calls share their scratch memory.
    """
    C, N, D = X.shape
    tile_bytes = tile_bytes or TILE_BYTES.get(X.device.type, TILE_BYTES["cuda"])
    per_thread = torch.get_num_threads() if X.device.type == "cpu" else 1
    rerank_bytes = min(tile_bytes, RERANK_BYTES.get(X.device.type, RERANK_BYTES["cuda"]) * per_thread)
    indices = torch.empty((C, N, k), dtype=torch.int64, device=X.device)
    sqdist = torch.empty((C, N, k), dtype=torch.float64, device=X.device)
    grams = torch.empty((C, N, k, k), dtype=torch.float64, device=X.device)
    groups = torch.empty((C, N), dtype=torch.int64, device=X.device)
    n_dups = torch.empty((C, N), dtype=torch.int64, device=X.device)

    def search(c, buffers):
        indices[c], sqdist[c], n_dups[c], groups[c], rows = _search_set(
            X[c], k, grams[c], duplicates == "keep", margin, tile_bytes, rerank_bytes, buffers)
        return rows

    rows_by_pass = {"float32": 0, "float64": 0, "brute": 0}
    for rows in _each_set(search, C, X.device, buffers or Buffers(X.device)):
        for name, n in rows.items():
            rows_by_pass[name] += n
    return KNN(indices, sqdist, grams, groups, n_dups, rows_by_pass)


def _each_set(search, C, device, buffers):
    """[search(c, buffers) for c in range(C)]: one set after another, or on a GPU in SEARCH_STREAMS
    threads with a CUDA stream each. A set's search there is short, and its kernel launches and
    synchronisations dominate; threads on their own streams overlap them."""
    n_streams = min(C, SEARCH_STREAMS.get(device.type, 1))
    if n_streams <= 1:
        return [search(c, buffers) for c in range(C)]
    todo, lock, main = iter(range(C)), threading.Lock(), _current_stream(device)

    def worker():
        done, own = {}, Buffers(device)
        stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        with torch.cuda.stream(stream) if stream else contextlib.nullcontext():
            if stream:
                stream.wait_stream(main)  # the input and the outputs were made on the caller's stream
            while (c := _next(todo, lock)) is not None:
                done[c] = search(c, own)
        if stream:
            stream.synchronize()
        return done

    with ThreadPoolExecutor(n_streams) as pool:
        done = {c: rows for part in pool.map(lambda _: worker(), range(n_streams)) for c, rows in part.items()}
    return [done[c] for c in range(C)]


def _current_stream(device):
    return torch.cuda.current_stream(device) if device.type == "cuda" else None


def _next(items, lock):
    with lock:
        return next(items, None)


def _search_set(Xc, k, G_out, keep, margin, tile_bytes, rerank_bytes, buffers):
    """Exact kNN of one point set Xc (N, D): (indices, sqdist, n_dup, group, rows settled per pass);
    the candidates' Grams are written into G_out (N, k, k)."""
    D = Xc.shape[1]
    rows_by_pass = {"float32": 0, "float64": 0, "brute": 0}
    brute_elements = BRUTE_ELEMENTS.get(Xc.device.type, BRUTE_ELEMENTS["cuda"])
    ps = _PointSet(Xc, k)
    # float32 would overflow on huge values; such data go straight to the float64 pass
    passes = [torch.float32, torch.float64] if ps.sq.max() < 1e30 else [torch.float64]
    n_u = len(ps.U)
    cand = torch.full((n_u, k), -1, dtype=torch.int64, device=Xc.device)
    d2 = torch.full((n_u, k), math.inf, dtype=torch.float64, device=Xc.device)
    G, slot = G_out, ps.members[:, 0]  # a distinct row's Gram goes to its first member's slot
    P = min(k + (default_margin(k) if margin is None else margin), n_u - 1)
    if P == 0:  # all points equal: no candidates
        G.zero_()
    pending = torch.arange(n_u if P > 0 else 0, device=Xc.device)
    for dtype in passes:
        if len(pending) == 0 or (dtype != passes[0] and len(pending) * n_u * D <= brute_elements):
            break  # nothing left, or so little that the brute force costs less than another pass
        cst = _bound_constant(D, dtype, Xc.device)
        # tiles of queries for the bound product, then smaller ones for the float64 re-rank
        size = torch.finfo(dtype).bits // 8
        bound_rows = max(1, tile_bytes // (n_u * 2 * size + D * (size + 8)))  # bounds, centred queries
        entry_bytes = D * (8 * 2 + Xc.element_size())  # one pool entry's differences in a re-rank
        # how far a pool may grow before the float64 product of the next pass is cheaper
        widest = min(int(n_u * WIDER_POOL.get(Xc.device.type, WIDER_POOL["cuda"])), tile_bytes // entry_bytes)
        failed = []

        def settle(rows, pool, outside):
            """Re-rank in tiles; keep the certified rows, return the others and their k-th distance."""
            missed = []
            P_t = pool.shape[1]  # the Grams, the distances and their order
            row_bytes = (P_t**2 * 8 if _whole_gram(P_t, k) else 0) + P_t * 8 * 4 + k * k * 8 * 4
            for part in row_blocks(len(rows), row_bytes, tile_bytes):
                cand_t, d2_t, G_t, ok = ps.rerank(rows[part], pool[part], outside[part], buffers, rerank_bytes)
                # certified rows first: one device synchronisation splits them from the others
                order, n_ok = torch.argsort(~ok, stable=True), int(ok.sum())
                got, lost = order[:n_ok], order[n_ok:]
                at = rows[part].index_select(0, got)
                cand.index_copy_(0, at, cand_t.index_select(0, got))
                d2.index_copy_(0, at, d2_t.index_select(0, got))
                G.index_copy_(0, slot.index_select(0, at), G_t.index_select(0, got))
                missed.append((part.start + lost, d2_t[lost, -1]))
            return [torch.cat(t) for t in zip(*missed)]

        # if a pass that is not the last settles fewer than half of its first tile's rows (float32
        # bounds too loose for the data), the other rows skip it
        for n_tile, tile in enumerate(torch.split(pending, bound_rows)):
            S = ps.bounds(tile, dtype, cst, buffers)
            missed, kth = settle(tile, *ps.pools(S, tile, cst, P))
            # a missed row's pool grows to every distinct row whose bound is within its current
            # k-th distance (then certified unless tied), where that is far fewer than all
            reach = (1 - 2 * cst) * ps.sq[tile[missed]] - kth * ps.slack
            pool_size = (S[missed] >= reach.to(S.dtype)[:, None]).sum(1) + 1
            wider = pool_size <= min(n_u - 1, max(P + 1, widest))
            if wider.any():
                local = missed[wider]
                again = ps.pools(S[local], tile[local], cst, int(pool_size[wider].max()))
                missed = torch.cat([missed[~wider], local[settle(tile[local], *again)[0]]])
            failed.append(tile[missed])
            if n_tile == 0 and dtype != passes[-1] and 2 * len(missed) > len(tile):
                failed.append(pending[len(tile):])
                break
        name = str(dtype).removeprefix("torch.")
        rows_by_pass[name] += len(pending)
        pending = torch.cat(failed)
        rows_by_pass[name] -= len(pending)
    if len(pending):
        cand[pending], d2[pending], G[slot[pending]] = ps.brute(pending, buffers, tile_bytes)
        rows_by_pass["brute"] += len(pending)
    indices, sqdist, n_dup = ps.to_points(cand, d2, G, keep)
    return indices, sqdist, n_dup, ps.group, rows_by_pass
