"""The paper's claims as this run finds them: claims.csv, one row per claim or sub-claim with
its statistic, p-value or interval, sample size, a verdict and the numbers behind it.

Verdict rules (docs/method.md section 8; the same for every run, level ALPHA = 0.05):
- C1 (NNK degree grows with intrinsic dimension), manifolds.csv, one solver: Spearman rho of
  degree_mean against dim over the point sets, one-sided permutation p-value. Supported iff
  rho > 0 and p < ALPHA.
- C2 (redundancy above chance), overlap.csv, final models (no saved epochs, no untrained twins):
  every (model, layer) row's headline excess over chance (redundancy_excess) is at least
  MIN_EXCESS and its 95% interval lies above 0; the evidence gives the untrained twins' excess and
  says when trained minus twin lies within its interval everywhere (then the redundancy is what
  architecture and data give, not what training did).
- C2 training: more than half of the final models' (model, layer) rows have a 95% interval of
  trained minus untrained twin (redundancy_vs_twin) that excludes 0.
- C3 depth: per final model, the change of the headline redundancy from its first to its last
  analysed layer; two-sided exact sign test over models p < ALPHA.
- C3 per factor: one row per regularization factor (dropout, weight_decay, augment) and one per
  other factor the sweep varies (label_noise, n_train, width, epochs), each named in `factor`.
  Per layer a blocked Kruskal-Wallis test (models sharing every other factor form a block; the
  factor's levels are permuted within blocks, exactly where the blocks are small), Holm across
  layers; the smallest adjusted p < ALPHA.
- C4, generalization.csv rows `final` / `last` for rho_hat_mean, pairwise_overlap_mean and
  loo_error_layer against test_acc: the permutation p of Pearson r and of the partial r given
  train_acc (same sign) both below ALPHA after Holm across the three rows (the larger of the two
  p-values is the row's), and the BCa 95% interval of r excluding 0 (at least BCA_MIN_N models).
  The gap's rows are not tested: given train_acc the gap's partial r is exactly minus test_acc's.
- Early stopping, early_stopping.csv: the LOO pick is not significantly worse than the validation
  pick (one-sided exact signed-rank p >= ALPHA) and beats the last epoch (never stopping) over the
  runs where the two differ (mean > 0, one-sided exact signed-rank p < ALPHA).

- C5 (pruning), pruning.csv, every analysed layer pruned at once, no fine-tune: over (model, fraction > 0)
  pairs, CW-NNK's test accuracy minus each of random (mean of draws), L1 and APoZ has mean > 0 and one-sided
  exact signed-rank p < ALPHA, for all three (intersection-union: the row's p is the largest).

A verdict is `undefined`, with the reason in `evidence`, when the tables lack what the rule
needs (no test accuracy, no validation split, no saved epochs, too few models or levels) or
when the test cannot reach p < ALPHA at that sample size whatever the data (a sign test on
fewer than 5 rows one-sided or 6 models two-sided; a permutation test whose smallest
attainable p is ALPHA or more; fewer than BCA_MIN_N models for a BCa interval). Every p-value
is exact or from seeded permutations (cwnnk.exact); `method` names the test that ran.

Inputs are tables as read by `cwnnk.tables.read_table` ({} for an empty table).
"""

import numpy as np
from scipy import stats

from cwnnk.exact import (
    BCA_MIN_N,
    blocked_kruskal,
    holm,
    permutation_correlation,
    signed_rank,
    smallest_permutation_p,
    smallest_signed_rank_p,
)
from cwnnk.redundancy import EFFECTS

ALPHA = 0.05
# C2's minimum effect: the headline (a mean Jaccard index) at least this far above its chance level,
# fixed in docs/method.md section 8 before any result was looked at.
MIN_EXCESS = 0.05
SUPPORTED, NOT_SUPPORTED, UNDEFINED = "supported", "not supported", "undefined"
COLUMNS = ("claim", "test", "factor", "verdict", "statistic", "value", "p_value", "p_adjusted", "ci_lo", "ci_hi",
           "partial_r", "partial_p", "n", "n_of", "n_models", "method", "rule", "evidence", "source")
# C4: the measures of generalization.csv that get a claims row (subset final, layer last, against test
# accuracy). The gap (train - test) is no test of its own: given train_acc its partial correlation is
# exactly minus the test accuracy's.
C4_MEASURES = (("rho_hat_mean", "rho_hat"), ("pairwise_overlap_mean", "pairwise overlap J"),
               ("loo_error_layer", "CW-NNK LOO error"))
