"""Figures F1-F6 of docs/method.md section 5, drawn only from the tables in results/tables/.

Each `f*` function takes tables as read by `cwnnk.tables.read_table` (dicts of numpy
columns) and an output prefix, and writes `{prefix}.pdf` and `{prefix}.png` (atomically).
`draw_all(tables, outputs)` draws all six from the tables' files into the given F1.pdf ... F6.png.

Conventions: the Okabe-Ito palette (colour-blind safe), with a marker per regularization
level as well so that levels stay apart in grey print; widths of 3.5 in (one paper column)
or 7 in (two columns), no text under 7 pt; figures are built on `matplotlib.figure.Figure`
(no pyplot, no global backend or rc change) and saved without dates or software tags, so
the same tables give byte-identical files. Empty or absent tables give a placeholder figure
that says what is missing: a figure never fails because a sweep has one model, one seed,
one level or one layer.
"""

import math
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.colors import to_rgba
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FixedLocator, MaxNLocator, NullLocator, ScalarFormatter

from cwnnk.atomic import atomic_path
from cwnnk.params import FigureParams
from cwnnk.generalization import correlate
from cwnnk.products import FIGURE_FORMATS, FIGURES, TABLES
from cwnnk.tables import n_rows, read_table, select

# Okabe & Ito (2008), "Color universal design"; yellow last (weak on white).
OKABE_ITO = {
    "blue": "#0072B2", "vermillion": "#D55E00", "bluish_green": "#009E73", "orange": "#E69F00",
    "reddish_purple": "#CC79A7", "sky_blue": "#56B4E9", "black": "#000000", "yellow": "#F0E442",
}
PALETTE = tuple(OKABE_ITO.values())
MARKERS = ("o", "s", "D", "^", "v", "P", "X", "<", ">", "p")
SINGLE, DOUBLE = 3.5, 7.0  # column widths in inches
DPI = 300
STYLE = {
    "font.size": 8, "axes.titlesize": 8, "axes.labelsize": 8, "xtick.labelsize": 7,
    "ytick.labelsize": 7, "legend.fontsize": 7, "legend.title_fontsize": 7,
    "figure.titlesize": 8, "axes.linewidth": 0.6, "lines.linewidth": 1.2, "lines.markersize": 4,
    "xtick.major.width": 0.6, "ytick.major.width": 0.6, "axes.spines.top": False,
    "axes.spines.right": False, "legend.frameon": False, "pdf.fonttype": 42,
    "image.cmap": "viridis", "svg.hashsalt": "cwnnk",
}
LEVEL_TITLE = "regularization"


# ---------------------------------------------------------------------------- helpers

def _new_figure(width, height):
    with matplotlib.rc_context(STYLE):
        return Figure(figsize=(width, height), layout="constrained")


def _save(fig, prefix):
    """Write {prefix}.pdf and {prefix}.png atomically, without dates or software tags."""
    prefix = Path(prefix)
    paths = []
    with matplotlib.rc_context(STYLE):
        for ext, meta in (("pdf", {"CreationDate": None, "ModDate": None, "Producer": None,
                                   "Creator": None}),
                          ("png", {"Software": None})):
            path = prefix.with_name(f"{prefix.name}.{ext}")
            with atomic_path(path) as tmp:
                fig.savefig(tmp, format=ext, dpi=DPI, metadata=meta)
            paths.append(path)
    return paths


def _placeholder(prefix, title, message, width=SINGLE, height=1.6):
    """A figure that only says why there is nothing to draw (the rule's outputs still exist)."""
    with matplotlib.rc_context(STYLE):
        fig = _new_figure(width, height)
        ax = fig.add_subplot()
        ax.set_axis_off()
        ax.text(0.5, 0.6, title, ha="center", va="center", fontsize=8, weight="bold")
        ax.text(0.5, 0.35, message, ha="center", va="center", fontsize=7, wrap=True)
        return _save(fig, prefix)


def _finite(values):
    v = np.asarray(values, dtype=np.float64)
    return v[np.isfinite(v)]


def _col(table, name, default=np.nan):
    """A column, or a column of `default` when the table lacks it."""
    if name in table:
        return table[name]
    return np.full(n_rows(table), default, dtype=object if isinstance(default, str) else float)


def _text(values):
    return np.asarray([str(v) for v in values], dtype=str)


def _first_seen(values):
    """Unique values in order of first appearance."""
    return list(dict.fromkeys(values.tolist()))


