"""Figures F0-F8 of docs/method.md section 5, drawn only from the tables in results/tables/.

Each `f*` function takes tables as read by `cwnnk.tables.read_table` (dicts of numpy
columns) and an output prefix, and writes `{prefix}.pdf` and `{prefix}.png` (atomically).
`draw_all(tables, outputs)` draws all nine from the tables' files into the given F0.pdf ... F8.png.

Conventions: the Okabe-Ito palette (colour-blind safe), with a marker per regularization
level as well so that levels stay apart in grey print; widths of 3.5 in (one paper column)
or 7 in (two columns), no text under 7 pt; figures are built on `matplotlib.figure.Figure`
(no pyplot, no global backend or rc change) and saved without dates or software tags, so
the same tables give byte-identical files. Empty or absent tables give a placeholder figure
that says what is missing: a figure never fails because a sweep has one model, one seed,
one level or one layer.
"""

import math
import re
import textwrap
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle
from matplotlib.ticker import FixedLocator, MaxNLocator, NullLocator, ScalarFormatter

from cwnnk.atomic import atomic_path
from cwnnk.generalization import correlate
from cwnnk.params import FigureParams
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
    "image.cmap": "viridis", "svg.hashsalt": "cwnnk", "hatch.linewidth": 0.5,
}
LEVEL_TITLE = "regularization"
DEAD_COLOUR = "0.45"  # dead channels: grey, outside the palette
DEAD_FILL, DEAD_HATCH = "0.88", "0.55"
DEAD_BAND = 2.0  # F1: height, in neighbours, of the band under 0 that holds the dead-channel counts


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


# The factors a regularization label stands for: (column, how a value reads). A factor the sweep
# gains is decoded once it is added here (and copied onto the table rows, cwnnk.tables).
AUGMENT_NAMES = {"none": "no augmentation", "shift": "shift augmentation",
                 "shift_flip": "shift + flip augmentation"}
FACTORS = (
    ("dropout", lambda v: f"dropout {float(v):g}"),
    ("weight_decay", lambda v: f"weight decay {float(v):g}"),
    ("augment", lambda v: AUGMENT_NAMES.get(str(v), f"augmentation {v}")),
    ("label_noise", lambda v: f"label noise {float(v):g}"),
    ("n_train", lambda v: "all training images" if v == "all" else f"{float(v):g} training images"),
    ("width", lambda v: f"width x{float(v):g}"),
)
# What a factor the label leaves out stands at (cwnnk.config names a factor only when it is used).
FACTOR_DEFAULTS = {"label_noise": 0.0, "n_train": "all", "width": 1.0}
# The label format of cwnnk.config.expand_models, for tables that lack the factor columns.
_LABEL = re.compile(r"^d(?P<dropout>\S+) wd(?P<weight_decay>\S+) (?P<augment>\S+)"
                    r"(?: ln(?P<label_noise>\S+))?(?: n(?P<n_train>\d+))?(?: w(?P<width>\S+))?$")


def _factor_values(table, label):
    """{factor: value} of a trained level (None for an external one), from the columns or the label."""
    labels = _text(_col(table, "label", ""))
    i = int(np.flatnonzero(labels == label)[0])
    if str(_col(table, "kind", "trained")[i]) == "external":
        return None
    parsed = _LABEL.match(label)
    values = {}
    for name, _ in FACTORS:
        value = table[name][i] if name in table else None
        if value is None or (isinstance(value, float) and math.isnan(value)) or str(value) == "":
            value = parsed[name] if parsed and name in parsed.groupdict() else None
        if value is not None:
            values[name] = value
    return values


def _same(a, b):
    try:
        return float(a) == float(b)
    except (TypeError, ValueError):
        return str(a) == str(b)


def level_names(table, levels):
    """Readable names of the regularization levels: ({label: name}, what every level shares).

    A name spells out the factors that differ between the trained levels ("dropout 0.2");
    the factors they share ("weight decay 0, no augmentation") are returned once, for the
    legend title (None when no level is trained here: imported models have no sweep factors). An
    imported model is named by its label.
    """
    factors = {lev: _factor_values(table, lev) for lev in levels}
    trained = [f for f in factors.values() if f is not None]
    for name, default in FACTOR_DEFAULTS.items():  # a factor some level names: the others at its default
        if any(name in f for f in trained):
            for f in trained:
                f.setdefault(name, default)
        if all(_same(f.get(name, default), default) for f in trained):  # unused by the sweep: not named
            for f in trained:
                f.pop(name, None)
    shared = {name for name, _ in FACTORS
              if trained and all(name in f for f in trained) and len({str(f[name]) for f in trained}) == 1}
    if len(trained) == 1:
        shared = set()  # a single level: its name says everything
    fmt = dict(FACTORS)
    names = {}
    for lev, f in factors.items():
        if f is None:  # an imported model: its own name (the label of the config's pretrained model is generic)
            models = _first_seen(_text(table["model"])[_text(_col(table, "label", "")) == lev]) if "model" in table \
                else [lev]
            names[lev] = f"{', '.join(models[:2])}{', ...' if len(models) > 2 else ''} (imported)"
        else:
            parts = [fmt[name](f[name]) for name, _ in FACTORS if name in f and name not in shared]
            names[lev] = ", ".join(parts) or lev
    common = ", ".join(fmt[name](trained[0][name]) for name, _ in FACTORS if name in shared)
    return names, (common if trained else None)


def describe_model(model, table=None, sep=" "):
    """"model NAME (dropout 0.2, weight decay 0, no augmentation, seed 1)" from a table with the
    model's label and seed (channels.csv, overlap.csv); just "model NAME" without one."""
    if table is None or not n_rows(table) or "label" not in table or "model" not in table:
        return f"model {model}"
    rows = select(table, _text(table["model"]) == model)
    if not n_rows(rows):
        return f"model {model}"
    label = str(rows["label"][0])
    name = level_names(select(rows, np.arange(n_rows(rows)) == 0), [label])[0][label]
    if name == f"{model} (imported)":  # an imported model's level name is its own name
        return f"model {model} (imported)"
    seed = _col(rows, "seed")[0]
    if isinstance(seed, float) and math.isfinite(seed):
        name += f", seed {seed:g}"
    return f"model {model}{sep}({name})"


def _legend_columns(handles, width, most=3):
    """As many legend columns as the longest entry lets fit across a figure `width` inches wide."""
    longest = max((len(h.get_label()) for h in handles), default=1)
    return max(1, min(len(handles), most, int(width / (0.05 * longest + 0.4))))