C4_TARGET = ("test_acc", "test accuracy")
# C3: the settings a sweep varies, each tested on its own with the others held (blocked): (column, kind).
# Only the first three are regularization; the others are reported as factors of their own.
C3_FACTORS = (("dropout", "regularization"), ("weight_decay", "regularization"), ("augment", "regularization"),
              ("label_noise", "data"), ("n_train", "data"), ("width", "architecture"), ("epochs", "training length"))


def _row(claim, test, statistic, rule, source, **values):
    row = dict.fromkeys(COLUMNS)
    row.update(claim=claim, test=test, statistic=statistic, rule=rule, source=source, **values)
    return row


def _undefined(row, why):
    row.update(verdict=UNDEFINED, evidence=f"undefined: {why}")
    return row


def _has(table, *columns):
    return bool(table) and all(column in table for column in columns)


def _num(table, column):
    return np.asarray(table[column], dtype=np.float64)


def _text(table, column):
    """A column as str, empty cells as ''."""
    from cwnnk.tables import text_column

    return text_column(table[column])


def _final(table):
    """Mask of the rows of final models (kind neither snapshot nor untrained): one point per training run or
    imported model, untrained twins left out."""
    n = len(next(iter(table.values())))
    return ~np.isin(_text(table, "kind"), ("snapshot", "untrained")) if "kind" in table else np.ones(n, dtype=bool)


def _p(p):
    return "n/a" if p is None or not np.isfinite(p) else f"{p:.2g}"


def sign_test_min_n(alternative, alpha=ALPHA):
    """The fewest non-tied pairs for which an exact sign test, or signed-rank test, can give p < alpha (both
    reach their smallest p when every pair has the same sign)."""
    n = 1
    while smallest_signed_rank_p(n, alternative) >= alpha:
        n += 1
    return n


# ---------------------------------------------------------------------------- C1

def c1_degree_dimension(manifolds, solver="exact", alpha=ALPHA):
    """C1: the NNK degree grows with the intrinsic dimension on the synthetic manifolds."""
    row = _row("C1", f"mean NNK degree increases with intrinsic dimension (synthetic manifolds, {solver} solver)",
               "Spearman rho of degree_mean and dim", f"rho > 0 and one-sided permutation p < {alpha:g}",
               "manifolds.csv", n_of=f"synthetic point sets (embedding, dimension), {solver} solver", n_models=0)
    if manifolds is None:
        return _undefined(row, "the synthetic manifolds were not run (figures.calibration is off; auto runs them for "
                               "the built-in experiment only)")
    if not _has(manifolds, "dim", "degree_mean", "solver"):
        return _undefined(row, "manifolds.csv has no rows (or lacks dim, degree_mean, solver)")
    keep = (_text(manifolds, "solver") == solver) & np.isfinite(_num(manifolds, "degree_mean"))
    dim, degree = _num(manifolds, "dim")[keep], _num(manifolds, "degree_mean")[keep]
    row["n"] = int(keep.sum())
    if len(np.unique(dim)) < 2:
        return _undefined(row, f"{row['n']} point sets of the {solver} solver, fewer than 2 distinct dimensions")
    floor = smallest_permutation_p(dim)
    dims = ", ".join(f"{d:g}" for d in np.unique(dim))
    if floor >= alpha:
        return _undefined(row, f"{row['n']} point sets (dimensions {dims}): the permutation test cannot reach "
                               f"p < {alpha:g} (smallest p {floor:.2g}); more dimensions are needed")
    if np.ptp(degree) == 0:
        row.update(verdict=NOT_SUPPORTED, evidence=f"mean degree {degree[0]:.1f} at every dimension ({dims}) over "
                                                   f"{row['n']} point sets: it does not increase")
        return row
    rho, p, method = permutation_correlation(dim, degree, alternative="greater", ranks=True)
    row.update(value=rho, p_value=p, method=method, verdict=SUPPORTED if rho > 0 and p < alpha else NOT_SUPPORTED)
    lo, hi = (float(np.mean(degree[dim == d])) for d in (dim.min(), dim.max()))
    k = f", k = {_num(manifolds, 'k')[keep][0]:g}" if "k" in manifolds else ""
    row["evidence"] = (f"Spearman rho = {rho:.2f} (one-sided permutation p = {_p(p)}) over {row['n']} point sets, "
                       f"dimensions {dims}; mean degree {lo:.1f} at d = {dim.min():g} to {hi:.1f} at "
                       f"d = {dim.max():g}{k}")
    return row


# ---------------------------------------------------------------------------- C2

def _rows_text(model, layer, at):
    return f"{model[at]} {layer[at]}"