def level_order(table):
    """Regularization labels of a table, ordered: trained before external, then by dropout,
    weight decay, augmentation (none < shift < shift_flip) and label."""
    labels = _text(_col(table, "label", ""))
    kind = _text(_col(table, "kind", "trained"))
    keys = {}
    for i, label in enumerate(labels):
        if label in keys:
            continue
        key = []
        for name in ("dropout", "weight_decay"):
            value = float(_col(table, name)[i]) if name in table and table[name].dtype.kind == "f" else math.nan
            key.append(math.inf if math.isnan(value) else value)
        keys[label] = (kind[i] == "external", *key, str(_col(table, "augment", "")[i]), label)
    return sorted(keys, key=keys.get)


def level_styles(levels):
    """label -> (colour, marker), fixed by the position of the label in `levels`."""
    return {label: (PALETTE[i % len(PALETTE)], MARKERS[i % len(MARKERS)]) for i, label in enumerate(levels)}


def _levels_for(table, levels):
    """Labels present in `table`, in the order of `levels` (then any others), and the styles."""
    present = level_order(table)
    ordered = [label for label in (levels or []) if label in present]
    ordered += [label for label in present if label not in ordered]
    return ordered, level_styles(list(levels or []) + [label for label in ordered if label not in (levels or [])])


def _depth_axis(ax, table, depths):
    """Integer depth ticks; the layer name under each when the names are short and few."""
    ax.xaxis.set_major_locator(FixedLocator(depths))
    ax.xaxis.set_minor_locator(NullLocator())
    labels = [str(d) for d in depths]
    if "layer" in table and len(depths) <= 8:
        depth = table["depth"]
        names = [_first_seen(_text(table["layer"][depth == d])) for d in depths]
        if all(len(n) == 1 and len(n[0]) <= 12 for n in names):
            labels = [f"{d}\n{n[0]}" for d, n in zip(depths, names)]
    ax.set_xticklabels(labels)
    if len(depths):
        ax.set_xlim(min(depths) - 0.6, max(depths) + 0.6)
    ax.set_xlabel("depth (layer index)")


def _unique_number(table, name):
    values = np.unique(_finite(_col(table, name)))
    return float(values[0]) if len(values) == 1 else None


def _depths(table):
    return sorted(int(d) for d in np.unique(_finite(table["depth"])))


def _pick_model(table, model, what, option):
    models = _first_seen(_text(table["model"]))
    if model is None:
        return models[0]
    if model not in models:
        raise ValueError(f"figures.{option}={model!r} has no rows in {what}; models there: {models}")
    return model


# ---------------------------------------------------------------------------- F1