def _level_title(common, suffix=""):
    """The legend title of the levels: the regularization settings, with the factors every model shares; or,
    where no model was trained here (common is None), the imported models."""
    title = "imported models" if common is None else LEVEL_TITLE + (f"; all models: {common}" if common else "")
    return f"{title}\n({suffix})" if suffix else title  # a line of its own: one line ran past a figure's edges


def _n_models(table, label, lev):
    n = len(set(_text(table["model"])[label == lev].tolist())) if "model" in table else 0
    return f"{n} model{'s' if n != 1 else ''}"


def _depth_axis(ax, table, depths):
    """The layers on the x axis, by name (table["depth"] holds each layer's position, layer_positions)."""
    ax.xaxis.set_major_locator(FixedLocator(depths))
    ax.xaxis.set_minor_locator(NullLocator())
    labels = [str(d) for d in depths]
    if "layer" in table:
        depth = table["depth"]
        labels = [" / ".join(_first_seen(_text(table["layer"][depth == d]))) for d in depths]
    long = len(depths) > 6 or max(map(len, labels), default=0) > 8
    ax.set_xticklabels(labels, rotation=90 if long else 0, fontsize=6 if long else 7)
    if len(depths):
        ax.set_xlim(min(depths) - 0.6, max(depths) + 0.6)
    ax.set_xlabel("layer")


def layer_positions(table):
    """layer -> its x position in F1, F2 and F6: models grouped by their sequence of analysed layers (one
    architecture), each group's layers in depth order, the groups side by side; so that models of different
    depth never share an index axis, and models with the same layers line up."""
    if not n_rows(table) or "layer" not in table:
        return {}
    model, layer = _text(table["model"]), _text(table["layer"])
    order = np.lexsort((table["depth"],))
    sequences = {}
    for i in order:
        sequences.setdefault(model[i], []).append(layer[i])
    positions = {}
    for seq in dict.fromkeys(tuple(dict.fromkeys(v)) for v in sequences.values()):
        for name in seq:
            positions.setdefault(name, len(positions))
    return positions


def _with_positions(table, positions):
    """A copy of `table` whose depth column holds each row's layer position."""
    if not n_rows(table) or "layer" not in table:
        return table
    return dict(table, depth=np.array([positions.get(name, -1) for name in _text(table["layer"])], dtype=float))


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


# ---------------------------------------------------------------------------- F0

def f0_answer(overlap, prefix, twins=None, most=16):
    """F0, the answer at a glance: per model (one panel each, at most `most`), the headline redundancy of
    every analysed layer (named on the axis) with its 95% interval, the chance level (grey band up to it)
    and the untrained twin's value (dashed). overlap: overlap.csv rows of the final models (no saved
    epochs); twins: the untrained twins' rows."""
    title = "F0 channel redundancy per layer"
    if n_rows(overlap) == 0:
        return _placeholder(prefix, title, "overlap.csv has no rows: no layer was analysed")
    models = _first_seen(_text(overlap["model"]))
    shown = models[:most]
    ncols = min(4, len(shown))
    nrows = math.ceil(len(shown) / ncols)
    layers = {m: _first_seen(_text(overlap["layer"][_text(overlap["model"]) == m])) for m in shown}
    widest = max(len(v) for v in layers.values())
    width = DOUBLE if ncols > 1 or widest > 6 else SINGLE
    height = 1.0 + nrows * (1.6 + 0.05 * max(len(n) for v in layers.values() for n in v))
    twin_at = {}
    if n_rows(twins or {}):
        for m, layer, value in zip(_text(twins["model"]), _text(twins["layer"]), _col(twins, "redundancy")):
            twin_at[m, layer] = value
    with matplotlib.rc_context(STYLE):
        fig = _new_figure(width, height)
        axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False, sharey=True)).ravel()
        for ax, model in zip(axes, shown):
            at = _text(overlap["model"]) == model
            names = layers[model]
            rows = {name: np.flatnonzero(at & (_text(overlap["layer"]) == name))[0] for name in names}
            x = np.arange(len(names))
            get = lambda column: np.array([float(_col(overlap, column)[rows[n]]) for n in names])  # noqa: E731
            value, lo, hi, chance = (get(c) for c in ("redundancy", "redundancy_ci_lo", "redundancy_ci_hi",
                                                      "redundancy_chance"))
            ax.fill_between(x, 0, chance, step="mid", color="0.8", linewidth=0, zorder=1)
            ok = np.isfinite(value)
            ax.errorbar(x[ok], value[ok], yerr=[value[ok] - lo[ok], hi[ok] - value[ok]], color=PALETTE[0],
                        marker="o", markersize=3, elinewidth=0.8, capsize=1.5, linewidth=1.0, zorder=3)
            twin_name = _text(_col(overlap, "twin", ""))[rows[names[0]]] if "twin" in overlap else ""
            tv = np.array([float(twin_at.get((twin_name, n), np.nan)) for n in names])
            if np.isfinite(tv).any():
                ax.plot(x, tv, zorder=2, **TWIN_LINE)
            ax.set_xticks(x)
            ax.set_xticklabels(names, rotation=90 if widest > 4 or max(map(len, names)) > 6 else 0, fontsize=6.5)
            ax.set_xlim(-0.6, len(names) - 0.4)
            ax.set_title(textwrap.fill(model, 28), loc="left", fontsize=6.5)
        top = np.nanmax([_finite(_col(overlap, c)).max(initial=0) for c in ("redundancy_ci_hi", "redundancy")]
                        + [_finite(np.array(list(twin_at.values()), dtype=float)).max(initial=0)])
        axes[0].set_ylim(0, max(top, 0.05) * 1.05)  # shared: every panel on one scale
        for ax in axes[len(shown):]:
            ax.set_axis_off()
        for ax in axes[::ncols]:
            ax.set_ylabel("redundancy (mean pairwise $J$)")
        handles = [Line2D([], [], color=PALETTE[0], marker="o", markersize=3, label="headline, 95% interval"),
                   Patch(facecolor="0.8", label="chance level")]
        if twin_at:
            handles.append(Line2D([], [], **TWIN_LINE, label="untrained twin"))
        more = f"; first {most} of {len(models)} models" if len(models) > most else ""
        fig.legend(handles=handles, loc="outside upper center", ncol=len(handles), title=f"{title}{more}")
        return _save(fig, prefix)