def _twin_summary(overlap, column="redundancy_excess"):
    """'untrained twins: median X (min to max) over n (model, layer) rows' of a column, or ''."""
    if not _has(overlap, "kind", column):
        return ""
    values = _num(overlap, column)[(_text(overlap, "kind") == "untrained") & np.isfinite(_num(overlap, column))]
    if not values.size:
        return ""
    return (f"untrained twins: median {np.median(values):.3f} ({values.min():.3f} to {values.max():.3f}) over "
            f"{values.size} (model, layer) rows")


def _training_text(overlap, keep):
    """What the twin comparison says of the rows `keep`: training's effect beyond the interval, or none."""
    if not _has(overlap, "training_effect"):
        return "no untrained twins analysed (baseline.untrained: false)"
    effect = _text(overlap, "training_effect")[keep]
    effect = effect[effect != ""]
    if not effect.size:
        return "no untrained twins analysed (baseline.untrained: false)"
    moved = int((effect != EFFECTS[2]).sum())
    if moved == 0:
        return (f"trained minus twin lies within its 95% interval in all {effect.size} rows: the redundancy measured "
                "is what architecture and data give, not what training did")
    return f"training moved it beyond the 95% interval in {moved} of {effect.size} rows"


def c2_redundancy(overlap, min_excess=MIN_EXCESS):
    """C2: the headline redundancy exceeds its chance level by at least min_excess, with an interval above 0,
    in every (model, layer) row of the final models; the untrained twins' excess is given beside it."""
    row = _row("C2", f"redundancy above chance by at least {min_excess:g} in every layer",
               "smallest redundancy_excess (redundancy - chance) over (model, layer) rows, with its 95% interval",
               f"every row's excess >= {min_excess:g} (minimum effect, fixed in docs/method.md section 8) and its 95% "
               "interval above 0", "overlap.csv", n_of="(model, layer) rows of final models (twins and saved epochs "
               "left out) with a defined excess", method="percentile bootstrap over nodes and channels "
               "(cwnnk.redundancy.interval)")
    need = ("redundancy_excess", "redundancy_excess_ci_lo", "redundancy_excess_ci_hi", "layer", "model")
    if not _has(overlap, *need):
        return _undefined(row, "overlap.csv has no rows (or lacks the redundancy_excess columns)")
    excess, lo, hi = (_num(overlap, c) for c in need[:3])
    keep = _final(overlap) & np.isfinite(excess) & np.isfinite(lo)
    if not keep.any():
        return _undefined(row, "no final model's layer has a defined redundancy (fewer than two live channels?)")
    model, layer = _text(overlap, "model"), _text(overlap, "layer")
    passes = keep & (excess >= min_excess) & (lo > 0)
    at = np.flatnonzero(keep)[np.argmin(lo[keep])]  # the weakest row: the lowest lower bound
    row.update(value=float(excess[at]), ci_lo=float(lo[at]), ci_hi=float(hi[at]), n=int(keep.sum()),
               n_models=len(set(model[keep].tolist())),
               verdict=SUPPORTED if passes.sum() == keep.sum() else NOT_SUPPORTED)
    twins = _twin_summary(overlap)
    row["evidence"] = "; ".join(filter(None, [
        f"{int(passes.sum())} of {row['n']} rows of {row['n_models']} models pass; median excess "
        f"{np.median(excess[keep]):.3f}, weakest {_rows_text(model, layer, at)} {excess[at]:.3f} "
        f"[{lo[at]:.3f}, {hi[at]:.3f}]", twins, _training_text(overlap, keep)]))
    return row


def c2_training(overlap):
    """Training changes redundancy: trained minus untrained twin per (model, layer), 95% intervals."""
    row = _row("C2", "training changes redundancy (trained minus untrained twin)",
               "median redundancy_vs_twin over (model, layer) rows",
               "more than half of the rows have a 95% interval of trained minus twin that excludes 0", "overlap.csv",
               n_of="(model, layer) rows of final models with an untrained twin",
               method="percentile bootstrap of the paired difference (cwnnk.redundancy.compare)")
    if not _has(overlap, "redundancy_vs_twin", "training_effect", "model"):
        return _undefined(row, "no untrained twins analysed (baseline.untrained: false)")
    diff, effect = _num(overlap, "redundancy_vs_twin"), _text(overlap, "training_effect")
    keep = _final(overlap) & np.isfinite(diff) & (effect != "")
    if not keep.any():
        return _undefined(row, "no final model has a defined comparison with its twin")
    raised, lowered, unchanged = (int((effect[keep] == name).sum()) for name in EFFECTS)
    moved = raised + lowered
    row.update(value=float(np.median(diff[keep])), n=int(keep.sum()),
               n_models=len(set(_text(overlap, "model")[keep].tolist())),
               verdict=SUPPORTED if moved > keep.sum() / 2 else NOT_SUPPORTED)
    row["evidence"] = (f"raised in {raised}, lowered in {lowered}, no change beyond the interval "
                       f"in {unchanged} of {row['n']} rows; median trained minus twin "
                       f"{row['value']:+.3f} ({np.min(diff[keep]):+.3f} to {np.max(diff[keep]):+.3f})")
    return row