def f1_degree(channels, prefix, levels=None, k=None):
    """F1: per-channel NNK degree per layer (boxes, points when few) and the aggregate degree
    (diamond: mean over seeds, bar: min-max), one colour per regularization level (C1, C2).

    channels: channels.csv (model, label, layer, depth, channel, degree_mean, degree_agg_mean).
    levels: optional label order fixing the colours (e.g. level_order(overlap)); k: candidate
    count, drawn as the upper bound of the degree.
    """
    title = "F1 NNK degree per layer"
    if n_rows(channels) == 0:
        return _placeholder(prefix, title, "channels.csv has no rows")
    levels, styles = _levels_for(channels, levels)
    label, depth = _text(channels["label"]), channels["depth"]
    model = _text(channels["model"])
    depths = _depths(channels)
    width = DOUBLE if len(depths) * len(levels) > 8 else SINGLE
    with matplotlib.rc_context(STYLE):
        fig = _new_figure(width, 3.4 if width == SINGLE else 3.0)
        ax = fig.add_subplot()
        slot = 0.8 / len(levels)
        for j, lev in enumerate(levels):
            colour, marker = styles[lev]
            for d in depths:
                pos = d - 0.4 + slot * (j + 0.5)
                rows = (label == lev) & (depth == d)
                values = _finite(channels["degree_mean"][rows])
                if values.size:
                    few = values.size <= 100
                    ax.boxplot(
                        [values], positions=[pos], widths=slot * 0.8, patch_artist=True,
                        showfliers=not few, manage_ticks=False, whis=1.5,
                        boxprops=dict(facecolor=to_rgba(colour, 0.35), edgecolor=colour, linewidth=0.8),
                        medianprops=dict(color=colour, linewidth=1.2),
                        whiskerprops=dict(color=colour, linewidth=0.8), capprops=dict(color=colour, linewidth=0.8),
                        flierprops=dict(marker=".", markersize=2, markerfacecolor=colour, markeredgecolor="none"),
                    )
                    if few:
                        jitter = np.random.default_rng(1000 * j + d).uniform(-0.3, 0.3, values.size) * slot
                        ax.scatter(pos + jitter, values, s=3, color=colour, alpha=0.7, linewidths=0, zorder=3)
                # the aggregate degree: one value per model (repeated over its channels)
                agg = [_finite(channels["degree_agg_mean"][rows & (model == m)])
                       for m in _first_seen(model[rows])]
                agg = np.array([a[0] for a in agg if a.size])
                if agg.size:
                    ax.errorbar([pos], [agg.mean()], yerr=[[agg.mean() - agg.min()], [agg.max() - agg.mean()]],
                                fmt="D", color=colour, markeredgecolor="black", markeredgewidth=0.6,
                                markersize=4.5, ecolor="black", elinewidth=0.6, capsize=1.5, zorder=4)
        if k is not None:
            ax.axhline(k, color="0.5", linestyle=":", linewidth=0.8, zorder=1)
        _depth_axis(ax, channels, depths)
        ax.set_ylabel("NNK degree (neighbours)")
        ax.set_ylim(bottom=0)
        handles = [Patch(facecolor=to_rgba(styles[lev][0], 0.35), edgecolor=styles[lev][0],
                         label=lev) for lev in levels]
        fig.legend(handles=handles, loc="outside upper center", ncol=min(len(handles), 3 if width == SINGLE else 5),
                   title=LEVEL_TITLE)
        glyphs = [Patch(facecolor="white", edgecolor="0.3", label="per-channel degree (box: quartiles)"),
                  Line2D([], [], marker="D", color="0.6", markeredgecolor="black", linestyle="none",
                         markersize=4.5, label="aggregate degree (mean, min-max over seeds)")]
        if k is not None:
            glyphs.append(Line2D([], [], color="0.5", linestyle=":", label=f"k = {k:g} candidates"))
        fig.legend(handles=glyphs, loc="outside lower center", ncol=1 if width == SINGLE else len(glyphs))
        return _save(fig, prefix)


# ---------------------------------------------------------------------------- F2

F2_PANELS = (
    ("rho_hat_mean", "rho_hat_chance_mean", "redundancy $\\hat\\rho$ (0-1)", "(a) normalised redundancy"),
    ("pairwise_overlap_mean", "pairwise_overlap_chance_mean", "pairwise overlap $J$ (0-1)",
     "(b) pairwise channel overlap"),
)


def _by_level_depth(table, column, lev, depths):
    """Per depth: mean, min and max of `column` over the level's models (NaN where none)."""
    label, depth = _text(table["label"]), table["depth"]
    out = np.full((3, len(depths)), np.nan)
    for i, d in enumerate(depths):
        values = _finite(_col(table, column)[(label == lev) & (depth == d)])
        if values.size:
            out[:, i] = values.mean(), values.min(), values.max()
    return out


def f2_redundancy_depth(overlap, prefix, levels=None):
    """F2: rho_hat and pairwise overlap (layer means over nodes) versus depth; per level the
    mean over seeds (line), the min-max over seeds (band) and the chance level (dashed) (C2, C3).

    overlap: overlap.csv (label, depth, rho_hat_mean, pairwise_overlap_mean and their
    *_chance_mean columns).
    """
    title = "F2 redundancy versus depth"
    if n_rows(overlap) == 0:
        return _placeholder(prefix, title, "overlap.csv has no rows")
    levels, styles = _levels_for(overlap, levels)
    label = _text(overlap["label"])
    depths = _depths(overlap)
    models = _text(overlap["model"])
    with matplotlib.rc_context(STYLE):
        fig = _new_figure(DOUBLE, 2.9)
        axes = fig.subplots(1, 2)
        for ax, (column, chance, ylabel, panel) in zip(axes, F2_PANELS):
            for lev in levels:
                colour, marker = styles[lev]
                mean, lo, hi = _by_level_depth(overlap, column, lev, depths)
                ok = np.isfinite(mean)
                x = np.asarray(depths)[ok]
                ax.plot(x, mean[ok], color=colour, marker=marker, markersize=3.5, zorder=3)
                if ok.sum() >= 2:
                    ax.fill_between(x, lo[ok], hi[ok], color=colour, alpha=0.18, linewidth=0, zorder=2)
                elif ok.sum() == 1:
                    ax.errorbar(x, mean[ok], yerr=[mean[ok] - lo[ok], hi[ok] - mean[ok]], color=colour,
                                elinewidth=0.8, capsize=2, fmt="none", zorder=2)
                cm = _by_level_depth(overlap, chance, lev, depths)[0]
                okc = np.isfinite(cm)
                ax.plot(np.asarray(depths)[okc], cm[okc], color=colour, linestyle="--", linewidth=0.8,
                        marker=marker if okc.sum() == 1 else None, markersize=2.5, markerfacecolor="none", zorder=2)
            _depth_axis(ax, overlap, depths)
            ax.set_ylabel(ylabel)
            ax.set_ylim(bottom=0)
            ax.set_title(panel, loc="left")
        handles = []
        for lev in levels:
            n = len(set(models[label == lev].tolist()))
            handles.append(Line2D([], [], color=styles[lev][0], marker=styles[lev][1], markersize=3.5,
                                  label=f"{lev} ({n} model{'s' if n != 1 else ''})"))
        if any(len(set(models[label == lev].tolist())) > 1 for lev in levels):
            handles.append(Patch(facecolor="0.6", alpha=0.35, label="min-max over seeds"))
        handles.append(Line2D([], [], color="0.3", linestyle="--", linewidth=0.8, label="chance level"))
        fig.legend(handles=handles, loc="outside upper center", ncol=min(4, len(handles)), title=LEVEL_TITLE)
        return _save(fig, prefix)


