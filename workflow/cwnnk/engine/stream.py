"""The scheduling of the NNK engine: point sets streamed through the kNN search and the solvers.

`nnk_stream(arrays)` takes the arrays one at a time, searches their point sets group by group in
the calling thread (cwnnk.engine.knn), and queues each group's solver batches (kernel problems,
cwnnk.engine.problems; NNLS, cwnnk.engine.nnls) for a worker thread; each array's NNKResult is
yielded as soon as it is complete. `nnk(X)` is its one result. See docs/engine.md for the
algorithms and the memory they need.
"""

import contextlib
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from cwnnk.device import buffer_bytes, resolve_device
from cwnnk.engine.blocks import CONVERT_BYTES, row_blocks, sq_norms
from cwnnk.engine.gram import Buffers
from cwnnk.engine.gramknn import GramPoints, gram_knn
from cwnnk.engine.knn import exact_knn
from cwnnk.engine.nnls import solve
from cwnnk.engine.problems import kernel_problems, query_sigma
from cwnnk.engine.result import COUNTS, NNKResult
from cwnnk.params import DUPLICATES, KERNELS, SIGMAS, SOLVERS  # the choices the config allows, named once

# Bytes of one (nodes, k, k) float64 array, which sizes the groups of point sets searched together
# and (SOLVER_BYTES) the solver batches. On CPU they are kept small: batches that stay in cache and
# in malloc's reused memory were measured faster (fresh large buffers page-fault), and a group
# splits into several solver batches, which the two threads share. On a GPU a batch costs launches
# and synchronisations whatever its size, so both are large (cwnnk.device.buffer_bytes caps them at
# a share of the card's memory).
BATCH_BYTES = {"cpu": 1 << 24, "cuda": 1 << 32}
SOLVER_BYTES = {"cpu": 1 << 22, "cuda": 1 << 32}
# Bytes of kNN results (their candidates' Grams) whose solves may wait while the search runs ahead
# (nnk_stream), counting the group being searched: on a CPU enough for the worker never to run
# dry; on a GPU (and for groups as large as at N = 10,000) only the group before, of the same
# array, as a single nnk call had.
LOOKAHEAD_BYTES = {"cpu": 1 << 26, "cuda": 0}


def nnk(X: np.ndarray | torch.Tensor, k: int = 25, *, kernel: str = "gaussian", sigma: str = "local",
        solver: str = "exact", duplicates: str = "drop", tol: float = 1e-10, device: str | torch.device = "auto",
        timings: dict[str, float] | None = None) -> NNKResult:
    """NNK graph of X (N, D), or of each of C point sets X (C, N, D), as an NNKResult.

    kernel: "gaussian" (sigma "local": d_k(i)/3 per query, or "global": mean_i d_k(i)/3 per set)
    or "cosine"; solver: "exact" (KKT to 1e-9) or "pynnk" (the authors' pruning-only active set);
    duplicates: "drop" or "keep" zero-distance candidates; tol: support threshold tau.
    timings: optional dict that receives the seconds spent in "knn", "kernel" and "solver" (added
    to what it holds; the solver of one group overlaps the next group's kNN, so they can sum to
    more than the wall time).
    """
    (result,) = nnk_stream([X], k, kernel=kernel, sigma=sigma, solver=solver, duplicates=duplicates, tol=tol,
                           device=device, timings=timings)
    return result