# ---------------------------------------------------------------------------- C3

def c3_depth(overlap, measure="redundancy", alpha=ALPHA):
    """C3 depth: the change of a measure from each final model's first to its last analysed layer."""
    row = _row("C3", f"{measure} changes with depth", f"median change of {measure}, first to last analysed layer",
               f"two-sided sign test over models p < {alpha:g}", "overlap.csv",
               n_of="final models with a finite first and last layer (no change dropped)",
               method="exact sign test (binomial, ties dropped)")
    if not _has(overlap, measure, "model", "depth", "is_last"):
        return _undefined(row, f"overlap.csv has no rows (or lacks {measure}, depth, is_last)")
    final, model, value = _final(overlap), _text(overlap, "model"), _num(overlap, measure)
    first = {m: v for m, v, ok in zip(model, value, final & (_num(overlap, "depth") == 0)) if ok}
    last = {m: v for m, v, ok in zip(model, value, final & (_num(overlap, "is_last") == 1)
                                     & (_num(overlap, "depth") > 0)) if ok}
    change = np.array([last[m] - first[m] for m in first if m in last], dtype=np.float64)
    change = change[np.isfinite(change)]
    if not change.size:
        return _undefined(row, f"no final model with two analysed layers and a finite {measure} in both")
    moved = change[change != 0]
    falls = int((moved < 0).sum())
    row.update(n=int(moved.size), n_models=int(change.size), value=float(np.median(change)))
    counts = f"{measure} falls in {falls} and rises in {moved.size - falls} of {change.size} models"
    need = sign_test_min_n("two-sided", alpha)
    if moved.size < need:
        return _undefined(row, f"{counts}; a two-sided sign test needs {need} models to reach p < {alpha:g}")
    p = float(stats.binomtest(falls, moved.size, 0.5).pvalue)
    row.update(p_value=p, verdict=SUPPORTED if p < alpha else NOT_SUPPORTED)
    row["evidence"] = (f"{counts} from the first to the last analysed layer (sign test p = {_p(p)}); "
                       f"median change {row['value']:+.3f}")
    return row


def _levels(table, column):
    """A factor column as text levels, as the config writes them ('null' for an empty cell, e.g. n_train of the
    full training set; numbers in their shortest form)."""
    if column not in table:
        return np.full(len(table["model"]), "null")
    values = np.asarray(table[column])
    if values.dtype.kind == "f":
        return np.array(["null" if np.isnan(v) else f"{v:g}" for v in values])
    return np.where(values == "", "null", values.astype(str))


def c3_factor(overlap, factor, kind, measure="redundancy", alpha=ALPHA):
    """C3 per factor: does `measure` differ between the levels of one sweep factor, the others held?

    Per layer a blocked Kruskal-Wallis test (cwnnk.exact.blocked_kruskal): models that share every
    other factor (seeds aside) form a block, and the level labels are permuted within blocks only.
    Holm across layers; the row gives the layer with the smallest adjusted p."""
    what = "regularization" if kind == "regularization" else f"a {kind} factor"
    row = _row("C3", f"{measure} changes with {factor} ({what}), other factors held", f"blocked Kruskal-Wallis H "
               f"across {factor} levels", f"per layer a blocked permutation test across {factor} levels (models that "
               f"share every other factor form a block); Holm across layers, smallest adjusted p < {alpha:g}",
               "overlap.csv", factor=factor,
               n_of="final models in blocks with two or more levels, at the reported layer")
    if not _has(overlap, measure, "layer", "model"):
        return _undefined(row, f"overlap.csv has no rows (or lacks {measure})")
    final, value = _final(overlap), _num(overlap, measure)
    keep = final & np.isfinite(value)
    levels = _levels(overlap, factor)
    found = sorted(set(levels[keep].tolist()))
    if len(found) < 2:
        held = found[0] if found else "null"
        return _undefined(row, f"the sweep holds {factor} at {held}: nothing to compare")
    others = [column for column, _ in C3_FACTORS if column != factor]
    block = np.array(["|".join(parts) for parts in zip(*(_levels(overlap, c) for c in others))])
    layers = _text(overlap, "layer")
    tests = []
    for name in dict.fromkeys(layers[keep].tolist()):
        at = keep & (layers == name)
        result = blocked_kruskal(value[at], levels[at], block[at])
        if np.isfinite(result["p"]):
            tests.append((name, result, at))
    if not tests:
        return _undefined(row, f"no two final models differ in {factor} alone (with every other factor equal)")
    adjusted = holm([t[1]["p"] for t in tests])
    floor = min(1.0, min(t[1]["smallest_p"] for t in tests) * len(tests))
    i = int(np.argmin(adjusted))
    name, result, at = tests[i]
    means = {lev: float(np.mean(value[at & (levels == lev)])) for lev in found if (at & (levels == lev)).any()}
    row.update(statistic=f"blocked Kruskal-Wallis H across {factor} levels at {name}", value=result["statistic"],
               p_value=result["p"], p_adjusted=float(adjusted[i]), n=result["n"], method=result["method"],
               n_models=len(set(_text(overlap, "model")[keep].tolist())))
    level_text = ", ".join(f"{lev}: {m:.3f}" for lev, m in means.items())
    said = (f"smallest p at {name}: H = {result['statistic']:.2f} over {result['blocks']} blocks of {result['n']} "
            f"models, p = {_p(result['p'])}, Holm over {len(tests)} layers {_p(adjusted[i])}; mean {measure} by "
            f"{factor} {level_text}")
    if floor >= alpha:
        return _undefined(row, f"{said}; this design cannot reach p < {alpha:g} after Holm (smallest attainable "
                               f"{floor:.2g}): more seeds per setting are needed")
    row.update(verdict=SUPPORTED if adjusted[i] < alpha else NOT_SUPPORTED, evidence=said)
    return row


