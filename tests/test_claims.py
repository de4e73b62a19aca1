"""claims.csv (cwnnk.claims): each verdict rule on small hand-built tables, with p-values
worked out by hand (exact permutation and binomial counts, a Kruskal-Wallis H by its formula)."""

import re

import numpy as np
import pytest

from cwnnk.claims import (
    COLUMNS,
    NOT_SUPPORTED,
    SUPPORTED,
    UNDEFINED,
    c1_degree_dimension,
    c2_redundancy,
    c2_training,
    c3_depth,
    c3_factor,
    c3_factors,
    c4_correlations,
    claims_rows,
    early_stopping_claim,
    write_claims,
)

from conftest import REPO


def manifolds(dims, degrees, solver="exact"):
    n = len(dims)
    other = "pynnk" if solver == "exact" else "exact"
    return {"dim": np.array([*dims, *dims], dtype=float), "degree_mean": np.array([*degrees, *degrees[::-1]], float),
            "solver": np.array([solver] * n + [other] * n), "k": np.full(2 * n, 10.0)}


# ---------------------------------------------------------------------------- C1

def test_c1_perfect_increase_over_four_dimensions_is_supported():
    # 4 distinct dimensions, degrees in the same order: rho = 1, reached by 1 of the 4! = 24
    # pairings, so the exact one-sided p is 1/24. The pynnk rows (reversed) are not read.
    row = c1_degree_dimension(manifolds([1, 2, 4, 8], [2.0, 3.5, 6.0, 9.0]))
    assert row["verdict"] == SUPPORTED and row["n"] == 4 and row["n_models"] == 0
    assert row["value"] == pytest.approx(1.0) and row["p_value"] == pytest.approx(1 / 24)
    assert "d = 1 to 9.0 at d = 8" in row["evidence"]


def test_c1_one_swap_is_not_enough():
    # degree ranks 1 3 2 4: sum d^2 = 2, rho = 1 - 6 * 2 / (4 * 15) = 0.8; as high or higher: the
    # identity and the 3 adjacent swaps, 4 of 24 pairings, p = 1/6.
    row = c1_degree_dimension(manifolds([1, 2, 3, 4], [2.0, 5.0, 3.0, 8.0]))
    assert row["value"] == pytest.approx(0.8) and row["p_value"] == pytest.approx(1 / 6)
    assert row["verdict"] == NOT_SUPPORTED


def test_c1_decreasing_degree_is_not_supported():
    row = c1_degree_dimension(manifolds([1, 2, 3, 4], [8.0, 5.0, 3.0, 2.0]))
    assert row["value"] == pytest.approx(-1.0) and row["p_value"] == pytest.approx(1.0)
    assert row["verdict"] == NOT_SUPPORTED


@pytest.mark.parametrize("table, why", [
    ({}, "manifolds.csv has no rows"),
    (manifolds([1, 2, 3], [1.0, 2.0, 3.0]), "smallest p 0.17"),  # 1/3! = 1/6
    (manifolds([1, 1, 2, 2], [1.0, 2.0, 3.0, 4.0]), "smallest p 0.17"),  # 2! 2! / 4! = 1/6
    (manifolds([2, 2], [1.0, 2.0]), "fewer than 2 distinct dimensions"),
])
def test_c1_undefined_when_the_test_cannot_reach_significance(table, why):
    row = c1_degree_dimension(table)
    assert row["verdict"] == UNDEFINED and why in row["evidence"] and row["p_value"] is None


def test_c1_a_degree_saturated_at_k_everywhere_does_not_increase():
    row = c1_degree_dimension(manifolds([1, 2, 4, 8], [10.0] * 4))
    assert row["verdict"] == NOT_SUPPORTED and "does not increase" in row["evidence"]


