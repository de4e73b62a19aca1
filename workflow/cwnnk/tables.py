"""The tables stage and the CSV format of every table.

`collect_tables` joins every analysed layer with its model's metrics into the tidy tables
overlap.csv, channels.csv and pairwise.csv. `write_table` and `read_table` write rows of dicts
atomically and read them back as numpy columns.

Format: comma separated, one header line, "\\n" line ends, UTF-8. Cell encoding:
- float (Python or numpy): `repr(float(x))`, the shortest text that parses back to the
  identical float64 ('nan', 'inf', '-inf' for the non-finite values);
- int and bool (Python or numpy): the decimal integer (True -> 1, False -> 0);
- None, and a key missing from a row: the empty cell;
- anything else: `str(x)`.
Reading, a column is numeric when every non-empty cell parses as a float: it comes back as
float64 with empty cells as NaN. Any other column comes back as a str array, empty cells as
''. Integers therefore come back as floats of the same value (exact below 2**53).
"""

import contextlib
import csv
import math
import numbers
from pathlib import Path

import numpy as np

from cwnnk.atomic import DamagedArtifact, atomic_path, read_json
from cwnnk.provenance import sha256_file

# Model settings copied onto every row, in this order (tables are tidy: one row, all context).
MODEL_COLUMNS = ("model", "kind", "label", "arch", "dropout", "weight_decay", "augment", "seed", "label_noise",
                 "n_train", "width", "epochs", "run", "epoch")
METRIC_COLUMNS = ("train_acc", "test_acc", "train_loss", "test_loss", "gap_acc", "gap_loss", "train_acc_clean")
# Only for models with a validation split (training.validation > 0): without one the columns are absent.
VALIDATION_COLUMNS = ("val_acc", "val_loss")


def _cell(value):
    if value is None:
        return ""
    if isinstance(value, (bool, np.bool_)):
        return "1" if value else "0"
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        return repr(float(value))
    return str(value)


def checksum_file(path):
    """The hidden file beside a table that holds its sha256 (a CSV has no place for one that every reader
    skips), written with the table and checked by read_table."""
    path = Path(path)
    return path.with_name(f".{path.name}.sha256")