# ---------------------------------------------------------------------------- F3

F3_Y = (("rho_hat_mean", "last-layer redundancy $\\hat\\rho$"),
        ("pairwise_overlap_mean", "last-layer pairwise overlap $J$"),
        ("loo_error_layer", "last-layer CW-NNK LOO error"))
F3_X = (("test_acc", "test accuracy (%)"), ("gap_acc", "generalization gap (train - test, % points)"))
F3_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def correlation(x, y):
    """Pearson and Spearman (r, p) over the pairs where both are finite, and their count.

    Each is None when fewer than 3 pairs remain or either variable is constant
    (cwnnk.generalization.correlate, without the bootstrap).
    """
    c = correlate(x, y, n_boot=0)
    pearson = None if np.isnan(c["pearson_r"]) else (c["pearson_r"], c["pearson_p"])
    spearman = None if np.isnan(c["spearman_rho"]) else (c["spearman_rho"], c["spearman_p"])
    return {"n": c["n_models"], "pearson": pearson, "spearman": spearman}


def correlation_text(c):
    def one(name, symbol, value):
        if value is None:
            return f"{name} {symbol}: n/a"
        return f"{name} {symbol} = {value[0]:.2f} (p = {value[1]:.2g})"
    return f"{one('Pearson', 'r', c['pearson'])}\n{one('Spearman', 'ρ', c['spearman'])}, n = {c['n']}"


def _factor_styles(last):
    """Per model: colour by label noise (viridis over its levels) and marker by dropout."""
    noise = np.nan_to_num(np.asarray(_col(last, "label_noise", 0.0), dtype=np.float64))
    dropout = np.nan_to_num(np.asarray(_col(last, "dropout", 0.0), dtype=np.float64))
    noises, dropouts = sorted(set(noise.tolist())), sorted(set(dropout.tolist()))
    cmap = matplotlib.colormaps["viridis"]
    colour = {v: cmap(0.85 * i / max(1, len(noises) - 1)) for i, v in enumerate(noises)}
    marker = {v: F3_MARKERS[i % len(F3_MARKERS)] for i, v in enumerate(dropouts)}
    return noise, dropout, colour, marker


