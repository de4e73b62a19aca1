"""Exact k-nearest neighbours of every point of C point sets, tiled, with a certified fast pass.

The candidates of query i are the k nearest *other* points by Euclidean distance, ties broken by
lower index, as a float64 brute force on direct differences finds them. Points exactly equal to
the query (duplicates, e.g. all-zero maps after ReLU) follow the policy: `drop` leaves them out,
`keep` puts them first (distance 0, ascending index).

The points may be float32 (kept as they are: the data is held once) or float64; every float64
quantity is computed from them converted tile by tile.

Exactly equal points are merged first (grouped by an integer hash of their bits, then verified), so the
search runs over the distinct rows U, a group of m equal points being one entry that stands for
its m members (ties inside a group cost nothing). Point sets are searched in batches (SETS_PER_BATCH:
on a GPU many small sets at once, whose kernel launches then cost those of one set), over tiles of
distinct query rows that join whole sets while they fit (no N x N matrix is held):
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
A set small enough for its float64 Gram matrix H = V V^T of centred rows (GRAM_BYTES; on a CPU,
sets of up to 2,048 distinct rows) gets H instead, from one symmetric product (for a layer's
aggregate, the concatenation of sets searched before it, as the sum of theirs: GramSum). Its
bounds, pools' distances and candidates' Grams are then read from H, with the certificate widened
by H's rounding errors. Rows H cannot certify (near ties, or rows far from the set's mean relative to their
neighbourhood, where H's error would exceed GRAM_SCALE of it) are re-ranked from differences.
"""

import contextlib
import math
from dataclasses import dataclass

import numpy as np
import torch

from cwnnk.device import buffer_bytes

# Bytes a query tile may use (bound block, pool differences and Gram), by device; see docs/engine.md.
# On a GPU it is large, so that a tile joins many small point sets (cwnnk.device.buffer_bytes caps it).
TILE_BYTES = {"cpu": 1 << 26, "cuda": 1 << 32}
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
# Point sets whose centred copy (in a search pass's dtype) is at most this large keep it; larger
# ones (a whole layer's aggregate) are centred block by block on every tile instead.
CENTRED_BYTES = 1 << 28
# Point sets searched together, by device, and at most as many as their float64 centred copy fits
# in CENTRED_BYTES (and 2^13: a set's number is held in the top bits of a row's hash). On a GPU
# a batch costs the kernel launches of one set; on a CPU batches were measured a little slower.
SETS_PER_BATCH = {"cpu": 1, "cuda": 1 << 12}
# Point sets (a batch of them) whose float64 Gram matrix H = V V^T of centred rows takes at most this
# many bytes get it, by device: then every bound, distance and candidate Gram is read from H (one
# symmetric product per set) instead of a float32 product plus a float64 re-rank of gathered
# differences. On a CPU, up to 2,048 distinct rows: measured faster up to N = 2,000 and no faster
# from N = 3,000 (H's passes over N^2 values grow faster than the re-rank saves). Off on a GPU: not
# measured there.
GRAM_BYTES = {"cpu": 1 << 25, "cuda": 0}
# A row's candidates' Gram is read from H only where H's rounding error bound is at most this share
# of the row's k-th squared distance; otherwise it comes from direct differences (docs/engine.md).
GRAM_SCALE = 2.0**-36


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


def _largest(S, P):
    """The P largest entries of each row of S (R, W) and their columns, in no particular order.

    On a CPU, numpy's introselect finds each row's P-th largest value and numpy's flatnonzero the
    entries at least as large, which are the P largest unless ties make them more (measured twice
    as fast as torch.topk in all, and the flat positions 2.3x as fast as torch's nonzero). It
    works on a copy of S: used for the bounds read from H, whose tiles are small."""
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