def write_table(path, rows, columns=None):
    """Write rows (an iterable of dicts) to the CSV file `path`, atomically, with its sha256 in
    checksum_file(path).

    Column order: `columns` first (if given), then every other key in the order it first
    appears across the rows, so the same rows always give the same file. A table with no
    rows and no `columns` is an empty file.
    """
    rows = list(rows)
    order = dict.fromkeys(columns or ())
    for row in rows:
        order.update(dict.fromkeys(row))
    header = list(order)
    with atomic_table(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            if header:
                writer = csv.writer(f, lineterminator="\n")
                writer.writerow(header)
                writer.writerows([_cell(row.get(key)) for key in header] for row in rows)
    return Path(path)


@contextlib.contextmanager
def atomic_table(path):
    """A temporary path to write a table to; renamed into place when the block ends, with its sha256 in
    checksum_file(path), which is in place first: there is never a table without it."""
    with atomic_path(path) as tmp:
        yield tmp
        with atomic_path(checksum_file(path)) as digest:
            digest.write_text(sha256_file(tmp) + "\n")


def verify_table(path):
    """Raise DamagedArtifact if a table's content differs from the sha256 written beside it (a table
    without one, written by hand or by an older cwnnk, is not checked)."""
    digest = checksum_file(path)
    if digest.is_file() and sha256_file(path) != digest.read_text().strip():
        raise DamagedArtifact(f"{path}: its content is not what was written (sha256 differs from {digest}): the "
                              f"file was damaged or edited since; rerun the job that wrote it (snakemake --forcerun "
                              f"{path})")


def _column(cells):
    """float64 array if every non-empty cell is a number, else a str array."""
    try:
        return np.asarray(cells, dtype=np.float64)  # fast path: no empty or text cells
    except ValueError:
        pass
    values = np.empty(len(cells), dtype=np.float64)
    for i, cell in enumerate(cells):
        if cell == "":
            values[i] = math.nan
            continue
        try:
            values[i] = float(cell)
        except ValueError:
            return np.asarray(cells, dtype=str)
    return values


def read_table(path, where=None):
    """Read a CSV table as {column: numpy array}, columns in file order.

    where: optional {column: value}; only rows whose cell equals str(value) (as written by
    write_table, e.g. a model name) are kept. Filtering happens while reading, so a large
    long-form table (pairwise.csv) can be read one model at a time.
    An empty file gives {}; a header without rows gives empty float64 columns. A table whose sha256
    differs from the one written beside it (checksum_file) raises DamagedArtifact.
    """
    verify_table(path)
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            return {}
        if len(set(header)) != len(header):
            raise ValueError(f"{path}: repeated column names in header {header}")
        if where:
            missing = [key for key in where if key not in header]
            if missing:
                raise ValueError(f"{path}: no column {missing} to filter on; columns are {header}")
            tests = [(header.index(key), _cell(value)) for key, value in where.items()]
            rows = [row for row in reader if all(row[i] == v for i, v in tests)]
        else:
            rows = list(reader)
    for n, row in enumerate(rows):
        if len(row) != len(header):
            raise ValueError(f"{path}: a data row has {len(row)} cells, the header {len(header)} "
                             f"(row {n + 1} after any filtering)")
    columns = list(zip(*rows)) if rows else [() for _ in header]
    return {name: _column(list(cells)) for name, cells in zip(header, columns)}


def text_column(values):
    """A column read by read_table as str, empty cells as '' (read_table gives a column whose
    cells are all empty as NaN floats)."""
    values = np.asarray(values)
    return np.where(np.isnan(values), "", values.astype(str)) if values.dtype.kind == "f" else values.astype(str)


def n_rows(table):
    """Number of rows of a table read by read_table (0 for {})."""
    return len(next(iter(table.values()))) if table else 0


def select(table, mask):
    """The rows of `table` where the boolean `mask` is true, as a new table."""
    mask = np.asarray(mask, dtype=bool)
    return {name: values[mask] for name, values in table.items()}


def _model_context(entry, metrics):
    """The model columns (MODEL_COLUMNS, then METRIC_COLUMNS) of every row of one model."""
    source = dict(entry, model=entry["name"], arch=entry["spec"].get("name") or entry["spec"]["arch"],
                  **metrics["final"])
    context = {key: source.get(key) for key in (*MODEL_COLUMNS, *METRIC_COLUMNS)}
    context.update({key: source[key] for key in VALIDATION_COLUMNS if key in metrics["final"]})
    if metrics.get("accuracy_skipped"):  # e.g. no test split: why the accuracy columns are empty
        context["accuracy_skipped"] = metrics["accuracy_skipped"]
    return context


def twin_columns(model, layer, info, twin, twin_info):
    """The columns comparing a model's layer with the same layer of its untrained twin: the twin's
    headline with its interval, the difference (model minus twin) with its 95% interval, and
    training_effect ('raised', 'lowered' or 'none beyond the interval'). Both layers must hold the
    same images (the overlap stage's sample_index)."""
    from cwnnk.redundancy import PairOverlap, compare

    if info["sample_index"] != twin_info["sample_index"]:
        raise ValueError(f"model {model!r} layer {layer!r} and its untrained twin {twin!r} were analysed on "
                         "different images (sample_index differs); rerun extract for both")
    row = twin_info["row"]
    diff = compare(PairOverlap.from_dict(info["redundancy"]), PairOverlap.from_dict(twin_info["redundancy"]))
    return dict(twin=twin, redundancy_twin=row["redundancy"], redundancy_twin_ci_lo=row["redundancy_ci_lo"],
                redundancy_twin_ci_hi=row["redundancy_ci_hi"], redundancy_vs_twin=diff["difference"],
                redundancy_vs_twin_ci_lo=diff["difference_ci_lo"], redundancy_vs_twin_ci_hi=diff["difference_ci_hi"],
                training_effect=diff["effect"])


def collect_tables(models, metrics, layers, overlap, out):
    """The `tables` job: write overlap.csv, channels.csv and pairwise.csv.

    models: name -> model entry (cwnnk.config.expand_models); metrics: name -> its metrics.json;
    layers: name -> its analysed layers in depth order; overlap: name -> the overlap stage's
    JSON of each of those layers, same order; out: {"overlap": path, "channels": path,
    "pairwise": path}. A model with an untrained twin (entry["twin"]) gets twin_columns on each
    of its overlap rows.
    """
    infos = {}
    for name in models:
        if len(overlap[name]) != len(layers[name]):
            raise ValueError(f"model {name!r}: {len(layers[name])} layers but {len(overlap[name])} overlap files")
        for layer, path in zip(layers[name], overlap[name]):
            info = read_json(path, rerun="the overlap stage (snakemake --forcerun overlap)")
            if info["layer"] != layer:
                raise ValueError(f"{path}: holds layer {info['layer']!r}, expected {layer!r}")
            if "redundancy" not in info:
                raise ValueError(f"{path}: written by an older cwnnk, without the headline redundancy "
                                 "(docs/overlap.md); rerun it: snakemake --forcerun overlap")
            infos[name, layer] = info
    overlap_rows, channels, pairwise = [], [], []
    for name, entry in models.items():
        context = _model_context(entry, read_json(metrics[name], rerun="the stage that trained or imported the "
                                                                      "model (snakemake --forcerun train)"))
        twin = entry.get("twin")
        for depth, layer in enumerate(layers[name]):
            layer_info = infos[name, layer]
            where = dict(layer=layer, depth=depth, n_layers=len(layers[name]),
                         is_last=int(depth == len(layers[name]) - 1))
            compared = twin_columns(name, layer, layer_info, twin, infos[twin, layer]) if twin else {}
            overlap_rows.append({**context, **where, **layer_info["row"], **compared})
            short = {key: context[key] for key in ("model", "kind", "label", "dropout", "seed", "run", "epoch")}
            channels += [{**short, "layer": layer, "depth": depth, **ch} for ch in layer_info["channels"]]
            matrix = layer_info["pairwise"]
            pairwise += [
                dict(model=name, layer=layer, depth=depth, channel_a=a, channel_b=b, overlap=matrix[a][b])
                for a in range(len(matrix)) for b in range(len(matrix))
            ]
    write_table(out["overlap"], overlap_rows)
    write_table(out["channels"], channels)
    write_table(out["pairwise"], pairwise)
