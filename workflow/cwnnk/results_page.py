"""docs/results.md from a finished run: `python -m cwnnk results-page results --out docs/results.md`.

Every number on the page is read from the run's tables and Snakemake's benchmark files, so that the
documented results cannot drift from a run; the figures are copied beside it. What the numbers mean is
in docs/method.md and docs/overlap.md.
"""

import os
import platform
import shutil
from collections import Counter
from pathlib import Path

import numpy as np

from cwnnk.tables import n_rows, read_table, text_column

KINDS = {"trained": "trained runs", "snapshot": "saved epochs", "untrained": "untrained twins",
         "external": "imported models"}
FIGURES = ("F0", "F1", "F2", "F3", "F4", "F5", "F6", "F7", "F8")


def _num(value, digits=3):
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return ""
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,}"
    return f"{value:.{digits}g}" if abs(value) < 1e-3 and value != 0 else f"{value:.{digits}f}"


def _p(value):
    return "" if value is None or not np.isfinite(value) else f"{value:.2g}"


def _cell(text):
    return str(text).replace("|", "/").replace("\n", " ")


def _table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _size(path):
    total = sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file()) if Path(path).exists() else 0
    return f"{total / 2**30:.1f} GB" if total >= 2**30 else f"{total / 2**20:.0f} MB"


def _machine():
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else \
        platform.processor()
    return f"{model}, {os.cpu_count()} CPUs, {platform.system()} (where this page was generated)"


def job_times(results):
    """(jobs, seconds): Counters by rule of a run's jobs and their wall seconds, from Snakemake's benchmark files."""
    import csv

    jobs, seconds = Counter(), Counter()
    benchmarks = Path(results, "benchmarks")
    for path in sorted(benchmarks.rglob("*.tsv")):
        parts = path.relative_to(benchmarks).parts  # RULE.tsv, or RULE/{wildcards}.tsv
        rule = parts[0] if len(parts) > 1 else path.stem
        with open(path) as f:
            for row in csv.DictReader(f, delimiter="\t"):
                jobs[rule] += 1
                seconds[rule] += float(row["s"])
    return jobs, seconds


def run_section(results, overlap):
    """The run in numbers: models by kind, jobs and job time per rule, disk, accuracy range."""
    kinds = Counter(text_column(overlap["kind"])[np.unique(text_column(overlap["model"]), return_index=True)[1]])
    jobs, seconds = job_times(results)
    final = ~np.isin(text_column(overlap["kind"]), ("snapshot", "untrained"))
    twins = text_column(overlap["kind"]) == "untrained"
    acc = overlap["test_acc"]
    rows = [("models", f"{sum(kinds.values())}: " + ", ".join(f"{kinds[kind]} {KINDS.get(kind, kind)}" for kind in
                                                             sorted(kinds, key=lambda k: list(KINDS).index(k)
                                                                    if k in KINDS else len(KINDS)))),
            ("jobs", f"{sum(jobs.values()):,}, {sum(seconds.values()):,.0f} s of job time")]
    rows += [(f"job time, `{rule}`", f"{seconds[rule]:,.0f} s over {jobs[rule]} jobs")
             for rule, _ in seconds.most_common(5)]
    if np.isfinite(acc[final]).any():
        rows.append(("test accuracy, final models", f"{100 * np.nanmin(acc[final]):.1f} to "
                                                   f"{100 * np.nanmax(acc[final]):.1f} %"))
    if twins.any() and np.isfinite(acc[twins]).any():
        rows.append(("test accuracy, untrained twins", f"{100 * np.nanmin(acc[twins]):.1f} to "
                                                       f"{100 * np.nanmax(acc[twins]):.1f} %"))
    rows.append(("disk", f"{_size(results)} in `{Path(results).name}/` (graphs {_size(Path(results, 'graphs'))}, "
                         f"activations {_size(Path(results, 'activations'))})"))
    rows.append(("machine", _machine()))
    return _table(("", "this run"), rows)


def claims_section(claims):
    rows = []
    for i in range(n_rows(claims)):
        p = claims["p_adjusted"][i] if np.isfinite(claims["p_adjusted"][i]) else claims["p_value"][i]
        rows.append((text_column(claims["claim"])[i], text_column(claims["test"])[i],
                     f"**{text_column(claims['verdict'])[i]}**", _num(float(claims["value"][i])), _p(float(p)),
                     text_column(claims["evidence"])[i]))
    return _table(("claim", "test", "verdict", "value", "p", "evidence"), rows)


def answer_section(answer):
    """Per layer (depth order), the means over the final models, and the count of training effects."""
    layers = text_column(answer["layer"])
    rows = []
    for layer in dict.fromkeys(layers[np.argsort(answer["depth"], kind="stable")]):
        at = layers == layer
        effects = Counter(text_column(answer["training_effect"])[at])
        mean = lambda name: float(np.nanmean(answer[name][at])) if np.isfinite(answer[name][at]).any() else None  # noqa: E731
        rows.append((layer, int(at.sum()), _num(mean("redundancy")), _num(mean("chance")),
                     _num(mean("twin")), _num(mean("vs_twin")), effects.get("raised", 0),
                     effects.get("none beyond the interval", 0), effects.get("lowered", 0),
                     _num(mean("n_dead"), 1)))
    return _table(("layer", "models", "headline (mean)", "chance", "untrained twin", "trained - twin", "raised",
                   "unchanged", "lowered", "dead channels (mean)"), rows)


