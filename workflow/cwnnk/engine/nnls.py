"""The NNLS solvers of a batch of kernel problems, all nodes at once.

`solve` takes a batch of Problems (cwnnk.engine.problems) and returns each node's weights:
"exact" by block principal pivoting from the full passive set (with the KRI test on its first
swap), then Lawson-Hanson for the nodes it has not settled, then scipy's NNLS for any node still
off the KKT conditions; "pynnk" by the authors' pruning-only active set. Every solve is one
batched (masked, ridged where K_SS is not positive definite) Cholesky over the nodes still
running, and finished nodes leave the batch. See docs/engine.md.
"""

import numpy as np
import torch

KKT_TOL = 1e-9  # docs/method.md: |g| <= 1e-9 on the support, g <= 1e-9 off it
# Rounds of block principal pivoting before the nodes still running go to Lawson-Hanson.
BPP_ROUNDS = 10


def solve(pb, solver, tol):
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
        merged, ridge[todo], not_pd[todo] = (exact if solver == "exact" else pynnk)(K[todo], b[todo], free, tol)
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


def exact(K, b, valid, tol):
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
    x[ids], ridge_out[ids] = lawson_hanson(K, b, valid, tol)
    return x, ridge_out, not_pd


def lawson_hanson(K, b, valid, tol):
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


def pynnk(K, b, valid, tol):
    """The authors' pruning-only active set (docs/method.md), all nodes at once: (x, ridge,
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


def _matvec(K, x):
    """K x of a batch, K (B, k, k) and x (B, k). On a CPU elementwise, faster than bmm's one small
    product per node; on a GPU bmm, which reads K once."""
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