def test_c1_reads_the_configured_solver():
    row = c1_degree_dimension(manifolds([1, 2, 4, 8], [9.0, 6.0, 3.5, 2.0], solver="pynnk"), solver="exact")
    assert row["verdict"] == SUPPORTED  # the exact rows are the reversed, increasing ones


# ---------------------------------------------------------------------------- C2 and C3

def overlap(values, chance=None, layers=("conv1", "conv2"), labels=None, kind=None, **columns):
    """Rows model by model, layer by layer: values[m][l] is model m's headline redundancy at layer l.
    columns: more per-row columns, each given as [m][l] like values (e.g. redundancy_excess)."""
    rows = {"model": [], "layer": [], "depth": [], "is_last": [], "label": [], "kind": [], "redundancy": [],
            "redundancy_chance": [], **{name: [] for name in columns}}
    for m, per_layer in enumerate(values):
        for depth, layer in enumerate(layers):
            rows["model"].append(f"m{m}")
            rows["layer"].append(layer)
            rows["depth"].append(depth)
            rows["is_last"].append(int(depth == len(layers) - 1))
            rows["label"].append(labels[m] if labels else "d0 wd0 none")
            rows["kind"].append(kind[m] if kind else "trained")
            rows["redundancy"].append(per_layer[depth])
            rows["redundancy_chance"].append(0.2 if chance is None else chance[m][depth])
            for name, given in columns.items():
                rows[name].append(given[m][depth])
    text = ("model", "layer", "label", "kind", "training_effect")
    return {key: np.array(v, dtype=str if key in text else float) for key, v in rows.items()}


def excess_table(excess, lo, hi, kind=None, effect=None, diff=None):
    """C2 rows: per model and layer the excess over chance and its interval (and the twin comparison)."""
    extra = {} if effect is None else {"training_effect": effect, "redundancy_vs_twin": diff}
    return overlap([[0.5, 0.5]] * len(excess), kind=kind, redundancy_excess=excess, redundancy_excess_ci_lo=lo,
                   redundancy_excess_ci_hi=hi, **extra)


def test_c2_every_row_above_the_minimum_effect_is_supported():
    row = c2_redundancy(excess_table([[0.12, 0.08], [0.10, 0.09]], [[0.08, 0.06], [0.07, 0.03]],
                                     [[0.16, 0.10], [0.13, 0.15]]))
    assert row["verdict"] == SUPPORTED and row["n"] == 4 and row["n_models"] == 2
    # the weakest row is the one with the lowest lower bound: m1 conv2, 0.09 [0.03, 0.15]
    assert (row["value"], row["ci_lo"], row["ci_hi"]) == (0.09, 0.03, 0.15)
    assert "4 of 4 rows of 2 models pass" in row["evidence"] and "m1 conv2 0.090 [0.030, 0.150]" in row["evidence"]
    assert "no untrained twins analysed" in row["evidence"]


@pytest.mark.parametrize("excess, lo", [
    (0.04, 0.01),  # significant, but below the minimum effect 0.05
    (0.20, -0.01),  # large, but its interval holds 0
])
def test_c2_one_weak_or_uncertain_row_fails_the_rule(excess, lo):
    row = c2_redundancy(excess_table([[0.12, 0.10], [0.10, excess]], [[0.08, 0.06], [0.07, lo]],
                                     [[0.16, 0.14], [0.13, 0.3]]))
    assert row["verdict"] == NOT_SUPPORTED and "3 of 4 rows" in row["evidence"]
    assert row["ci_lo"] == lo


