"""NNK graphs of one or many point sets (METHOD.md section 2), batched over their nodes.

`nnk(X)` finds each node's exact kNN candidates (cwnnk.knn), builds its kernel problem
    theta_i = argmin_{theta >= 0} 1/2 theta^T K_SS theta - K_Si^T theta
in float64, and solves the problems of all point sets together in batches of nodes: each solver
iteration is one batched (masked) Cholesky over the nodes still running, and finished nodes
leave the batch. See docs/engine.md for the algorithms and the memory they need.
"""

import contextlib
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields

import numpy as np
import torch

from cwnnk import kernels
from cwnnk.device import buffer_bytes, resolve_device
from cwnnk.knn import CONVERT_BYTES, Buffers, GramSum, exact_knn, row_blocks, sq_norms

KERNELS = ("gaussian", "cosine")
SIGMAS = ("local", "global")
SOLVERS = ("exact", "pynnk")
DUPLICATES = ("drop", "keep")
KKT_TOL = 1e-9  # METHOD.md: |g| <= 1e-9 on the support, g <= 1e-9 off it
# A kernel value this close to 1 means one point in feature space: exact multiples under cosine
# can come out a rounding error below 1, and K is then numerically singular either way.
SAME_POINT = 1 - 4 * torch.finfo(torch.float64).eps
COUNTS = ("duplicates", "zero_vectors", "zero_sigma", "not_pd", "kkt_failed")
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
# Rounds of block principal pivoting before the nodes still running go to Lawson-Hanson.
BPP_ROUNDS = 10


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
    def n_sets(self):
        """Number of point sets, or None for a single (N, D) input."""
        return self.indices.shape[0] if self.indices.ndim == 3 else None

    def channel(self, c):
        """The result of point set c alone, as if nnk had been called on X[c]."""
        if self.n_sets is None:
            raise ValueError("channel(c) needs a result of several point sets; this one is a single (N, D) set")
        pick = {f.name: getattr(self, f.name) for f in fields(self)}
        for name in ("indices", "distances", "weights", "degree", "error"):
            pick[name] = pick[name][c]
        pick["sigma"] = None if self.sigma is None else self.sigma[c]
        pick["counts"] = {name: value[c] for name, value in self.counts.items()}
        return NNKResult(**pick)


def nnk(X, k=25, *, kernel="gaussian", sigma="local", solver="exact", duplicates="drop", tol=1e-10, device="auto",
        timings=None):
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
               device="auto", timings=None, aggregate=False):
    """The NNK graphs of each array of `arrays` (an iterable of nnk's X, taken one at a time), yielded
    in order as NNKResults, each as soon as it is complete.

    aggregate=True: the arrays are a layer's channels, in blocks (C_b, N, D) in channel order, then
    its aggregate (N, C D), their concatenation (x_i = vec(A[i])); where the search needs the
    aggregate's Gram matrix, it is summed from the channels' (cwnnk.knn.GramSum).

    One pipeline serves them all: the point sets are searched group by group in this thread, and
    each group's solver batches queue for a worker thread (torch's batched Cholesky is a
    single-threaded loop whose idle core the search's products fill; on a busy CPU this was also
    measured up to 3x faster than running the two in turn). The search runs ahead of the solves,
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
    gram_sum = None  # the channels' Gram matrices, with aggregate=True
    jobs, queue = deque(), deque()  # arrays not yet yielded; groups whose batches are queued, oldest first
    worker = ThreadPoolExecutor(max_workers=1)
    try:
        for X in arrays:
            job = _Job(X, k, dev)
            jobs.append(job)
            search = {}  # where this array's Gram matrices go, or come from
            if aggregate:
                gram_sum = gram_sum or GramSum(job.N, dev)
                search = {"gram_from": gram_sum} if job.single else {"add_gram_to": gram_sum}
                if job.single and job.X.shape[1:] != (gram_sum.N, gram_sum.dim):
                    raise ValueError(
                        f"aggregate=True: the aggregate has shape {tuple(job.X.shape[1:])}; the channels before it "
                        f"give ({gram_sum.N}, {gram_sum.dim}) (N points, their dimensions summed)")
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
                    nn, sq = _search_group(job.X[part], job.k, kernel, sigma, duplicates, buffers, views, search)
                n_nodes = len(nn.indices) * job.N
                batches = [(nn, sq, kernel, solver, tol, views, clock, slice(lo, min(n_nodes, lo + job.step)))
                           for lo in range(0, n_nodes, job.step)]
                queue.append(_Group(job, [(worker.submit(_solve_batch, *batch), batch) for batch in batches], grams))
                job.unfinished += 1
            job.X = X = buffers = None  # searched: the input and scratch may go before the next are made
            if aggregate and job.single:
                gram_sum = None
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
        X = _as_point_sets(X, dev)
        self.single = X.ndim == 2
        X = X[None] if self.single else X
        C, N, D = X.shape
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k < N:
            raise ValueError(f"k={k!r} is not allowed; give an integer with 1 <= k < N = {N} (points per set)")
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
    ran at 1.2 GB/s on an H200 and took about 40 % of a small-channel layer's time."""
    if t.device.type == "cpu":
        return t
    return torch.empty(t.shape, dtype=t.dtype, pin_memory=True).copy_(t)


