"""C4 measured across models: correlation of layer measures with generalization
(generalization.csv), and early stopping from the CW-NNK LOO error.

One model is one point (a saved epoch counts as a model of its own; the `final` subset leaves
snapshots out, so that no run counts twice). For each layer (by name, plus `last`: each
model's deepest analysed layer), measure and target: Pearson and Spearman with p-values, a
percentile bootstrap 95% interval of Pearson r over models, and the partial Pearson
correlation given the training accuracy (both variables' linear dependence on train_acc
removed), so that a factor that moves the training fit (label noise) cannot make the
correlation alone.
"""

import warnings

import numpy as np
from scipy import stats

MEASURES = ("rho_hat_mean", "pairwise_overlap_mean", "loo_error_layer", "loo_error_agg", "loo_error_channel_mean")
TARGETS = ("test_acc", "gap_acc")
CONTROL = "train_acc"
N_BOOT = 2000
EMPTY = dict(pearson_r=np.nan, pearson_p=np.nan, spearman_rho=np.nan, spearman_p=np.nan, boot_lo=np.nan,
             boot_hi=np.nan, partial_r=np.nan, partial_p=np.nan)


def _pearson(x, y):
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return np.nan, np.nan
    result = stats.pearsonr(x, y)
    return float(result.statistic), float(result.pvalue)


def partial_correlation(x, y, z):
    """Pearson r of x and y after regressing each on z (with intercept), and its p-value
    (t test with n - 3 degrees of freedom). NaN when undefined (n < 4 or a constant residual)."""
    x, y, z = (np.asarray(v, dtype=np.float64) for v in (x, y, z))
    n = len(x)
    if n < 4:
        return np.nan, np.nan
    design = np.column_stack([np.ones(n), z])
    rx = x - design @ np.linalg.lstsq(design, x, rcond=None)[0]
    ry = y - design @ np.linalg.lstsq(design, y, rcond=None)[0]
    scale = max(np.abs(x).max(), np.abs(y).max(), 1.0) * 1e-12
    if np.ptp(rx) <= scale or np.ptp(ry) <= scale:
        return np.nan, np.nan
    r = float(np.clip(np.corrcoef(rx, ry)[0, 1], -1, 1))
    dof = n - 3
    t = r * np.sqrt(dof / max(1e-300, 1 - r * r))
    return r, float(2 * stats.t.sf(abs(t), dof))


def correlate(x, y, control=None, n_boot=N_BOOT, seed=0):
    """Every C4 statistic of x against y over the models where all are finite.

    Returns dict n_models, pearson_r, pearson_p, spearman_rho, spearman_p, boot_lo, boot_hi
    (percentile 95% interval of Pearson r over n_boot resamples of the models, seeded;
    resamples with a constant variable are skipped) and, when control is given, partial_r,
    partial_p. An undefined statistic is NaN (fewer than 3 models, or constant data).
    """
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    z = np.zeros_like(x) if control is None else np.asarray(control, dtype=np.float64)
    ok = np.isfinite(x) & np.isfinite(y) & np.isfinite(z)
    x, y, z = x[ok], y[ok], z[ok]
    out = dict(EMPTY, n_models=int(ok.sum()))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out["pearson_r"], out["pearson_p"] = _pearson(x, y)
        if np.isfinite(out["pearson_r"]):
            s = stats.spearmanr(x, y)
            out["spearman_rho"], out["spearman_p"] = float(s.statistic), float(s.pvalue)
            rng = np.random.default_rng(seed)
            picks = rng.integers(0, len(x), size=(n_boot, len(x)))
            xb, yb = x[picks], y[picks]
            xb, yb = xb - xb.mean(1, keepdims=True), yb - yb.mean(1, keepdims=True)
            den = np.sqrt((xb**2).sum(1) * (yb**2).sum(1))
            good = den > 0
            r = (xb * yb).sum(1)[good] / den[good]
            if r.size:
                out["boot_lo"], out["boot_hi"] = (float(v) for v in np.quantile(r, [0.025, 0.975]))
        if control is not None:
            out["partial_r"], out["partial_p"] = partial_correlation(x, y, z)
    return out


def _groups(overlap):
    """(layer, mask) per layer name in first-seen order, then ('last', is_last rows)."""
    layers = np.asarray(overlap["layer"]).astype(str)
    for name in dict.fromkeys(layers.tolist()):
        yield name, layers == name
    yield "last", np.asarray(overlap["is_last"]) == 1


def generalization_rows(overlap, measures=MEASURES, targets=TARGETS, n_boot=N_BOOT):
    """The rows of generalization.csv from the overlap table (as read by read_table):
    per subset (all, final), layer, measure and target, the statistics of `correlate`."""
    if not overlap:
        return []
    kind = np.asarray(overlap["kind"]).astype(str)
    subsets = {"all": np.ones(len(kind), dtype=bool), "final": kind != "snapshot"}
    rows = []
    for subset, keep in subsets.items():
        for layer, mask in _groups(overlap):
            sel = mask & keep
            for measure in measures:
                if measure not in overlap:
                    continue
                for target in targets:
                    stats_ = correlate(overlap[measure][sel], overlap[target][sel], overlap[CONTROL][sel], n_boot)
                    rows.append(dict(subset=subset, layer=layer, measure=measure, target=target, **stats_))
    return rows


def write_generalization(overlap_csv, out_csv):
    """The `generalization` job: generalization.csv from overlap.csv."""
    from cwnnk.tables import read_table, write_table

    rows = generalization_rows(read_table(overlap_csv))
    columns = ("subset", "layer", "measure", "target", "n_models", *EMPTY)
    write_table(out_csv, rows, columns)
    return rows