# ---------------------------------------------------------------------------- F1

def dead_channels(channels):
    """Bool per row of channels.csv: the channel is dead (an all-zero map on every sample).

    The `dead` column, or zero_map_fraction == 1 in tables written before it existed.
    """
    if "dead" in channels:
        return np.asarray(channels["dead"], dtype=np.float64) == 1
    return np.asarray(_col(channels, "zero_map_fraction", 0.0), dtype=np.float64) >= 1.0


def f1_data(channels, levels):
    """What F1 draws: {(level, depth): dict(live=degrees of the live channels, dead=count of
    dead channels, agg=aggregate degree per model)}, for the cells that hold a channel."""
    label, depth, model = _text(channels["label"]), channels["depth"], _text(channels["model"])
    dead = dead_channels(channels)
    cells = {}
    for lev in levels:
        for d in _depths(channels):
            rows = (label == lev) & (depth == d)
            if not rows.any():
                continue
            # the aggregate degree: one value per model (repeated over its channels)
            agg = [_finite(channels["degree_agg_mean"][rows & (model == m)]) for m in _first_seen(model[rows])]
            cells[lev, d] = dict(live=_finite(channels["degree_mean"][rows & ~dead]), dead=int((rows & dead).sum()),
                                 agg=np.array([a[0] for a in agg if a.size]))
    return cells


def f1_degree(channels, prefix, levels=None, k=None):
    """F1: per-channel NNK degree per layer (boxes, points when few) and the aggregate degree
    (diamond: mean over seeds, bar: min-max), one colour per regularization level (C1, C2).
    Dead channels (all-zero maps) are left out of the boxes and drawn as a grey count at 0.

    channels: channels.csv (model, label, layer, depth, channel, degree_mean, degree_agg_mean,
    dead or zero_map_fraction). levels: optional label order fixing the colours (e.g.
    level_order(overlap)); k: candidate count, drawn as the upper bound of the degree.
    """
    title = "F1 NNK degree per layer"
    if n_rows(channels) == 0:
        return _placeholder(prefix, title, "channels.csv has no rows")
    levels, styles = _levels_for(channels, levels)
    names, common = level_names(channels, levels)
    label = _text(channels["label"])
    depths = _depths(channels)
    cells = f1_data(channels, levels)
    n_dead = sum(cell["dead"] for cell in cells.values())
    width = DOUBLE if len(depths) * len(levels) > 8 else SINGLE
    with matplotlib.rc_context(STYLE):
        fig = _new_figure(width, 3.6 if width == SINGLE else 3.2)
        ax = fig.add_subplot()
        slot = 0.8 / len(levels)
        for j, lev in enumerate(levels):
            colour, marker = styles[lev]
            for d in depths:
                if (lev, d) not in cells:
                    continue
                pos = d - 0.4 + slot * (j + 0.5)
                values, dead, agg = cells[lev, d]["live"], cells[lev, d]["dead"], cells[lev, d]["agg"]
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
                if dead:  # below the degree axis, in the band under 0
                    ax.text(pos, -DEAD_BAND / 2, f"\u00d7{dead}", ha="center", va="center", fontsize=6,
                            color=DEAD_COLOUR, zorder=4)
                if agg.size:
                    ax.errorbar([pos], [agg.mean()], yerr=[[agg.mean() - agg.min()], [agg.max() - agg.mean()]],
                                fmt="D", color=colour, markeredgecolor="black", markeredgewidth=0.6,
                                markersize=4.5, ecolor="black", elinewidth=0.6, capsize=1.5, zorder=4)
        if k is not None:
            ax.axhline(k, color="0.5", linestyle=":", linewidth=0.8, zorder=1)
        _depth_axis(ax, channels, depths)
        ax.set_ylabel("NNK degree (neighbours)")
        if n_dead:
            ax.set_ylim(bottom=-DEAD_BAND)
            ax.axhspan(-DEAD_BAND, 0, color=DEAD_FILL, linewidth=0, zorder=0)
            top = ax.get_ylim()[1]
            ax.set_yticks([t for t in MaxNLocator(steps=[1, 2, 5, 10]).tick_values(0, top) if 0 <= t <= top])
        else:
            ax.set_ylim(bottom=0)
        n_channels = n_rows(channels)
        n_models = len(set(_text(channels["model"]).tolist()))
        ax.set_title(f"{n_models} models, {n_channels} channels; {n_dead} dead (all-zero maps), not in the boxes",
                     fontsize=7)
        handles = [Patch(facecolor=to_rgba(styles[lev][0], 0.35), edgecolor=styles[lev][0],
                         label=f"{names[lev]} ({_n_models(channels, label, lev)})") for lev in levels]
        fig.legend(handles=handles, loc="outside upper center", ncol=_legend_columns(handles, width),
                   title=_level_title(common))
        glyphs = [Patch(facecolor="white", edgecolor="0.3",
                        label="per-channel degree of live channels (box: quartiles)"),
                  Line2D([], [], marker="D", color="0.6", markeredgecolor="black", linestyle="none",
                         markersize=4.5, label="aggregate degree (mean, min-max over seeds)")]
        if n_dead:
            glyphs.append(Patch(facecolor=DEAD_FILL, label="\u00d7n: n dead channels, left out (degree 0)"))
        if k is not None:
            glyphs.append(Line2D([], [], color="0.5", linestyle=":", label=f"k = {k:g} candidates"))
        fig.legend(handles=glyphs, loc="outside lower center", ncol=1 if width == SINGLE else 2)
        return _save(fig, prefix)


# ---------------------------------------------------------------------------- F2

F2_PANELS = (
    ("redundancy", "redundancy_chance", "mean pairwise overlap $J$ (0-1)", "(a) redundancy (width-robust headline)"),
    ("rho_hat_mean", "rho_hat_chance_mean", "$\\hat\\rho$ (0-1)",
     "(b) union-based $\\hat\\rho$ (saturates with width)"),
)
TWIN_COLOUR = "0.3"
TWIN_LINE = dict(color=TWIN_COLOUR, linestyle=(0, (4, 2)), linewidth=2.0)


def _by_level_depth(table, column, lev, depths):
    """Per depth: mean, min and max of `column` over the level's models (NaN where none)."""
    label, depth = _text(table["label"]), table["depth"]
    out = np.full((3, len(depths)), np.nan)
    for i, d in enumerate(depths):
        values = _finite(_col(table, column)[(label == lev) & (depth == d)])
        if values.size:
            out[:, i] = values.mean(), values.min(), values.max()
    return out


