"""The solvers stage (figure F6): the exact and the pynnk NNK solvers on the same kNN problems.

`compare_solvers` reads the graph folders the graphs stage wrote with the configured solver,
solves the same layers with the other one, and returns one row per channel (and the aggregate)
of each layer; `write_solver_table` writes them as results/tables/solvers.csv.
"""

from cwnnk.activations import open_activations
from cwnnk.graphs import cw_nnk, load_layer_graphs, open_layer
from cwnnk.tables import write_table


def compare_solvers(store_path, graph_dirs, params, log=print):
    """Rows of solvers.csv: mean NNK degree of each channel (and the aggregate, channel -1)
    with the exact and the pynnk solver, on the samples each graphs folder used.

    graph_dirs: {layer: graphs folder}, depth order; params: the GraphParams they were built with.
    The configured solver's weights come from the graph folder; only the other one is solved.
    """
    store = open_activations(store_path)
    other = "pynnk" if params.solver == "exact" else "exact"
    rows = []
    for depth, (layer, folder) in enumerate(graph_dirs.items()):
        arrays, summary = load_layer_graphs(folder)
        # the graphs stage's path (whole or streamed), so that both solvers see the same problems
        acts = open_layer(store, layer, arrays["positions"], summary.get("streamed", False))
        channels, _, aggregate, _ = cw_nnk(acts, params.replace(solver=other), log)
        done = {"channel": arrays["channel_weights"], "aggregate": arrays["agg_weights"]}
        fresh = {"channel": channels.weights, "aggregate": aggregate.weights}
        degree = {key: {params.solver: (done[key] > 0).sum(-1).mean(-1), other: (fresh[key] > 0).sum(-1).mean(-1)}
                  for key in done}
        for c in range(acts.shape[1]):
            rows.append(dict(layer=layer, depth=depth, channel=c, degree_exact=float(degree["channel"]["exact"][c]),
                             degree_pynnk=float(degree["channel"]["pynnk"][c])))
        rows.append(dict(layer=layer, depth=depth, channel=-1, degree_exact=float(degree["aggregate"]["exact"]),
                         degree_pynnk=float(degree["aggregate"]["pynnk"])))
        log(f"{layer}: exact vs pynnk mean degree (aggregate) "
            f"{rows[-1]['degree_exact']:.2f} vs {rows[-1]['degree_pynnk']:.2f}")
    return rows


def write_solver_table(path, model, store_path, graph_dirs, params, log=print):
    """The `solvers` job: compare_solvers on one model, written to `path` (solvers.csv) atomically."""
    rows = compare_solvers(store_path, graph_dirs, params, log)
    return write_table(path, [dict(model=model, **row) for row in rows])
