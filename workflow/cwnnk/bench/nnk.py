"""`bench nnk`: the NNK engine against the authors' reference approach and the kNN floor."""

import numpy as np
import scipy.linalg
import torch

from cwnnk.bench.common import knn_floor, make_layer, report_check, timed
from cwnnk.bench.reference import sample_nodes
from cwnnk.device import resolve_device
from cwnnk.engine import nnk
from cwnnk.params import GraphParams


def _reference_pynnk(K, b, tol):
    """One node's problem as the authors' code solves it (docs/method.md section 2), scipy Cholesky.

    As in the engine: candidates that repeat one point (equal rows of K, a singular K_SS) share one
    variable whose weight is split equally, and a Cholesky that fails gets a ridge
    eps * trace / k, grown tenfold until it succeeds.
    """
    if (b > 1 - tol).any():
        return np.where(b > 1 - tol, b, 0)
    _, first, inverse, mult = np.unique(K, axis=0, return_index=True, return_inverse=True, return_counts=True)
    if len(first) < len(b):
        x = _reference_pynnk(K[np.ix_(first, first)], b[first], tol)
        return np.where(x[inverse] / mult[inverse] > tol, x[inverse] / mult[inverse], 0)
    base, ridge = np.finfo(float).eps * np.trace(K) / len(K), 0.0
    F = b > tol
    for _ in range(50 * len(b)):
        x = np.zeros_like(b)
        while True:
            try:
                factor = scipy.linalg.cho_factor(K[np.ix_(F, F)] + ridge * np.eye(F.sum()), lower=True)
                break
            except np.linalg.LinAlgError:
                ridge = 10 * ridge if ridge else base
        x[F] = scipy.linalg.cho_solve(factor, b[F])
        dropped = F & (x < tol)
        F &= ~dropped
        if not dropped.any() or np.abs(x[dropped]).max() <= tol:
            break
    return np.where(x < tol, 0, x)


def baseline(X, k, kernel, n_loop, tol=1e-10):
    """Brute-force float64 kNN of every channel, then the per-node loop on the first n_loop nodes.

    Returns (knn seconds, loop seconds, supports of the looped nodes as {(channel, node): set}).
    """
    C, N, _ = X.shape
    supports, t_knn, t_loop = {}, 0.0, 0.0
    per_set = -(-n_loop // C)
    for c in range(C):
        Xc = X[c]

        def knn():
            sq = (Xc * Xc).sum(1)
            D2 = np.maximum(sq[:, None] + sq[None, :] - 2 * Xc @ Xc.T, 0)
            search = np.where(D2 == 0, np.inf, D2)  # self and duplicates are no candidates (drop)
            np.fill_diagonal(search, np.inf)
            part = np.argpartition(search, k - 1, axis=1)[:, :k]
            idx = np.take_along_axis(part, np.argsort(np.take_along_axis(search, part, 1), axis=1), 1)
            # ties at the k-th distance (e.g. all-zero maps): break them by lower index
            kth = np.take_along_axis(search, idx[:, -1:], 1)
            tied = np.nonzero((search == kth).sum(1) > 1)[0]
            idx[tied] = np.argsort(search[tied], axis=1, kind="stable")[:, :k]
            return D2, np.where(np.take_along_axis(search, idx, 1) < np.inf, idx, -1)

        dt, (D2, idx) = timed(knn)
        t_knn += dt
        unit = Xc / np.maximum(np.linalg.norm(Xc, axis=1, keepdims=True), 1e-300)

        def loop():
            for i in range(min(per_set, N)):
                S = idx[i][idx[i] >= 0]
                if kernel == "gaussian":
                    width = 2 * (np.sqrt(D2[i, S[-1]]) / 3) ** 2
                    K, b = np.exp(-D2[np.ix_(S, S)] / width), np.exp(-D2[i, S] / width)
                else:
                    if not unit[i].any():
                        supports[c, i] = set()
                        continue
                    S = S[unit[S].any(1)]
                    K, b = 0.5 + 0.5 * unit[S] @ unit[S].T, 0.5 + 0.5 * unit[S] @ unit[i]
                supports[c, i] = set(S[_reference_pynnk(K, b, tol) > 0].tolist())

        t_loop += timed(loop)[0]
    return t_knn, t_loop, supports


def bench_nnk(args, out=print):
    """Time the engine against the reference approach and the kNN floor; last line `speedup <x>`."""

    device = resolve_device(args.device)
    X = make_layer(args.n, args.c, args.d, args.seed)
    C, N, D = X.shape
    out(f"data: C={C} channels x N={N} points x D={D}, ReLU-like, {np.mean(~X.any(-1)):.1%} all-zero maps; "
        f"k={args.k}, kernel={args.kernel} (sigma local)")
    out(f"machine: device={device}, torch threads={torch.get_num_threads()}; floor and engine "
        f"are timed in {args.repeat} interleaved rounds, the best round of each counts")
    nnk(X[:1, :50], min(args.k, 10), device=device)  # warm-up: first-call costs are not the engine's

    runs = {
        "floor": lambda: knn_floor(X, args.k, device),
        "pynnk": lambda: nnk(X, args.k, kernel=args.kernel, solver="pynnk", device=device),
        "exact": lambda: nnk(X, args.k, kernel=args.kernel, solver="exact", device=device),
    }
    best, result = {}, {}
    for _ in range(args.repeat):  # interleaved, so that a busy spell of the machine hits all alike
        for name, run in runs.items():
            dt, result[name] = timed(run)
            best[name] = min(best.get(name, dt), dt)
    n_loop = min(args.baseline_nodes, C * N)
    t_knn, t_loop, supports = baseline(X, args.k, args.kernel, n_loop)

    # agreement first, then the times
    ours = result["pynnk"]
    equal = sum(set(ours.indices[c, i][ours.weights[c, i] > 0].tolist()) == s for (c, i), s in supports.items())
    out(f"agreement: engine pynnk supports equal the baseline's on {equal}/{len(supports)} nodes")
    exact = result["exact"]
    exact_ok = report_check(X, exact.indices, exact.weights, sample_nodes(C, N, args.check_nodes, args.seed),
                            GraphParams(k=args.k, kernel=args.kernel), "engine exact", out)
    t_floor = best["floor"]
    out(f"floor (float32 product + topk per channel): {t_floor:.2f} s")
    for solver in ("pynnk", "exact"):
        res = result[solver]
        out(f"engine {solver}: {best[solver]:.2f} s, mean degree {res.degree.mean():.2f}, "
            f"kkt_failed {int(res.counts['kkt_failed'].sum())}, not_pd {int(res.counts['not_pd'].sum())}")
    scale = C * N / len(supports)
    t_base = t_knn + t_loop * scale
    how = "all nodes" if len(supports) == C * N else f"{len(supports)} of {C * N} nodes, scaled x{scale:.1f}"
    out(f"baseline: knn {t_knn:.2f} s (all channels) + per-node loop {t_loop:.2f} s on {how} = {t_base:.2f} s")
    t_engine = best[args.solver]
    out(f"engine {args.solver} / floor: {t_engine / t_floor:.2f}")
    out(f"speedup {t_base / t_engine:.2f}")
    return equal == len(supports) and exact_ok