def f2_redundancy_depth(overlap, prefix, levels=None, twins=None):
    """F2: the headline redundancy and the union-based rho_hat (layer means over nodes) versus
    depth; per level the mean over seeds (line) and the min-max over seeds (band); the chance
    level of every model in grey (dotted mean, hatched min-max), apart from the levels' colours
    (C2, C3); with twins, the untrained twins' headline as a dark dashed line (mean) and band
    (min-max): what architecture and data give without training.

    overlap: overlap.csv rows of the analysed models (label, depth, redundancy, rho_hat_mean and
    their chance columns); twins: overlap.csv rows of the untrained twins, or None.
    """
    title = "F2 redundancy versus depth"
    if n_rows(overlap) == 0:
        return _placeholder(prefix, title, "overlap.csv has no rows")
    levels, styles = _levels_for(overlap, levels)
    label = _text(overlap["label"])
    depths = _depths(overlap)
    models = _text(overlap["model"])
    with matplotlib.rc_context(STYLE):
        fig = _new_figure(DOUBLE, 3.2)
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
            if column == "redundancy" and n_rows(twins or {}):
                _twins(ax, twins, depths)
            _chance(ax, overlap, chance, depths)
            _depth_axis(ax, overlap, depths)
            ax.set_ylabel(ylabel)
            ax.set_ylim(bottom=0)
            ax.set_title(panel, loc="left")
        names, common = level_names(overlap, levels)
        handles = [Line2D([], [], color=styles[lev][0], marker=styles[lev][1], markersize=3.5,
                          label=f"{names[lev]} ({_n_models(overlap, label, lev)})") for lev in levels]
        if any(len(set(models[label == lev].tolist())) > 1 for lev in levels):
            handles.append(Patch(facecolor="0.6", alpha=0.35, label="min-max over seeds"))
        if n_rows(twins or {}):
            handles.append(Line2D([], [], **TWIN_LINE,
                                  label=f"untrained twins ({len(set(_text(twins['model']).tolist()))}), "
                                        "mean and min-max"))
        handles.append(_chance_handle())
        fig.legend(handles=handles, loc="outside upper center", ncol=_legend_columns(handles, DOUBLE),
                   title=_level_title(common))
        return _save(fig, prefix)


def _twins(ax, twins, depths):
    """The untrained twins' headline per depth: dashed mean over twins, light min-max band."""
    out = _depth_stats(twins, "redundancy", depths)
    ok = np.isfinite(out[0])
    x = np.asarray(depths, dtype=np.float64)[ok]
    ax.plot(x, out[0, ok], zorder=4, **TWIN_LINE)
    ax.fill_between(x, out[1, ok], out[2, ok], color=TWIN_COLOUR, alpha=0.12, linewidth=0, zorder=1)


CHANCE_COLOUR = "0.4"


def _depth_stats(table, column, depths):
    """(3, depths): mean, min and max of `column` over every row of the table at each depth (NaN where none)."""
    out = np.full((3, len(depths)), np.nan)
    for i, d in enumerate(depths):
        values = _finite(_col(table, column)[table["depth"] == d])
        if values.size:
            out[:, i] = values.mean(), values.min(), values.max()
    return out


def _chance(ax, table, column, depths):
    """The chance level of every model as one grey dotted line (mean over models) in a hatched
    band (min-max over models), labelled at its right end: apart from the coloured levels."""
    out = _depth_stats(table, column, depths)
    ok = np.isfinite(out[0])
    if not ok.any():
        return
    x = np.asarray(depths, dtype=np.float64)[ok]
    mean, lo, hi = out[:, ok]
    if x.size == 1:  # one layer: a short segment
        x, mean, lo, hi = (np.array([x[0] - 0.25, x[0] + 0.25]), *(np.repeat(v, 2) for v in (mean, lo, hi)))
    ax.fill_between(x, lo, hi, facecolor="none", edgecolor=CHANCE_COLOUR, hatch="/////", linewidth=0, zorder=1)
    ax.plot(x, mean, color=CHANCE_COLOUR, linestyle=":", linewidth=1.0, zorder=1)
    ax.annotate(f"chance ({lo.min():.2g}-{hi.max():.2g})", (x[-1], hi[-1]), xytext=(0, 3),
                textcoords="offset points", ha="right", va="bottom", fontsize=6.5, color=CHANCE_COLOUR)


def _chance_handle():
    return Patch(facecolor="none", edgecolor=CHANCE_COLOUR, hatch="/////", linewidth=0,
                 label="chance level, every model (dotted: mean; hatched: min-max)")


# ---------------------------------------------------------------------------- F3