def test_c2_leaves_twins_and_saved_epochs_out_and_reports_the_twins():
    # The twin (m2) and the snapshot (m3) fail the rule but are not counted; the twin's excess is given.
    table = excess_table([[0.1, 0.1], [0.1, 0.1], [0.3, 0.01], [0.0, 0.0]], [[0.06, 0.06]] * 2 + [[0.2, -0.1], [0, 0]],
                         [[0.2, 0.2]] * 4, kind=["trained", "trained", "untrained", "snapshot"],
                         effect=[["none beyond the interval"] * 2] * 2 + [["", ""]] * 2,
                         diff=[[0.01, -0.02]] * 2 + [[np.nan] * 2] * 2)
    row = c2_redundancy(table)
    assert row["verdict"] == SUPPORTED and row["n"] == 4
    assert "untrained twins: median 0.155 (0.010 to 0.300) over 2 (model, layer) rows" in row["evidence"]
    assert "what architecture and data give, not what training did" in row["evidence"]
    assert c2_redundancy({})["verdict"] == UNDEFINED


def test_c2_training_majority_of_rows_beyond_the_interval():
    effect = [["raised", "raised"], ["lowered", "none beyond the interval"]]
    row = c2_training(excess_table([[0.1, 0.1]] * 2, [[0.05, 0.05]] * 2, [[0.2, 0.2]] * 2, effect=effect,
                                   diff=[[0.2, 0.1], [-0.1, 0.0]]))
    assert row["verdict"] == SUPPORTED and row["n"] == 4 and row["value"] == pytest.approx(0.05)
    assert "raised in 2, lowered in 1, no change beyond the interval in 1 of 4 rows" in row["evidence"]
    half = [["raised", "none beyond the interval"], ["none beyond the interval", "lowered"]]
    row = c2_training(excess_table([[0.1, 0.1]] * 2, [[0.05, 0.05]] * 2, [[0.2, 0.2]] * 2, effect=half,
                                   diff=[[0.2, 0.0], [0.0, -0.1]]))
    assert row["verdict"] == NOT_SUPPORTED  # 2 of 4 is not more than half
    assert c2_training(overlap([[0.5, 0.5]]))["verdict"] == UNDEFINED  # no twins


def test_c3_depth_sign_test():
    # 6 models, rho_hat falls from conv1 to conv2 in each: two-sided p = 2 * 0.5^6 = 1/32.
    falls = [[0.8, 0.6], [0.7, 0.6], [0.9, 0.4], [0.6, 0.5], [0.8, 0.7], [0.75, 0.7]]
    row = c3_depth(overlap(falls))
    assert row["verdict"] == SUPPORTED and row["n"] == 6 and row["p_value"] == pytest.approx(1 / 32)
    assert row["value"] == pytest.approx(-0.1)  # changes -0.2 -0.1 -0.5 -0.1 -0.1 -0.05: median -0.1
    assert "falls in 6 and rises in 0 of 6 models" in row["evidence"]
    # 5 fall, 2 rise: p = 2 * (1 + 7 + 21) / 128.
    row = c3_depth(overlap(falls[:5] + [[0.2, 0.5], [0.3, 0.4]]))
    assert row["p_value"] == pytest.approx(58 / 128) and row["verdict"] == NOT_SUPPORTED
    # A model whose last layer is undefined (dead) is dropped: 5 left, too few for p < 0.05.
    row = c3_depth(overlap(falls[:5] + [[0.8, np.nan]]))
    assert row["verdict"] == UNDEFINED and row["n_models"] == 5 and "needs 6 models" in row["evidence"]
    assert c3_depth(overlap(falls, layers=("conv1",)))["verdict"] == UNDEFINED  # one layer: no change


def sweep(values, layers=("conv1",), **factors):
    """overlap rows of a sweep: values[m] per layer; factors: column -> one level per model."""
    table = overlap(values, chance=values, layers=layers)
    table.update({name: np.repeat(np.asarray(levels, dtype=str), len(layers)) for name, levels in factors.items()})
    return table