def c3_factors(overlap, measure="redundancy", alpha=ALPHA):
    """One C3 row per regularization factor (dropout, weight decay, augmentation; `undefined` where the sweep
    holds it) and one per other factor the sweep varies (label noise, training-set size, width, epochs)."""
    rows = []
    for factor, kind in C3_FACTORS:
        varied = _has(overlap, factor) and len(set(_levels(overlap, factor)[_final(overlap)].tolist())) > 1
        if kind == "regularization" or varied:
            rows.append(c3_factor(overlap, factor, kind, measure, alpha))
    return rows


# ---------------------------------------------------------------------------- C4

def c4_correlations(generalization, alpha=ALPHA):
    """C4: one row per measure of generalization.csv at subset final, layer last, against test accuracy,
    Holm-corrected across the rows."""
    target, against = C4_TARGET
    rows = []
    for measure, what in C4_MEASURES:
        row = _row("C4", f"last-layer {what} ({measure}) correlates with {against} ({target})", "Pearson r",
                   f"permutation p of Pearson r and of the partial r given train_acc (same sign) both < {alpha:g} "
                   f"after Holm across the {len(C4_MEASURES)} C4 rows, and the BCa 95% interval of r excludes 0 "
                   f"(from {BCA_MIN_N} models)", "generalization.csv",
                   n_of="final models (one per training run), last analysed layer",
                   method="Pearson and partial Pearson, permutation p; BCa bootstrap interval; Holm across C4 rows")
        rows.append(row)
        if not _has(generalization, "subset", "layer", "measure", "target", "pearson_r"):
            _undefined(row, "generalization.csv has no rows")
            continue
        match = ((_text(generalization, "subset") == "final") & (_text(generalization, "layer") == "last")
                 & (_text(generalization, "measure") == measure) & (_text(generalization, "target") == target))
        if not match.any():
            _undefined(row, f"generalization.csv has no row final / last / {measure} / {target}")
            continue
        at = int(np.flatnonzero(match)[0])
        g = {key: values[at] for key, values in generalization.items()}
        f = {key: float(g[key]) if key in g else np.nan for key in
             ("n_models", "pearson_r", "pearson_p", "spearman_rho", "spearman_p", "boot_lo", "boot_hi",
              "partial_r", "partial_p")}
        row.update(n=int(f["n_models"]) if np.isfinite(f["n_models"]) else 0, value=f["pearson_r"],
                   p_value=f["pearson_p"], ci_lo=f["boot_lo"], ci_hi=f["boot_hi"], partial_r=f["partial_r"],
                   partial_p=f["partial_p"])
        row["n_models"] = row["n"]
        skipped = _text(generalization, "skipped")[at] if "skipped" in generalization else ""
        if not np.isfinite(f["pearson_r"]):
            _undefined(row, skipped or f"Pearson r undefined over {row['n']} models")
        elif row["n"] < BCA_MIN_N:
            _undefined(row, f"{row['n']} final models; the BCa interval needs {BCA_MIN_N}")
        elif not (np.isfinite(f["partial_r"]) and np.isfinite(f["boot_lo"])):
            _undefined(row, f"the partial correlation or the BCa interval is undefined over {row['n']} models")
    tested = [row for row in rows if row["verdict"] is None]
    adjusted = holm([max(row["p_value"], row["partial_p"]) for row in tested])  # both must reject: the larger p
    for row, p in zip(tested, adjusted):
        excludes = row["ci_lo"] > 0 or row["ci_hi"] < 0
        same = np.sign(row["partial_r"]) == np.sign(row["value"]) != 0
        row.update(p_adjusted=float(p), verdict=SUPPORTED if p < alpha and same and excludes else NOT_SUPPORTED)
        row["evidence"] = (f"Pearson r = {row['value']:.2f} (permutation p = {_p(row['p_value'])}), BCa 95% "
                           f"[{row['ci_lo']:.2f}, {row['ci_hi']:.2f}], partial r = {row['partial_r']:.2f} "
                           f"(p = {_p(row['partial_p'])}) given train_acc; Holm over {len(tested)} rows "
                           f"{_p(p)}; {row['n']} final models. The gap (train - test) is not tested apart: given "
                           "train_acc its partial r is minus this one")
    return rows


