"""`bench pipeline`: wall time and peak memory of each stage of the default experiment."""

import time

import torch

from cwnnk.bench.common import check_graphs, gram_floor, in_fresh_process, knn_floor, peak_mib


def _stage(name, config, workdir, timings):
    """Run one stage of the default experiment on its first model in this (fresh) process, with the
    parameters the workflow's rules get (cwnnk.config.Experiment)."""
    from pathlib import Path

    from cwnnk.config import Experiment
    from cwnnk.extract import run_extract
    from cwnnk.graphs import build_layer_graphs, read_layer
    from cwnnk.overlap import analyse_layer
    from cwnnk.train import run_train

    torch.set_num_threads(config["threads"])
    quiet = lambda *a, **k: None  # noqa: E731
    work = Path(workdir)
    exp = Experiment.from_config(config)
    model = next(iter(exp.models))
    entry, layers = exp.models[model], exp.layers[model]
    ckpt, store = work / "checkpoint.pt", work / "store.zarr"
    start = time.perf_counter()
    if name == "train":
        run_train(entry, exp.train(model).replace(save_epochs=(), untrained_twin=False), ckpt, work / "metrics.json",
                  quiet)  # no snapshots, no twin: one run timed
    elif name == "extract":
        run_extract(entry, ckpt, store, exp.extract(model), quiet)
    elif name == "graphs":
        for layer in layers:
            build_layer_graphs(store, layer, work / "graphs" / layer, exp.graphs, quiet, timings)
    elif name == "overlap":
        for layer in layers:
            analyse_layer(work / "graphs" / layer, work / "overlap" / f"{layer}.json", exp.overlap)
    elif name == "loo":  # the overlap stage's LOO step alone, on the graphs it reads (docs/method.md section 6)
        from cwnnk.graphs import load_layer_graphs
        from cwnnk.loo import cw_loo

        graphs = [load_layer_graphs(work / "graphs" / layer)[0] for layer in layers]
        start = time.perf_counter()
        for g in graphs:
            cw_loo(g["channel_indices"], g["channel_weights"], g["agg_indices"], g["agg_weights"], g["labels"],
                   tol=exp.overlap.tol)
    elif name in ("knn floor", "gram floor"):
        from cwnnk.activations import open_activations
        from cwnnk.graphs import load_layer_graphs

        acts = {layer: read_layer(open_activations(store), layer, None) for layer in layers}
        found = {layer: load_layer_graphs(work / "graphs" / layer)[0] for layer in layers if name == "gram floor"}
        start = time.perf_counter()
        for layer, a in acts.items():
            channels, aggregate = a.transpose(1, 0, 2), a.reshape(1, a.shape[0], -1)
            if name == "knn floor":
                knn_floor(channels, exp.graphs.k, torch.device("cpu"))
                knn_floor(aggregate, exp.graphs.k, torch.device("cpu"))
            else:
                gram_floor(channels, found[layer]["channel_indices"])
                gram_floor(aggregate, found[layer]["agg_indices"][None])
    seconds = time.perf_counter() - start
    return seconds, peak_mib(), timings, model, list(layers)


def bench_pipeline(args, out=print):
    """Wall time and peak memory of each stage of the default experiment, on its first model."""
    import shutil
    import tempfile
    from pathlib import Path

    import yaml

    from cwnnk.config import Experiment, validate

    cfg = validate(yaml.safe_load(open(args.config)))
    cfg["device"] = args.device
    rows, runs = {}, {"graphs": [], "knn floor": []}
    with tempfile.TemporaryDirectory() as workdir:
        work = Path(workdir)

        def run(name):
            return in_fresh_process(_stage, name, cfg, workdir, {})

        for name in ("train", "extract"):
            rows[name] = run(name)
        for _ in range(args.repeat):  # interleaved, so that a slow spell of the machine slows both
            shutil.rmtree(work / "graphs", ignore_errors=True)
            runs["graphs"].append(run("graphs"))
            runs["knn floor"].append(run("knn floor"))
        for name, done in runs.items():  # the fastest run counts, with the highest peak of all
            best = min(done, key=lambda row: row[0])
            rows[name] = (best[0], max(row[1] for row in done), *best[2:])
        for name in ("overlap", "loo", "gram floor"):
            rows[name] = run(name)
        model, layers = rows["train"][3], rows["train"][4]
        out(f"default experiment ({args.config}), model {model}, layers {layers}, device {args.device}, "
            f"threads {cfg['threads']}")
        ok = check_graphs(work / "store.zarr", {layer: work / "graphs" / layer for layer in layers},
                          Experiment.from_config(cfg).graphs, args.check_nodes, args.check_nodes // 4, out)
    out(f"{'stage':10s} {'wall s':>8s} {'peak RSS MiB':>13s}")
    for name in ("train", "extract", "graphs", "overlap"):
        out(f"{name:10s} {rows[name][0]:8.2f} {rows[name][1]:13.0f}")
    out(f"LOO estimate, in the overlap stage: {1e3 * rows['loo'][0]:.1f} ms of {rows['overlap'][0]:.2f} s "
        f"({100 * rows['loo'][0] / rows['overlap'][0]:.1f}%; no kNN search or solve)")
    parts = rows["graphs"][2]
    busy = sum(parts.values())
    out("graph stage, engine busy time by part: " + ", ".join(
        f"{part} {seconds:.2f} s ({100 * seconds / busy:.0f}%)" for part, seconds in parts.items()))
    out("runs, interleaved (the fastest of each counts): graph stage "
        + ", ".join(f"{row[0]:.2f}" for row in runs["graphs"]) + " s; kNN floor "
        + ", ".join(f"{row[0]:.2f}" for row in runs["knn floor"]) + " s")
    floor = rows["knn floor"][0]
    out(f"kNN floor of the same layers (float32 product + topk per channel and aggregate): {floor:.2f} s")
    gram = rows["gram floor"][0]
    out(f"float64 Gram of each node's {cfg['graphs']['k']} candidates' differences (the exact kernels' input, "
        f"k^2 D per node): {gram:.2f} s; graph stage / (kNN floor + Gram): {rows['graphs'][0] / (floor + gram):.2f}")
    out(f"graph stage / kNN floor: {rows['graphs'][0] / floor:.2f}")
    return ok
