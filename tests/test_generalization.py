"""C4 statistics across models (cwnnk.generalization)."""

import numpy as np
import pytest
from scipy import stats

from cwnnk.exact import partial_correlation
from cwnnk.generalization import correlate, generalization_rows


def test_correlate_matches_scipy_and_bootstrap_brackets_r():
    rng = np.random.default_rng(0)
    x = rng.normal(size=30)
    y = 0.7 * x + 0.5 * rng.normal(size=30)
    c = correlate(x, y)
    assert c["n_models"] == 30
    assert c["pearson_r"] == pytest.approx(stats.pearsonr(x, y).statistic)
    assert c["spearman_rho"] == pytest.approx(stats.spearmanr(x, y).statistic)
    assert c["boot_lo"] < c["pearson_r"] < c["boot_hi"] and c["boot_hi"] - c["boot_lo"] < 0.6
    assert np.isnan(c["partial_r"])  # no control given
    assert correlate(x, y)["boot_lo"] == c["boot_lo"]  # seeded


def test_partial_correlation_removes_a_shared_cause():
    rng = np.random.default_rng(2)
    z = rng.normal(size=200)  # e.g. training accuracy, moved by label noise
    x, y = z + 0.3 * rng.normal(size=200), z + 0.3 * rng.normal(size=200)
    assert stats.pearsonr(x, y).statistic > 0.8
    r, p, _ = partial_correlation(x, y, z)
    assert abs(r) < 0.2 and p > 0.01
    c = np.corrcoef([x, y, z])  # the textbook formula
    assert r == pytest.approx((c[0, 1] - c[0, 2] * c[1, 2]) / np.sqrt((1 - c[0, 2] ** 2) * (1 - c[1, 2] ** 2)))
    # Hand-worked: x and y are exact linear functions of z plus orthogonal parts.
    z = np.array([0.0, 1, 2, 3, 4])
    e = np.array([1.0, -1, 0, -1, 1])  # orthogonal to 1 and z
    assert partial_correlation(z + e, 2 * z + e, z)[0] == pytest.approx(1.0)
    assert partial_correlation(z + e, 2 * z - e, z)[0] == pytest.approx(-1.0)


def test_undefined_cases_are_nan():
    c = correlate([1.0, 2.0], [3.0, 4.0], [0.0, 1.0])
    assert c["n_models"] == 2 and np.isnan(c["pearson_r"]) and np.isnan(c["boot_lo"]) and np.isnan(c["partial_r"])
    c = correlate([1.0, 2, 3, np.nan], [1.0, 1, 1, 2])
    assert c["n_models"] == 3 and np.isnan(c["spearman_rho"])


