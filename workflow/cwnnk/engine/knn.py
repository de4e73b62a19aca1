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

The point sets and the steps of a pass are cwnnk.engine.pointsets; H and GramSum are
cwnnk.engine.gram. This module runs the passes: exact_knn in batches of sets, _Search for one batch.
"""

import math
from dataclasses import dataclass

import torch

from cwnnk.device import buffer_bytes
from cwnnk.engine.blocks import row_blocks
from cwnnk.engine.gram import Buffers
from cwnnk.engine.pointsets import (
    PointSets,
    bound_constant,
    bounds,
    brute,
    default_margin,
    most_sets_per_batch,
    pools,
    rerank,
    whole_gram,
)

# Bytes a query tile may use (bound block, pool differences and Gram), by device; see docs/engine.md.
# On a GPU it is large, so that a tile joins many small point sets (cwnnk.device.buffer_bytes caps it).
TILE_BYTES = {"cpu": 1 << 26, "cuda": 1 << 32}
# Bytes of a tile of the pool differences in the float64 re-rank, per CPU thread. On a CPU it stays
# in the cache while the subtraction, the squared norms and the Gram pass over it; smaller tiles
# are slower (each op's cost per call, more so with several threads).
RERANK_BYTES = {"cpu": 1 << 23, "cuda": 1 << 30}
# The fraction of the distinct rows a missed row's pool may grow to before the float64 pass takes
# it instead (see _Search.widen), by device: a GPU's float64 products are fast next to a wide
# re-rank's gathers.
WIDER_POOL = {"cpu": 1 / 8, "cuda": 0}
# Rows the first pass leaves go straight to the float64 brute force when their differences to all
# distinct rows number at most this many elements (by device): then another pass's fixed cost
# (its product, top-k and re-rank, each a few kernel launches on a GPU) exceeds the brute force's.
BRUTE_ELEMENTS = {"cpu": 1 << 20, "cuda": 1 << 26}
# Point sets searched together, by device (at most most_sets_per_batch). On a GPU a batch costs the
# kernel launches of one set; on a CPU batches are a little slower (large tiles leave the cache).
SETS_PER_BATCH = {"cpu": 1, "cuda": 1 << 12}


@dataclass
class KNN:
    """Candidate sets of C point sets of N points (torch tensors on the search device)."""

    indices: torch.Tensor  # (C, N, k) int64, -1 where fewer than k candidates exist
    sqdist: torch.Tensor  # (C, N, k) float64 squared distances, inf where padded
    gram: torch.Tensor  # (C, N, k, k) float64 (x_a - x_i) . (x_b - x_i), 0 where padded
    group: torch.Tensor  # (C, N) int64, equal ids for exactly equal points
    n_dup: torch.Tensor  # (C, N) int64, how many other points equal point i
    rows_by_pass: dict  # distinct query rows settled by each pass: float32, float64, brute


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
    per_batch = min(per_batch, most_sets_per_batch(N, D))

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
    sets = PointSets(X, k, buffers, gram_from, want_gram=add_gram_to is not None and add_gram_to.always)
    if add_gram_to is not None:
        add_gram_to.add(sets)
    # float32 would overflow on huge values; such data go straight to the float64 pass, as do sets
    # with H (its float64 bounds cost no product)
    passes = [torch.float32, torch.float64] if sets.H is None and sets.sq.max() < 1e30 else [torch.float64]
    search = _Search(sets, G_out, buffers, tile_bytes, rerank_bytes)
    # smaller sets than the largest have pools padded with -1 (pointsets.pools)
    P = min(k + (default_margin(k) if margin is None else margin), sets.width - 1)
    if P == 0:  # all points of every set equal: no candidates
        G_out.zero_()
    pending = torch.arange(len(sets.U) if P > 0 else 0, device=X.device)
    for dtype in passes:
        if len(pending) == 0 or (dtype != passes[0] and len(pending) * sets.width * D <= brute_elements):
            break  # nothing left, or so little that the brute force costs less than another pass
        left = search.run_pass(pending, dtype, P, last=dtype == passes[-1])
        rows_by_pass[str(dtype).removeprefix("torch.")] += len(pending) - len(left)
        pending = left
    if len(pending):
        search.brute_force(pending)
        rows_by_pass["brute"] += len(pending)
    indices, sqdist, n_dup = sets.to_points(search.cand, search.d2, G_out, keep)
    group = sets.group - sets.start[sets.owner[sets.group]]  # local: equal ids for equal points of a set
    return indices.view(B, N, k), sqdist.view(B, N, k), n_dup.view(B, N), group.view(B, N), rows_by_pass


class _Search:
    """The search of one batch of point sets: the candidates found so far for their distinct rows
    (cand, d2; G holds a row's Gram at its first member's slot), and the passes that find them."""

    def __init__(self, sets, G_out, buffers, tile_bytes, rerank_bytes):
        n_u, k, dev = len(sets.U), sets.k, sets.U.device
        self.sets, self.buffers, self.tile_bytes, self.rerank_bytes = sets, buffers, tile_bytes, rerank_bytes
        self.cand = torch.full((n_u, k), -1, dtype=torch.int64, device=dev)
        self.d2 = torch.full((n_u, k), math.inf, dtype=torch.float64, device=dev)
        self.G, self.slot = G_out, sets.members[:, 0]

    def run_pass(self, pending, dtype, P, last):
        """One pass over the pending rows: bounds in `dtype` tile by tile, pools of P, the float64
        re-rank and its certificate, then wider pools for the rows missed. Returns the rows it
        leaves, ascending. If a pass that is not the last settles fewer than half of its first
        tile's rows (bounds too loose for the data), the other rows skip it."""
        sets = self.sets
        B, D = len(sets.size), sets.U.shape[1]
        cst = bound_constant(D, dtype, sets.U.device)
        size = torch.finfo(dtype).bits // 8
        # tiles of queries for the bounds (and their padded product where a tile joins sets) and
        # the centred queries
        bound_rows = max(1, self.tile_bytes // (sets.width * (2 if B == 1 else 3) * size + D * (size + 8)))
        failed = []
        tiles = sets.tiles(pending, bound_rows)
        for n_tile, tile in enumerate(tiles):
            S = bounds(sets, tile, dtype, cst, self.buffers)
            missed, kth = self.settle(tile, *pools(sets, S, tile, cst, P))
            missed = self.widen(S, tile, missed, kth, cst, P)
            failed.append(tile[missed])
            if n_tile == 0 and not last and 2 * len(missed) > len(tile):
                failed += tiles[1:]
                break
        return torch.cat(failed).sort().values

    def settle(self, rows, pool, outside):
        """Re-rank the pools of `rows` in tiles and keep the certified rows' candidates; returns the
        others (their positions in `rows`) and their k-th squared distance."""
        sets, k, missed = self.sets, self.sets.k, []
        P_t = pool.shape[1]  # the Grams, the distances and their order
        row_bytes = (P_t**2 * 8 if whole_gram(P_t, k) else 0) + P_t * 8 * 4 + k * k * 8 * 4
        for part in row_blocks(len(rows), row_bytes, self.tile_bytes):
            cand_t, d2_t, G_t, ok = rerank(sets, rows[part], pool[part], outside[part], self.buffers, self.rerank_bytes)
            # certified rows first: one device synchronisation splits them from the others
            order, n_ok = torch.argsort(~ok, stable=True), int(ok.sum())
            got, lost = order[:n_ok], order[n_ok:]
            at = rows[part].index_select(0, got)
            pick = (lambda t: t) if n_ok == len(ok) else (lambda t: t.index_select(0, got))  # noqa: E731
            self.cand.index_copy_(0, at, pick(cand_t))
            self.d2.index_copy_(0, at, pick(d2_t))
            self.G.index_copy_(0, self.slot.index_select(0, at), pick(G_t))
            missed.append((part.start + lost, d2_t[lost, -1]))
        return [torch.cat(t) for t in zip(*missed)]

    def widen(self, S, tile, missed, kth, c, P):
        """The rows missed (positions in `tile`) that a wider pool does not settle either. A missed
        row's pool grows, from the same bounds S, to every distinct row whose bound is within its
        k-th squared distance kth (then certified unless tied), where that is far fewer than all."""
        sets = self.sets
        entry_bytes = sets.U.shape[1] * (8 * 2 + sets.U.element_size())  # one pool entry's differences in a re-rank
        # how far a pool may grow before the float64 product of the next pass is cheaper
        share = WIDER_POOL.get(sets.U.device.type, WIDER_POOL["cuda"])
        widest = min(int(sets.width * share), self.tile_bytes // entry_bytes)
        reach = (1 - 2 * c) * sets.sq[tile[missed]] - kth * sets.slack
        pool_size = (S[missed] >= reach.to(S.dtype)[:, None]).sum(1) + 1
        wider = pool_size <= (sets.size[sets.owner[tile[missed]]] - 1).clamp(max=max(P + 1, widest))
        if wider.any():
            local = missed[wider]
            again = pools(sets, S[local], tile[local], c, int(pool_size[wider].max()))
            missed = torch.cat([missed[~wider], local[self.settle(tile[local], *again)[0]]])
        return missed

    def brute_force(self, rows):
        """The float64 brute force for the rows no pass has certified."""
        self.cand[rows], self.d2[rows], self.G[self.slot[rows]] = brute(self.sets, rows, self.buffers, self.tile_bytes)
