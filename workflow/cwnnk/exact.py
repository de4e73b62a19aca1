"""Tests and intervals that stay right at the sample sizes of a sweep (a few models per group).

Large-sample approximations (the chi-square of Kruskal-Wallis, the normal approximation of the
Wilcoxon test, the t test of a correlation, the percentile bootstrap) are off by factors at
n = 2 to 20. Here every p-value comes from the test's own null distribution, enumerated
exactly where that is cheap and else drawn from seeded random permutations; `method` strings
say which ran. Arrays in, numbers out.
"""

import itertools
import math

import numpy as np
from scipy import stats

N_PERMUTATIONS = 9999
N_BOOT = 2000
# The BCa interval is not given below this many pairs: its bias and acceleration estimates rest on
# a jackknife of n points, and at fewer than 10 the bootstrap distribution of r has too few distinct values.
BCA_MIN_N = 10
TIE = 1e-9  # statistics equal up to rounding count as "at least as extreme"


def holm(pvalues):
    """Holm's step-down adjustment of a family of p-values (NaN stays NaN and is not counted)."""
    p = np.asarray(pvalues, dtype=np.float64)
    out = np.full_like(p, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    order = ok[np.argsort(p[ok], kind="stable")]
    m, running = len(order), 0.0
    for i, at in enumerate(order):
        running = max(running, min(1.0, (m - i) * p[at]))
        out[at] = running
    return out


# ---------------------------------------------------------------------------- paired

def signed_rank(differences, alternative="two-sided"):
    """Exact Wilcoxon signed-rank test of paired differences against 0.

    Zero differences are dropped (Wilcoxon's rule); ties among the rest get midranks, and the null
    distribution of W+ (the sum of the positive differences' ranks) is enumerated over all 2^n sign
    patterns of those ranks, so the p-value is exact with ties and at any n. alternative: 'greater'
    (differences tend to be positive), 'less' or 'two-sided' (twice the smaller tail, at most 1).
    Returns (W+, p, n of nonzero differences); p is 1.0 when n is 0.
    """
    d = np.asarray(differences, dtype=np.float64)
    d = d[np.isfinite(d) & (d != 0)]
    n = d.size
    if n == 0:
        return 0.0, 1.0, 0
    twice = np.rint(2 * stats.rankdata(np.abs(d))).astype(np.int64)  # midranks are halves: count in halves
    observed = int(twice[d > 0].sum())
    counts = np.zeros(int(twice.sum()) + 1)
    counts[0] = 1.0
    for r in twice:  # add each rank with sign + or -: the distribution of the positive sum
        shifted = np.zeros_like(counts)
        shifted[r:] = counts[:-r] if r else counts
        counts = counts + shifted
    prob = counts / counts.sum()
    upper, lower = float(prob[observed:].sum()), float(prob[: observed + 1].sum())
    p = {"greater": upper, "less": lower, "two-sided": min(1.0, 2 * min(upper, lower))}[alternative]
    return observed / 2, p, n


def smallest_signed_rank_p(n, alternative="two-sided"):
    """The smallest p-value the exact signed-rank test can give on n nonzero differences."""
    return (1.0 if n == 0 else 0.5**n) * (2 if alternative == "two-sided" else 1)


# ---------------------------------------------------------------------------- correlation

def permutation_correlation(x, y, alternative="two-sided", ranks=False, n_resamples=N_PERMUTATIONS, seed=0):
    """Pearson r of (x, y) (Spearman rho with ranks=True) and its permutation p-value.

    The null distribution pairs x with every reordering of y: all n! of them when n! <= n_resamples
    (exact), else n_resamples seeded random ones, p = (1 + hits) / (1 + n_resamples). Returns
    (r, p, method); r and p are NaN when x or y is constant or n < 3.
    """
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    n = len(x)
    if n < 3:
        return math.nan, math.nan, "undefined"
    if ranks:
        x, y = stats.rankdata(x), stats.rankdata(y)
    x, y = x - x.mean(), y - y.mean()
    scale = math.sqrt((x @ x) * (y @ y))
    if scale == 0:
        return math.nan, math.nan, "undefined"
    observed = float(x @ y / scale)
    exact = math.factorial(n) <= n_resamples
    if exact:
        orders = np.array(list(itertools.permutations(range(n))))
    else:
        orders = np.argsort(np.random.default_rng(seed).random((n_resamples, n)), axis=1)
    null = y[orders] @ x / scale
    hits = {"greater": null >= observed - TIE, "less": null <= observed + TIE,
            "two-sided": np.abs(null) >= abs(observed) - TIE}[alternative]
    p = float(hits.mean()) if exact else float((1 + hits.sum()) / (1 + n_resamples))
    name = "Spearman" if ranks else "Pearson"
    method = (f"{name}, exact permutation p ({len(orders)} orderings)" if exact
              else f"{name}, permutation p ({n_resamples} seeded orderings)")
    return observed, p, method


def smallest_permutation_p(x):
    """The smallest one-sided p-value a permutation test of a rank correlation with x can give
    (y distinct): the share of pairings that keep the best ordering, prod(t_j!) / n! over the
    tie groups t_j of x."""
    _, counts = np.unique(np.asarray(x), return_counts=True)
    return math.prod(math.factorial(int(c)) for c in counts) / math.factorial(len(x))


def residuals(v, z):
    """v minus its least-squares fit on [1, z]."""
    design = np.column_stack([np.ones(len(v)), z])
    return v - design @ np.linalg.lstsq(design, v, rcond=None)[0]


def partial_correlation(x, y, z, n_resamples=N_PERMUTATIONS, seed=0):
    """Pearson r of x and y after regressing each on z (with intercept), with a two-sided permutation
    p-value that reorders y's residuals against x's. Returns (r, p, method); NaN when n < 4 or a
    residual is constant."""
    x, y, z = (np.asarray(v, dtype=np.float64) for v in (x, y, z))
    if len(x) < 4:
        return math.nan, math.nan, "undefined"
    rx, ry = residuals(x, z), residuals(y, z)
    floor = max(np.abs(x).max(), np.abs(y).max(), 1.0) * 1e-12
    if np.ptp(rx) <= floor or np.ptp(ry) <= floor:
        return math.nan, math.nan, "undefined"
    r, p, method = permutation_correlation(rx, ry, n_resamples=n_resamples, seed=seed)
    return r, p, f"partial {method}"


def _pearson_rows(xb, yb):
    xb, yb = xb - xb.mean(-1, keepdims=True), yb - yb.mean(-1, keepdims=True)
    den = np.sqrt((xb**2).sum(-1) * (yb**2).sum(-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (xb * yb).sum(-1) / den, np.nan)


def bca_pearson(x, y, level=0.95, n_boot=N_BOOT, seed=0):
    """The bias-corrected and accelerated (BCa) bootstrap interval of Pearson r over pairs (x_i, y_i).

    n_boot seeded resamples of the pairs (a resample with a constant variable is skipped); the bias
    correction z0 from the share of resampled r below the observed one, the acceleration from the
    jackknife (Efron and Tibshirani 1993, section 14.3). Returns (lo, hi), NaN below BCA_MIN_N pairs
    or when r is undefined.
    """
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    n = len(x)
    r = float(_pearson_rows(x, y))
    if n < BCA_MIN_N or not np.isfinite(r):
        return math.nan, math.nan
    picks = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    boot = _pearson_rows(x[picks], y[picks])
    boot = boot[np.isfinite(boot)]
    keep = ~np.eye(n, dtype=bool)
    jack = _pearson_rows(np.broadcast_to(x, (n, n))[keep].reshape(n, n - 1),
                         np.broadcast_to(y, (n, n))[keep].reshape(n, n - 1))
    if not boot.size or not np.isfinite(jack).all():
        return math.nan, math.nan
    below = (np.sum(boot < r) + 0.5 * np.sum(boot == r)) / boot.size
    z0 = stats.norm.ppf(np.clip(below, 1 / (2 * boot.size), 1 - 1 / (2 * boot.size)))
    dev = jack.mean() - jack
    den = 6 * np.sum(dev**2) ** 1.5
    a = float(np.sum(dev**3) / den) if den > 0 else 0.0
    z = stats.norm.ppf([(1 - level) / 2, (1 + level) / 2])
    share = stats.norm.cdf(z0 + (z0 + z) / (1 - a * (z0 + z)))
    lo, hi = np.quantile(boot, share)
    return float(lo), float(hi)


# ---------------------------------------------------------------------------- groups

def _block_h(ranks, labels):
    """Kruskal-Wallis H of one block for each row of `labels` (arrangements of the group labels over
    the block's items), with the tie correction of the block's ranks."""
    n = ranks.size
    levels = np.unique(labels)
    total = sum((np.where(labels == lev, ranks, 0).sum(-1) ** 2) / (labels[..., :] == lev).sum(-1) for lev in levels)
    h = 12 / (n * (n + 1)) * total - 3 * (n + 1)
    _, ties = np.unique(ranks, return_counts=True)
    correction = 1 - (ties**3 - ties).sum() / (n**3 - n)
    return h / correction if correction > 0 else np.zeros_like(h)


def blocked_kruskal(values, levels, blocks, n_resamples=N_PERMUTATIONS, seed=0, max_exact=200_000):
    """A Kruskal-Wallis test across `levels` with the other factors held: the statistic is the sum over
    blocks (models that share every other setting) of H computed within the block, and its null
    distribution permutes the level labels within each block only. Blocks with one level add nothing
    and are left out.

    Exact where the blocks' arrangements are few (each block's distinct arrangements enumerated, the
    sum's distribution by convolution, at most max_exact support points); else n_resamples seeded
    within-block permutations. Returns dict statistic, p, smallest_p (the least p the design can give;
    exact only), n (models in blocks used), blocks, method. With no usable block p is NaN.
    """
    values, levels, blocks = np.asarray(values, dtype=np.float64), np.asarray(levels), np.asarray(blocks)
    used = []
    for key in dict.fromkeys(blocks.tolist()):
        at = blocks == key
        if len(np.unique(levels[at])) > 1:
            used.append((stats.rankdata(values[at]), levels[at]))
    if not used:
        return dict(statistic=math.nan, p=math.nan, smallest_p=math.nan, n=0, blocks=0, method="undefined")
    observed = float(sum(_block_h(r, lab) for r, lab in used))
    n = sum(r.size for r, _ in used)
    sizes = [math.factorial(r.size) for r, _ in used]
    if max(r.size for r, _ in used) <= 8 and math.prod(sizes) > 0:
        dist = {0.0: 1.0}  # support of the sum of H -> probability
        for ranks, lab in used:
            arrangements = np.unique(np.array([lab[list(p)] for p in itertools.permutations(range(lab.size))]), axis=0)
            h = np.round(_block_h(ranks, arrangements), 9)
            vals, counts = np.unique(h, return_counts=True)
            nxt = {}
            for s, ps in dist.items():
                for v, c in zip(vals.tolist(), (counts / counts.sum()).tolist()):
                    key = round(s + v, 9)
                    nxt[key] = nxt.get(key, 0.0) + ps * c
            dist = nxt
            if len(dist) > max_exact:
                break
        else:
            support = np.array(list(dist))
            prob = np.array(list(dist.values()))
            p = float(prob[support >= observed - TIE].sum())
            smallest = float(prob[support >= support.max() - TIE].sum())
            return dict(statistic=observed, p=min(1.0, p), smallest_p=smallest, n=n, blocks=len(used),
                        method=f"blocked Kruskal-Wallis, exact permutation p within {len(used)} blocks")
    rng = np.random.default_rng(seed)
    null = np.zeros(n_resamples)
    for ranks, lab in used:
        shuffled = np.take_along_axis(np.broadcast_to(lab, (n_resamples, lab.size)),
                                      np.argsort(rng.random((n_resamples, lab.size)), axis=1), axis=1)
        null += _block_h(ranks, shuffled)
    p = float((1 + np.sum(null >= observed - TIE)) / (1 + n_resamples))
    return dict(statistic=observed, p=p, smallest_p=1 / (1 + n_resamples), n=n, blocks=len(used),
                method=f"blocked Kruskal-Wallis, permutation p ({n_resamples} seeded within-block permutations, "
                       f"{len(used)} blocks)")
