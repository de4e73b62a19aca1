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
  analysed layer; two-sided sign test over models p < ALPHA.
- C3 regularization: per layer, a Kruskal-Wallis test of the headline redundancy across regularization
  levels (the `label` column) over the final models; the smallest p times the number of
  layers tested (Bonferroni) < ALPHA.
- C4, generalization.csv rows `final` / `last` for rho_hat_mean, pairwise_overlap_mean and
  loo_error_layer against test_acc and gap_acc: Pearson p < ALPHA, the partial correlation
  given train_acc of the same sign with p < ALPHA, and the bootstrap 95% interval of r
  excluding 0.
- Early stopping, early_stopping.csv: over the runs with both picks, the mean test accuracy at
  the LOO pick is at least that at the validation pick (the LOO rule, which holds out no
  images, loses nothing on average); the Wilcoxon signed-rank p is reported beside it.

A verdict is `undefined`, with the reason in `evidence`, when the tables lack what the rule
needs (no test accuracy, no validation split, no saved epochs, too few models or levels) or
when the test cannot reach p < ALPHA at that sample size whatever the data (a sign test on
fewer than 5 rows one-sided or 6 models two-sided; a permutation test whose smallest
attainable p is ALPHA or more).

Inputs are tables as read by `cwnnk.tables.read_table` ({} for an empty table).
"""

import itertools
import math
import warnings

import numpy as np
from scipy import stats

from cwnnk.redundancy import EFFECTS

ALPHA = 0.05
# C2's minimum effect: the headline (a mean Jaccard index) at least this far above its chance level,
# fixed in docs/method.md section 8 before any result was looked at.
MIN_EXCESS = 0.05
SUPPORTED, NOT_SUPPORTED, UNDEFINED = "supported", "not supported", "undefined"
COLUMNS = ("claim", "test", "verdict", "statistic", "value", "p_value", "ci_lo", "ci_hi", "partial_r", "partial_p",
           "n", "n_of", "n_models", "rule", "evidence", "source")
# C4: the measures and targets of generalization.csv that get a claims row (subset final, layer last).
C4_MEASURES = (("rho_hat_mean", "rho_hat"), ("pairwise_overlap_mean", "pairwise overlap J"),
               ("loo_error_layer", "CW-NNK LOO error"))
C4_TARGETS = (("test_acc", "test accuracy"), ("gap_acc", "generalization gap"))
N_PERMUTATIONS = 9999


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
    """The fewest non-tied pairs for which an exact sign test can give p < alpha."""
    n = 1
    while (0.5**n if alternative == "greater" else 2 * 0.5**n) >= alpha:
        n += 1
    return n


# ---------------------------------------------------------------------------- C1

def permutation_spearman(x, y, n_resamples=N_PERMUTATIONS, seed=0):
    """Spearman rho of (x, y) and its one-sided (rho > 0) permutation p-value: the share of the
    n! pairings of x with a reordering of y whose rho is at least the observed one, exactly when
    n! <= n_resamples, else (1 + hits) / (1 + n_resamples) over seeded random reorderings."""
    rx = stats.rankdata(x) - (len(x) + 1) / 2  # Spearman rho: Pearson r of the (midrank) ranks
    ry = stats.rankdata(y) - (len(y) + 1) / 2
    scale = np.sqrt((rx**2).sum() * (ry**2).sum())
    observed = float(rx @ ry / scale)
    tie = 1e-12  # equal rho up to rounding counts as "at least"
    if math.factorial(len(x)) <= n_resamples:
        orders = np.array(list(itertools.permutations(range(len(x)))))
        return observed, float(np.mean(ry[orders] @ rx / scale >= observed - tie))
    rng = np.random.default_rng(seed)
    orders = np.argsort(rng.random((n_resamples, len(x))), axis=1)
    return observed, float((1 + np.sum(ry[orders] @ rx / scale >= observed - tie)) / (1 + n_resamples))


def smallest_permutation_p(x):
    """The smallest one-sided p-value a permutation test of a rank correlation with x can give
    (y distinct): the share of pairings that keep the best ordering, prod(t_j!) / n! over the
    tie groups t_j of x."""
    _, counts = np.unique(np.asarray(x), return_counts=True)
    return math.prod(math.factorial(int(c)) for c in counts) / math.factorial(len(x))


def c1_degree_dimension(manifolds, solver="exact", alpha=ALPHA):
    """C1: the NNK degree grows with the intrinsic dimension on the synthetic manifolds."""
    row = _row("C1", f"mean NNK degree increases with intrinsic dimension (synthetic manifolds, {solver} solver)",
               "Spearman rho of degree_mean and dim", f"rho > 0 and one-sided permutation p < {alpha:g}",
               "manifolds.csv", n_of=f"synthetic point sets (embedding, dimension), {solver} solver", n_models=0)
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
    rho, p = permutation_spearman(dim, degree)
    row.update(value=rho, p_value=p, verdict=SUPPORTED if rho > 0 and p < alpha else NOT_SUPPORTED)
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
               "left out) with a defined excess")
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
               n_of="(model, layer) rows of final models with an untrained twin")
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
               n_of="final models with a finite first and last layer (no change dropped)")
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


def c3_regularization(overlap, measure="redundancy", alpha=ALPHA):
    """C3 regularization: a measure differs between regularization levels, layer by layer."""
    row = _row("C3", f"{measure} changes with regularization level", "Kruskal-Wallis H across levels (label)",
               f"per layer a Kruskal-Wallis test across levels; smallest p x layers tested (Bonferroni) < {alpha:g}",
               "overlap.csv", n_of="final models at the layer with the smallest p")
    if not _has(overlap, measure, "label", "layer"):
        return _undefined(row, f"overlap.csv has no rows (or lacks {measure}, label)")
    value, label, layers = _num(overlap, measure), _text(overlap, "label"), _text(overlap, "layer")
    keep = _final(overlap) & np.isfinite(value)
    tests = []
    for name in dict.fromkeys(layers[keep].tolist()):
        at = keep & (layers == name)
        groups = {lev: value[at & (label == lev)] for lev in dict.fromkeys(label[at].tolist())}
        if len(groups) < 2 or max(map(len, groups.values())) < 2:
            continue
        try:
            h, p = stats.kruskal(*groups.values())
        except ValueError:  # every value identical: no difference to find
            h, p = 0.0, 1.0
        tests.append((float(p), name, float(h), groups))
    if not tests:
        return _undefined(row, "no layer has two regularization levels with some level holding two models (seeds)")
    p, name, h, groups = min(tests, key=lambda t: t[0])
    adjusted = min(1.0, p * len(tests))
    means = [float(np.mean(g)) for g in groups.values()]
    row.update(statistic=f"Kruskal-Wallis H across levels (label) at {name}", value=h, p_value=adjusted,
               n=sum(map(len, groups.values())), n_models=len(set(_text(overlap, "model")[keep].tolist())),
               verdict=SUPPORTED if adjusted < alpha else NOT_SUPPORTED)
    row["evidence"] = (f"smallest p at {name}: H = {h:.2f} across {len(groups)} levels, {row['n']} models, "
                       f"p = {_p(p)}, x {len(tests)} layers tested = {_p(adjusted)}; level means "
                       f"{min(means):.3f} to {max(means):.3f}")
    return row


# ---------------------------------------------------------------------------- C4

def c4_correlations(generalization, alpha=ALPHA):
    """C4: one row per (measure, target) of generalization.csv at subset final, layer last."""
    rows = []
    for measure, what in C4_MEASURES:
        for target, against in C4_TARGETS:
            row = _row("C4", f"last-layer {what} ({measure}) correlates with {against} ({target})",
                       "Pearson r", f"Pearson p < {alpha:g}, partial r given train_acc of the same sign with "
                       f"p < {alpha:g}, and the bootstrap 95% interval of r excludes 0", "generalization.csv",
                       n_of="final models (one per training run), last analysed layer")
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
                continue
            if not (np.isfinite(f["partial_r"]) and np.isfinite(f["boot_lo"]) and np.isfinite(f["boot_hi"])):
                _undefined(row, f"the partial correlation or the bootstrap interval is undefined over {row['n']} "
                                "models (the partial correlation needs 4)")
                continue
            excludes = f["boot_lo"] > 0 or f["boot_hi"] < 0
            same = np.sign(f["partial_r"]) == np.sign(f["pearson_r"]) != 0
            ok = f["pearson_p"] < alpha and same and f["partial_p"] < alpha and excludes
            row["verdict"] = SUPPORTED if ok else NOT_SUPPORTED
            row["evidence"] = (f"Pearson r = {f['pearson_r']:.2f} (p = {_p(f['pearson_p'])}), Spearman "
                               f"{f['spearman_rho']:.2f} (p = {_p(f['spearman_p'])}), bootstrap 95% "
                               f"[{f['boot_lo']:.2f}, {f['boot_hi']:.2f}], partial r = {f['partial_r']:.2f} "
                               f"(p = {_p(f['partial_p'])}) given train_acc; {row['n']} final models")
    return rows


# ---------------------------------------------------------------------------- early stopping

def _reasons(table, column, mask=None):
    if column not in table:
        return ""
    values = _text(table, column) if mask is None else _text(table, column)[mask]
    return "; ".join(v for v in dict.fromkeys(values.tolist()) if v)


def early_stopping_claim(early):
    """Early stopping: the LOO rule's pick against the validation split's, in test accuracy."""
    row = _row("early stopping", "the CW-NNK LOO rule stops as well as a validation split",
               "mean test accuracy at the LOO pick minus at the validation pick (points)",
               "the mean difference is >= 0 (Wilcoxon signed-rank p reported, not used)", "early_stopping.csv",
               n_of="training runs with saved epochs, a validation split and test accuracy")
    if not _has(early, "run", "loo_test_acc", "val_test_acc") or not len(early["run"]):
        return _undefined(row, "early_stopping.csv has no rows: no training run with saved epochs "
                               "(training.save_epochs is empty)")
    loo, val = _num(early, "loo_test_acc"), _num(early, "val_test_acc")
    keep = np.isfinite(loo) & np.isfinite(val)
    if not keep.any():
        why = [_reasons(early, "test_skipped") if not np.isfinite(loo).any() else "",
               _reasons(early, "val_skipped") if not np.isfinite(val).any() else ""]
        return _undefined(row, "; ".join(w for w in why if w) or "no run has both a LOO and a validation pick")
    diff = loo[keep] - val[keep]
    row.update(n=int(keep.sum()), value=100 * float(diff.mean()),
               n_models=int(_num(early, "n_epochs")[keep].sum()) if "n_epochs" in early else None)
    if np.any(diff != 0):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            row["p_value"] = float(stats.wilcoxon(diff).pvalue)
    else:
        row["p_value"] = 1.0
    row["verdict"] = SUPPORTED if diff.mean() >= 0 else NOT_SUPPORTED
    picks = ""
    if _has(early, "loo_epoch", "val_epoch", "best_test_epoch"):
        best = _num(early, "best_test_epoch")[keep]
        hits = [int((_num(early, col)[keep] == best).sum()) for col in ("loo_epoch", "val_epoch")]
        picks = f"; best-test epoch picked in {hits[0]} (LOO) and {hits[1]} (validation) of {row['n']} runs"
    row["evidence"] = (f"mean test accuracy {100 * loo[keep].mean():.1f}% at the LOO pick, "
                       f"{100 * val[keep].mean():.1f}% at the validation pick over {row['n']} runs (difference {row['value']:+.1f} points, "
                       f"Wilcoxon p = {_p(row['p_value'])}){picks}")
    return row


# ---------------------------------------------------------------------------- all

def claims_rows(overlap, manifolds, generalization, early_stopping, solver="exact", alpha=ALPHA):
    """The rows of claims.csv, in the order C1, C2 (redundancy above chance, training changes it), C3 (depth, regularization),
    C4 (3 measures x 2 targets), early stopping."""
    return [
        c1_degree_dimension(manifolds, solver, alpha),
        c2_redundancy(overlap),
        c2_training(overlap),
        c3_depth(overlap, alpha=alpha),
        c3_regularization(overlap, alpha=alpha),
        *c4_correlations(generalization, alpha),
        early_stopping_claim(early_stopping),
    ]


def write_claims(overlap_csv, manifolds_csv, generalization_csv, early_csv, out_csv, solver="exact"):
    """The `claims` job: claims.csv from the tables it reads."""
    from cwnnk.tables import read_table, write_table

    rows = claims_rows(read_table(overlap_csv), read_table(manifolds_csv), read_table(generalization_csv),
                       read_table(early_csv), solver)
    write_table(out_csv, rows, COLUMNS)
    return rows
