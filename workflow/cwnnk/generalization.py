"""C4 measured across models: correlation of layer measures with generalization
(generalization.csv), and early stopping from the CW-NNK LOO error.

One model is one point (a saved epoch counts as a model of its own; the `final` subset leaves
snapshots out, so that no run counts twice; untrained twins are left out altogether). For each layer (by name, plus `last`: each
model's deepest analysed layer), measure and target: Pearson and Spearman with p-values, a
percentile bootstrap 95% interval of Pearson r over models, and the partial Pearson
correlation given the training accuracy (both variables' linear dependence on train_acc
removed), so that a factor that moves the training fit (label noise) cannot make the
correlation alone. A row whose statistics are undefined says why in `skipped` (no test split,
fewer than 3 models, constant data).

Early stopping (early_stopping.csv) compares, per run over the same evaluated epochs (the saved
ones and the final one), the epoch the CW-NNK LOO error picks, the epoch a held-out validation
split picks with the same rule (training.validation), and the epoch of best test accuracy.
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


def _column(overlap, name, n):
    return np.asarray(overlap[name], dtype=np.float64) if name in overlap else np.full(n, np.nan)


def accuracy_reason(overlap, mask=None):
    """Why the accuracy columns of these overlap.csv rows are empty: their distinct
    `accuracy_skipped` texts (e.g. no test split), or '' where the table gives none."""
    if "accuracy_skipped" not in overlap:
        return ""
    from cwnnk.tables import text_column

    reasons = text_column(overlap["accuracy_skipped"])
    return "; ".join(r for r in dict.fromkeys((reasons if mask is None else reasons[mask]).tolist()) if r)


def skip_reason(overlap, sel, measure, target, n_models):
    """Why a generalization.csv row's statistics are undefined (called where Pearson r is NaN)."""
    n = len(sel)
    for name in (target, CONTROL):
        if not np.isfinite(_column(overlap, name, n)[sel]).any():
            return accuracy_reason(overlap, sel) or f"no {name} in overlap.csv for these models"
    if not np.isfinite(_column(overlap, measure, n)[sel]).any():
        return f"{measure} undefined for every model (e.g. every channel of the layer dead)"
    if n_models < 3:
        return f"{n_models} models with a finite {measure}, {target} and {CONTROL}; 3 needed"
    return f"{measure} or {target} constant over the {n_models} models"


def generalization_rows(overlap, measures=MEASURES, targets=TARGETS, n_boot=N_BOOT):
    """The rows of generalization.csv from the overlap table (as read by read_table):
    per subset (all, final), layer, measure and target, the statistics of `correlate`, and
    `skipped`: why they are undefined (e.g. no test split), empty where Pearson r is defined."""
    if not overlap:
        return []
    kind = np.asarray(overlap["kind"]).astype(str)
    n = len(kind)
    subsets = {"all": np.ones(n, dtype=bool), "final": kind != "snapshot"}
    rows = []
    for subset, keep in subsets.items():
        for layer, mask in _groups(overlap):
            sel = mask & keep
            for measure in measures:
                if measure not in overlap:
                    continue
                for target in targets:
                    stats_ = correlate(overlap[measure][sel], _column(overlap, target, n)[sel],
                                       _column(overlap, CONTROL, n)[sel], n_boot)
                    skipped = None
                    if np.isnan(stats_["pearson_r"]):
                        skipped = skip_reason(overlap, sel, measure, target, stats_["n_models"])
                    rows.append(dict(subset=subset, layer=layer, measure=measure, target=target, **stats_,
                                     skipped=skipped))
    return rows


GENERALIZATION_COLUMNS = ("subset", "layer", "measure", "target", "n_models", *EMPTY, "skipped")