def nnk_stream(arrays, k=25, *, kernel="gaussian", sigma="local", solver="exact", duplicates="drop", tol=1e-10,
               device="auto", timings=None, gram=None):
    """The NNK graphs of each array of `arrays` (an iterable of nnk's X, taken one at a time), yielded
    in order as NNKResults, each as soon as it is complete.

    gram: a GramSum (cwnnk.engine.gram), or None. The Gram matrices H of the point sets of every
    (C, N, D) array are added to it, and an (N, D) array after them, which must be their
    concatenation (x_i the coordinates of point i in every set, in order), reads its H from the
    sum instead of computing it; that array empties the sum, for the sets after it. An element
    of `arrays` may also be a GramPoints (cwnnk.engine.gramknn: one point set given by its Gram
    matrix, e.g. GramSum(always=True).points(...)), whose kNN is read from that matrix alone.

    One pipeline serves them all: the point sets are searched group by group in this thread, and
    each group's solver batches queue for a worker thread (torch's batched Cholesky is a
    single-threaded loop whose idle core the search's products fill; on a busy CPU this was also
    faster than running the two in turn). The search runs ahead of the solves,
    across arrays too, while the queued groups and the one about to be searched hold at most
    LOOKAHEAD_BYTES (the group before, of the same array, may always stay). Beyond it, and at the
    end, this thread solves the oldest group's batches the worker has not started, from the last.
    """
    _check_choice("kernel", kernel, KERNELS)
    _check_choice("sigma", sigma, SIGMAS)
    _check_choice("solver", solver, SOLVERS)
    _check_choice("duplicates", duplicates, DUPLICATES)
    if not (isinstance(tol, (int, float)) and 0 < tol < 1e-3):
        raise ValueError(f"tol={tol!r} is not allowed; give a number in (0, 1e-3), e.g. 1e-10")
    dev = resolve_device(device)
    clock = _Clock(timings, dev)
    lookahead = buffer_bytes(LOOKAHEAD_BYTES, dev)
    jobs, queue = deque(), deque()  # arrays not yet yielded; groups whose batches are queued, oldest first
    worker = ThreadPoolExecutor(max_workers=1)
    try:
        for X in arrays:
            job = _Job(X, k, dev)
            jobs.append(job)
            search = {}  # where this array's Gram matrices go, or come from
            if gram is not None and not job.from_gram:
                if job.single:
                    gram.check_concatenation(job.X.shape[1:])
                search = {"gram_from": gram} if job.single else {"add_gram_to": gram}
            # scratch per array: an aggregate's large tiles are not held through the channels' search
            buffers = Buffers(dev)
            # on a CPU, a group searched while the worker has nothing queued is one set, so that it
            # soon has batches to solve (on a GPU a group costs launches whatever its size)
            first = 1 if dev.type == "cpu" and not queue else None
            for part in job.parts(first):
                grams = (part.stop - part.start) * job.N * job.k**2 * 8  # what this group's search will hold
                # the oldest groups are finished while the queue and this group exceed the lookahead;
                # the one before, of this array, may always stay (with a GPU's lookahead of 0, or
                # large groups, as a single nnk call did)
                while queue and sum(group.nbytes for group in queue) + grams > lookahead and not (
                        len(queue) == 1 and queue[0].job is job):
                    _finish(queue.popleft())
                    yield from _completed(jobs, kernel, solver)
                views = {name: value[part] for name, value in job.out.items()}
                with clock("knn"):
                    points = job.X if job.from_gram else job.X[part]
                    nn, sq = _search_group(points, job.k, kernel, sigma, duplicates, buffers, views, search)
                n_nodes = len(nn.indices) * job.N
                batches = [(nn, sq, kernel, solver, tol, views, clock, slice(lo, min(n_nodes, lo + job.step)))
                           for lo in range(0, n_nodes, job.step)]
                queue.append(_Group(job, [(worker.submit(_solve_batch, *batch), batch) for batch in batches], grams))
                job.unfinished += 1
            job.X = X = buffers = None  # searched: the input and scratch may go before the next are made
            if gram is not None and job.single:
                gram.clear()  # read: the sets after this array start a sum of their own
        _share([batch for group in queue for batch in group.batches])
        for group in queue:
            group.job.unfinished -= 1
        queue.clear()
        yield from _completed(jobs, kernel, solver)
    finally:
        worker.shutdown(cancel_futures=True)