def f3_generalization(overlap, prefix, levels=None):
    """F3: last analysed layer (is_last == 1) rho_hat, pairwise overlap and CW-NNK LOO error
    versus test accuracy and versus the accuracy gap, one point per model (saved epochs
    included, drawn hollow), coloured by label noise and marked by dropout, with Pearson and
    Spearman r, p and the number of models in each panel's title (C4; the full statistics
    are in generalization.csv). levels: unused, kept for the draw_all signature.

    Returns {(y column, x column): correlation dict with a 'text' entry}; 'n/a' marks a
    correlation that is undefined (fewer than 3 models, or constant data).
    """
    title = "F3 last-layer overlap versus generalization"
    if n_rows(overlap) == 0 or "is_last" not in overlap:
        return _placeholder(prefix, title, "overlap.csv has no rows"), {}
    last = {name: values[overlap["is_last"] == 1] for name, values in overlap.items()}
    if n_rows(last) == 0:
        return _placeholder(prefix, title, "overlap.csv has no row with is_last == 1"), {}
    noise, dropout, colours, markers = _factor_styles(last)
    snapshot = _text(_col(last, "kind", "")) == "snapshot"
    rows = [(ycol, ylabel) for ycol, ylabel in F3_Y if ycol in last]
    result, fitted = {}, False
    with matplotlib.rc_context(STYLE):
        fig = _new_figure(DOUBLE, 2.3 * len(rows) + 0.8)
        axes = np.atleast_2d(fig.subplots(len(rows), 2, sharex="col", sharey="row", squeeze=False))
        for r, (ycol, ylabel) in enumerate(rows):
            for c, (xcol, xlabel) in enumerate(F3_X):
                ax = axes[r, c]
                x = 100 * np.asarray(_col(last, xcol), dtype=np.float64)  # fractions -> %
                y = np.asarray(_col(last, ycol), dtype=np.float64)
                for (nv, dv) in dict.fromkeys(zip(noise.tolist(), dropout.tolist())):
                    for hollow in (False, True):
                        m = (noise == nv) & (dropout == dv) & (snapshot == hollow)
                        if m.any():
                            ax.scatter(x[m], y[m], marker=markers[dv], s=16, linewidths=0.6, zorder=3,
                                       facecolors="none" if hollow else colours[nv],
                                       edgecolors=colours[nv] if hollow else "black")
                cor = correlation(x, y)
                cor["text"] = correlation_text(cor)
                result[(ycol, xcol)] = cor
                ax.margins(0.08)
                if cor["pearson"] is not None:
                    fitted = True
                    ok = np.isfinite(x) & np.isfinite(y)
                    slope, icept = np.polyfit(x[ok], y[ok], 1)
                    xs = np.array([x[ok].min(), x[ok].max()])
                    ax.plot(xs, slope * xs + icept, color="0.4", linestyle="--", linewidth=0.8, zorder=2)
                ax.set_title(f"({'abcdef'[2 * r + c]}) {cor['text']}", loc="left", fontsize=7)
                if r == len(rows) - 1:
                    ax.set_xlabel(xlabel)
                if c == 0:
                    ax.set_ylabel(ylabel)
                ax.tick_params(labelbottom=True)
        handles = [Line2D([], [], color=colours[v], marker="o", markeredgecolor="black", markeredgewidth=0.3,
                          linestyle="none", markersize=4.5, label=f"label noise {v:g}") for v in colours]
        handles += [Line2D([], [], color="0.5", marker=markers[v], markeredgecolor="black", markeredgewidth=0.3,
                           linestyle="none", markersize=4.5, label=f"dropout {v:g}") for v in markers]
        if snapshot.any():
            handles.append(Line2D([], [], color="0.3", marker="o", markerfacecolor="none", linestyle="none",
                                  markersize=4.5, label="saved epoch"))
        if fitted:
            handles.append(Line2D([], [], color="0.4", linestyle="--", linewidth=0.8, label="least-squares line"))
        fig.legend(handles=handles, loc="outside upper center", ncol=min(5, len(handles)),
                   title=f"{n_rows(last)} models, one point each (statistics: generalization.csv)")
        return _save(fig, prefix), result


# ---------------------------------------------------------------------------- F4