def test_c3_factor_is_tested_within_blocks_with_an_exact_p():
    # 3 label-noise blocks of 4 models; in each, dropout 0 holds the two lowest values. A block's 6 ways to
    # place the two dropout-0 labels give H = 2.4, 0.6 or 0 with probability 1/3 each (hand-worked from the
    # ranks), so the sum of H is at its maximum with p = (1/3)^3 = 1/27.
    dropout = ["0.0", "0.0", "0.5", "0.5"] * 3
    noise = ["0.0"] * 4 + ["0.2"] * 4 + ["0.4"] * 4
    values = [[v] for v in (0.1, 0.2, 0.7, 0.8, 0.3, 0.4, 0.5, 0.9, 0.0, 0.1, 0.2, 0.3)]
    row = c3_factor(sweep(values, dropout=dropout, label_noise=noise), "dropout", "regularization")
    assert row["factor"] == "dropout" and "regularization" in row["test"]
    assert row["value"] == pytest.approx(3 * 2.4) and row["p_value"] == pytest.approx(1 / 27)
    assert row["verdict"] == SUPPORTED and row["n"] == 12 and "exact permutation" in row["method"]
    # The same on two layers: Holm doubles the smallest p, and 2/27 is the least this design can give.
    two = [[v[0], v[0]] for v in values]
    row = c3_factor(sweep(two, layers=("conv1", "conv2"), dropout=dropout, label_noise=noise), "dropout",
                    "regularization")
    assert row["p_adjusted"] == pytest.approx(2 / 27) and row["verdict"] == UNDEFINED
    assert "cannot reach p < 0.05" in row["evidence"]


def test_c3_factors_separate_a_confounded_sweep():
    """The redundancy follows the training-set size only; dropout interleaves within each size. Unblocked, the
    8 'levels' of a label column mix both; blocked, dropout shows nothing and n_train everything."""
    base = [0.30, 0.31, 0.33, 0.32, 0.35, 0.34]  # dropout 0, 0.5 alternating: ranks interleave
    values = [[v] for v in base] + [[v + 0.3] for v in base]
    dropout = ["0.0", "0.5"] * 6
    n_train = [""] * 6 + ["400"] * 6  # empty: the full training set
    rows = {r["factor"]: r for r in c3_factors(sweep(values, dropout=dropout, n_train=n_train))}
    assert list(rows) == ["dropout", "weight_decay", "augment", "n_train"]  # regularization always, others if varied
    assert rows["dropout"]["verdict"] == NOT_SUPPORTED and rows["dropout"]["p_value"] > 0.5
    # n_train: 2 dropout blocks of 6, each fully separated by size: p = (2 / C(6, 3))^2 = 1/100.
    assert rows["n_train"]["p_value"] == pytest.approx(1 / 100) and rows["n_train"]["verdict"] == SUPPORTED
    assert "data factor" in rows["n_train"]["test"]
    assert rows["weight_decay"]["verdict"] == UNDEFINED and "holds weight_decay" in rows["weight_decay"]["evidence"]


def test_c3_factor_needs_two_models_that_differ_in_it_alone():
    # dropout and label noise change together: no block holds two dropout levels.
    row = c3_factor(sweep([[0.1], [0.2], [0.7], [0.8]], dropout=["0.0", "0.0", "0.5", "0.5"],
                          label_noise=["0.0", "0.0", "0.4", "0.4"]), "dropout", "regularization")
    assert row["verdict"] == UNDEFINED and "differ in dropout alone" in row["evidence"]


# ---------------------------------------------------------------------------- C4

def generalization(**by_measure_target):
    """final / last rows of generalization.csv; each keyword measure__target gives its statistics."""
    keys = ("n_models", "pearson_r", "pearson_p", "spearman_rho", "spearman_p", "boot_lo", "boot_hi", "partial_r",
            "partial_p", "skipped")
    rows = []
    for name, values in by_measure_target.items():
        measure, target = name.split("__")
        rows.append(dict(subset="final", layer="last", measure=measure, target=target, **dict(zip(keys, values))))
    rows.append(dict(subset="all", layer="last", measure="rho_hat_mean", target="test_acc",  # never read
                     **dict(zip(keys, (30, 0.9, 1e-9, 0.9, 1e-9, 0.8, 0.95, 0.9, 1e-9, "")))))
    return {key: np.array([r[key] for r in rows], dtype=str if key in ("subset", "layer", "measure", "target",
                                                                        "skipped") else float)
            for key in rows[0]}