def pruning_section(pruning):
    """Mean test accuracy with every analysed layer pruned at once, by criterion and fraction."""
    if not n_rows(pruning):
        return "No model was pruned (`pruning.enabled`)."
    scope = text_column(pruning["layer"]) == "all"
    criteria = list(dict.fromkeys(text_column(pruning["criterion"])[scope]))
    fractions = sorted(set(pruning["fraction"][scope]))
    rows = []
    for fraction in fractions:
        cells = []
        for criterion in criteria:
            at = scope & (pruning["fraction"] == fraction) & (text_column(pruning["criterion"]) == criterion)
            cells.append(f"{100 * np.nanmean(pruning['test_acc'][at]):.1f} / "
                         f"{100 * np.nanmean(pruning['test_acc_finetuned'][at]):.1f}")
        rows.append((f"{100 * fraction:.0f} %", *cells))
    models = len(set(text_column(pruning["model"])))
    return (f"Mean test accuracy (%) of the {models} pruned models with that share of every analysed layer's channels "
            "removed, before / after the fine-tune (`tables/pruning.csv`; random: the mean over its draws):\n\n"
            + _table(("removed", *criteria), rows))


def generalization_section(generalization):
    layers = text_column(generalization["layer"]) if n_rows(generalization) else np.array([])
    named = sorted(set(layers) - {"last"})
    # "last" repeats a named layer's rows where every model ends in that layer
    skip_last = any(
        np.allclose(generalization["pearson_r"][layers == "last"], generalization["pearson_r"][layers == name],
                    equal_nan=True) for name in named if (layers == name).sum() == (layers == "last").sum())
    rows = []
    for i in range(n_rows(generalization)):
        if (text_column(generalization["subset"])[i] != "final"
                or text_column(generalization["target"])[i] != "test_acc"):
            continue
        if skip_last and layers[i] == "last":
            continue
        rows.append((text_column(generalization["layer"])[i], text_column(generalization["measure"])[i],
                     int(generalization["n_models"][i]) if np.isfinite(generalization["n_models"][i]) else "",
                     _num(float(generalization["pearson_r"][i]), 2), _p(float(generalization["pearson_p"][i])),
                     _num(float(generalization["partial_r"][i]), 2), _p(float(generalization["partial_p"][i]))))
    if not rows:
        return "No correlation was computed (fewer than three final models)."
    return ("Each layer measure against test accuracy over the final models (`tables/generalization.csv`, subset "
            "`final`; partial: with training accuracy held):\n\n"
            + _table(("layer", "measure", "models", "Pearson r", "p", "partial r", "partial p"), rows))


def results_page(results, figures_dir=None, out=None, configfile=None):
    """The Markdown page of a finished run in `results`; with figures_dir, F0..F8 are copied there and shown
    (paths relative to `out`'s folder); with configfile, the run's config is shown."""
    results = Path(results)
    tables = results / "tables"
    missing = [name for name in ("overlap", "answer", "claims") if not (tables / f"{name}.csv").is_file()]
    if missing:
        raise FileNotFoundError(f"{tables}: no {', '.join(f'{m}.csv' for m in missing)}; run the workflow to its end "
                                "first (snakemake --cores all)")
    read = lambda name: read_table(tables / f"{name}.csv") if (tables / f"{name}.csv").is_file() else {}  # noqa: E731
    overlap = read("overlap")
    parts = [
        "# Results of the default experiment",
        "<!-- Generated by `python -m cwnnk results-page results --out docs/results.md --figures docs/img/default` "
        "from a finished run; do not edit by hand: rerun the command. -->",
        "What `snakemake --cores all` on `config.yaml` gave. Every number below is read from that run's tables and "
        "benchmark files by the command in this page's source, so none can drift from a run. What they mean: "
        "[method.md](method.md) (the claims and the verdict rules, section 8) and [overlap.md](overlap.md) (the "
        "headline, its interval and chance level, and pruning).",
        "## The run", run_section(results, overlap),
        *(["<details><summary>the config (<code>" + str(configfile) + "</code>)</summary>\n\n```yaml\n"
            + Path(configfile).read_text().strip() + "\n```\n\n</details>"] if configfile and Path(configfile).is_file()
          else []),
        "## The verdicts (`tables/claims.csv`)", claims_section(read("claims")),
        "## How redundant, layer by layer (`tables/answer.csv`)",
        "Means over the final models (trained runs at their last epoch); an effect of training is counted where "
        "trained minus twin lies outside its 95% interval.",
        answer_section(read("answer")),
        "## Does it matter? Pruning", pruning_section(read("pruning")),
        "## Layer measures and test accuracy (C4)", generalization_section(read("generalization")),
    ]
    if figures_dir is not None:
        figures_dir = Path(figures_dir)
        figures_dir.mkdir(parents=True, exist_ok=True)
        shown = []
        for name in FIGURES:
            source = results / "figures" / f"{name}.png"
            if source.is_file():
                shutil.copyfile(source, figures_dir / source.name)
                shown.append(f"![{name}]"
                             f"({os.path.relpath(figures_dir / source.name, Path(out).parent if out else '.')})")
        parts += ["## Figures", "\n\n".join(shown)]
    return "\n\n".join(parts) + "\n"