def _self_products(blocks, n, buffers):
    """V V^T (n, n) float64 of rows V (n, D) given as blocks of columns (n, D_b), into buffers' "H".

    On a CPU by numpy's matmul, which runs BLAS's symmetric rank-k update for V V^T (half a
    product's work; torch has none), mirrors it (H is exactly symmetric) and releases the GIL
    meanwhile (scipy's dsyrk wrapper holds it, which stalled the solver thread for the whole
    product). In one BLAS thread: BLAS's threads and torch's spin against each other (with 2 of
    each on 2 cores the search was measured 1.2x to 2.4x slower). Into a reused buffer: a fresh one
    page-faults, at about 3 us a page on the dev machine.
    """
    if buffers.device.type != "cpu":
        H = None
        for V in blocks:
            H = V @ V.T if H is None else H.addmm_(V, V.T)
        return H
    H = buffers.get("H", (n, n), torch.float64)
    with _one_blas_thread():
        for i, V in enumerate(blocks):
            V = V.numpy()
            if i == 0:
                np.matmul(V, V.T, out=H.numpy())
            else:
                H.add_(torch.from_numpy(np.matmul(V, V.T)))
    return H


_BLAS = {}


@contextlib.contextmanager
def _one_blas_thread():
    """scipy's BLAS (its default is every core) runs one thread inside the block."""
    if "libs" not in _BLAS:
        from threadpoolctl import ThreadpoolController

        _BLAS["libs"] = ThreadpoolController().select(user_api="blas").lib_controllers
    before = [lib.num_threads for lib in _BLAS["libs"]]
    for lib in _BLAS["libs"]:
        lib.set_num_threads(1)
    try:
        yield
    finally:
        for lib, n in zip(_BLAS["libs"], before):
            lib.set_num_threads(n)


def _generator(device):
    return torch.Generator(device=device).manual_seed(0)  # the same hash on every call


class GramSum:
    """The Gram matrices H of point sets searched one after another (a layer's channels, in order),
    summed in point space: (x_p - m).(x_q - m) of their concatenation (the layer's aggregate), for
    centre m their centres concatenated. The aggregate's H is then read from it instead of computed
    by its own product of N^2 D / 2 float64 multiply-adds (0.3 to 0.4 s of the default experiment's
    2 s of search). The sum's rounding error is within the bound of one product of length
    D = sum D_c (docs/engine.md), so the certificates stand as they are.

    Only sets that get H contribute; if one does not (too many distinct rows), the sum is void and
    the aggregate computes its own.
    """

    def __init__(self, N, device):
        self.N, self.dim, self.void = N, 0, N * N * 8 > GRAM_BYTES.get(device.type, GRAM_BYTES["cuda"])
        self.A, self.means = None, []

    def add(self, ps):
        """Add the H of each set of the _PointSets `ps` (B sets of N points)."""
        self.dim += len(ps.size) * ps.U.shape[1]
        if self.void or ps.H is None:
            self.void, self.A = True, None
            return
        N = self.N
        self.A = torch.zeros((N, N), dtype=torch.float64, device=ps.U.device) if self.A is None else self.A
        for b, n in enumerate(ps.size.tolist()):
            at = ps.local[ps.group[b * N:(b + 1) * N]]  # each point's distinct row in its set
            H = ps.H[b, :n, :n]
            self.A.add_(H if _in_order(at) else H[at][:, at])
            self.means.append(ps.mean[b].to(torch.float64))

    def covers(self, X):
        """Whether the sum is the Gram matrix of X (1, N, D), the concatenation of the sets added."""
        return not self.void and self.A is not None and X.shape[0] == 1 and X.shape[1:] == (self.N, self.dim)

    @property
    def mean(self):
        return torch.cat(self.means)

    def gram(self, points):
        """H (1, R, R) of the distinct rows given by one member point each."""
        return (self.A if _in_order(points) and len(points) == self.N else self.A[points][:, points])[None]


