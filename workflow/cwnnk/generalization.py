"""C4 measured across models: correlation of layer measures with generalization
(generalization.csv), and early stopping from the CW-NNK LOO error.

One model is one point (a saved epoch counts as a model of its own; the `final` subset leaves
snapshots out, so that no run counts twice; untrained twins are left out altogether). For each
layer (by name, plus `last`: each model's deepest analysed layer), measure and target: Pearson
and Spearman with permutation p-values, the
BCa bootstrap 95% interval of Pearson r over models (from 10 models), and the partial Pearson
correlation given the training accuracy with a permutation p-value (both variables' linear dependence on train_acc
removed), so that a factor that moves the training fit (label noise) cannot make the
correlation alone. A row whose statistics are undefined says why in `skipped` (no test split,
fewer than 3 models, constant data).

Early stopping (early_stopping.csv) compares, per run over the same evaluated epochs (the saved
ones and the final one), the epoch the CW-NNK LOO error picks, the epoch a held-out validation
split picks with the same rule (training.validation), and the epoch of best test accuracy.
"""

import numpy as np

from cwnnk.exact import N_BOOT, bca_pearson, partial_correlation, permutation_correlation

MEASURES = ("rho_hat_mean", "pairwise_overlap_mean", "loo_error_layer", "loo_error_agg", "loo_error_channel_mean")
TARGETS = ("test_acc", "gap_acc")
CONTROL = "train_acc"
EMPTY = dict(pearson_r=np.nan, pearson_p=np.nan, spearman_rho=np.nan, spearman_p=np.nan, boot_lo=np.nan,
             boot_hi=np.nan, partial_r=np.nan, partial_p=np.nan)


def correlate(x, y, control=None, n_boot=N_BOOT, seed=0):
    """Every C4 statistic of x against y over the models where all are finite (cwnnk.exact).

    Returns dict n_models; pearson_r and spearman_rho with two-sided permutation p-values (exact up
    to 7 models); boot_lo, boot_hi: the BCa 95% interval of Pearson r over n_boot seeded resamples of
    the models (NaN below cwnnk.exact.BCA_MIN_N models; n_boot = 0 skips it); and, when control is
    given, partial_r and partial_p, the partial correlation given control with a permutation p. An
    undefined statistic is NaN (fewer than 3 models, or constant data).
    """
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    z = np.zeros_like(x) if control is None else np.asarray(control, dtype=np.float64)
    ok = np.isfinite(x) & np.isfinite(y) & np.isfinite(z)
    x, y, z = x[ok], y[ok], z[ok]
    out = dict(EMPTY, n_models=int(ok.sum()))
    out["pearson_r"], out["pearson_p"], _ = permutation_correlation(x, y, seed=seed)
    if np.isfinite(out["pearson_r"]):
        out["spearman_rho"], out["spearman_p"], _ = permutation_correlation(x, y, ranks=True, seed=seed)
        if n_boot:
            out["boot_lo"], out["boot_hi"] = bca_pearson(x, y, n_boot=n_boot, seed=seed)
    if control is not None:
        out["partial_r"], out["partial_p"], _ = partial_correlation(x, y, z, seed=seed)
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


def write_generalization(overlap_csv, out_csv, early_csv=None, channels_csv=None, channel_early_csv=None,
                         patience=1):
    """The `generalization` job: generalization.csv from overlap.csv; early_stopping.csv from it too, and
    early_stopping_channels.csv (the authors' channel-wise rule) from channels.csv, with `patience`."""
    from cwnnk.tables import read_table, select, text_column, write_table

    overlap = read_table(overlap_csv)
    if overlap and "kind" in overlap:  # untrained twins are baselines, not models whose generalization is measured
        overlap = select(overlap, text_column(overlap["kind"]) != "untrained")
    rows = generalization_rows(overlap)
    write_table(out_csv, rows, GENERALIZATION_COLUMNS)
    if early_csv is not None:
        write_table(early_csv, early_stopping_rows(overlap, patience), EARLY_COLUMNS)
    if channel_early_csv is not None:
        write_table(channel_early_csv, channel_stopping_rows(read_table(channels_csv), patience), CHANNEL_COLUMNS)
    return rows


def patience_stop(epochs, values, patience=1):
    """A "stop when it stops improving" rule on a criterion to minimise, evaluated at `epochs` (ascending).

    An evaluation improves when its value is strictly below the best so far (NaN never does), as in the
    authors' code (github.com/STAC-USC/CW-DeepNNK_Early_Stopping, main.py: `best_val <= error` counts
    against patience). Training stops at the evaluation where `patience` consecutive evaluations have
    failed to improve. Returns (best, stopped): the epoch of the best value up to the stop (earliest
    on ties), or None when no value is finite; and the epoch the rule stopped at, or None when patience
    never ran out within the epochs given.
    """
    best, best_value, waited = None, np.inf, 0
    for epoch, value in zip(epochs, values):
        if np.isfinite(value) and value < best_value:
            best, best_value, waited = epoch, value, 0
        else:
            waited += 1
            if best is not None and waited >= patience:
                return best, epoch
    return best, None


def stop_epoch(epochs, values, patience=1):
    """The epoch `patience_stop` picks: the best one up to the stop."""
    return patience_stop(epochs, values, patience)[0]


CHANNEL_COLUMNS = ("run", "layer", "channel", "n_epochs", "patience", "stop_epoch", "best_epoch", "best_loo_error",
                   "final_loo_error")


def channel_stopping_rows(channels, patience=1):
    """The authors' channel-wise early stopping (CW-DeepNNK), read from the saved epochs: per run and channel
    of each run's last analysed layer, the epoch its own LOO error stops it (patience_stop over the run's
    saved epochs and its last one; empty when patience never ran out), the best epoch up to then and its
    error. channels: channels.csv as read by read_table (columns run, epoch, kind, depth, layer, channel,
    loo_error). Runs with fewer than two evaluated epochs are left out."""
    from cwnnk.tables import text_column

    if not channels or "loo_error" not in channels or "run" not in channels:
        return []
    run, kind, layer = (text_column(channels[c]) for c in ("run", "kind", "layer"))
    epoch, depth = np.asarray(channels["epoch"], dtype=float), np.asarray(channels["depth"], dtype=float)
    channel, error = np.asarray(channels["channel"], dtype=float), np.asarray(channels["loo_error"], dtype=float)
    rows = []
    for name in dict.fromkeys(run[kind != "untrained"].tolist()):
        mine = (run == name) & (kind != "untrained")
        last = mine & (depth == depth[mine].max())
        epochs = np.unique(epoch[last])
        if epochs.size < 2:
            continue
        for c in np.unique(channel[last]):
            at = last & (channel == c)
            order = np.argsort(epoch[at], kind="stable")
            e, v = epoch[at][order], error[at][order]
            best, stopped = patience_stop(e, v, patience)
            rows.append(dict(run=name, layer=layer[at][0], channel=int(c), n_epochs=int(e.size), patience=patience,
                             stop_epoch=stopped, best_epoch=best,
                             best_loo_error=None if best is None else float(v[e == best][0]),
                             final_loo_error=float(v[-1])))
    return rows


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
        e, loo_, t, v = epoch[m][order], loo[m][order], test[m][order], val[m][order]
        pick = stop_epoch(e, loo_, patience)
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