# ---------------------------------------------------------------------------- early stopping

def _reasons(table, column, mask=None):
    if column not in table:
        return ""
    values = _text(table, column) if mask is None else _text(table, column)[mask]
    return "; ".join(v for v in dict.fromkeys(values.tolist()) if v)


def early_stopping_claim(early, alpha=ALPHA):
    """Early stopping: the LOO rule against the validation split and against never stopping, in test accuracy,
    with exact paired tests."""
    row = _row("early stopping", "the CW-NNK LOO rule stops as well as a validation split, and better than not "
               "stopping", "mean test accuracy at the LOO pick minus at the validation pick (points)",
               f"the LOO pick is not worse than the validation pick (one-sided exact signed-rank p >= {alpha:g}) and "
               f"beats the last epoch over the runs where the two differ (mean > 0, one-sided exact p < {alpha:g})",
               "early_stopping.csv", n_of="training runs with saved epochs, a validation split and test accuracy",
               method="exact Wilcoxon signed-rank (zero differences dropped)")
    if not _has(early, "run", "loo_test_acc", "val_test_acc") or not len(early["run"]):
        return _undefined(row, "early_stopping.csv has no rows: no training run with saved epochs "
                               "(training.save_epochs is empty)")
    loo, val, last = _num(early, "loo_test_acc"), _num(early, "val_test_acc"), _num(early, "final_test_acc")
    keep = np.isfinite(loo) & np.isfinite(val) & np.isfinite(last)
    if not keep.any():
        why = [_reasons(early, "test_skipped") if not np.isfinite(loo).any() else "",
               _reasons(early, "val_skipped") if not np.isfinite(val).any() else ""]
        return _undefined(row, "; ".join(w for w in why if w) or "no run has both a LOO and a validation pick")
    loo, val, last = loo[keep], val[keep], last[keep]
    vs_val, vs_last = loo - val, loo - last
    _, p_worse, n_val = signed_rank(vs_val, "less")
    differ = vs_last != 0
    _, p_better, n_last = signed_rank(vs_last, "greater")
    row.update(n=int(keep.sum()), value=100 * float(vs_val.mean()), p_value=p_worse,
               n_models=int(_num(early, "n_epochs")[keep].sum()) if "n_epochs" in early else None)
    best = _num(early, "best_test_acc")[keep] if "best_test_acc" in early else np.full(len(loo), np.nan)
    accs = (f"mean test accuracy {100 * loo.mean():.2f}% at the LOO pick, {100 * val.mean():.2f}% at the validation "
            f"pick, {100 * last.mean():.2f}% at the last epoch (never stop), {100 * np.nanmean(best):.2f}% at the best "
            f"test epoch, over {row['n']} runs")
    compared = (f"LOO minus validation {row['value']:+.2f} points (one-sided p of LOO worse {_p(p_worse)}, "
                f"{n_val} runs differ); LOO minus last epoch {100 * vs_last.mean():+.2f} points, picks differ in "
                f"{int(differ.sum())} runs (one-sided p of LOO better {_p(p_better)})")
    row["evidence"] = f"{accs}; {compared}"
    need = sign_test_min_n("greater", alpha)
    if p_worse < alpha:
        row["verdict"] = NOT_SUPPORTED
    elif n_last < need:
        return _undefined(row, f"{row['evidence']}; the LOO and last-epoch picks differ in accuracy in {n_last} runs, "
                               f"and an exact one-sided test needs {need} to reach p < {alpha:g}")
    else:
        row["verdict"] = SUPPORTED if vs_last[differ].mean() > 0 and p_better < alpha else NOT_SUPPORTED
    return row