def test_rows_per_subset_layer_measure_target():
    rng = np.random.default_rng(2)
    n = 8
    overlap = {"layer": np.array(["conv1", "conv2"] * n), "is_last": np.array([0, 1] * n, dtype=float),
               "kind": np.array(["trained", "trained", "snapshot", "snapshot"] * (n // 2)),
               "train_acc": rng.random(2 * n), "test_acc": rng.random(2 * n), "gap_acc": rng.random(2 * n),
               "rho_hat_mean": rng.random(2 * n), "loo_error_layer": rng.random(2 * n)}
    rows = generalization_rows(overlap, n_boot=50)
    keys = {(r["subset"], r["layer"], r["measure"], r["target"]) for r in rows}
    assert len(rows) == len(keys) == 2 * 3 * 2 * 2  # subsets x (conv1, conv2, last) x measures x targets
    last = {(r["subset"], r["measure"], r["target"]): r for r in rows if r["layer"] == "last"}
    assert last["all", "rho_hat_mean", "test_acc"]["n_models"] == n
    assert last["final", "rho_hat_mean", "test_acc"]["n_models"] == n // 2
    assert generalization_rows({}) == []


def test_stop_epoch_with_patience():
    from cwnnk.generalization import stop_epoch

    epochs, loo = [1, 2, 3, 4, 5], [0.5, 0.4, 0.45, 0.3, 0.35]
    assert stop_epoch(epochs, loo, patience=1) == 2  # epoch 3 fails to improve: stop, keep 2
    assert stop_epoch(epochs, loo, patience=2) == 4
    assert stop_epoch(epochs, [0.5, 0.5, 0.5], patience=5) == 1  # ties do not improve
    assert stop_epoch([1, 2], [np.nan, np.nan]) is None


def test_patience_stop_names_where_it_stopped():
    from cwnnk.generalization import patience_stop

    epochs = [1, 2, 3, 4, 5, 6]
    assert patience_stop(epochs, [0.5, 0.4, 0.45, 0.46, 0.3, 0.2], patience=2) == (2, 4)
    assert patience_stop(epochs, [0.5, 0.4, 0.3, 0.2, 0.1, 0.05], patience=2) == (6, None)  # never ran out
    assert patience_stop([1, 2, 3], [0.3, 0.3, 0.3], patience=2) == (1, 3)  # an equal error does not improve
    assert patience_stop([1, 2], [np.nan, np.nan], patience=1) == (None, None)


def test_channel_stopping_rows_on_a_hand_made_trajectory():
    """The authors' per-channel rule on channels.csv: each channel of the last layer stops on its own."""
    from cwnnk.generalization import channel_stopping_rows

    trajectories = {0: [0.5, 0.4, 0.45, 0.46, 0.3, 0.2], 1: [0.5, 0.4, 0.3, 0.2, 0.1, 0.05],
                    2: [np.nan] * 6}
    rows = []
    for epoch in range(1, 7):
        for c, errors in trajectories.items():
            rows.append(dict(run="r", kind="snapshot" if epoch < 6 else "trained", epoch=epoch, layer="conv4",
                             depth=3, channel=c, loo_error=errors[epoch - 1]))
            rows.append(dict(run="r", kind="snapshot" if epoch < 6 else "trained", epoch=epoch, layer="conv1",
                             depth=0, channel=c, loo_error=0.9))  # not the last layer: ignored
        rows.append(dict(run="r", kind="untrained", epoch=0, layer="conv4", depth=3, channel=0, loo_error=0.0))
    table = {key: np.array([r[key] for r in rows]) for key in rows[0]}
    out = {r["channel"]: r for r in channel_stopping_rows(table, patience=2)}
    assert set(out) == {0, 1, 2} and all(r["layer"] == "conv4" and r["n_epochs"] == 6 for r in out.values())
    assert (out[0]["stop_epoch"], out[0]["best_epoch"], out[0]["best_loo_error"]) == (4, 2, 0.4)
    assert out[0]["final_loo_error"] == 0.2
    assert (out[1]["stop_epoch"], out[1]["best_epoch"], out[1]["best_loo_error"]) == (None, 6, 0.05)
    assert (out[2]["stop_epoch"], out[2]["best_epoch"], out[2]["best_loo_error"]) == (None, None, None)


def test_early_stopping_rows_from_the_overlap_table():
    from cwnnk.generalization import early_stopping_rows

    overlap = {"is_last": np.ones(4), "run": np.array(["r", "r", "r", "solo"]), "epoch": np.array([5.0, 10, 15, 15]),
               "loo_error_layer": np.array([0.3, 0.2, 0.25, 0.1]), "test_acc": np.array([0.8, 0.85, 0.9, 0.9])}
    (row,) = early_stopping_rows(overlap)
    assert row["run"] == "r" and row["loo_epoch"] == 10 and row["loo_test_acc"] == 0.85
    assert row["best_test_epoch"] == 15 and row["best_test_acc"] == 0.9 and row["final_test_acc"] == 0.9


def test_early_stopping_rows_with_a_validation_split():
    from cwnnk.generalization import NO_VALIDATION, early_stopping_rows

    # Hand-worked, patience 1, candidates 2, 4, 6, 8 (saved epochs and the final one), rows shuffled:
    # LOO 0.30 0.25 0.27 0.20 -> epoch 6 fails to improve on 0.25: stop, pick 4;
    # val_acc 0.70 0.72 0.75 0.74 (error 0.30 0.28 0.25 0.26) -> epoch 8 fails: pick 6;
    # test_acc 0.80 0.82 0.84 0.86 -> best 8. Patience 2: LOO picks 8, validation still 6.
    overlap = {"is_last": np.array([1.0, 1, 1, 1, 0]), "run": np.array(["r"] * 5),
               "epoch": np.array([8.0, 2, 6, 4, 8]),
               "loo_error_layer": np.array([0.20, 0.30, 0.27, 0.25, 0.0]),
               "val_acc": np.array([0.74, 0.70, 0.75, 0.72, 0.99]),
               "test_acc": np.array([0.86, 0.80, 0.84, 0.82, 0.0])}
    (row,) = early_stopping_rows(overlap)
    assert (row["loo_epoch"], row["loo_test_acc"]) == (4, 0.82)
    assert (row["val_epoch"], row["val_test_acc"]) == (6, 0.84)
    assert (row["best_test_epoch"], row["final_epoch"], row["n_epochs"]) == (8, 8, 4) and "val_skipped" not in row
    (row,) = early_stopping_rows(overlap, patience=2)
    assert (row["loo_epoch"], row["val_epoch"]) == (8, 6)
    # Ties do not improve: a flat validation accuracy keeps the first epoch.
    (row,) = early_stopping_rows(dict(overlap, val_acc=np.array([0.7, 0.7, 0.7, 0.7, 0.7])))
    assert row["val_epoch"] == 2 and row["val_test_acc"] == 0.80
    # Without a validation split (no column, or empty cells read back as NaN) the table says why.
    for table in ({k: v for k, v in overlap.items() if k != "val_acc"}, dict(overlap, val_acc=np.full(5, np.nan))):
        (row,) = early_stopping_rows(table)
        assert row["val_epoch"] is None and row["val_test_acc"] is None and row["val_skipped"] == NO_VALIDATION
        assert row["loo_epoch"] == 4


def test_early_stopping_csv_says_why_the_validation_columns_are_empty(tmp_path):
    from cwnnk.generalization import EARLY_COLUMNS, write_generalization
    from cwnnk.tables import read_table, write_table

    rows = [dict(model=f"r-e{e}" if e < 3 else "r", kind="snapshot" if e < 3 else "trained", layer="conv1", is_last=1,
                 run="r", epoch=e, loo_error_layer=loo, test_acc=acc, train_acc=1.0, gap_acc=1.0 - acc)
            for e, loo, acc in ((1, 0.4, 0.6), (2, 0.3, 0.7), (3, 0.35, 0.65))]
    write_table(tmp_path / "overlap.csv", rows)
    write_generalization(tmp_path / "overlap.csv", tmp_path / "g.csv", tmp_path / "early.csv")
    early = read_table(tmp_path / "early.csv")
    assert list(early) == list(EARLY_COLUMNS)
    assert early["loo_epoch"].tolist() == [2.0] and np.isnan(early["val_epoch"]).all()
    assert "training.validation is 0" in early["val_skipped"][0]


NO_TEST = "no test split (dataset.test_root is null): test accuracy, the gap and claim C4 are skipped"


def _overlap_without_test_split(n_models=4, snapshots=False):
    """overlap.csv rows as the tables stage writes them for a folder without test_root: empty
    test_acc, gap_acc, test_loss, gap_loss and the reason in accuracy_skipped."""
    rows = []
    for m in range(n_models):
        for epoch, kind in ((2, "snapshot"), (4, "trained")) if snapshots else ((4, "trained"),):
            for depth, layer in enumerate(("conv1", "conv2")):
                rows.append(dict(model=f"m{m}-e{epoch}" if kind == "snapshot" else f"m{m}", kind=kind,
                                 label="d0 wd0 none", run=f"m{m}", epoch=epoch, layer=layer, depth=depth,
                                 is_last=depth, train_acc=0.9 + 0.01 * m, test_acc=None, gap_acc=None,
                                 accuracy_skipped=NO_TEST, rho_hat_mean=0.5 + 0.1 * m - 0.05 * depth,
                                 rho_hat_chance_mean=0.2, pairwise_overlap_mean=0.3 + 0.02 * m,
                                 pairwise_overlap_chance_mean=0.02, loo_error_layer=0.3 - 0.01 * (m + 1) * epoch,
                                 redundancy=0.5 + 0.1 * m - 0.05 * depth, redundancy_chance=0.2,
                                 redundancy_excess=0.3 + 0.1 * m - 0.05 * depth,
                                 redundancy_excess_ci_lo=0.25 + 0.1 * m - 0.05 * depth,
                                 redundancy_excess_ci_hi=0.35 + 0.1 * m - 0.05 * depth))
    return rows


def test_no_test_split_rows_say_why(tmp_path):
    from cwnnk.generalization import GENERALIZATION_COLUMNS, write_generalization
    from cwnnk.tables import read_table, write_table

    write_table(tmp_path / "overlap.csv", _overlap_without_test_split(snapshots=True))
    write_generalization(tmp_path / "overlap.csv", tmp_path / "g.csv", tmp_path / "early.csv")
    g = read_table(tmp_path / "g.csv")
    assert list(g) == list(GENERALIZATION_COLUMNS)
    # 2 subsets x (conv1, conv2, last) x 3 measures present x 2 targets, none computable
    assert len(g["skipped"]) == 36 and (g["n_models"] == 0).all() and np.isnan(g["pearson_r"]).all()
    assert set(g["skipped"]) == {NO_TEST}
    # early stopping: the LOO pick is still made (the training-data estimate needs no test split),
    # but every test-accuracy column is empty and test_skipped says why
    early = read_table(tmp_path / "early.csv")
    assert early["loo_epoch"].tolist() == [4.0] * 4  # LOO error 0.3 - 0.02 (m + 1) at epoch 2 > 0.3 - 0.04 (m + 1) at 4
    for column in ("loo_test_acc", "best_test_epoch", "best_test_acc", "final_test_acc"):
        assert np.isnan(early[column]).all(), column
    assert set(early["test_skipped"]) == {NO_TEST}


def test_skipped_gives_the_other_reasons():
    from cwnnk.generalization import generalization_rows

    def last_row(table, measure="rho_hat_mean"):
        return next(r for r in generalization_rows(table, n_boot=10)
                    if (r["subset"], r["layer"], r["measure"], r["target"]) == ("all", "last", measure, "test_acc"))

    base = {"layer": np.array(["conv1"] * 4), "is_last": np.ones(4), "kind": np.array(["trained"] * 4),
            "train_acc": np.array([0.9, 0.8, 0.95, 0.7]), "test_acc": np.array([0.8, 0.7, 0.9, 0.6]),
            "gap_acc": np.array([0.1, 0.1, 0.05, 0.1]), "rho_hat_mean": np.array([0.5, 0.4, 0.6, 0.3])}
    assert last_row(base)["skipped"] is None and last_row(base)["n_models"] == 4
    two = dict(base, rho_hat_mean=np.array([0.5, 0.4, np.nan, np.nan]))
    assert last_row(two)["skipped"] == "2 models with a finite rho_hat_mean, test_acc and train_acc; 3 needed"
    dead = dict(base, rho_hat_mean=np.full(4, np.nan))
    assert "undefined for every model" in last_row(dead)["skipped"]
    flat = dict(base, rho_hat_mean=np.full(4, 0.5))
    assert last_row(flat)["skipped"] == "rho_hat_mean or test_acc constant over the 4 models"
    no_test = {k: v for k, v in base.items() if k != "test_acc"}  # no column, no accuracy_skipped
    assert last_row(no_test)["skipped"] == "no test_acc in overlap.csv for these models"