F3_Y = (("rho_hat_mean", "last-layer union-based $\\hat\\rho$"),
        ("pairwise_overlap_mean", "last-layer redundancy (mean pairwise $J$)"),
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
    accuracy = np.isfinite(np.asarray(_col(last, "test_acc"), dtype=np.float64))
    if not accuracy.any():
        from cwnnk.generalization import accuracy_reason

        why = accuracy_reason(last) or "overlap.csv has no test accuracy"
        return _placeholder(prefix, title, textwrap.fill(f"nothing to correlate: {why}", 70), width=DOUBLE), {}
    if accuracy.sum() < 3:
        return _placeholder(prefix, title, f"{int(accuracy.sum())} model(s) with test accuracy: a correlation "
                                           "needs 3 or more", width=DOUBLE), {}
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

def channel_order(matrix, dead):
    """The channels in the order of an average-linkage clustering of their overlap (distance 1 - J of the
    symmetrised matrix; scipy's optimal leaf ordering), live channels first, dead ones last: channels that
    share their neighbourhoods sit next to each other, so that redundant groups show as blocks."""
    from scipy.cluster.hierarchy import leaves_list, linkage, optimal_leaf_ordering
    from scipy.spatial.distance import squareform

    live = np.flatnonzero(~dead)
    if live.size < 3:
        return np.r_[live, np.flatnonzero(dead)]
    sub = matrix[np.ix_(live, live)]
    sub = np.nan_to_num((sub + sub.T) / 2, nan=0.0)
    distance = np.clip(1 - sub, 0, None)
    np.fill_diagonal(distance, 0)
    condensed = squareform(distance, checks=False)
    tree = optimal_leaf_ordering(linkage(condensed, "average"), condensed)
    return np.r_[live[leaves_list(tree)], np.flatnonzero(dead)]


def f4_data(pairwise, model, channels=None):
    """What F4 draws for one model: per analysed layer, in depth order, dict(depth, layer,
    matrix (C, C), dead (C,) bool, mean: mean J over the pairs a != b of live channels,
    n_live_pairs, order: the channels in clustered order, channel_order). Dead channels come
    from channels.csv (none without it)."""
    table = select(pairwise, _text(pairwise["model"]) == model)
    if channels is not None and n_rows(channels):
        channels = select(channels, _text(channels["model"]) == model)
    panels = []
    for d in _depths(table):
        sel = table["depth"] == d
        a = table["channel_a"][sel].astype(np.int64)
        b = table["channel_b"][sel].astype(np.int64)
        C = int(max(a.max(), b.max())) + 1
        matrix = np.full((C, C), np.nan)
        matrix[a, b] = table["overlap"][sel]
        dead = np.zeros(C, dtype=bool)
        if channels is not None and n_rows(channels):
            rows = channels["depth"] == d
            index = channels["channel"][rows].astype(np.int64)
            dead[index[(index < C) & dead_channels(channels)[rows]]] = True
        live_pairs = np.outer(~dead, ~dead) & ~np.eye(C, dtype=bool)
        values = _finite(matrix[live_pairs])
        layer = _first_seen(_text(table["layer"][sel])) if "layer" in table else ["?"]
        panels.append(dict(depth=d, layer=layer[0], matrix=matrix, dead=dead,
                           mean=values.mean() if values.size else np.nan, n_live_pairs=int(live_pairs.sum()) // 2,
                           order=channel_order(matrix, dead)))
    return panels


def f4_heatmaps(pairwise, prefix, model=None, channels=None):
    """F4: the C x C pairwise channel-overlap matrix of every analysed layer of one model
    (default: the first in the table), one panel per layer, one colour scale 0-1 (C2, C3), channels in
    the order of a clustering of their overlap (channel_order), so that redundant groups show as blocks.
    Rows and columns of dead channels (from channels.csv) are grey and hatched, and left out
    of the mean J in the title.

    pairwise: pairwise.csv in long form (model, layer, depth, channel_a, channel_b, overlap);
    channels: channels.csv (optional: dead or zero_map_fraction per channel).
    """
    title = "F4 pairwise channel overlap"
    if n_rows(pairwise) == 0:
        return _placeholder(prefix, title, "pairwise.csv has no rows")
    model = _pick_model(pairwise, model, "pairwise.csv", "heatmap_model")
    panels = f4_data(pairwise, model, channels)
    n = len(panels)
    ncols = min(n, 4)
    nrows = math.ceil(n / ncols)
    panel = (DOUBLE - 0.7) / ncols
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad=DEAD_FILL)
    any_dead = any(p["dead"].any() for p in panels)
    with matplotlib.rc_context(STYLE):
        fig = _new_figure(DOUBLE if ncols > 1 else SINGLE, nrows * (panel + 0.65) + 0.45)
        axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
        image = None
        for i, (ax, p) in enumerate(zip(axes, panels)):
            order = p["order"]
            matrix, dead = p["matrix"][np.ix_(order, order)], p["dead"][order]
            C = matrix.shape[0]
            matrix[dead, :] = np.nan
            matrix[:, dead] = np.nan
            image = ax.imshow(matrix, vmin=0, vmax=1, cmap=cmap, origin="upper",
                              interpolation="nearest" if C <= 96 else "antialiased")
            if C <= 96:
                for c in np.flatnonzero(dead):
                    for xy, w, h in (((-0.5, c - 0.5), C, 1), ((c - 0.5, -0.5), 1, C)):
                        ax.add_patch(Rectangle(xy, w, h, facecolor="none", edgecolor=DEAD_HATCH, hatch="////",
                                               linewidth=0, zorder=2))
            n_dead = int(dead.sum())
            counts = f"C = {C}, {n_dead} dead" if any_dead else f"C = {C}"
            ax.set_title(f"{p['layer']}\n{counts}\nmean J = {p['mean']:.2f}", fontsize=7)
            for axis in (ax.xaxis, ax.yaxis):
                axis.set_major_locator(MaxNLocator(nbins=4, integer=True))
            if i % ncols == 0:
                ax.set_ylabel("channel (clustered order)")
            if i >= n - ncols:
                ax.set_xlabel("channel (clustered order)")
        for ax in axes[n:]:
            ax.set_axis_off()
        fig.colorbar(image, ax=axes[:n].tolist(), label="pairwise overlap J (0-1)", shrink=0.9,
                     aspect=25 if nrows > 1 else 15)
        live = "live " if any_dead else ""
        fig.suptitle(f"{describe_model(model, channels)}\nmean J: over pairs a \u2260 b of {live}channels")
        if any_dead:
            fig.legend(handles=[Patch(facecolor=DEAD_FILL, edgecolor=DEAD_HATCH, hatch="////", linewidth=0,
                                      label="dead channel (all-zero maps on every sample): no neighbours; "
                                            "left out of mean J")],
                       loc="outside lower center")
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
    # The solvers differ by well under one neighbour: the first solver is drawn small and
    # filled, the others large and open on top, so that each stays visible where they agree.
    size = {s: 2.5 if i == 0 else 5.5 for i, s in enumerate(solvers)}
    with matplotlib.rc_context(STYLE):
        fig = _new_figure(DOUBLE, 3.1)
        ax, dx, bx = fig.subplots(1, 3)
        for e in embeddings:
            for i, s in enumerate(solvers):
                sel = (emb == e) & (solver == s)
                x, y = _by_dim(dim[sel], manifolds["degree_mean"][sel])
                ax.plot(x, y, color=colours[e], linestyle=style[s][0], marker=style[s][1], markersize=size[s],
                        markerfacecolor=colours[e] if i == 0 else "none", linewidth=1.2 if i == 0 else 0.9,
                        zorder=3 + i)
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
        # One legend per panel for what only that panel draws; the colours apply to all three.
        glyphs = [Line2D([], [], color="0.3", linestyle=style[s][0], marker=style[s][1], markersize=size[s],
                         markerfacecolor="0.3" if i == 0 else "none", label=f"{s} solver")
                  for i, s in enumerate(solvers)]
        glyphs.append(Patch(facecolor="0.6", alpha=0.3, label="$\\pm$1 sd over nodes"))
        if k is not None:
            glyphs.append(Line2D([], [], color="0.5", linestyle=":", linewidth=0.8, label=f"k = {k:g}"))
        ax.legend(handles=glyphs, loc="upper left", bbox_to_anchor=(0, 0.9), fontsize=6.5, handlelength=2.2)
        if {"exact", "pynnk"} <= set(solvers):
            dx.legend(handles=[Line2D([], [], color="0.5", linewidth=0.6, label="0: the solvers agree")],
                      loc="upper right", fontsize=6.5)
        bx.legend(handles=[Line2D([], [], color="0.4", linestyle="--", linewidth=0.8, label="TwoNN = d (ideal)")],
                  loc="upper left", fontsize=6.5)
        handles = [Line2D([], [], color=colours[e], linewidth=3, label=f"{e} manifold") for e in embeddings]
        params = [f"{name} = {v:g}" for name in ("n", "D") if (v := _unique_number(manifolds, name)) is not None]
        fig.legend(handles=handles, loc="outside upper center", ncol=len(handles),
                   title=", ".join(["synthetic manifolds of known dimension d (colour, every panel)"] + params))
        return _save(fig, prefix)