# ---------------------------------------------------------------------------- C5

C5_BASELINES = ("random", "l1", "apoz")


def _pruning_pairs(pruning, column):
    """{baseline: (n,) accuracy of the CW-NNK order minus the baseline's} over the (model, fraction > 0) pairs of
    the rows that prune every analysed layer (`all`); random's accuracy is the mean over its draws."""
    from cwnnk.pruning import ALL

    keep = (_text(pruning, "layer") == ALL) & (_num(pruning, "fraction") > 0)
    models, fractions = _text(pruning, "model")[keep], _num(pruning, "fraction")[keep]
    criteria, values = _text(pruning, "criterion")[keep], _num(pruning, column)[keep]
    acc = {}
    for m, f, c, v in zip(models, fractions, criteria, values):
        acc.setdefault((m, f), {}).setdefault(c, []).append(v)
    pairs = {}
    for baseline in C5_BASELINES:
        pairs[baseline] = np.array([np.mean(by["cwnnk"]) - np.mean(by[baseline]) for by in acc.values()
                                    if "cwnnk" in by and baseline in by])
    return pairs, len({m for m, _ in acc})


def c5_pruning(pruning, alpha=ALPHA):
    """C5: pruning by CW-NNK redundancy keeps more test accuracy than random, L1 and APoZ orders at equal fraction.

    Paired over (model, fraction > 0), every analysed layer pruned at once, accuracy without fine-tuning (what the
    removed channels carried): per baseline a one-sided exact signed-rank test of CW-NNK minus baseline; the claim
    needs all three (an intersection-union test: its p is the largest of the three, no adjustment needed)."""
    row = _row("C5", "pruning by CW-NNK redundancy keeps more test accuracy than random, L1 and APoZ at equal "
               "fraction", "mean test accuracy of the CW-NNK order minus each baseline's (points)",
               f"against each of random (mean of draws), L1 and APoZ: mean > 0 and one-sided exact signed-rank p < "
               f"{alpha:g} over (model, fraction) pairs; p is the largest of the three (intersection-union)",
               "pruning.csv", n_of="(model, fraction > 0) pairs, every analysed layer pruned at once, no fine-tune",
               method="exact Wilcoxon signed-rank per baseline (zero differences dropped), intersection-union")
    if not _has(pruning, "model", "criterion", "fraction", "test_acc") or not len(pruning["model"]):
        return _undefined(row, "pruning.csv has no rows: no final model with a test split was pruned "
                               "(pruning.enabled false, or no test split)")
    pairs, n_models = _pruning_pairs(pruning, "test_acc")
    tuned, _ = _pruning_pairs(pruning, "test_acc_finetuned") if "test_acc_finetuned" in pruning else ({}, 0)
    tests = {b: signed_rank(d, "greater") for b, d in pairs.items() if d.size}
    row.update(n=max((d.size for d in pairs.values()), default=0), n_models=n_models)
    if len(tests) < len(C5_BASELINES):
        missing = [b for b in C5_BASELINES if b not in tests]
        return _undefined(row, f"no pairs against {', '.join(missing)} (l1 needs a convolution that produces each "
                               "layer alone)")
    parts = []
    for b in C5_BASELINES:
        d, (_, p, n_diff) = pairs[b], tests[b]
        after = tuned.get(b, np.array([]))
        after = after[np.isfinite(after)]
        parts.append(f"vs {b} {100 * d.mean():+.2f} points (p {_p(p)}, {n_diff} pairs differ"
                     + (f"; after fine-tuning {100 * after.mean():+.2f}" if after.size else "") + ")")
    worst = max(C5_BASELINES, key=lambda b: tests[b][1])
    row.update(value=100 * float(pairs[worst].mean()), p_value=tests[worst][1], factor=worst)
    row["evidence"] = f"{'; '.join(parts)}; {n_models} models"
    need = sign_test_min_n("greater", alpha)
    short = [b for b in C5_BASELINES if tests[b][2] < need]
    failed = [b for b in C5_BASELINES if b not in short and not (pairs[b].mean() > 0 and tests[b][1] < alpha)]
    if short and not failed:  # a baseline the test cannot beat at this size, and none it clearly does not beat
        return _undefined(row, f"{row['evidence']}; against {', '.join(short)} fewer than {need} pairs differ, and "
                               f"an exact one-sided test needs {need} to reach p < {alpha:g}")
    row["verdict"] = NOT_SUPPORTED if failed else SUPPORTED
    return row


# ---------------------------------------------------------------------------- all

