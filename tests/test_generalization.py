"""C4 statistics across models (cwnnk.generalization)."""

import numpy as np
import pytest
from scipy import stats

from cwnnk.generalization import correlate, generalization_rows, partial_correlation


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
    r, p = partial_correlation(x, y, z)
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


def test_early_stopping_rows_from_the_overlap_table():
    from cwnnk.generalization import early_stopping_rows

    overlap = {"is_last": np.ones(4), "run": np.array(["r", "r", "r", "solo"]), "epoch": np.array([5.0, 10, 15, 15]),
               "loo_error_layer": np.array([0.3, 0.2, 0.25, 0.1]), "test_acc": np.array([0.8, 0.85, 0.9, 0.9])}
    (row,) = early_stopping_rows(overlap)
    assert row["run"] == "r" and row["loo_epoch"] == 10 and row["loo_test_acc"] == 0.85
    assert row["best_test_epoch"] == 15 and row["best_test_acc"] == 0.9 and row["final_test_acc"] == 0.9