# ---------------------------------------------------------------------------- F6

def f6_solvers(solvers, prefix, model=None, channels=None):
    """F6: exact minus pynnk mean NNK degree per layer of one model (default: the first in
    the table): channels as points, the aggregate (channel -1) as a diamond (C1).

    solvers: solvers.csv (model, layer, depth, channel, degree_exact, degree_pynnk); channels:
    channels.csv (optional: decodes the model's settings in the title).
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
        fig.legend(handles=handles, loc="outside upper center", ncol=2,
                   title=f"{describe_model(model, channels, sep=chr(10))}\nmean over nodes, exact minus pynnk")
        return _save(fig, prefix)


# ---------------------------------------------------------------------------- F7

F7_PANELS = (
    ("test_error", "test error (%)", "(a) test error"),
    ("loo_error", "last-layer CW-NNK LOO error (%)", "(b) last-layer LOO error"),
    ("rho_hat", "last-layer union-based $\\hat\\rho$", "(c) last-layer $\\hat\\rho$"),
)
SEED_LINES = ("-", "--", ":", "-.")
LOO_PICK = dict(marker="o", markersize=8, markerfacecolor="none", markeredgewidth=1.0, linestyle="none")
VAL_PICK = dict(marker="s", markersize=10.5, markerfacecolor="none", markeredgewidth=0.8, linestyle="none")
BEST_TEST = dict(marker="x", markersize=5, color="black", markeredgewidth=0.9, linestyle="none")


def _epoch_at(table, run, column):
    """The number in `column` of early_stopping.csv's row for `run`, or None."""
    if not n_rows(table) or "run" not in table or column not in table:
        return None
    values = _finite(table[column][_text(table["run"]) == run])
    return float(values[0]) if values.size else None


def f7_data(overlap, early_stopping=None):
    """What F7 draws: {run: dict(label, seed, epoch, test_error, loo_error, rho_hat,
    loo_epoch, val_epoch, best_test_epoch)} for each training run with saved epochs (its snapshot rows
    and its final model, at the last analysed layer, is_last == 1), epochs ascending.
    test_error = 1 - test_acc and loo_error = loo_error_layer, both as fractions.

    loo_epoch, val_epoch (the validation split's pick; None without one) and best_test_epoch come
    from early_stopping.csv when it has the run, else from cwnnk.generalization.early_stopping_rows
    on the same rows (None when not defined).
    """
    from cwnnk.generalization import early_stopping_rows

    if not n_rows(overlap) or not {"is_last", "run", "epoch"} <= set(overlap):
        return {}
    kind = _text(_col(overlap, "kind", "trained"))
    keep = (overlap["is_last"] == 1) & np.isin(kind, ("trained", "snapshot"))
    last = select(overlap, keep)
    run, kind = _text(last["run"]), kind[keep]
    epoch = np.asarray(last["epoch"], dtype=np.float64)
    computed = {row["run"]: row for row in early_stopping_rows(last)} if n_rows(last) else {}
    out = {}
    for name in _first_seen(run):
        m = (run == name) & np.isfinite(epoch)
        if not (m & (kind == "snapshot")).any() or len(np.unique(epoch[m])) < 2:
            continue  # no saved epoch: nothing over epochs
        order = np.flatnonzero(m)[np.argsort(epoch[m], kind="stable")]
        series = dict(label=str(last["label"][order[0]]), seed=_col(last, "seed")[order[0]], epoch=epoch[order],
                      test_error=1 - np.asarray(_col(last, "test_acc")[order], dtype=np.float64),
                      loo_error=np.asarray(_col(last, "loo_error_layer")[order], dtype=np.float64),
                      rho_hat=np.asarray(_col(last, "rho_hat_mean")[order], dtype=np.float64))
        for key in ("loo_epoch", "val_epoch", "best_test_epoch"):
            value = _epoch_at(early_stopping if early_stopping is not None else {}, name, key)
            if value is None and name in computed and computed[name].get(key) is not None:
                value = float(computed[name][key])
            series[key] = value if value is not None and math.isfinite(value) else None
        out[name] = series
    return out