def f4_heatmaps(pairwise, prefix, model=None):
    """F4: the C x C pairwise channel-overlap matrix of every analysed layer of one model
    (default: the first in the table), one panel per layer, one colour scale 0-1 (C2, C3).

    pairwise: pairwise.csv in long form (model, layer, depth, channel_a, channel_b, overlap).
    """
    title = "F4 pairwise channel overlap"
    if n_rows(pairwise) == 0:
        return _placeholder(prefix, title, "pairwise.csv has no rows")
    model = _pick_model(pairwise, model, "pairwise.csv", "heatmap_model")
    table = select(pairwise, _text(pairwise["model"]) == model)
    depths = _depths(table)
    n = len(depths)
    ncols = min(n, 4)
    nrows = math.ceil(n / ncols)
    panel = (DOUBLE - 0.7) / ncols
    with matplotlib.rc_context(STYLE):
        fig = _new_figure(DOUBLE if ncols > 1 else SINGLE, nrows * (panel + 0.45) + 0.35)
        axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
        image = None
        for i, (ax, d) in enumerate(zip(axes, depths)):
            sel = table["depth"] == d
            a = table["channel_a"][sel].astype(np.int64)
            b = table["channel_b"][sel].astype(np.int64)
            C = int(max(a.max(), b.max())) + 1
            matrix = np.full((C, C), np.nan)
            matrix[a, b] = table["overlap"][sel]
            off = matrix[~np.eye(C, dtype=bool)]
            mean = np.nanmean(off) if np.isfinite(off).any() else np.nan
            image = ax.imshow(matrix, vmin=0, vmax=1, cmap="viridis", origin="upper",
                              interpolation="nearest" if C <= 96 else "antialiased")
            layer = _first_seen(_text(table["layer"][sel])) if "layer" in table else ["?"]
            ax.set_title(f"depth {d}: {layer[0]}\nC = {C}, mean J = {mean:.2f}", fontsize=7)
            for axis in (ax.xaxis, ax.yaxis):
                axis.set_major_locator(MaxNLocator(nbins=4, integer=True))
            if i % ncols == 0:
                ax.set_ylabel("channel a")
            if i >= n - ncols:
                ax.set_xlabel("channel b")
        for ax in axes[n:]:
            ax.set_axis_off()
        fig.colorbar(image, ax=axes[:n].tolist(), label="pairwise overlap J (0-1)", shrink=0.9,
                     aspect=25 if nrows > 1 else 15)
        fig.suptitle(f"model {model} (mean J: over channel pairs a \u2260 b)")
        return _save(fig, prefix)


# ---------------------------------------------------------------------------- F5

EMBEDDING_STYLE = {"linear": OKABE_ITO["blue"], "curved": OKABE_ITO["vermillion"]}
SOLVER_STYLE = {"exact": ("-", "o"), "pynnk": ("--", "s")}


def _dim_axis(ax, dims):
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_locator(FixedLocator(dims))
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlabel("true intrinsic dimension d")


def _by_dim(dim, values):
    """{dim: first value}, sorted by dim (x, y arrays)."""
    first = {}
    for d, v in zip(dim, values):
        first.setdefault(float(d), float(v))
    x = np.array(sorted(first))
    return x, np.array([first[v] for v in x])