def _in_order(at):
    """Whether `at` is 0, 1, 2, ...: each point its own distinct row, in order (no gather needed).
    Not implied by their count: in a batch where another set has duplicates, rows are numbered by hash."""
    return bool((at == torch.arange(len(at), device=at.device)).all())


class _PointSets:
    """B point sets of N points searched together, merged into distinct rows.

    A distinct row has a global id (the rows of set 0, then those of set 1, ...) and a local one
    within its set; points are numbered b * N + i. Every search step works on a tile of global
    query rows, whatever their sets: on a GPU, one step for many small sets costs the kernel
    launches of one.
    """

    def __init__(self, X, k, buffers, gram_from=None):
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
        gram = B * self.width**2 * 8 <= GRAM_BYTES.get(dev.type, GRAM_BYTES["cuda"])  # H fits (see below)
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
        # members of each distinct row, ascending index; only the first k + 1 can reach a list
        width = int(self.mult.max().clamp(max=k + 1))
        order = torch.argsort(self.group, stable=True)
        start = torch.cumsum(self.mult, 0) - self.mult
        j = torch.arange(width, device=dev)
        members = order[(start[:, None] + j).clamp(max=len(order) - 1)]
        self.members = torch.where(j < self.mult[:, None], members, -1)
        self.held = {}  # the centred points in each search dtype, (B, width, D), where they fit CENTRED_BYTES
        # H: v_i.v_j of each set's centred rows, where it fits; its diagonal is then the squared norms
        self.H = None
        if gram:
            self.H = gram_from.gram(self.members[:, 0]) if summed else self.gram_matrix(buffers)
            self.sq = self.H.diagonal(dim1=1, dim2=2)[self.owner, self.local]
        else:
            self.sq = torch.cat([sq_norms(self.centred(part, torch.float64)) for part in row_blocks(n_u, 8 * D, CONVERT_BYTES)])
        self.slack = 1 + 4 * (D + 2) * 2.0**-53  # a float64 squared distance's relative error

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

    def gram_matrix(self, buffers):
        """H (B, width, width) float64: v_i.v_j of each set's centred rows (0 past its rows), made
        a block of coordinates at a time (a single set's H is one of `buffers`)."""
        B, W, D = len(self.size), self.width, self.U.shape[1]
        H = torch.zeros((B, W, W), dtype=torch.float64, device=self.U.device) if B > 1 else None
        for b, (lo, n) in enumerate(zip(self.start.tolist(), self.size.tolist())):
            blocks = (self.U[lo:lo + n, cols].to(torch.float64) - self.mean[b, cols].to(torch.float64)
                      for cols in row_blocks(D, 8 * n, CONVERT_BYTES))
            Hb = _self_products(blocks, n, buffers)
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

    def bounds(self, rows, dtype, c, buffers):
        """S (R, width) in `dtype` of _bound_constant: 2 v_i.v_j - (1 - 2c)|v_j|^2 for the query rows
        (one tile) against the local rows j of their own set; -inf at the query and past its set.
        Read from H where the sets have it (their only pass is float64), else one product."""
        B = len(self.size)
        S = buffers.get("bound", (len(rows), self.width), dtype)
        bias = (-(1 - 2 * c) * self.sq).to(dtype)
        padded_bias = bias if B == 1 else bias.new_full((B, self.width), -math.inf).index_put_((self.owner, self.local), bias)
        owner, local = self.owner[rows], self.local[rows]
        if self.H is not None:
            W = self.width
            at = owner * W + local
            H, lo = self.H.view(B * W, W), int(at[0])
            column = padded_bias if B == 1 else padded_bias.view(B, W)[owner]
            if int(at[-1]) - lo + 1 == len(at):  # consecutive rows (the usual tile): H's rows themselves
                torch.add(column, H[lo:lo + len(at)], alpha=2, out=S)
            else:
                torch.index_select(H, 0, at, out=S).mul_(2).add_(column)
        else:
            self._product_bounds(S, rows, dtype, bias, padded_bias, buffers)
        S[torch.arange(len(rows), device=S.device), local] = -math.inf  # the query itself
        return S

    def _product_bounds(self, S, rows, dtype, bias, padded_bias, buffers):
        """bounds() by one product of the tile's centred rows with their sets' rows."""
        B, n_u, D = len(self.size), len(self.U), self.U.shape[1]
        size = torch.finfo(dtype).bits // 8
        if dtype not in self.held and (B > 1 or n_u * D * size <= CENTRED_BYTES):
            V = torch.cat([self.centred(part, dtype) for part in row_blocks(n_u, 8 * D, CONVERT_BYTES)])
            self.held[dtype] = V[None] if B == 1 else V.new_zeros((B, self.width, D)).index_put_((self.owner, self.local), V)
        if dtype not in self.held:  # too large to hold twice: centred a block of columns at a time
            Q = self.centred(rows, dtype)
            for part in row_blocks(n_u, 8 * D, CONVERT_BYTES):
                S[:, part] = torch.addmm(bias[part], Q, self.centred(part, dtype).T, alpha=2)
        elif B == 1:
            V = self.held[dtype][0]
            torch.addmm(bias, V.index_select(0, rows), V.T, alpha=2, out=S)
        else:
            V = self.held[dtype]
            owner, local = self.owner[rows], self.local[rows]
            sets, counts = torch.unique_consecutive(owner, return_counts=True)
            T = int(counts.max())
            which = torch.repeat_interleave(torch.arange(len(sets), device=S.device), counts)
            rank = torch.arange(len(rows), device=S.device) - (counts.cumsum(0) - counts)[which]
            Q = V.new_zeros((len(sets), T, D)).index_put_((which, rank), V[owner, local])
            if len(sets) * T == len(rows):  # a tile of whole sets of one size: S itself
                torch.baddbmm(padded_bias[sets, None, :], Q, V[sets].mT, alpha=2, out=S.view(len(sets), T, self.width))
            else:  # computed padded, then the real rows copied out
                padded = buffers.get("padded", (len(sets), T, self.width), dtype)
                torch.baddbmm(padded_bias[sets, None, :], Q, V[sets].mT, alpha=2, out=padded)
                S.copy_(padded[which, rank])

    def pools(self, S, rows, c, P):
        """The pools of query rows from their bounds S: the P distinct rows of smallest lower bound
        (-1 past the rows of a smaller set), and for each query the P-th smallest bound (no distinct
        row left out of the pool is nearer)."""
        low, col = _largest(S, P) if self.H is not None else torch.topk(S, P, dim=1, sorted=False)
        cand_u = torch.where(low == -math.inf, -1, col + self.start[self.owner[rows]][:, None])
        outside = (1 - 2 * c) * self.sq[rows] - low.amin(1).double()
        return cand_u, outside.masked_fill_(self.size[self.owner[rows]] <= P + 1, math.inf)  # nothing left out

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
        """Certified candidates of query rows from their pools: (cand, d2, gram, certified), from
        H where the sets have it, else (and for the rows H leaves) from the pool's differences."""
        if self.H is None:
            return self._rerank_differences(rows, cand_u, outside, buffers, tile_bytes)
        found = self._rerank_gram(rows, cand_u, outside)
        redo = (~found[3]).nonzero()[:, 0]
        if len(redo):
            again = self._rerank_differences(rows[redo], cand_u[redo], outside[redo], buffers, tile_bytes)
            for t, value in zip(found, again):
                t[redo] = value
        return found

    def _rerank_gram(self, rows, cand_u, outside):
        """rerank() with every distance and Gram entry read from H, nothing gathered from the points.

        H's values err by at most c (|v_a|^2 + |v_b|^2) (c of _bound_constant), so each squared
        distance sq_i + sq_a - 2 H_ia lies within err = 2c (sq_i + sq_a) of its own. A row is
        certified where these intervals fix its ranking: each chosen distinct row is below every
        later one's interval and the P-th lower bound (ties stay uncertified), and where the Gram
        G_ab = H_ab - H_ai - H_ib + H_ii, whose error is below 6 c max(sq), is within GRAM_SCALE of
        the k-th squared distance (rows far from their set's mean relative to it are not)."""
        k = self.k
        c = _bound_constant(self.U.shape[1], torch.float64, cand_u.device)
        W, pool = self.width, cand_u.clamp(min=0)
        local = (lambda u: u) if len(self.size) == 1 else (lambda u: self.local[u])  # noqa: E731
        top = (self.owner[rows] * W + local(rows)) * W  # where each query's row of H starts
        h = _take(self.H, top[:, None] + local(pool))  # (R, P) v_i . v_a
        sq_i, sq_a = self.sq[rows], self.sq[pool]
        d2_u = (sq_i[:, None] + sq_a).sub_(h, alpha=2).masked_fill_(cand_u < 0, math.inf)
        d2_u, order = d2_u.sort(dim=1)
        sq_a = sq_a.gather(1, order)
        err = (2 * c) * (sq_i[:, None] + sq_a)
        cand, d2, pos = self.unfold(cand_u.gather(1, order), d2_u, order)
        count = torch.where(cand_u >= 0, self.mult[pool], 0).clamp(max=k).gather(1, order)
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
        G = _take(self.H, (corner[:, None] + mine * W)[:, :, None] + mine[:, None, :])
        G.sub_(h[:, :, None]).sub_(h[:, None, :] - sq_i[:, None, None])
        ok = pos >= 0
        if not bool(ok.all() & certified.all()):
            G.masked_fill_(~(ok[:, :, None] & ok[:, None, :] & certified[:, None, None]), 0)
        return cand, d2, G, certified

    def _rerank_differences(self, rows, cand_u, outside, buffers, tile_bytes):
        """rerank() from the direct differences of each pool.

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
        d2_u.masked_fill_(cand_u < 0, math.inf)  # past a small set's rows: never chosen
        # distinct rows by distance (a row's members are tied with each other, in index order);
        # members of two distinct rows at one distance would interleave: left to the brute force
        d2_u, order = d2_u.sort(dim=1)
        cand, d2, pos = self.unfold(cand_u.gather(1, order), d2_u, order)
        tied = ((d2_u[:, 1:] == d2_u[:, :-1]) & (d2_u[:, 1:] < math.inf)).any(1)
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
        U, k, N = self.U, self.k, self.n_points
        n_u, D = U.shape
        out = []
        for part in row_blocks(len(rows), 8 * (3 * N + self.width + k * D), tile_bytes):
            part = rows[part]
            owner, Up = self.owner[part], U[part].to(torch.float64)
            d2_u = torch.empty((len(part), self.width), dtype=torch.float64, device=U.device)
            for cols in row_blocks(self.width, 8 * len(part) * D, tile_bytes):
                col = torch.arange(cols.start, cols.stop, device=U.device)
                if len(self.size) == 1:
                    d2_u[:, cols] = ((U[cols].to(torch.float64)[None, :, :] - Up[:, None, :]) ** 2).sum(-1)
                else:  # the rows of each query's own set; inf past them
                    at = (self.start[owner][:, None] + col).clamp(max=n_u - 1)
                    d2 = ((U[at].to(torch.float64) - Up[:, None, :]) ** 2).sum(-1)
                    d2_u[:, cols] = d2.masked_fill_(col >= self.size[owner][:, None], math.inf)
            d2_u[torch.arange(len(part), device=U.device), self.local[part]] = math.inf
            # to every point of the set (members of a distinct row share its distance)
            points = self.group.view(-1, N)[owner]
            d2 = d2_u.gather(1, points - self.start[owner][:, None])
            point = torch.arange(N, device=U.device).expand_as(d2)
            cand, d2 = (t[:, :k] for t in _sort_by_distance_then_index(point, d2))
            cand = torch.where(d2 == math.inf, -1, cand + owner[:, None] * N)
            out.append((cand, d2, self.gram(part, cand, buffers, tile_bytes)))
        return [torch.cat(t) for t in zip(*out)]

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


def exact_knn(X, k, *, duplicates="drop", margin=None, tile_bytes=None, buffers=None, sets_per_batch=None,
              add_gram_to=None, gram_from=None):
    """Exact kNN of every point of each point set in X (C, N, D) float32 or float64; see the module
    docstring.

    Also returns, per point, the Gram matrix of its candidates' differences to it, from which
    the kernels are built without touching the data again. `buffers` (a Buffers) lets repeated
    calls share their scratch memory. `sets_per_batch` overrides SETS_PER_BATCH. add_gram_to: a
    GramSum that the sets' H are added to; gram_from: a GramSum of which X (1, N, D) is the
    concatenation, whose H it uses where it needs one (see GramSum).
    """
    C, N, D = X.shape
    tile_bytes = tile_bytes or buffer_bytes(TILE_BYTES, X.device)
    per_thread = torch.get_num_threads() if X.device.type == "cpu" else 1
    rerank_bytes = min(tile_bytes, RERANK_BYTES.get(X.device.type, RERANK_BYTES["cuda"]) * per_thread)
    indices = torch.empty((C, N, k), dtype=torch.int64, device=X.device)
    sqdist = torch.empty((C, N, k), dtype=torch.float64, device=X.device)
    grams = torch.empty((C, N, k, k), dtype=torch.float64, device=X.device)
    groups = torch.empty((C, N), dtype=torch.int64, device=X.device)
    n_dups = torch.empty((C, N), dtype=torch.int64, device=X.device)
    if sets_per_batch is not None and (isinstance(sets_per_batch, bool) or not isinstance(sets_per_batch, int)
                                       or sets_per_batch < 1):
        raise ValueError(f"sets_per_batch={sets_per_batch!r} is not allowed; give a positive integer or None")
    per_batch = sets_per_batch or SETS_PER_BATCH.get(X.device.type, SETS_PER_BATCH["cuda"])
    per_batch = min(per_batch, 1 << 13, max(1, CENTRED_BYTES // (N * D * 8)))

    buffers = buffers or Buffers(X.device)
    rows_by_pass = {"float32": 0, "float64": 0, "brute": 0}
    for lo in range(0, C, per_batch):
        part = slice(lo, min(C, lo + per_batch))
        indices[part], sqdist[part], n_dups[part], groups[part], rows = _search_batch(
            X[part], k, grams[part].view(-1, k, k), duplicates == "keep", margin, tile_bytes, rerank_bytes, buffers,
            add_gram_to, gram_from)
        for name, n in rows.items():
            rows_by_pass[name] += n
    return KNN(indices, sqdist, grams, groups, n_dups, rows_by_pass)


def _search_batch(X, k, G_out, keep, margin, tile_bytes, rerank_bytes, buffers, add_gram_to=None, gram_from=None):
    """Exact kNN of the point sets X (B, N, D) searched together: (indices, sqdist, n_dup, group,
    rows settled per pass), each with leading axes (B, N); the candidates' Grams are written into
    G_out (B * N, k, k)."""
    B, N, D = X.shape
    rows_by_pass = {"float32": 0, "float64": 0, "brute": 0}
    brute_elements = BRUTE_ELEMENTS.get(X.device.type, BRUTE_ELEMENTS["cuda"])
    ps = _PointSets(X, k, buffers, gram_from)
    if add_gram_to is not None:
        add_gram_to.add(ps)
    # float32 would overflow on huge values; such data go straight to the float64 pass, as do sets
    # with H (its float64 bounds cost no product)
    passes = [torch.float32, torch.float64] if ps.H is None and ps.sq.max() < 1e30 else [torch.float64]
    n_u, width = len(ps.U), ps.width
    cand = torch.full((n_u, k), -1, dtype=torch.int64, device=X.device)
    d2 = torch.full((n_u, k), math.inf, dtype=torch.float64, device=X.device)
    G, slot = G_out, ps.members[:, 0]  # a distinct row's Gram goes to its first member's slot
    # smaller sets than the largest have pools padded with -1 (pools())
    P = min(k + (default_margin(k) if margin is None else margin), width - 1)
    if P == 0:  # all points of every set equal: no candidates
        G.zero_()
    pending = torch.arange(n_u if P > 0 else 0, device=X.device)
    for dtype in passes:
        if len(pending) == 0 or (dtype != passes[0] and len(pending) * width * D <= brute_elements):
            break  # nothing left, or so little that the brute force costs less than another pass
        cst = _bound_constant(D, dtype, X.device)
        # tiles of queries for the bound product, then smaller ones for the float64 re-rank
        size = torch.finfo(dtype).bits // 8
        # bounds (and their padded product where a tile joins sets), centred queries
        bound_rows = max(1, tile_bytes // (width * (2 if B == 1 else 3) * size + D * (size + 8)))
        entry_bytes = D * (8 * 2 + X.element_size())  # one pool entry's differences in a re-rank
        # how far a pool may grow before the float64 product of the next pass is cheaper
        widest = min(int(width * WIDER_POOL.get(X.device.type, WIDER_POOL["cuda"])), tile_bytes // entry_bytes)
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
                pick = (lambda t: t) if n_ok == len(ok) else (lambda t: t.index_select(0, got))  # noqa: E731
                cand.index_copy_(0, at, pick(cand_t))
                d2.index_copy_(0, at, pick(d2_t))
                G.index_copy_(0, slot.index_select(0, at), pick(G_t))
                missed.append((part.start + lost, d2_t[lost, -1]))
            return [torch.cat(t) for t in zip(*missed)]

        # if a pass that is not the last settles fewer than half of its first tile's rows (float32
        # bounds too loose for the data), the other rows skip it
        tiles = ps.tiles(pending, bound_rows)
        for n_tile, tile in enumerate(tiles):
            S = ps.bounds(tile, dtype, cst, buffers)
            missed, kth = settle(tile, *ps.pools(S, tile, cst, P))
            # a missed row's pool grows to every distinct row whose bound is within its current
            # k-th distance (then certified unless tied), where that is far fewer than all
            reach = (1 - 2 * cst) * ps.sq[tile[missed]] - kth * ps.slack
            pool_size = (S[missed] >= reach.to(S.dtype)[:, None]).sum(1) + 1
            wider = pool_size <= (ps.size[ps.owner[tile[missed]]] - 1).clamp(max=max(P + 1, widest))
            if wider.any():
                local = missed[wider]
                again = ps.pools(S[local], tile[local], cst, int(pool_size[wider].max()))
                missed = torch.cat([missed[~wider], local[settle(tile[local], *again)[0]]])
            failed.append(tile[missed])
            if n_tile == 0 and dtype != passes[-1] and 2 * len(missed) > len(tile):
                failed += tiles[1:]
                break
        name = str(dtype).removeprefix("torch.")
        rows_by_pass[name] += len(pending)
        pending = torch.cat(failed).sort().values
        rows_by_pass[name] -= len(pending)
    if len(pending):
        cand[pending], d2[pending], G[slot[pending]] = ps.brute(pending, buffers, tile_bytes)
        rows_by_pass["brute"] += len(pending)
    indices, sqdist, n_dup = ps.to_points(cand, d2, G, keep)
    group = ps.group - ps.start[ps.owner[ps.group]]  # local: equal ids for equal points of a set
    return indices.view(B, N, k), sqdist.view(B, N, k), n_dup.view(B, N), group.view(B, N), rows_by_pass