def f7_epochs(overlap, prefix, early_stopping=None, levels=None):
    """F7: over the saved epochs of each training run, the test error, the last layer's
    CW-NNK LOO error and its redundancy rho_hat, one line per run (colour and marker: the
    regularization level; line style: the seed); a ring marks the epoch the LOO criterion
    picks (early_stopping.csv loo_epoch), a square the epoch the held-out validation split picks
    with the same rule (val_epoch, where the runs have one), a cross the epoch of best test accuracy.

    overlap: overlap.csv (run, kind, label, seed, epoch, is_last, test_acc, loo_error_layer,
    rho_hat_mean); early_stopping: early_stopping.csv (optional). Returns (paths, f7_data).
    """
    title = "F7 test error, LOO error and redundancy over epochs"
    runs = f7_data(overlap, early_stopping)
    if not runs:
        why = "overlap.csv has no rows" if not n_rows(overlap) else \
            "no training run with saved epochs (training.save_epochs) in overlap.csv"
        return _placeholder(prefix, title, why, width=DOUBLE), {}
    table = select(overlap, np.isin(_text(overlap["run"]), list(runs)))
    levels, styles = _levels_for(table, levels)
    names, common = level_names(table, levels)
    seeds = sorted({float(r["seed"]) for r in runs.values() if np.isfinite(float(r["seed"]))})
    line = {s: SEED_LINES[i % len(SEED_LINES)] for i, s in enumerate(seeds)}
    epochs = sorted(set(np.concatenate([r["epoch"] for r in runs.values()]).tolist()))
    step = min(np.diff(epochs)) if len(epochs) > 1 else 1.0
    # Runs are set a little apart in epoch (over 0.16 of the smallest epoch step in all) so that
    # coinciding points stay visible; the axis ticks stay at the true epochs.
    dodge = {name: (i - (len(runs) - 1) / 2) * 0.16 * step / max(1, len(runs) - 1) for i, name in enumerate(runs)}
    marks = {"loo": False, "val": False, "best": False}
    with matplotlib.rc_context(STYLE):
        fig = _new_figure(DOUBLE, 3.6)
        axes = fig.subplots(1, len(F7_PANELS))
        for ax, (key, ylabel, panel) in zip(axes, F7_PANELS):
            scale = 1.0 if key == "rho_hat" else 100.0
            for name, r in runs.items():
                colour, marker = styles[r["label"]]
                x, y = r["epoch"] + dodge[name], scale * r[key]
                ax.plot(x, y, color=colour, marker=marker, markersize=3.5, linewidth=1.0,
                        linestyle=line.get(float(r["seed"]), "-"), zorder=3)
                for which, epoch, style in (("loo", r["loo_epoch"], dict(LOO_PICK, markeredgecolor=colour)),
                                            ("val", r["val_epoch"], dict(VAL_PICK, markeredgecolor=colour)),
                                            ("best", r["best_test_epoch"], BEST_TEST)):
                    at = np.flatnonzero(r["epoch"] == epoch) if epoch is not None else []
                    if len(at) and np.isfinite(y[at[0]]):
                        ax.plot(x[at[0]], y[at[0]], zorder=4, **style)
                        marks[which] = True
            ax.xaxis.set_major_locator(FixedLocator(epochs) if len(epochs) <= 10 else MaxNLocator(integer=True))
            ax.xaxis.set_minor_locator(NullLocator())
            ax.set_xlim(min(epochs) - 0.5 * step, max(epochs) + 0.5 * step)
            ax.set_xlabel("epoch")
            ax.set_ylabel(ylabel)
            ax.set_ylim(bottom=0)
            ax.set_title(panel, loc="left")
        label = _text(table["label"])
        n_runs = {lev: len({n for n, r in runs.items() if r["label"] == lev}) for lev in levels}
        handles = [Line2D([], [], color=styles[lev][0], marker=styles[lev][1], markersize=3.5,
                          label=f"{names[lev]} ({n_runs[lev]} run{'s' if n_runs[lev] != 1 else ''})")
                   for lev in levels if (label == lev).any()]
        glyphs = [Line2D([], [], color="0.3", linestyle=line[s], linewidth=1.0, label=f"seed {s:g}")
                  for s in seeds] if len(seeds) > 1 else []
        if marks["loo"]:
            glyphs.append(Line2D([], [], markeredgecolor="0.3", label="epoch the LOO criterion picks", **LOO_PICK))
        if marks["val"]:
            glyphs.append(Line2D([], [], markeredgecolor="0.3", label="epoch the validation split picks", **VAL_PICK))
        if marks["best"]:
            glyphs.append(Line2D([], [], label="epoch of best test accuracy", **BEST_TEST))
        fig.legend(handles=handles, loc="outside upper center", ncol=_legend_columns(handles, DOUBLE),
                   title=_level_title(common, f"{len(runs)} runs with saved epochs, last analysed layer"))
        if glyphs:
            fig.legend(handles=glyphs, loc="outside lower center", ncol=_legend_columns(glyphs, DOUBLE))
        return _save(fig, prefix), runs


# ---------------------------------------------------------------------------- F8

CRITERION_STYLE = {"cwnnk": ("CW-NNK redundancy (greedy)", OKABE_ITO["blue"], "o"),
                   "l1": ("L1 norm of the filter", OKABE_ITO["vermillion"], "s"),
                   "apoz": ("APoZ (zero activations)", OKABE_ITO["bluish_green"], "D")}
RANDOM_COLOUR = "0.45"


def f8_data(pruning, column, every_layer):
    """{criterion: (fractions, per-fraction values)} of one F8 panel: `column` averaged over the models (and,
    with every_layer, over the layers pruned one at a time; else the rows that prune every layer at once).
    Random: (fractions, mean, min, max) over its draws, each draw averaged over models (and layers) first."""
    from cwnnk.pruning import ALL

    layer = _text(pruning["layer"])
    rows = select(pruning, layer != ALL if every_layer else layer == ALL)
    if not n_rows(rows):
        return {}
    criterion, values = _text(rows["criterion"]), np.asarray(rows[column], dtype=float)
    fractions = np.unique(rows["fraction"])
    out = {}
    for name in ("cwnnk", "l1", "apoz", "random"):
        at = criterion == name
        if not at.any() or not np.isfinite(values[at]).any():
            continue
        per_draw = np.array([[np.nanmean(values[at & (rows["fraction"] == f) & (rows["draw"] == d)])
                              for f in fractions] for d in np.unique(rows["draw"][at])])
        out[name] = (fractions, per_draw.mean(0), per_draw.min(0), per_draw.max(0))
    return out