def test_c4_verdicts_with_holm_across_the_rows():
    nan, why = np.nan, "no test split (dataset.test_root is null)"
    table = generalization(
        rho_hat_mean__test_acc=(12, 0.8, 0.005, 0.7, 0.02, 0.4, 0.95, 0.6, 0.01, ""),  # row p max(0.005, 0.01)
        pairwise_overlap_mean__test_acc=(12, 0.7, 0.02, 0.6, 0.06, 0.1, 0.9, 0.6, 0.03, ""),  # row p 0.03
        loo_error_layer__test_acc=(0, nan, nan, nan, nan, nan, nan, nan, nan, why),
        rho_hat_mean__gap_acc=(12, -0.9, 1e-6, -0.9, 1e-6, -0.95, -0.8, -0.6, 0.01, ""),  # never read
    )
    rows = {r["test"].split("(")[1].split(")")[0]: r for r in c4_correlations(table)}
    assert list(rows) == ["rho_hat_mean", "pairwise_overlap_mean", "loo_error_layer"]
    assert all(r["claim"] == "C4" and "test_acc" in r["test"] for r in rows.values())
    # Holm over the 2 defined rows: 0.01 x 2 = 0.02, then max(0.02, 0.03 x 1) = 0.03.
    good, second = rows["rho_hat_mean"], rows["pairwise_overlap_mean"]
    assert good["p_adjusted"] == pytest.approx(0.02) and second["p_adjusted"] == pytest.approx(0.03)
    assert good["verdict"] == second["verdict"] == SUPPORTED and good["n"] == good["n_models"] == 12
    assert (good["value"], good["p_value"], good["ci_lo"], good["ci_hi"], good["partial_r"]) == (0.8, 0.005, 0.4,
                                                                                                  0.95, 0.6)
    assert "minus this one" in good["evidence"]
    skipped = rows["loo_error_layer"]
    assert skipped["verdict"] == UNDEFINED and skipped["evidence"] == f"undefined: {why}"
    # p 0.03 and 0.04 each pass alone but not after Holm (0.06, 0.06); a partial r of the other sign and an
    # interval holding 0 fail whatever the p.
    table = generalization(
        rho_hat_mean__test_acc=(12, 0.8, 0.03, 0.7, 0.02, 0.4, 0.95, 0.6, 0.03, ""),
        pairwise_overlap_mean__test_acc=(12, 0.7, 0.04, 0.6, 0.06, 0.1, 0.9, 0.6, 0.04, ""))
    assert [r["verdict"] for r in c4_correlations(table)[:2]] == [NOT_SUPPORTED, NOT_SUPPORTED]
    table = generalization(rho_hat_mean__test_acc=(12, 0.8, 0.001, 0.7, 0.02, 0.4, 0.95, -0.6, 0.001, ""),
                           pairwise_overlap_mean__test_acc=(12, 0.7, 0.001, 0.6, 0.06, -0.1, 0.9, 0.6, 0.001, ""))
    assert [r["verdict"] for r in c4_correlations(table)[:2]] == [NOT_SUPPORTED, NOT_SUPPORTED]
    # Below the BCa minimum the row is undefined, whatever its p.
    table = generalization(rho_hat_mean__test_acc=(8, 0.9, 0.001, 0.9, 0.001, 0.5, 0.99, 0.8, 0.001, ""))
    row = c4_correlations(table)[0]
    assert row["verdict"] == UNDEFINED and "needs 10" in row["evidence"]
    assert all(r["verdict"] == UNDEFINED for r in c4_correlations({}))


# ---------------------------------------------------------------------------- early stopping