class _Job:
    """One array of nnk_stream: its point sets, validated, and the outputs its groups fill."""

    def __init__(self, X, k, dev):
        self.from_gram = isinstance(X, GramPoints)
        if self.from_gram:
            self.single, C, N = True, 1, X.n_points
            if not bool(torch.isfinite(X.H).all()):
                raise ValueError("the GramPoints' Gram matrix H holds a non-finite value; NNK needs finite data")
        else:
            X = _as_point_sets(X, dev)
            self.single = X.ndim == 2
            X = X[None] if self.single else X
            C, N, _ = X.shape
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k < N:
            raise ValueError(f"k={k!r} is not allowed; give an integer with 1 <= k < N = {N} (points per set)")
        if not self.from_gram:
            _check_finite(X, self.single)
        k = int(k)
        self.X, self.C, self.N, self.k, self.unfinished = X, C, N, k, 0
        self.per_group = max(1, buffer_bytes(BATCH_BYTES, dev) // (N * k * k * 8))
        self.step = max(1, buffer_bytes(SOLVER_BYTES, dev) // (k * k * 8))  # nodes per solver batch
        self.out = {
            "indices": torch.empty((C, N, k), dtype=torch.int64, device=dev),
            "sqdist": torch.empty((C, N, k), dtype=torch.float64, device=dev),
            "n_dup": torch.empty((C, N), dtype=torch.int64, device=dev),
            "zero": torch.empty((C, N), dtype=torch.bool, device=dev),
            "sigma": torch.full((C, N), torch.nan, dtype=torch.float64, device=dev),
            "weights": torch.empty((C, N, k), dtype=torch.float64, device=dev),
            "error": torch.empty((C, N), dtype=torch.float64, device=dev),
            "not_pd": torch.empty((C, N), dtype=torch.bool, device=dev),
            "kkt_failed": torch.empty((C, N), dtype=torch.bool, device=dev),
        }

    def parts(self, first=None):
        """Slices of the point sets searched together: `first` sets (if given), then groups of per_group."""
        first = first or self.per_group
        return [slice(lo, min(self.C, lo + (first if lo == 0 else self.per_group)))
                for lo in [0, *range(first, self.C, self.per_group)]]

    def result(self, kernel, solver):
        out, k, C = self.out, self.k, self.C
        gaussian = kernel == "gaussian"
        counts = {
            "duplicates": out["n_dup"].clamp(max=k).sum(1),
            "zero_vectors": out["zero"].sum(1),
            "zero_sigma": (out["sigma"] == 0).sum(1) if gaussian else torch.zeros(C, dtype=torch.int64),
            "not_pd": out["not_pd"].sum(1),
            "kkt_failed": out["kkt_failed"].sum(1),
        }
        squeeze = (lambda a: a[0]) if self.single else (lambda a: a)  # noqa: E731
        to_np = lambda t: squeeze(_to_host(t).numpy())  # noqa: E731
        return NNKResult(
            indices=to_np(out["indices"]),
            distances=to_np(out["sqdist"].sqrt()),
            weights=to_np(out["weights"]),
            degree=to_np((out["weights"] > 0).sum(-1)),
            error=to_np(out["error"]),
            sigma=to_np(out["sigma"]) if gaussian else None,
            counts={name: to_np(counts[name].to(torch.int64)) for name in COUNTS},
            kernel=kernel,
            solver=solver,
        )


@dataclass
class _Group:
    """A group of point sets searched together: its job, its solver batches (futures and
    arguments) and the bytes its kNN result holds until they are solved."""

    job: _Job
    batches: list
    nbytes: int


def _finish(group):
    _share(group.batches)
    group.job.unfinished -= 1


def _completed(jobs, kernel, solver):
    """Yield, in order, the results of the leading jobs that are searched and solved."""
    while jobs and jobs[0].X is None and jobs[0].unfinished == 0:
        yield jobs.popleft().result(kernel, solver)


def _to_host(t):
    """t on the CPU. From a GPU through page-locked memory: a copy to ordinary (pageable) memory
    is several times slower, a large share of a small-channel layer's time."""
    if t.device.type == "cpu":
        return t
    return torch.empty(t.shape, dtype=t.dtype, pin_memory=True).copy_(t)


def _search_group(X, k, kernel, sigma, duplicates, buffers, out, search):
    """kNN of the point sets X (C, N, D), or of GramPoints X, into the views `out`; returns it and
    the squared norms (which only the cosine kernel needs: None for gaussian). search: exact_knn's
    GramSum argument."""
    gram = isinstance(X, GramPoints)
    nn = gram_knn(X, k, duplicates) if gram else exact_knn(X, k, duplicates=duplicates, buffers=buffers, **search)
    out["indices"][:], out["sqdist"][:], out["n_dup"][:] = nn.indices, nn.sqdist, nn.n_dup
    if kernel == "gaussian":
        out["sigma"][:] = query_sigma(nn, sigma)
        out["zero"][:] = X.zero[None] if gram else ~X.any(-1)
        return nn, None
    if gram and X.sq is None:
        raise ValueError("the cosine kernel needs the GramPoints' uncentred squared norms sq")
    sq = X.sq[None] if gram else sq_norms(X)
    out["zero"][:] = sq == 0
    return nn, sq


def _share(solving):
    """Solve here the batches of `solving` (futures and their arguments) that the worker has not
    started, from the last, then wait for the others."""
    for future, batch in reversed(solving):
        if future.cancel():
            _solve_batch(*batch)
    for future, _ in solving:
        if not future.cancelled():
            future.result()


def _solve_batch(nn, sq, kernel, solver, tol, out, clock, nodes):
    """NNK weights of the flat nodes c * N + i in the slice `nodes` of a group, into the views `out`."""
    C, N, k = nn.indices.shape
    sig = out["sigma"] if kernel == "gaussian" else None
    with clock("kernel"):
        problems = kernel_problems(nn, sq, sig, kernel, nodes)
    with clock("solver"):
        theta, error, not_pd, kkt_failed = solve(problems, solver, tol)
    if kernel == "cosine":
        error = torch.where(sq.view(-1)[nodes] == 0, torch.nan, error)  # K_ii itself is undefined
    out["weights"].view(C * N, k)[nodes], out["error"].view(C * N)[nodes] = theta, error
    out["not_pd"].view(C * N)[nodes], out["kkt_failed"].view(C * N)[nodes] = not_pd, kkt_failed


class _Clock:
    """Adds the seconds spent in a named part of the engine to `timings`, when one is given."""

    def __init__(self, timings, device):
        self.timings, self.cuda = timings, device.type == "cuda"
        self.lock = threading.Lock()  # two threads add to it

    @contextlib.contextmanager
    def __call__(self, part):
        if self.timings is None:
            yield
            return
        if self.cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        yield
        if self.cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        with self.lock:
            self.timings[part] = self.timings.get(part, 0.0) + seconds


def _check_choice(name, value, allowed):
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not allowed; choose one of {', '.join(map(repr, allowed))}")


def _as_point_sets(X, device):
    if not isinstance(X, (np.ndarray, torch.Tensor)):
        raise ValueError(f"X must be a numpy array or a torch tensor, not {type(X).__name__}")
    if X.ndim not in (2, 3) or X.shape[-2] < 2 or X.shape[-1] < 1:
        raise ValueError(f"X has shape {tuple(X.shape)}; allowed: (N, D) or (C, N, D) with N >= 2 and D >= 1")
    X = torch.as_tensor(X)
    # float32 stays float32 (the data is held once; float64 is made tile by tile from it)
    dtype = X.dtype if X.dtype in (torch.float32, torch.float64) else (
        torch.float32 if X.dtype.is_floating_point else torch.float64)
    return X.to(device=device, dtype=dtype)


def _check_finite(X, single):
    flat = X.reshape(-1, X.shape[-1])
    for part in row_blocks(len(flat), flat.shape[1], CONVERT_BYTES):
        # a float64 sum is finite when every value is (it cannot overflow on float32 input): one pass
        if not bool(torch.isfinite(flat[part].sum(dtype=torch.float64))):
            break
    else:
        return
    bad = torch.cat([~torch.isfinite(flat[part]).all(-1)
                     for part in row_blocks(len(flat), flat.shape[1], CONVERT_BYTES)])
    if bad.any():
        bad = bad.view(X.shape[:-1])
        c, i = (int(v) for v in bad.nonzero()[0])
        value = X[c, i][~torch.isfinite(X[c, i])][0].item()
        where = f"row {i}" if single else f"point set {c}, row {i}"
        raise ValueError(f"X holds a non-finite value ({value}) in {where}; NNK needs finite data")
