"""The overlap and tables stages: layer metrics from graph folders, then tidy tables.

`analyse_layer` turns one graphs folder into one JSON of layer-level columns (see
docs/overlap.md), per-channel rows and the C x C pairwise overlap matrix.
`collect_tables` joins every layer with its model's metrics into results/tables/.
"""

import json
from pathlib import Path

import numpy as np

from cwnnk.atomic import write_json
from cwnnk.graphs import load_layer_graphs
from cwnnk.intrinsic_dim import twonn
from cwnnk.overlap import TOL, layer_summary
from cwnnk.tables import write_table

# Model settings copied onto every row, in this order (tables are tidy: one row, all context).
MODEL_COLUMNS = ("model", "kind", "label", "arch", "dropout", "weight_decay", "augment", "seed")
METRIC_COLUMNS = ("train_acc", "test_acc", "train_loss", "test_loss", "gap_acc", "gap_loss")


def analyse_layer(graph_dir, out_json):
    """Every METHOD.md section 4 metric of one layer, written to out_json."""
    arrays, summary = load_layer_graphs(graph_dir)
    row, pairwise = layer_summary(
        arrays["channel_indices"], arrays["channel_weights"], arrays["channel_distances"],
        arrays["agg_indices"], arrays["agg_weights"], arrays["agg_distances"], tol=TOL,
        ch_twonn=arrays["channel_twonn"], agg_twonn=arrays["agg_twonn"],
    )
    zero_maps = np.asarray(summary["zero_map_fraction"])
    row["zero_map_fraction_mean"] = float(zero_maps.mean())
    row["zero_map_fraction_max"] = float(zero_maps.max())
    row["kkt_failed"] = int(sum(summary["counts"]["kkt_failed"]) + summary["aggregate_counts"]["kkt_failed"])
    row["not_pd"] = int(sum(summary["counts"]["not_pd"]) + summary["aggregate_counts"]["not_pd"])
    degree = (arrays["channel_weights"] > TOL).sum(-1)
    channel_ids, _ = twonn(arrays["channel_twonn"])
    channels = [
        dict(channel=c, degree_mean=float(degree[c].mean()), degree_agg_mean=row["degree_agg_mean"],
             zero_map_fraction=float(zero_maps[c]), id_twonn=float(channel_ids[c]))
        for c in range(degree.shape[0])
    ]
    write_json(out_json, dict(layer=summary["layer"], row=row, channels=channels, pairwise=pairwise.tolist(),
                              params=summary["params"]))


def _model_context(entry, metrics):
    """The model columns (MODEL_COLUMNS, then METRIC_COLUMNS) of every row of one model."""
    source = dict(entry, model=entry["name"], arch=entry["spec"]["arch"], **metrics["final"])
    return {key: source.get(key) for key in (*MODEL_COLUMNS, *METRIC_COLUMNS)}


def collect_tables(models, layers, results, out_dir):
    """Write overlap.csv, channels.csv and pairwise.csv under out_dir.

    models: name -> model entry (cwnnk.config.expand_models); layers: name -> analysed layers
    in depth order; results: the results folder holding models/ and overlap/.
    """
    results, out_dir = Path(results), Path(out_dir)
    overlap, channels, pairwise = [], [], []
    for name, entry in models.items():
        metrics = json.loads((results / "models" / name / "metrics.json").read_text())
        context = _model_context(entry, metrics)
        for depth, layer in enumerate(layers[name]):
            layer_info = json.loads((results / "overlap" / name / f"{layer}.json").read_text())
            where = dict(layer=layer, depth=depth, n_layers=len(layers[name]), is_last=int(depth == len(layers[name]) - 1))
            overlap.append({**context, **where, **layer_info["row"]})
            short = {key: context[key] for key in ("model", "label", "dropout", "seed")}
            channels += [{**short, "layer": layer, "depth": depth, **ch} for ch in layer_info["channels"]]
            matrix = layer_info["pairwise"]
            pairwise += [
                dict(model=name, layer=layer, depth=depth, channel_a=a, channel_b=b, overlap=matrix[a][b])
                for a in range(len(matrix)) for b in range(len(matrix))
            ]
    write_table(out_dir / "overlap.csv", overlap)
    write_table(out_dir / "channels.csv", channels)
    write_table(out_dir / "pairwise.csv", pairwise)