def write_generalization(overlap_csv, out_csv, early_csv=None):
    """The `generalization` job: generalization.csv (and early_stopping.csv) from overlap.csv."""
    from cwnnk.tables import read_table, select, text_column, write_table

    overlap = read_table(overlap_csv)
    if overlap and "kind" in overlap:  # untrained twins are baselines, not models whose generalization is measured
        overlap = select(overlap, text_column(overlap["kind"]) != "untrained")
    rows = generalization_rows(overlap)
    write_table(out_csv, rows, GENERALIZATION_COLUMNS)
    if early_csv is not None:
        write_table(early_csv, early_stopping_rows(overlap), EARLY_COLUMNS)
    return rows


def stop_epoch(epochs, values, patience=1):
    """The epoch a "stop when it stops improving" rule picks from a criterion to minimise.

    epochs ascending, values the criterion at each (e.g. the last layer's LOO error at each
    saved epoch). Training stops once `patience` consecutive evaluations fail to improve on
    the best so far (strictly lower); the pick is the best epoch seen up to then (earliest on
    ties). NaN values never improve. Returns None when no value is finite.
    """
    best, best_value, waited = None, np.inf, 0
    for epoch, value in zip(epochs, values):
        if np.isfinite(value) and value < best_value:
            best, best_value, waited = epoch, value, 0
        else:
            waited += 1
            if best is not None and waited >= patience:
                break
    return best


EARLY_COLUMNS = ("run", "n_epochs", "patience", "loo_epoch", "loo_test_acc", "val_epoch", "val_test_acc",
                 "best_test_epoch", "best_test_acc", "final_epoch", "final_test_acc", "val_skipped", "test_skipped")
NO_VALIDATION = "no validation split (training.validation is 0): val_epoch and val_test_acc are empty"
NO_TEST_ACCURACY = "no test accuracy in overlap.csv"


def early_stopping_rows(overlap, patience=1):
    """Per run with saved epochs: the epoch the last layer's CW-NNK LOO error picks
    (stop_epoch over the saved epochs and the final one), the epoch the held-out validation
    split picks (the same rule on the validation error 1 - val_acc, over the same epochs), the
    epoch with the best test accuracy among them, and the test accuracy at each, from the
    overlap table. A run without validation accuracy gets empty val_epoch and val_test_acc, and
    val_skipped says why; a run without test accuracy (no test split) gets empty test columns
    and best_test_epoch, and test_skipped says why (overlap.csv's accuracy_skipped)."""
    last = np.asarray(overlap.get("is_last", [])) == 1
    if not last.any() or "loo_error_layer" not in overlap:
        return []
    n = len(last)
    run, epoch = np.asarray(overlap["run"]).astype(str)[last], np.asarray(overlap["epoch"], dtype=float)[last]
    loo, test = np.asarray(overlap["loo_error_layer"])[last], _column(overlap, "test_acc", n)[last]
    val = _column(overlap, "val_acc", n)[last]
    rows = []
    for name in dict.fromkeys(run.tolist()):
        m = run == name
        if m.sum() < 2:
            continue
        order = np.argsort(epoch[m], kind="stable")
        e, l, t, v = epoch[m][order], loo[m][order], test[m][order], val[m][order]
        pick = stop_epoch(e, l, patience)
        at = {epoch_: (acc if np.isfinite(acc) else None) for epoch_, acc in zip(e.tolist(), t.tolist())}
        row = dict(run=name, n_epochs=int(m.sum()), patience=patience, loo_epoch=pick,
                   loo_test_acc=at.get(pick), val_epoch=None, val_test_acc=None, best_test_epoch=None,
                   best_test_acc=None, final_epoch=e[-1], final_test_acc=at[e[-1]])
        if np.isfinite(t).any():
            best = e[int(np.nanargmax(t))]
            row.update(best_test_epoch=best, best_test_acc=at[best])
        else:
            where = np.flatnonzero(last)[np.flatnonzero(m)]
            row["test_skipped"] = accuracy_reason(overlap, np.isin(np.arange(n), where)) or NO_TEST_ACCURACY
        if np.isfinite(v).any():
            row["val_epoch"] = stop_epoch(e, 1 - v, patience)
            row["val_test_acc"] = at[row["val_epoch"]]
        else:
            row["val_skipped"] = NO_VALIDATION
        rows.append(row)
    return rows
