"""Gram matrices of the kNN search: scratch buffers reused from tile to tile, the symmetric
product V V^T in one BLAS thread, and GramSum, the Gram matrix of a concatenation of point sets
summed from theirs (a layer's aggregate from its channels')."""

import contextlib
import math

import numpy as np
import torch

from cwnnk.engine.blocks import CONVERT_BYTES, row_blocks

# Point sets (a batch of them) whose float64 Gram matrix H = V V^T of centred rows takes at most this
# many bytes get it, by device: then every bound, distance and candidate Gram is read from H (one
# symmetric product per set) instead of a float32 product plus a float64 re-rank of gathered
# differences. On a CPU, up to 2,048 distinct rows: faster for small sets, no faster from about
# 3,000 rows (H's passes over N^2 values grow faster than the re-rank saves; docs/engine.md). Off
# on a GPU, where it has not been measured.
GRAM_BYTES = {"cpu": 1 << 25, "cuda": 0}


def gram_fits(n_sets, width, device):
    """Whether n_sets point sets of `width` distinct rows (at most) get their Gram matrices H."""
    return n_sets * width**2 * 8 <= GRAM_BYTES.get(device.type, GRAM_BYTES["cuda"])


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


def self_products(blocks, n, buffers):
    """V V^T (n, n) float64 of rows V (n, D) given as blocks of columns (n, D_b), into buffers' "H".

    On a CPU by numpy's matmul, which runs BLAS's symmetric rank-k update for V V^T (half a
    product's work; torch has none), mirrors it (H is exactly symmetric) and releases the GIL
    meanwhile (scipy's dsyrk wrapper holds it, which stalled the solver thread for the whole
    product). In one BLAS thread: BLAS's threads and torch's spin against each other, which slows
    the search on a machine of few cores. Into a reused buffer: a fresh one page-faults.
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


class GramSum:
    """The Gram matrices H of point sets searched one after another (a layer's channels, in order),
    summed in point space: (x_p - m).(x_q - m) of their concatenation (the layer's aggregate), for
    centre m their centres concatenated. The concatenation's H is then read from it instead of
    computed by its own product of N^2 D / 2 float64 multiply-adds. The sum's rounding error is
    within the bound of one product of length D = sum D_c (docs/engine.md), so the certificates
    stand as they are.

    Made empty by the caller, filled by exact_knn(add_gram_to=...) and read by
    exact_knn(gram_from=...); nnk_stream(gram=...) does both. Only sets that get H contribute; if
    one does not (too many distinct rows), the sum is void and the concatenation computes its own.

    always=True makes every set added get its H, whatever GRAM_BYTES says: for a concatenation
    that is never held as coordinates (a streamed layer's aggregate), which then reads its kNN
    from the sum alone (points(), cwnnk.engine.gramknn). The sum also tracks which points are
    equal in every set added (group), exactly: equal in the concatenation.
    """

    def __init__(self, always=False):
        self.always = always
        self.clear()

    def clear(self):
        """Empty the sum (and free it), for the sets of another concatenation."""
        self.N, self.dim, self.void = None, 0, False
        self.A, self.means, self.group = None, [], None

    def add(self, sets):
        """Add the H of each of the point sets `sets` (a cwnnk.engine.pointsets.PointSets: B sets of N points)."""
        if self.N is None:
            self.N = sets.n_points
            self.void = not (self.always or gram_fits(1, self.N, sets.U.device))
        self.dim += len(sets.size) * sets.U.shape[1]
        N = self.N
        for b in range(len(sets.size)):
            at = sets.local[sets.group[b * N:(b + 1) * N]]  # each point's distinct row in its set
            # equal in the concatenation = equal in every set: the pairs (group so far, row here)
            self.group = at if self.group is None else torch.unique(
                torch.stack([self.group, at]), dim=1, return_inverse=True)[1]
        if self.void or sets.H is None:
            self.void, self.A = True, None
            return
        self.A = torch.zeros((N, N), dtype=torch.float64, device=sets.U.device) if self.A is None else self.A
        for b, n in enumerate(sets.size.tolist()):
            at = sets.local[sets.group[b * N:(b + 1) * N]]
            H = sets.H[b, :n, :n]
            if _in_order(at):
                self.A.add_(H)
            else:  # a block of rows at a time: no N x N temporary beside the sum
                for rows in row_blocks(N, 8 * N, CONVERT_BYTES):
                    self.A[rows].add_(H[at[rows]][:, at])
            self.means.append(sets.mean[b].to(torch.float64))

    def check_concatenation(self, shape):
        """Raise ValueError unless points of `shape` (N, D) are the concatenation of the sets added."""
        if self.N is None or tuple(shape) != (self.N, self.dim):
            added = "no point sets were added" if self.N is None else f"the sets added give ({self.N}, {self.dim})"
            raise ValueError(f"gram=GramSum: the array of shape {tuple(shape)} that reads the summed Gram matrix is "
                             f"not the concatenation of the point sets before it: {added} (N points, their "
                             "dimensions summed)")

    def covers(self, X):
        """Whether the sum is the Gram matrix of X (1, N, D), the concatenation of the sets added."""
        return not self.void and self.A is not None and X.shape[0] == 1 and X.shape[1:] == (self.N, self.dim)

    @property
    def mean(self):
        return torch.cat(self.means)

    def points(self, zero, sq=None):
        """The concatenation as a GramPoints (its kNN read from the sum alone, cwnnk.engine.gramknn).

        zero: (N,) bool, the points that are the zero vector (uncentred); sq: (N,) float64 their
        uncentred squared norms (the cosine kernel's), or None."""
        from cwnnk.engine.gramknn import GramPoints

        if self.void or self.A is None:
            raise ValueError("GramSum.points(): the sum is void (a set added had no Gram matrix); "
                             "make the sum with GramSum(always=True)")
        return GramPoints(H=self.A, group=self.group, zero=torch.as_tensor(zero, device=self.A.device),
                          sq=None if sq is None else torch.as_tensor(sq, dtype=torch.float64, device=self.A.device),
                          dim=self.dim)

    def gram(self, points):
        """H (1, R, R) of the distinct rows given by one member point each."""
        return (self.A if _in_order(points) and len(points) == self.N else self.A[points][:, points])[None]


def _in_order(at):
    """Whether `at` is 0, 1, 2, ...: each point its own distinct row, in order (no gather needed).
    Not implied by their count: in a batch where another set has duplicates, rows are numbered by hash."""
    return bool((at == torch.arange(len(at), device=at.device)).all())