def early(loo, val, last=None, **extra):
    n = len(loo)
    table = {"run": np.array([f"r{i}" for i in range(n)]), "n_epochs": np.full(n, 3.0),
             "loo_epoch": np.array([5.0, 10.0] * n)[:n], "val_epoch": np.full(n, 10.0),
             "best_test_epoch": np.full(n, 10.0), "loo_test_acc": np.array(loo, float),
             "val_test_acc": np.array(val, float), "final_test_acc": np.array(val if last is None else last, float),
             "best_test_acc": np.maximum(np.array(loo, float), np.array(val, float))}
    return dict(table, **extra)


def test_early_stopping_claim_against_validation_and_never_stopping():
    # LOO ties validation and beats the last epoch in all 5 runs: exact one-sided p = 1/32.
    row = early_stopping_claim(early([0.81, 0.82, 0.83, 0.84, 0.85], [0.81, 0.82, 0.83, 0.84, 0.85], [0.8] * 5))
    assert row["verdict"] == SUPPORTED and row["p_value"] == 1.0 and row["n"] == 5 and row["value"] == 0
    assert "picks differ in 5 runs (one-sided p of LOO better 0.031)" in row["evidence"]
    assert row["method"].startswith("exact Wilcoxon")
    # LOO worse than validation by 1 to 5 points in all 5 runs: one-sided p = 1/32: not supported.
    row = early_stopping_claim(early([0.80] * 5, [0.81, 0.82, 0.83, 0.84, 0.85], [0.7] * 5))
    assert row["verdict"] == NOT_SUPPORTED and row["p_value"] == pytest.approx(1 / 32)
    assert row["value"] == pytest.approx(-3.0)
    # Worse in 4 runs (p = 1/16) is not significantly worse, but LOO must still beat never stopping, which it
    # does not where the last epoch is better (mean -2 points).
    row = early_stopping_claim(early([0.80] * 5, [0.81, 0.82, 0.83, 0.84, 0.80], [0.82] * 5))
    assert row["p_value"] == pytest.approx(1 / 16) and row["verdict"] == NOT_SUPPORTED
    # The picks differ from the last epoch in 3 runs only: an exact one-sided test needs 5.
    row = early_stopping_claim(early([0.9, 0.9, 0.9, 0.8, 0.8], [0.9, 0.9, 0.9, 0.8, 0.8], [0.8] * 5))
    assert row["verdict"] == UNDEFINED and "needs 5" in row["evidence"]


def test_early_stopping_claim_undefined_with_the_reason():
    assert "no training run with saved epochs" in early_stopping_claim({})["evidence"]
    why = "no validation split (training.validation is 0): val_epoch and val_test_acc are empty"
    row = early_stopping_claim(early([0.8, 0.9], [np.nan, np.nan], val_skipped=np.array([why, why])))
    assert row["verdict"] == UNDEFINED and row["evidence"] == f"undefined: {why}"
    row = early_stopping_claim(early([np.nan], [np.nan], test_skipped=np.array(["no test split"]),
                                     val_skipped=np.array([why])))
    assert row["verdict"] == UNDEFINED and "no test split" in row["evidence"] and why in row["evidence"]


# ---------------------------------------------------------------------------- the table

def test_claims_rows_order_and_write(tmp_path):
    from cwnnk.tables import read_table, write_table

    rows = claims_rows({}, {}, {}, {})
    assert [r["claim"] for r in rows] == (["C1", "C2", "C2", "C3", "C3", "C3", "C3"] + ["C4"] * 3
                                         + ["early stopping", "C5"])
    assert [r["factor"] for r in rows[4:7]] == ["dropout", "weight_decay", "augment"]
    assert all(r["verdict"] == UNDEFINED and r["evidence"].startswith("undefined: ") for r in rows)
    for name in ("overlap", "manifolds", "generalization", "early"):
        write_table(tmp_path / f"{name}.csv", [])
    write_claims(*(tmp_path / f"{n}.csv" for n in ("overlap", "manifolds", "generalization", "early")),
                 tmp_path / "claims.csv")
    table = read_table(tmp_path / "claims.csv")
    assert list(table) == list(COLUMNS) and len(table["claim"]) == 12


