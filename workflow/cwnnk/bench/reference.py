"""An independent float64 reference of single nodes' NNK problems, for the benchmarks' checks.

Written from docs/method.md section 2 with numpy alone, one node at a time, sharing no code with the
engine: the node's candidates by a brute force on direct differences (ties by lower index), its
kernel problem built from them, and the KKT conditions of that problem as the certificate that
an engine's weights are optimal (they hold whatever the solver, also where K_SS is singular and
the optimum is not unique).
"""

import numpy as np

# The engine meets |g| <= 1e-9 on its own K; an independently rounded K moves g by ~1e-14.
KKT_TOL = 2e-9


def candidates(Xc, i, k, duplicates="drop"):
    """The k nearest other points of point i of Xc (N, D), by (distance, index), and the squared
    distances to all points. `drop` leaves out points equal to x_i, `keep` puts them first."""
    x = np.asarray(Xc[i], dtype=np.float64)
    step = max(1, (1 << 26) // (8 * x.size))  # float64 blocks of 64 MiB: a whole layer is never copied
    d2 = np.concatenate([((np.asarray(Xc[lo : lo + step], dtype=np.float64) - x) ** 2).sum(1)
                         for lo in range(0, len(Xc), step)])
    return nearest(d2, i, k, duplicates), d2


def nearest(d2, i, k, duplicates="drop"):
    """The k nearest other points of point i from its squared distances d2 to all points, by
    (distance, index); d2 is marked in place (inf at i, and at its duplicates under `drop`)."""
    d2[i] = np.inf
    if duplicates == "drop":
        d2[d2 == 0] = np.inf
    order = np.lexsort((np.arange(len(d2)), d2))[:k]
    return order[d2[order] < np.inf]


def problem(Xc, i, S, d2, kernel):
    """K_SS, K_Si and the usable candidates of node i with candidates S (sigma local for gaussian)."""
    XS, x = np.asarray(Xc[S], dtype=np.float64), np.asarray(Xc[i], dtype=np.float64)
    if kernel == "gaussian":
        Y = XS - x
        G = Y @ Y.T
        n = np.diag(G)
        d2_S = np.maximum(n[:, None] + n[None, :] - 2 * G, 0)
        sigma2 = (np.sqrt(d2[S[-1]]) / 3) ** 2 if len(S) else 0.0
        if sigma2 == 0:  # every candidate at distance 0 (duplicates kept): the kernel's limit
            return (d2_S == 0).astype(float), (d2[S] == 0).astype(float), np.ones(len(S), bool)
        return np.exp(-d2_S / (2 * sigma2)), np.exp(-d2[S] / (2 * sigma2)), np.ones(len(S), bool)
    norm = np.linalg.norm(XS, axis=1)
    usable = (norm > 0) & (np.linalg.norm(x) > 0)
    unit = XS / np.maximum(norm, 1e-300)[:, None]
    b = 0.5 + 0.5 * unit @ (x / max(np.linalg.norm(x), 1e-300))
    return 0.5 + 0.5 * unit @ unit.T, b, usable


def kkt_violation(K, b, usable, theta):
    """The largest violation of the KKT conditions of min 1/2 t'Kt - b't, t >= 0 by theta
    (|g| on the support, g off it, with g = b - K theta; infinite if theta < 0 or an unusable
    candidate has weight)."""
    if (theta < 0).any() or (theta[~usable] != 0).any():
        return np.inf
    t = theta[usable]
    g = b[usable] - K[np.ix_(usable, usable)] @ t
    on = t > 0
    return max(np.abs(g[on]).max(initial=0), g[~on].max(initial=0))


def check_nodes(X, indices, weights, nodes, k, kernel="gaussian", duplicates="drop"):
    """Check an engine's result on the nodes (c, i) of the point sets X (C, N, D).

    indices and weights (C, N, k) are the engine's; weights None checks the candidates only (a
    solver other than the exact one need not meet the KKT conditions). Returns (nodes checked, nodes whose candidates
    differ from the brute force, nodes whose weights violate the reference problem's KKT
    conditions by more than KKT_TOL, the largest violation).
    """
    other, failed, worst = 0, 0, 0.0
    for c, i in nodes:
        S, d2 = candidates(X[c], i, k, duplicates)
        mine = indices[c, i][indices[c, i] >= 0]
        if not np.array_equal(S, mine):
            other += 1
            continue
        if len(S) == 0 or weights is None:
            continue
        violation = kkt_violation(*problem(X[c], i, S, d2, kernel), weights[c, i][: len(S)])
        worst = max(worst, float(violation))
        failed += int(violation > KKT_TOL)
    return len(nodes), other, failed, worst


def sample_nodes(C, N, n, seed=0):
    """n distinct nodes (c, i) of C point sets of N points, at random (all of them if n >= C N)."""
    rng = np.random.default_rng(seed)
    flat = rng.choice(C * N, size=min(n, C * N), replace=False)
    return [(int(f // N), int(f % N)) for f in np.sort(flat)]