def claims_rows(overlap, manifolds, generalization, early_stopping, pruning=None, solver="exact", alpha=ALPHA):
    """The rows of claims.csv, in the order C1, C2 (redundancy above chance, training changes it), C3 (depth, then
    one row per factor), C4 (3 measures against test accuracy), early stopping, C5 (pruning; None: no table)."""
    return [
        c1_degree_dimension(manifolds, solver, alpha),
        c2_redundancy(overlap),
        c2_training(overlap),
        c3_depth(overlap, alpha=alpha),
        *c3_factors(overlap, alpha=alpha),
        *c4_correlations(generalization, alpha),
        early_stopping_claim(early_stopping, alpha),
        c5_pruning(pruning or {}, alpha),
    ]


def write_claims(overlap_csv, manifolds_csv, generalization_csv, early_csv, out_csv, solver="exact", pruning_csv=None):
    """The `claims` job: claims.csv from the tables it reads (manifolds_csv None: not run; pruning_csv None:
    no pruning table, C5 undefined)."""
    from cwnnk.tables import read_table, write_table

    manifolds = read_table(manifolds_csv) if manifolds_csv else None  # None: figures.calibration is off
    rows = claims_rows(read_table(overlap_csv), manifolds, read_table(generalization_csv), read_table(early_csv),
                       read_table(pruning_csv) if pruning_csv else None, solver)
    write_table(out_csv, rows, COLUMNS)
    return rows


# ---------------------------------------------------------------------------- stability

# The overlap.csv and channels.csv columns a run on another processor moves (measurements, not settings): columns
# whose name starts with one of these. The gap is recomputed from the moved accuracies.
MEASURED = ("redundancy", "rho_hat", "pairwise_overlap", "degree", "loo_error", "id_", "train_acc", "test_acc",
            "val_acc", "union")


def _perturb(table, scale, rng):
    """A copy of a table with every MEASURED float column multiplied by 1 + scale * N(0, 1), cell by cell."""
    out = dict(table)
    for name, values in table.items():
        if name.startswith(MEASURED) and np.asarray(values).dtype.kind == "f":
            out[name] = values * (1 + scale * rng.standard_normal(len(values)))
    if "gap_acc" in out and "train_acc" in out and "test_acc" in out:
        out["gap_acc"] = out["train_acc"] - out["test_acc"]
    return out


def claims_stability(tables_dir, scale=0.01, copies=2, seed=0):
    """Are the verdicts of a finished run's tables robust to the rounding another processor brings?

    Runs the claims on `copies` copies of tables_dir (overlap.csv, channels.csv, manifolds.csv, pruning.csv) whose
    measured columns (MEASURED) are perturbed by relative noise of `scale`, generalization.csv and
    early_stopping.csv recomputed from them. Returns one dict per claims row: claim, test, factor,
    verdict (on the tables as they are), verdicts (one per copy) and fragile (any copy differs).
    """
    import tempfile
    from pathlib import Path

    from cwnnk.generalization import write_generalization
    from cwnnk.tables import read_table, write_table

    tables_dir = Path(tables_dir)
    read = {name: read_table(tables_dir / f"{name}.csv") for name in ("overlap", "channels")}
    manifolds = tables_dir / "manifolds.csv"
    read["manifolds"] = read_table(manifolds) if manifolds.exists() else None  # figures.calibration off
    pruning = tables_dir / "pruning.csv"
    read["pruning"] = read_table(pruning) if pruning.exists() else {}
    rng = np.random.default_rng(seed)
    runs = []
    with tempfile.TemporaryDirectory() as work:
        for copy in range(copies + 1):  # copy 0: the tables as they are
            folder = Path(work) / str(copy)
            folder.mkdir()
            for name in ("overlap", "channels"):
                table = read[name] if copy == 0 else _perturb(read[name], scale, rng)
                write_table(folder / f"{name}.csv", ({k: v[i] for k, v in table.items()} for i in
                                                     range(len(next(iter(table.values()), [])))))
            write_generalization(folder / "overlap.csv", folder / "generalization.csv", folder / "early.csv")
            pruned = read["pruning"] if copy == 0 or not read["pruning"] else _perturb(read["pruning"], scale, rng)
            runs.append(claims_rows(read_table(folder / "overlap.csv"), read["manifolds"],
                                    read_table(folder / "generalization.csv"), read_table(folder / "early.csv"),
                                    pruned))
    out = []
    for rows in zip(*runs):
        verdicts = [row["verdict"] for row in rows[1:]]
        out.append(dict(claim=rows[0]["claim"], test=rows[0]["test"], factor=rows[0]["factor"],
                        verdict=rows[0]["verdict"], verdicts=verdicts,
                        fragile=any(v != rows[0]["verdict"] for v in verdicts)))
    return out