def f8_pruning(pruning, prefix):
    """F8: test accuracy against the share of channels removed, one line per criterion (mean over models),
    random as a band (min-max over draws, mean dashed); every analysed layer pruned at once without and after
    the fine-tune, and one layer at a time (mean over layers) without it."""
    title = "F8 test accuracy as channels are pruned"
    if not n_rows(pruning):
        return _placeholder(prefix, title, textwrap.fill(
            "no model was pruned: the pruning stage needs final models with a test split (pruning.enabled)", 60))
    panels = [("test_acc", False, "(a) every analysed layer at once,\nno fine-tune"),
              ("test_acc_finetuned", False, "(b) every analysed layer at once,\nafter the fine-tune"),
              ("test_acc", True, "(c) one layer at a time, no fine-tune\n(mean over layers)")]
    panels = [p for p in panels if f8_data(pruning, p[0], p[1])]
    n_models = len(set(_text(pruning["model"])))
    with matplotlib.rc_context(STYLE):
        fig = _new_figure(DOUBLE, 2.8)
        axes = fig.subplots(1, len(panels), sharey=True, squeeze=False)[0]
        for ax, (column, every_layer, name) in zip(axes, panels):
            for criterion, (fractions, mean, lo, hi) in f8_data(pruning, column, every_layer).items():
                x = 100 * fractions
                if criterion == "random":
                    ax.fill_between(x, 100 * lo, 100 * hi, color=RANDOM_COLOUR, alpha=0.25, linewidth=0)
                    ax.plot(x, 100 * mean, color=RANDOM_COLOUR, linestyle="--", label="random (min-max of draws)")
                    continue
                label, colour, marker = CRITERION_STYLE[criterion]
                ax.plot(x, 100 * mean, color=colour, marker=marker, markersize=3, label=label)
            ax.set_title(name, loc="left")
            ax.set_xlabel("channels removed per layer (%)")
        axes[0].set_ylabel(f"test accuracy (%), mean of {n_models} model{'s' if n_models > 1 else ''}")
        axes[-1].legend(loc="lower left")  # (c) falls least: its lower left stays clear
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
    """Every figure file in figures_dir: {figures_dir}/F1.pdf, F1.png, ..., F7.png."""
    return [Path(figures_dir) / f"{name}.{ext}" for name in FIGURES for ext in FIGURE_FORMATS]


def _prefixes(outputs):
    """{figure: output prefix} of the files F1.pdf ... F7.png in outputs; all of them must be there."""
    prefixes, wanted = {}, {f"{name}.{ext}" for name in FIGURES for ext in FIGURE_FORMATS}
    for path in map(Path, outputs):
        if path.name not in wanted:
            raise ValueError(f"{path}: not a figure file; expected one of {sorted(wanted)}")
        prefixes[path.stem] = path.with_suffix("")
        wanted.discard(path.name)
    if wanted:
        raise ValueError(f"no output path given for {sorted(wanted)}")
    return prefixes


def width_sweep_figure(rows, prefix, title="width sweep"):
    """The saturation curve (cwnnk.width_sweep's rows): the headline redundancy and rho_hat against
    the number of channels sampled, mean over the draws (line), min-max (band), each with its chance
    level (dotted). The headline stays level; rho_hat falls to its chance level as the union saturates."""
    table = {key: np.array([r[key] for r in rows], dtype=float) for key in rows[0]} if rows else {}
    if not table:
        return _placeholder(prefix, title, "no channel subsets")
    sizes = np.unique(table["n_channels"])
    with matplotlib.rc_context(STYLE):
        fig = _new_figure(SINGLE, 2.6)
        ax = fig.add_subplot()
        for (column, chance, label), colour in zip(WIDTH_SERIES, PALETTE):
            stats = np.array([[f(table[c][table["n_channels"] == n]) for c in (column, chance)
                               for f in (np.mean, np.min, np.max)] for n in sizes])
            ax.plot(sizes, stats[:, 0], color=colour, marker="o", markersize=3, label=label)
            ax.fill_between(sizes, stats[:, 1], stats[:, 2], color=colour, alpha=0.2, linewidth=0)
            ax.plot(sizes, stats[:, 3], color=colour, linestyle=":", linewidth=1.0, label=f"{label}: chance")
        ax.set_xscale("log", base=2)
        ax.set_xticks(sizes, [f"{n:g}" for n in sizes])
        ax.set_xlabel("channels sampled (random subsets of the layer)")
        ax.set_ylabel("value (0-1)")
        ax.set_ylim(0, 1)
        ax.set_title("\n".join(textwrap.wrap(title, 45)), loc="left")
        ax.legend(loc="best")
        return _save(fig, prefix)


WIDTH_SERIES = (("redundancy", "redundancy_chance", "redundancy (headline)"),
                ("rho_hat", "rho_hat_chance", "$\\hat\\rho$ (union-based)"))


def _split_twins(table):
    """(rows of the analysed models, rows of their untrained twins) of a table with a `kind` column:
    twins are drawn only as F2's baseline, never pooled with the trained models of their label."""
    if not n_rows(table) or "kind" not in table:
        return table, {}
    twin = _text(table["kind"]) == "untrained"
    return select(table, ~twin), select(table, twin)


def draw_all(tables, outputs, params=FigureParams()):
    """Draw F0-F8 from the tables into the files `outputs` (F0.pdf, F0.png, ..., F8.png).

    tables: {name: CSV path} for the names of cwnnk.products.TABLES; an empty table gives a placeholder
    figure, and so does an absent manifolds or solvers table (figures.calibration off). params:
    FigureParams (the models F4 and F6 draw; None: the first).
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
    overlap, twins = _split_twins(_read(tables, "overlap"))
    levels = level_order(overlap) if n_rows(overlap) else None
    k = _unique_number(overlap, "k") if n_rows(overlap) else None
    for prefix in prefixes.values():
        prefix.parent.mkdir(parents=True, exist_ok=True)
    channels, _ = _split_twins(_read(tables, "channels"))
    final = select(overlap, _text(_col(overlap, "kind", "trained")) != "snapshot") if n_rows(overlap) else overlap
    f0_answer(final, prefixes["F0"], twins=twins)
    positions = layer_positions(overlap)
    f1_degree(_with_positions(channels, positions), prefixes["F1"], levels=levels, k=k)
    f2_redundancy_depth(_with_positions(overlap, positions), prefixes["F2"], levels=levels,
                        twins=_with_positions(twins, positions))
    f3_generalization(overlap, prefixes["F3"], levels=levels)
    f4_heatmaps(pairwise, prefixes["F4"], model=model, channels=channels)
    off = ("not drawn: figures.calibration is off for this experiment (auto draws it for the built-in "
           "experiment only; set figures.calibration: true to draw it)")
    if "manifolds" in tables:
        f5_manifolds(_read(tables, "manifolds"), prefixes["F5"])
    else:
        _placeholder(prefixes["F5"], "F5 NNK degree versus intrinsic dimension", textwrap.fill(off, 60))
    if "solvers" in tables:
        f6_solvers(_with_positions(solvers, positions), prefixes["F6"], model=solver_model,
                   channels=_with_positions(channels, positions))
    else:
        _placeholder(prefixes["F6"], "F6 exact versus pynnk solver", textwrap.fill(off, 60))
    f7_epochs(overlap, prefixes["F7"], early_stopping=_read(tables, "early_stopping"), levels=levels)
    f8_pruning(_read(tables, "pruning"), prefixes["F8"])
    return [Path(path) for path in outputs]