def f5_manifolds(manifolds, prefix):
    """F5: NNK degree versus the true intrinsic dimension of linear and curved synthetic
    manifolds (C1): (a) mean degree of both solvers (band: +-1 sd over nodes, exact solver),
    (b) the exact minus pynnk mean degree, (c) the TwoNN estimate against the identity.

    manifolds: manifolds.csv (embedding, dim, n, D, k, solver, degree_mean, degree_std, twonn_id).
    """
    title = "F5 NNK degree versus intrinsic dimension"
    if n_rows(manifolds) == 0:
        return _placeholder(prefix, title, "manifolds.csv has no rows")
    emb, solver = _text(manifolds["embedding"]), _text(manifolds["solver"])
    dim = manifolds["dim"]
    dims = sorted(int(d) for d in np.unique(_finite(dim)))
    embeddings = [e for e in EMBEDDING_STYLE if e in set(emb)]
    embeddings += [e for e in _first_seen(emb) if e not in EMBEDDING_STYLE]
    colours = {e: EMBEDDING_STYLE.get(e, PALETTE[2 + i % 4]) for i, e in enumerate(embeddings)}
    solvers = [s for s in SOLVER_STYLE if s in set(solver)] + [s for s in _first_seen(solver) if s not in SOLVER_STYLE]
    style = {s: SOLVER_STYLE.get(s, (":", "^")) for s in solvers}
    size = {s: 4.5 if i == 0 else 3 for i, s in enumerate(solvers)}  # first solver's markers stay visible
    with matplotlib.rc_context(STYLE):
        fig = _new_figure(DOUBLE, 2.9)
        ax, dx, bx = fig.subplots(1, 3)
        for e in embeddings:
            for i, s in enumerate(solvers):
                sel = (emb == e) & (solver == s)
                x, y = _by_dim(dim[sel], manifolds["degree_mean"][sel])
                ax.plot(x, y, color=colours[e], linestyle=style[s][0], marker=style[s][1], markersize=size[s],
                        markerfacecolor=colours[e] if i == 0 else "white", zorder=3 + i)
                sd = _by_dim(dim[sel], _col(manifolds, "degree_std")[sel])[1]
                if i == 0 and np.isfinite(sd).any() and len(x) > 1:
                    ax.fill_between(x, y - sd, y + sd, color=colours[e], alpha=0.12, linewidth=0, zorder=1)
            if {"exact", "pynnk"} <= set(solvers):
                se, sp = (emb == e) & (solver == "exact"), (emb == e) & (solver == "pynnk")
                xe, ye = _by_dim(dim[se], manifolds["degree_mean"][se])
                xp, yp = _by_dim(dim[sp], manifolds["degree_mean"][sp])
                common, ie, ip = np.intersect1d(xe, xp, return_indices=True)
                dx.plot(common, ye[ie] - yp[ip], color=colours[e], marker="o", markersize=3.5, zorder=3)
            x, t = _by_dim(dim[emb == e], _col(manifolds, "twonn_id")[emb == e])  # same for every solver
            bx.plot(x, t, color=colours[e], marker="o", markersize=3.5, zorder=3)
        k = _unique_number(manifolds, "k")
        if k is not None:
            ax.axhline(k, color="0.5", linestyle=":", linewidth=0.8)
        dx.axhline(0, color="0.5", linewidth=0.6, zorder=1)
        bx.plot(dims, dims, color="0.4", linestyle="--", linewidth=0.8, zorder=2)
        for axis in (ax, dx, bx):
            _dim_axis(axis, dims)
        ax.set_ylabel("mean NNK degree (neighbours)")
        ax.set_ylim(bottom=0)
        ax.set_title("(a) NNK degree", loc="left")
        dx.set_ylabel("degree exact - pynnk (neighbours)")
        dx.set_title("(b) solver difference", loc="left")
        if len(dims) > 1:
            bx.set_yscale("log", base=2)
            bx.yaxis.set_major_locator(FixedLocator(dims))
            bx.yaxis.set_major_formatter(ScalarFormatter())
            bx.yaxis.set_minor_locator(NullLocator())
        bx.set_ylabel("TwoNN estimate (dimensions)")
        bx.set_title("(c) TwoNN intrinsic dimension", loc="left")
        handles = [Line2D([], [], color=colours[e], linewidth=3, label=f"{e} manifold") for e in embeddings]
        handles += [Line2D([], [], color="0.3", linestyle=style[s][0], marker=style[s][1], markersize=size[s],
                           markerfacecolor="0.3" if i == 0 else "white", label=f"{s} solver")
                    for i, s in enumerate(solvers)]
        handles.append(Patch(facecolor="0.6", alpha=0.3, label="$\\pm$1 sd over nodes (exact)"))
        if k is not None:
            handles.append(Line2D([], [], color="0.5", linestyle=":", linewidth=0.8, label=f"k = {k:g} candidates"))
        handles.append(Line2D([], [], color="0.4", linestyle="--", linewidth=0.8, label="TwoNN = d (ideal)"))
        params = [f"{name} = {v:g}" for name in ("n", "D") if (v := _unique_number(manifolds, name)) is not None]
        fig.legend(handles=handles, loc="outside upper center", ncol=4,
                   title=", ".join(["synthetic manifolds"] + params))
        return _save(fig, prefix)


# ---------------------------------------------------------------------------- F6

def f6_solvers(solvers, prefix, model=None):
    """F6: exact minus pynnk mean NNK degree per layer of one model (default: the first in
    the table): channels as points, the aggregate (channel -1) as a diamond (C1).

    solvers: solvers.csv (model, layer, depth, channel, degree_exact, degree_pynnk).
    """
    title = "F6 exact versus pynnk solver"
    if n_rows(solvers) == 0:
        return _placeholder(prefix, title, "solvers.csv has no rows")
    model = _pick_model(solvers, model, "solvers.csv", "solver_model")
    table = select(solvers, _text(solvers["model"]) == model)
    depths = _depths(table)
    diff = table["degree_exact"] - table["degree_pynnk"]
    channel = table["channel"]
    with matplotlib.rc_context(STYLE):
        fig = _new_figure(DOUBLE if len(depths) > 6 else SINGLE, 2.8)
        ax = fig.add_subplot()
        ax.axhline(0, color="0.5", linewidth=0.6, zorder=1)
        rng = np.random.default_rng(0)
        for d in depths:
            sel = (table["depth"] == d) & (channel >= 0)
            jitter = rng.uniform(-0.25, 0.25, int(sel.sum()))
            ax.scatter(d + jitter, diff[sel], s=5, color=OKABE_ITO["blue"], alpha=0.6, linewidths=0, zorder=2)
            agg = (table["depth"] == d) & (channel < 0)
            ax.scatter(np.full(int(agg.sum()), d), diff[agg], marker="D", s=28, color=OKABE_ITO["vermillion"],
                       edgecolors="black", linewidths=0.6, zorder=3)
        _depth_axis(ax, table, depths)
        ax.set_ylabel("degree exact - pynnk (neighbours)")
        ch = _finite(diff[channel >= 0])
        ag = _finite(diff[channel < 0])
        handles = [
            Line2D([], [], marker="o", color=OKABE_ITO["blue"], alpha=0.6, linestyle="none", markersize=3,
                   label="channel" + (f" (mean {ch.mean():.2f})" if ch.size else "")),
            Line2D([], [], marker="D", color=OKABE_ITO["vermillion"], markeredgecolor="black", linestyle="none",
                   markersize=4.5, label="aggregate" + (f" (mean {ag.mean():.2f})" if ag.size else "")),
        ]
        fig.legend(handles=handles, loc="outside upper center", ncol=2, title=f"model {model}; mean over nodes")
        return _save(fig, prefix)


