"""The answer to "how redundant are my channels?", one row per model and layer: answer.csv and the
report's front page.

A row holds the layer's headline redundancy with its 95% interval, its chance level, the untrained
twin's value and the difference from it, the channels (live and dead) and the images (N), and a
reading in words. Rows are the final models: trained runs at their last epoch and imported models;
saved epochs and untrained twins are the trajectory and the baseline, not answers of their own.
"""

import numpy as np

COLUMNS = ("model", "layer", "depth", "n_channels", "n_dead", "n_images", "redundancy", "ci_lo", "ci_hi", "chance",
           "twin", "vs_twin", "vs_twin_ci_lo", "vs_twin_ci_hi", "training_effect", "reading")


def _get(table, name, i):
    if name not in table:
        return None
    value = table[name][i]
    if isinstance(value, (float, np.floating)):
        return float(value) if np.isfinite(value) else None
    return str(value) or None


def reading(row, short=False):
    """The row in words: 'layer4.1.relu: channels overlap 3.1x chance (+0.21 above it), 0.05 above the untrained
    network', or with short=True '3.1x chance; 0.05 above untrained' (for the front page's table, whose other
    columns name the layer and give the numbers)."""
    layer, value, chance = row["layer"], row["redundancy"], row["chance"]
    if value is None:
        return ("undefined: fewer than two live channels" if short
                else f"{layer}: undefined (fewer than two live channels)")
    parts = []
    if chance:
        parts.append(f"{value / chance:.1f}x chance" if short else
                     f"{layer}: channels overlap {value / chance:.1f}x chance ({value - chance:+.2f} above it)")
    else:
        parts.append(f"{layer}: mean channel overlap {value:.2f}")
    if row["ci_lo"] is not None and chance is not None and row["ci_lo"] <= chance:
        parts.append("not beyond chance within its interval")
    if row["vs_twin"] is not None:
        effect = row["training_effect"] or ""
        untrained = "untrained" if short else "the untrained network"
        if effect in ("raised", "lowered"):
            parts.append(f"{abs(row['vs_twin']):.2f} {'above' if effect == 'raised' else 'below'} {untrained}")
        else:
            parts.append(f"as {untrained} ({row['vs_twin']:+.2f}, within the interval)")
    return ("; " if short else ", ").join(parts)


def answer_rows(overlap):
    """The rows of answer.csv from overlap.csv as read by cwnnk.tables.read_table ({}: none)."""
    from cwnnk.tables import text_column

    if not overlap:
        return []
    kind = text_column(overlap["kind"]) if "kind" in overlap else np.full(len(overlap["model"]), "")
    rows = []
    for i in np.flatnonzero(~np.isin(kind, ("snapshot", "untrained"))):
        live = _get(overlap, "n_channels", i)
        dead = _get(overlap, "n_dead_channels", i)
        row = dict(model=str(overlap["model"][i]), layer=str(overlap["layer"][i]), depth=int(overlap["depth"][i]),
                   n_channels=None if live is None else int(live), n_dead=None if dead is None else int(dead),
                   n_images=None if _get(overlap, "n_nodes", i) is None else int(overlap["n_nodes"][i]),
                   redundancy=_get(overlap, "redundancy", i), ci_lo=_get(overlap, "redundancy_ci_lo", i),
                   ci_hi=_get(overlap, "redundancy_ci_hi", i), chance=_get(overlap, "redundancy_chance", i),
                   twin=_get(overlap, "redundancy_twin", i), vs_twin=_get(overlap, "redundancy_vs_twin", i),
                   vs_twin_ci_lo=_get(overlap, "redundancy_vs_twin_ci_lo", i),
                   vs_twin_ci_hi=_get(overlap, "redundancy_vs_twin_ci_hi", i),
                   training_effect=_get(overlap, "training_effect", i))
        row["reading"] = reading(row)
        rows.append(row)
    return rows


def _num(value, digits=3):
    return "" if value is None else f"{value:.{digits}f}"


def _rst_table(header, rows, widths=None):
    """An RST list-table."""
    lines = [".. list-table::", "   :header-rows: 1", ""]
    if widths:
        lines.insert(2, f"   :widths: {' '.join(map(str, widths))}")
    for cells in [header, *rows]:
        lines.append(f"   * - {cells[0]}")
        lines += [f"     - {cell}" for cell in cells[1:]]
    return "\n".join(lines)


def front_page(rows, claims):
    """The answer part of the report's front page (reStructuredText): the per-layer table, then claims.csv as a
    table."""
    from cwnnk.tables import text_column

    table = [[r["model"], r["layer"],
              "" if r["redundancy"] is None else f"{_num(r['redundancy'])} [{_num(r['ci_lo'])}, {_num(r['ci_hi'])}]",
              _num(r["chance"]), _num(r["twin"]),
              "" if r["n_channels"] is None else f"{r['n_channels'] - (r['n_dead'] or 0)} + {r['n_dead'] or 0} dead",
              "" if r["n_images"] is None else str(r["n_images"]), reading(r, short=True)] for r in rows]
    # Snakemake's report sets its front page in a narrow column (max-w-lg): widen it for the tables.
    parts = [".. raw:: html", "", "   <style>.prose.max-w-lg { max-width: 72rem; }</style>", "",
             "The answer: channel redundancy per layer", "=" * 40, "",
             "The headline redundancy of each analysed layer (the mean pairwise overlap of the channels' NNK "
             "neighbourhoods, docs/overlap.md) with its 95% interval, its chance level, the untrained twin's value, "
             "the channels (live + dead) and the images N. Full table: answer.csv (and overlap.csv) under "
             "*Tables*; figure A draws the same.", "",
             _rst_table(["model", "layer", "redundancy [95% interval]", "chance", "untrained twin", "channels",
                         "N", "reading"], table, widths=[16, 10, 16, 7, 8, 9, 6, 28]) if table
             else "No layer was analysed.", ""]
    if claims:
        verdicts = [[str(c), str(t), str(v), str(e).replace("\n", " ")] for c, t, v, e in
                    zip(claims["claim"], claims["test"], text_column(claims["verdict"]),
                        text_column(claims["evidence"]))]
        parts += ["This run's verdicts (claims.csv)", "-" * 32, "", _rst_table(["claim", "test", "verdict", "evidence"],
                                                                             verdicts, widths=[8, 30, 10, 52]), ""]
    return "\n".join(parts) + "\n"


def write_answer(overlap_csv, claims_csv, out_csv, front_rst, description=""):
    """answer.csv and the report's front page (reStructuredText, the workflow's description after the
    answer) from overlap.csv and claims.csv. The generated part is kept from Jinja, which Snakemake's
    report applies to the page."""
    from cwnnk.atomic import atomic_path
    from cwnnk.tables import read_table, write_table

    rows = answer_rows(read_table(overlap_csv))
    write_table(out_csv, rows, COLUMNS)
    page = front_page(rows, read_table(claims_csv))
    with atomic_path(front_rst) as tmp:
        tmp.write_text("{% raw %}\n" + page + "{% endraw %}\n\n" + description)
    return rows