def _documented(section):
    """The columns docs/outputs.md lists under '## `tables/{section}`', first cell of each table row."""
    docs = (REPO / "docs" / "outputs.md").read_text()
    body = docs.split(f"## `tables/{section}`", 1)[1].split("\n## ", 1)[0]
    return {name for cell in re.findall(r"^\| (`[^|]+)\|", body, re.M) for name in re.findall(r"`([a-z0-9_]+)`", cell)}


def test_outputs_md_documents_every_column_of_the_claims_generalization_and_early_stopping_tables():
    from cwnnk.generalization import EARLY_COLUMNS, GENERALIZATION_COLUMNS

    assert _documented("claims.csv") == set(COLUMNS)
    assert _documented("generalization.csv") == set(GENERALIZATION_COLUMNS)
    assert _documented("early_stopping.csv") == set(EARLY_COLUMNS)


def test_outputs_md_documents_the_model_columns_of_overlap_csv():
    """The context columns cwnnk.tables puts on every overlap.csv row, accuracy_skipped (only
    written for a run without a test split) included; the layer metrics are checked on the tiny run."""
    from cwnnk.tables import METRIC_COLUMNS, MODEL_COLUMNS, VALIDATION_COLUMNS

    context = {*MODEL_COLUMNS, *METRIC_COLUMNS, *VALIDATION_COLUMNS, "accuracy_skipped", "layer", "depth", "n_layers",
               "is_last"}
    assert context <= _documented("overlap.csv"), sorted(context - _documented("overlap.csv"))


def test_claims_on_an_overlap_table_without_test_accuracy(tmp_path):
    """Through the files: overlap.csv without test accuracy -> generalization.csv, early_stopping.csv
    -> claims.csv, whose C4 and early-stopping rows are undefined with the no-test reason while
    C2 and C3, which need no accuracy, are still judged."""
    from cwnnk.generalization import write_generalization
    from cwnnk.tables import read_table, write_table

    from test_generalization import NO_TEST, _overlap_without_test_split

    write_table(tmp_path / "overlap.csv", _overlap_without_test_split(n_models=6))
    write_table(tmp_path / "manifolds.csv", [])
    write_generalization(tmp_path / "overlap.csv", tmp_path / "g.csv", tmp_path / "early.csv")
    write_claims(tmp_path / "overlap.csv", tmp_path / "manifolds.csv", tmp_path / "g.csv", tmp_path / "early.csv",
                 tmp_path / "claims.csv")
    claims = read_table(tmp_path / "claims.csv")
    verdict = dict(zip(zip(claims["claim"], claims["test"]), claims["verdict"]))
    evidence = dict(zip(claims["claim"], claims["evidence"]))  # the last row of each claim
    c4 = claims["claim"] == "C4"
    assert c4.sum() == 3 and (claims["verdict"][c4] == "undefined").all()
    assert all(e == f"undefined: {NO_TEST}" for e in claims["evidence"][c4])
    # no saved epochs here: early stopping is undefined for that reason first
    assert "no training run with saved epochs" in evidence["early stopping"]
    # C2: 12 rows, every excess at least 0.25 with an interval above 0; C3 depth: the redundancy falls by
    # 0.05 in each of the 6 models: p = 2 * 0.5^6 = 1/32.
    assert verdict["C2", "redundancy above chance by at least 0.05 in every layer"] == "supported"
    assert verdict["C3", "redundancy changes with depth"] == "supported"
    assert verdict["C1", "mean NNK degree increases with intrinsic dimension (synthetic manifolds, exact solver)"] \
        == "undefined"