def _search_group(X, k, kernel, sigma, duplicates, buffers, out, search):
    """kNN of the point sets X (C, N, D) into the views `out`; returns it and the squared norms
    (which only the cosine kernel needs: None for gaussian). search: exact_knn's GramSum arguments."""
    nn = exact_knn(X, k, duplicates=duplicates, buffers=buffers, **search)
    out["indices"][:], out["sqdist"][:], out["n_dup"][:] = nn.indices, nn.sqdist, nn.n_dup
    if kernel == "gaussian":
        out["sigma"][:] = _sigma(nn, sigma)
        out["zero"][:] = ~X.any(-1)
        return nn, None
    sq = sq_norms(X)
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
        problems = _problems(nn, sq, sig, kernel, nodes)
    with clock("solver"):
        theta, error, not_pd, kkt_failed = _solve_chunk(problems, solver, tol)
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


def _matvec(K, x):
    """K x of a batch, K (B, k, k) and x (B, k). On a CPU elementwise, faster than bmm's one small
    product per node (0.47 against 0.69 ms for 838 nodes of k = 25); on a GPU bmm, which reads K
    once (the elementwise form was not measured there)."""
    if K.device.type == "cpu":
        return torch.mul(K, x[:, None, :]).sum(-1)
    return (K @ x[:, :, None])[..., 0]


def _kkt(K, b, valid, theta, ridge, mult):
    """K theta, the gradient b - K theta (less the ridge on each merged variable), KKT failures."""
    Kt = _matvec(K, theta)
    grad = b - Kt - ridge[:, None] * theta * mult
    on = theta > 0
    return Kt, grad, ((on & (grad.abs() > KKT_TOL)) | (valid & ~on & (grad > KKT_TOL))).any(1)


def _nnls_rows(K, b, valid, tol):
    """Exact NNK weights of a few nodes with scipy's NNLS on the factorised problem.

    K = V diag(w) V^T gives A = diag(sqrt(w)) V^T and y = diag(1/sqrt(w)) V^T b, so that
    ||A theta - y||^2 = theta^T K theta - 2 b^T theta + const; directions with w ~ 0 (duplicate
    or nearly collinear candidates) are left out, which the Lawson-Hanson active set handles.
    """
    from scipy.optimize import nnls

    out = np.zeros(tuple(b.shape))
    for row, (Kr, br, vr) in enumerate(zip(K.cpu().numpy(), b.cpu().numpy(), valid.cpu().numpy())):
        w, V = np.linalg.eigh(Kr[np.ix_(vr, vr)])
        keep = w > w.max() * 1e-15
        A = np.sqrt(w[keep])[:, None] * V[:, keep].T
        x, _ = nnls(A, (V[:, keep].T @ br[vr]) / np.sqrt(w[keep]), maxiter=50 * len(br))
        out[row, vr] = np.where(x > tol, x, 0)
    return torch.as_tensor(out, dtype=b.dtype, device=b.device)


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
    bad = torch.cat([~torch.isfinite(flat[part]).all(-1) for part in row_blocks(len(flat), flat.shape[1], CONVERT_BYTES)])
    if bad.any():
        bad = bad.view(X.shape[:-1])
        c, i = (int(v) for v in bad.nonzero()[0])
        value = X[c, i][~torch.isfinite(X[c, i])][0].item()
        where = f"row {i}" if single else f"point set {c}, row {i}"
        raise ValueError(f"X holds a non-finite value ({value}) in {where}; NNK needs finite data")