# ---------------------------------------------------------------------------- all

def _read(tables, name, where=None):
    path = tables.get(name)
    return read_table(path, where=where) if path is not None and Path(path).exists() else {}


def _first_model(path):
    """The model of the first data row of a CSV, or None (cheap on long tables)."""
    import csv

    if path is None or not Path(path).exists():
        return None
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        row = next(reader, None)
    return row[header.index("model")] if header and row and "model" in header else None


def figure_paths(figures_dir):
    """Every file of F1-F6 in figures_dir: {figures_dir}/F1.pdf, F1.png, ..., F6.png."""
    return [Path(figures_dir) / f"{name}.{ext}" for name in FIGURES for ext in FIGURE_FORMATS]


def _prefixes(outputs):
    """{figure: output prefix} of the files F1.pdf ... F6.png in outputs; all of them must be there."""
    prefixes, wanted = {}, {f"{name}.{ext}" for name in FIGURES for ext in FIGURE_FORMATS}
    for path in map(Path, outputs):
        if path.name not in wanted:
            raise ValueError(f"{path}: not a figure file; expected one of {sorted(wanted)}")
        prefixes[path.stem] = path.with_suffix("")
        wanted.discard(path.name)
    if wanted:
        raise ValueError(f"no output path given for {sorted(wanted)}")
    return prefixes


def draw_all(tables, outputs, params=FigureParams()):
    """Draw F1-F6 from the tables into the files `outputs` (F1.pdf, F1.png, ..., F6.png).

    tables: {name: CSV path} for the names of cwnnk.products.TABLES; an absent or empty table
    gives a placeholder figure. params: FigureParams (the models F4 and F6 draw; None: the first).
    Returns the paths written.
    """
    unknown = sorted(set(tables) - set(TABLES))
    if unknown:
        raise ValueError(f"unknown table(s) {unknown}; expected names from {list(TABLES)}")
    prefixes = _prefixes(outputs)
    heatmap_model, solver_model = params.heatmap_model, params.solver_model
    # pairwise.csv is long (C^2 rows per layer): read only the model drawn. The chosen
    # models are checked before anything is drawn.
    model = heatmap_model or _first_model(tables.get("pairwise"))
    pairwise = _read(tables, "pairwise", where={"model": model} if model else None)
    if heatmap_model and n_rows(pairwise) == 0 and _first_model(tables.get("pairwise")) is not None:
        models = _first_seen(_text(read_table(tables["pairwise"])["model"]))  # error path only
        raise ValueError(f"figures.heatmap_model={heatmap_model!r} has no rows in pairwise.csv; "
                         f"models there: {models}")
    solvers = _read(tables, "solvers")
    if solver_model and n_rows(solvers):
        _pick_model(solvers, solver_model, "solvers.csv", "solver_model")
    overlap = _read(tables, "overlap")
    levels = level_order(overlap) if n_rows(overlap) else None
    k = _unique_number(overlap, "k") if n_rows(overlap) else None
    for prefix in prefixes.values():
        prefix.parent.mkdir(parents=True, exist_ok=True)
    f1_degree(_read(tables, "channels"), prefixes["F1"], levels=levels, k=k)
    f2_redundancy_depth(overlap, prefixes["F2"], levels=levels)
    f3_generalization(overlap, prefixes["F3"], levels=levels)
    f4_heatmaps(pairwise, prefixes["F4"], model=heatmap_model)
    f5_manifolds(_read(tables, "manifolds"), prefixes["F5"])
    f6_solvers(solvers, prefixes["F6"], model=solver_model)
    return [Path(path) for path in outputs]