def _sigma(nn, mode):
    """Gaussian width per query: d(x_i, its farthest candidate) / 3, or the mean of those per set."""
    n_cand = (nn.indices >= 0).sum(-1)
    last = nn.sqdist.gather(-1, (n_cand - 1).clamp(min=0)[..., None])[..., 0].sqrt()
    last = torch.where(n_cand > 0, last, torch.nan)
    if mode == "local":
        return last / 3
    return (torch.nanmean(last, dim=1, keepdim=True) / 3).expand_as(last).clone()


@dataclass
class _Problems:
    """The kernel problems of a batch of nodes, K (B, k, k) and b (B, k), with their candidates' roles.

    valid: usable candidates (not padding, not a zero vector under cosine); dup: candidates that
    are the query itself in feature space (K_Si = 1: a duplicate, or under cosine a positive
    multiple); rep: for each candidate the first one that is the same point in feature space
    (itself if none), and mult the size of its group. Unusable candidates have an identity row in K
    and b = 0.
    """

    K: torch.Tensor
    b: torch.Tensor
    valid: torch.Tensor
    dup: torch.Tensor
    rep: torch.Tensor
    mult: torch.Tensor


def _problems(nn, sq, sig, kernel, nodes):
    """The kernel problems of the flat nodes c * N + i in the slice `nodes`, from the kNN Grams.

    G_ab = (x_a - x_i) . (x_b - x_i) gives squared distances G_aa + G_bb - 2 G_ab that stay
    accurate at the neighbourhood's scale.
    """
    C, N, k = nn.indices.shape
    cand = nn.indices.view(-1, k)[nodes]
    valid = cand >= 0
    G = nn.gram.view(-1, k, k)[nodes]
    n = G.diagonal(dim1=1, dim2=2)
    d2 = torch.add(n[:, :, None], n[:, None, :]).sub_(G, alpha=2).clamp_(min=0)
    if kernel == "gaussian":
        s = sig.view(-1)[nodes]
        K, b = kernels.gaussian(d2, s[:, None, None]), kernels.gaussian(n, s[:, None])
    else:
        me = torch.arange(nodes.start, nodes.stop, device=cand.device)
        flat_cand = torch.where(valid, cand + (me // N * N)[:, None], me[:, None])
        sq_S, sq_i = sq.view(-1)[flat_cand], sq.view(-1)[nodes, None]
        K = kernels.cosine(sq_S[:, :, None], sq_S[:, None, :], d2)
        b = kernels.cosine(sq_S, sq_i, n)
        valid &= (sq_S > 0) & (sq_i > 0)
    if not valid.all():
        K = torch.where(valid[:, :, None] & valid[:, None, :], K, torch.eye(k, dtype=K.dtype, device=K.device))
        b = b.masked_fill_(~valid, 0)
    rep, mult = _feature_space_groups(K)
    return _Problems(K, b, valid, valid & (b >= SAME_POINT), rep, mult)


def _feature_space_groups(K):
    """For each candidate the first candidate that is the same point in feature space, and the
    size of that group: K_ab = 1 means ||phi_a - phi_b||^2 = 2 - 2 K_ab = 0 (unusable candidates
    have an identity row, so they stay alone).
    """
    B, k = K.shape[:2]
    rep = torch.arange(k, device=K.device).repeat(B, 1)
    mult = torch.ones_like(rep)
    same = K >= SAME_POINT
    multi = (same.sum((1, 2)) > k).nonzero()[:, 0]  # more ones than the diagonal's
    if len(multi):
        r = same[multi].to(torch.int8).argmax(-1)
        for _ in range(k.bit_length()):  # pointer jumping: a chain of firsts ends at its root
            r = r.gather(1, r)
        rep[multi] = r
        mult[multi] = (r[:, :, None] == r[:, None, :]).sum(-1)
    return rep, mult


def _cholesky_solve(K, r):
    """(K^-1 r, failure flags) by batched Cholesky."""
    L, info = torch.linalg.cholesky_ex(K)
    z = torch.linalg.solve_triangular(L, r[..., None], upper=False)
    return torch.linalg.solve_triangular(L.mT, z, upper=True)[..., 0], info > 0


def _masked_solve(K, b, F, ridge):
    """x with (K + ridge I)_FF x_F = b_F and x = 0 off F, by one batched Cholesky; also its
    failure flags. K itself is left as it is."""
    M = K
    whole, ridged = torch.stack([F.all(), (ridge > 0).any()]).tolist()  # one device synchronisation
    if not whole:  # K_FF, 1 on the diagonal off F (two products: faster than a masked select)
        f = F.to(K.dtype)
        M = torch.mul(K, f[:, :, None]).mul_(f[:, None, :])
        M.diagonal(dim1=1, dim2=2).add_(1 - f)
    if ridged:
        M = M.clone() if M is K else M
        M.diagonal(dim1=1, dim2=2).add_(ridge[:, None] * F)
    return _cholesky_solve(M, b * F)


def _ridged_solve(K, b, F, valid, ridge):
    """_masked_solve where, if a Cholesky fails (K not numerically positive definite), that node's
    ridge becomes eps * trace(K_SS) / k, then grows tenfold until the Cholesky succeeds.

    Returns (x, ridge), the ridge per node as it now stands.
    """
    x, failed = _masked_solve(K, b, F, ridge)
    bad = failed.nonzero()[:, 0]
    if len(bad):
        ridge = ridge.clone()
        diag = valid[bad].to(K.dtype)
        base = torch.finfo(K.dtype).eps * (K[bad].diagonal(dim1=1, dim2=2) * diag).sum(1) / diag.sum(1).clamp(min=1)
    for _ in range(17):
        if len(bad) == 0:
            break
        ridge[bad] = torch.where(ridge[bad] > 0, 10 * ridge[bad], base)
        x[bad], failed = _masked_solve(K[bad], b[bad], F[bad], ridge[bad])
        bad, base = bad[failed], base[failed]
    return x, ridge


def _exact(K, b, valid, tol):
    """Exact NNLS weights of a batch of nodes: (x, ridge, whether K_SS itself needed a ridge).

    Block principal pivoting (Kim & Park 2011) from the full passive set settles almost every node
    in a few rounds; the nodes it has not settled after BPP_ROUNDS (on nearly singular K_SS it can
    cycle on rounding noise) are solved by Lawson-Hanson, which grows the passive set one variable
    at a time and never lets a numerically dependent one in.
    """
    B, k = b.shape
    x, ridge_out = torch.zeros_like(b), torch.zeros_like(b[:, 0])
    ids = torch.arange(B, device=b.device)
    F = valid.clone()
    # the first solve on the whole of K_SS is also its positive-definiteness check
    xa, ridge = _ridged_solve(K, b, F, valid, torch.zeros_like(ridge_out))
    not_pd = ridge > 0
    # the first swap also drops the candidates another one shadows (the pairwise KRI test
    # b_j > K_jl b_l fails): nearer the support than the positive entries alone, fewer rounds
    shadow = K * (b * valid)[:, None, :]
    shadow.diagonal(dim1=1, dim2=2).zero_()  # l = j left out
    shadowed = shadow.amax(-1) >= b
    best = torch.full((B,), k + 1, device=b.device)
    backup = torch.full((B,), 3, device=b.device)
    cols = torch.arange(1, k + 1, device=b.device)
    for rounds in range(BPP_ROUNDS):
        grad = b - _matvec(K, xa)
        V = (F & (xa < 0)) | (valid & ~F & (grad > tol))
        n_bad = V.sum(1)
        x[ids], ridge_out[ids] = xa, ridge  # final for the settled nodes, overwritten for the others
        running = (n_bad > 0).nonzero()[:, 0]
        if len(running) == 0:
            return x, ridge_out, not_pd
        if len(running) < len(ids):
            ids, K, b, valid, F, V, n_bad, best, backup, ridge, shadowed = (
                t[running] for t in (ids, K, b, valid, F, V, n_bad, best, backup, ridge, shadowed)
            )
        better = n_bad < best
        swap_all = better | (backup > 0)
        backup = torch.where(better, 3, torch.where(backup > 0, backup - 1, backup))
        best = torch.minimum(best, n_bad)
        last = torch.nn.functional.one_hot((V * cols).argmax(1), k).bool()
        F ^= torch.where(swap_all[:, None], V, last)
        if rounds == 0:
            F &= ~shadowed
        xa, ridge = _ridged_solve(K, b, F, valid, ridge)
    x[ids], ridge_out[ids] = _lawson_hanson(K, b, valid, tol)
    return x, ridge_out, not_pd


def _lawson_hanson(K, b, valid, tol):
    """Lawson-Hanson active set from the empty set, all nodes at once: (x, ridge).

    x stays feasible (x >= 0, 0 off the passive set F). A node whose x is optimal on F adds its
    most violated variable (gradient > tol); if that variable's own solution is <= 0 it is
    numerically dependent on F and is blocked instead. Otherwise, if the solution on F has
    entries <= 0, x moves towards it as far as it stays feasible and the variables that reach 0
    leave F. Each round is one batched solve; nodes with nothing left to add leave the batch.
    Blocked variables, if their gradient stays above tol, surface in the KKT check.
    """
    B, k = b.shape
    x_out, ridge_out = torch.zeros_like(b), torch.zeros_like(b[:, 0])
    ids = torch.arange(B, device=b.device)
    x, ridge = torch.zeros_like(b), torch.zeros_like(ridge_out)
    F, blocked = torch.zeros_like(valid), ~valid
    optimal = torch.ones(B, dtype=torch.bool, device=b.device)  # x is the solution on F
    for _ in range(4 * k):
        grad = b - _matvec(K, x) - ridge[:, None] * x
        enter = optimal[:, None] & ~F & ~blocked & (grad > tol)
        x_out[ids], ridge_out[ids] = x, ridge  # final for the finished nodes, overwritten for the others
        running = (~optimal | enter.any(1)).nonzero()[:, 0]
        if len(running) == 0:
            return x_out, ridge_out
        if len(running) < len(ids):
            ids, K, b, x, F, blocked, ridge, optimal, enter, grad = (
                t[running] for t in (ids, K, b, x, F, blocked, ridge, optimal, enter, grad)
            )
        # masks, not indexing, select the nodes each step applies to: no device synchronisation
        add = torch.nn.functional.one_hot(torch.where(enter, grad, -torch.inf).argmax(1), k).bool()
        add &= optimal[:, None]
        F |= add
        z, ridge = _ridged_solve(K, b, F, F, ridge)
        stuck = (add & (z <= 0)).any(1)
        F &= ~(add & stuck[:, None])
        blocked |= add & stuck[:, None]
        negative = (F & (z <= 0)).any(1) & ~stuck
        optimal = ~negative
        x = torch.where((optimal & ~stuck)[:, None], z, x)
        # a negative node moves from x towards z as far as it stays feasible; the variables
        # that reach 0 leave F. gap > 0 where an x_j > 0 heads to z_j <= 0, 0 only where both are 0
        gap = x - z
        ratio = torch.where(F & (z <= 0), x / gap.masked_fill(gap <= 0, 1), torch.inf)
        step = x + ratio.amin(1, keepdim=True).clamp(0, 1) * (z - x)
        leave = negative[:, None] & (step <= tol)
        x = torch.where(negative[:, None], step.masked_fill(leave, 0), x)
        F &= ~leave
    x_out[ids], ridge_out[ids] = x, ridge  # out of rounds: left to the KKT check, which counts it
    return x_out, ridge_out


def _pynnk(K, b, valid, tol):
    """The authors' pruning-only active set (METHOD.md section 2), all nodes at once: (x, ridge,
    whether a ridge was needed)."""
    k = b.shape[1]
    x, ridge_out = torch.zeros_like(b), torch.zeros_like(b[:, 0])
    ids = torch.arange(b.shape[0], device=b.device)
    ridge = torch.zeros_like(ridge_out)
    F = valid & (b > tol)
    for _ in range(50 * k):
        xa, ridge = _ridged_solve(K, b, F, valid, ridge)
        dropped = F & (xa < tol)
        F &= ~dropped
        x[ids], ridge_out[ids] = xa, ridge  # final for the finished nodes, overwritten for the others
        running = ((xa.abs() * dropped).amax(1) > tol).nonzero()[:, 0]
        if len(running) == 0:
            break
        if len(running) < len(ids):
            ids, K, b, valid, F, ridge = (t[running] for t in (ids, K, b, valid, F, ridge))
    return x, ridge_out, ridge_out > 0


def _solve_chunk(pb, solver, tol):
    """Weights, reconstruction errors, not-PD flags and KKT failures of a batch of node problems.

    Candidates that are one point in feature space make K_SS singular; they are merged into one
    variable (the limit of a vanishing ridge) whose weight is then split equally among them.
    """
    K, b, valid, dup = pb.K, pb.b, pb.valid, pb.dup
    x = torch.zeros_like(b)
    if solver == "exact":
        # copies of the query (in feature space) reconstruct it exactly: equal weights are optimal (g = 0)
        direct = dup.any(1)
        x[direct] = (dup.to(x.dtype) / dup.sum(1, keepdim=True).clamp(min=1))[direct]
    else:
        # the reference returns the candidates with K_Si > 1 - tau as they are
        near = valid & (b > 1 - tol)
        direct = near.any(1)
        x[direct] = torch.where(near, b, 0)[direct]
    todo = (~direct).nonzero()[:, 0]
    ridge = torch.zeros_like(x[:, 0])
    not_pd = torch.zeros_like(direct)
    if len(todo):
        todo = slice(None) if len(todo) == len(b) else todo  # a view, not a copy, in the common case
        # merged candidates leave the problem: only each group's first is a free variable
        free = valid[todo] & (pb.rep[todo] == torch.arange(b.shape[1], device=b.device))
        merged, ridge[todo], not_pd[todo] = (_exact if solver == "exact" else _pynnk)(K[todo], b[todo], free, tol)
        x[todo] = merged.gather(1, pb.rep[todo]) / pb.mult[todo] * valid[todo]
    theta = torch.where(x > tol, x, 0)
    Kt, grad, kkt_failed = _kkt(K, b, valid, theta, ridge, pb.mult)
    if solver == "exact" and kkt_failed.any():
        # the few nodes the batched active set left off the KKT conditions: solved again one by one
        rows = kkt_failed.nonzero()[:, 0]
        theta[rows], ridge[rows] = _nnls_rows(K[rows], b[rows], valid[rows], tol), 0
        Kt, grad, kkt_failed = _kkt(K, b, valid, theta, ridge, pb.mult)
    error = 1 - 2 * (theta * b).sum(1) + (theta * Kt).sum(1)
    not_pd |= (valid & (pb.mult > 1) & ~dup).any(1)
    return theta, error, not_pd, kkt_failed
