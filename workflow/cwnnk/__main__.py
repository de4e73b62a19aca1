"""Command line: `python -m cwnnk layers --configfile my.yaml`, `python -m cwnnk width-sweep GRAPHS_DIR`,
`python -m cwnnk claims-stability TABLES_DIR`, `python -m cwnnk prune-plan CHANNELS_CSV MODEL --fraction F`,
`python -m cwnnk resume --cores all [other snakemake arguments]`,
`python -m cwnnk results-page RESULTS --out docs/results.md --figures docs/img/default`.

results-page: docs/results.md from a finished run, every number read from its tables and benchmark files
(cwnnk.results_page), the figures copied beside it.

resume: after a killed run, one command: it refuses while a Snakemake run still works in the directory, else
runs `snakemake --unlock` and `snakemake --rerun-incomplete` with the arguments given.

prune-plan: the channels of each analysed layer of MODEL that the greedy CW-NNK order removes at a fraction
(cwnnk.prune_plan), as JSON on stdout or in --out.

width-sweep: the saturation curve of one analysed layer (a graphs folder of the workflow): the
headline redundancy and rho_hat of random channel subsets, as a table on stdout, a CSV and a figure.

claims-stability: the claims of a finished run on perturbed copies of its tables (cwnnk.claims.claims_stability),
and which verdicts change.

layers: for every model of a config, every analysable node (what `extract.layers` may name or
match) with its output shape, per-channel dimension D = H*W, whether `all` keeps it, and the
graph stage's estimated time and peak memory at the N it will use (the training images after
n_train and the validation hold-out, capped by extract.n_samples and graphs.n_samples); 4-D nodes
that cannot be analysed (channel-last (N, H, W, C) outputs) are listed as such.
"""

import argparse
import os
import sys
from pathlib import Path

from cwnnk.graphs import estimate_cost as estimate


def _duration(seconds):
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _size(mib):
    return f"{mib:.0f} MiB" if mib < 1024 else f"{mib / 1024:.1f} GiB"


def layer_table(spec, n, k):
    """Rows of spec's nodes that may be analysed, and of the 4-D ones that may not, in depth order:
    {name, shape (C, H, W), D, all (in `all`), seconds, mib, streamed}, or {name, why} for a node
    that is not analysable (a channel-last (N, H, W, C) output: cwnnk.models.describe_output)."""
    from cwnnk.models import describe_output, graph_nodes, layer_names, layer_nodes

    keep = set(layer_names(spec))
    if spec["arch"] in ("torchvision", "factory"):
        nodes = graph_nodes(spec)
        shapes = {name: info["shape"] for name, info in nodes.items()}
        # 4-D outputs that are not (N, C, H, W): shown, so that a user sees why they cannot be named
        refused = {name: describe_output(info) for name, info in nodes.items()
                   if info["from_input"] and info["shape"] and len(info["shape"]) == 3 and not info["spatial"]}
    else:
        import torch
        from torchvision.models.feature_extraction import create_feature_extractor

        from cwnnk.models import build_model

        model = build_model(spec).eval()
        with torch.no_grad():
            out = create_feature_extractor(model, {node: name for name, node in layer_nodes(spec).items()})(
                torch.zeros(1, *spec["input_shape"]))
        shapes, refused, nodes = {name: tuple(value.shape[1:]) for name, value in out.items()}, {}, layer_nodes(spec)
    rows = []
    analysable = layer_nodes(spec)
    for name in nodes:
        if name in refused:
            rows.append(dict(name=name, why=refused[name]))
        elif name in analysable:
            C, H, W = shapes[name]
            seconds, mib, streamed = estimate(n, C, H * W, k)
            rows.append(dict(name=name, shape=(C, H, W), D=H * W, all=name in keep, seconds=seconds, mib=mib,
                             streamed=streamed))
    return rows


def graph_samples(exp, model, sizes):
    """(N, note): the number of images the graph stage uses for `model` (cwnnk.preflight.graph_samples:
    its training split after n_train and the validation hold-out, capped by extract.n_samples and
    graphs.n_samples), counted without decoding an image. Where the dataset cannot be read here N is the
    smaller cap (None without one) and note says why. sizes caches each dataset's N (or the error)."""
    from cwnnk.preflight import graph_samples as samples

    dataset = exp.extract(model).dataset
    key = repr(dataset)
    if key not in sizes:
        try:
            sizes[key] = samples(exp.config, dataset.to_dict(), read=True)
        except (OSError, ValueError, RuntimeError) as err:
            sizes[key] = err
    if isinstance(sizes[key], Exception):
        caps = [exp.config["extract"]["n_samples"], exp.config["graphs"].get("n_samples")]
        return min((c for c in caps if c is not None), default=None), (f" (at most; dataset {dataset.name!r} not "
                                                                          f"read: {sizes[key]})")
    return sizes[key], ""


def _experiment(config):
    """(Experiment, problem): the config's experiment, or where only its layer selection fails (a
    typo, `all` on a model whose activations are channel-last) the experiment with every
    analysable layer and that ConfigError, so that the listing still shows what may be named."""
    from cwnnk.config import ConfigError, Experiment, validate

    config = validate(config)
    try:
        return Experiment.from_config(config, build=True), None
    except ConfigError as err:
        if "extract.layers" not in str(err):
            raise
        every = dict(config, extract=dict(config["extract"], layers=["*"]),
                     external=[{key: value for key, value in ext.items() if key != "layers"}
                               for ext in config["external"]])
        return Experiment.from_config(every, build=True), err


def layers_command(args):
    import yaml

    from cwnnk.config import ConfigError

    config = {}
    for path in args.configfile:
        with open(path) as f:
            config.update(yaml.safe_load(f) or {})
    # Unlike validation and dry runs, this builds every model: a factory model's function is called here.
    print("cwnnk layers builds each model to list its nodes: a factory model's function is called (a config is "
          "code, docs/reliability.md)", flush=True)
    try:
        exp, problem = _experiment(config)
    except ConfigError as err:
        sys.exit(f"cwnnk: {err}")
    k = exp.graphs.k
    seen, sizes = set(), {}
    for model, entry in exp.models.items():
        spec = entry["spec"]
        n, note = graph_samples(exp, model, sizes)
        key = repr(({key: value for key, value in spec.items() if key not in ("dropout", "normalize")}, n))
        if key in seen:
            continue
        seen.add(key)
        arch = spec.get("name") or spec.get("factory") or spec["arch"]
        print(f"model {model} ({arch}, input {tuple(spec['input_shape'])}); graph stage at N = {n or '?'}{note}, "
              f"k = {k}, 2 CPU cores (scaled from docs/performance.md; rough)")
        print(f"  {'node':40s} {'C x H x W':>16s} {'D':>7s} {'all':>4s} {'time':>9s} {'memory':>10s} {'read':>8s}")
        for row in layer_table(spec, n or 1000, k):
            if "why" in row:
                print(f"  {row['name']:40s} not analysable: {row['why']}")
                continue
            C, H, W = row["shape"]
            extracted = " *" if problem is None and row["name"] in exp.layers[model] else ""
            print(f"  {row['name']:40s} {f'{C} x {H} x {W}':>16s} {row['D']:>7d} {'yes' if row['all'] else '':>4s} "
                  f"{_duration(row['seconds']) if n else '?':>9s} {_size(row['mib']) if n else '?':>10s} "
                  f"{'streamed' if row['streamed'] else 'whole':>8s}{extracted}")
        print("  (* = selected by extract.layers; read: the layer held whole, or streamed a block of channels "
              "at a time)")
    if problem is not None:
        sys.exit(f"cwnnk: {problem}")


def width_sweep_command(args):

    from cwnnk.api import width_sweep
    from cwnnk.figures import width_sweep_figure
    from cwnnk.tables import write_table

    folder = Path(args.graphs)
    try:
        rows = width_sweep(folder, sizes=args.sizes, n_draws=args.draws, seed=args.seed)
    except (FileNotFoundError, ValueError) as err:
        sys.exit(f"cwnnk: {err}")
    print(f"{'channels':>8s} {'redundancy':>11s} {'chance':>7s} {'rho_hat':>8s} {'chance':>7s} "
          f"{'union saturation':>17s}")
    for n in dict.fromkeys(r["n_channels"] for r in rows):
        at = [r for r in rows if r["n_channels"] == n]
        mean = {key: sum(r[key] for r in at) / len(at) for key in at[0]}
        print(f"{n:>8d} {mean['redundancy']:>11.4f} {mean['redundancy_chance']:>7.4f} {mean['rho_hat']:>8.4f} "
              f"{mean['rho_hat_chance']:>7.4f} {mean['union_saturation']:>17.3f}")
    out = Path(args.out or f"width-sweep-{folder.parent.name}-{folder.name}")
    write_table(out.with_name(out.name + ".csv"), rows)
    width_sweep_figure(rows, out, title=f"{folder.parent.name} {folder.name}")
    print(f"wrote {out}.csv, {out}.pdf and {out}.png (means over {args.draws} draws per size)")


def claims_stability_command(args):
    from cwnnk.claims import claims_stability

    try:
        rows = claims_stability(args.tables, scale=args.scale, copies=args.copies, seed=args.seed)
    except FileNotFoundError as err:
        sys.exit(f"cwnnk: {err}")
    print(f"claims on {args.copies} copies of {args.tables} with measured columns moved by relative noise "
          f"{args.scale:g} (seed {args.seed})")
    for row in rows:
        mark = "FRAGILE" if row["fragile"] else "stable"
        print(f"{mark:>8s}  {row['claim']:<14s} {row['verdict']:<14s} copies: {', '.join(row['verdicts'])}  "
              f"{row['test']}")
    fragile = sum(row["fragile"] for row in rows)
    print(f"{fragile} of {len(rows)} rows change their verdict")


def prune_plan_command(args):
    import json

    from cwnnk.pruning import prune_orders, prune_plan, write_plan

    try:
        plan = prune_plan(prune_orders(args.channels, args.model), args.fraction)
    except (FileNotFoundError, ValueError) as err:
        sys.exit(f"cwnnk: {err}")
    if args.out:
        write_plan(plan, args.out)
        removed = sum(len(entry["remove"]) for entry in plan.values())
        print(f"wrote {args.out}: {removed} channels of {len(plan)} layers to remove")
    else:  # one layer a line, still JSON
        print("{\n" + ",\n".join(f" {json.dumps(layer)}: {json.dumps(entry)}" for layer, entry in plan.items()) + "\n}")


def _run_directory(words, cwd):
    """The working directory a snakemake command line runs in: its --directory/-d, else cwd."""
    for i, word in enumerate(words[:-1]):
        if word in ("--directory", "-d"):
            return (Path(cwd) / words[i + 1]).resolve()
    for word in words:
        if word.startswith("--directory="):
            return (Path(cwd) / word.split("=", 1)[1]).resolve()
    return Path(cwd).resolve()


def running_snakemake(directory):
    """[(pid, command line)] of the Snakemake processes of this machine that run in `directory` (Linux /proc)."""
    own = {os.getpid(), os.getppid()}
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) in own:
            continue
        try:
            words = [w.decode(errors="replace") for w in (proc / "cmdline").read_bytes().split(b"\0") if w]
            cwd = os.readlink(proc / "cwd")
        except OSError:  # gone, or not ours to read
            continue
        if not any(w == "snakemake" or w.endswith("/snakemake") for w in words) or "resume" in words:
            continue
        if _run_directory(words, cwd) == directory:
            found.append((int(proc.name), " ".join(words)))
    return found


def resume_command(arguments):
    """After a kill: refuse while a Snakemake run still works in the directory, else unlock it and rerun the
    incomplete jobs, with the run's own snakemake `arguments` (docs/reliability.md)."""
    import subprocess

    directory = _run_directory(arguments, os.getcwd())
    running = running_snakemake(directory)
    if running:
        sys.exit(f"cwnnk: a Snakemake run is still running in {directory} (pid {running[0][0]}: {running[0][1]}); "
                 "wait for it or stop it, then resume. Unlocking now would let two runs write the same outputs.")
    snakemake = [sys.executable, "-m", "snakemake"]
    unlock = [a for a in arguments if a not in ("-n", "--dry-run", "--dryrun")]
    step = subprocess.run([*snakemake, *unlock, "--unlock"])
    if step.returncode:
        sys.exit(step.returncode)
    sys.exit(subprocess.run([*snakemake, *arguments, "--rerun-incomplete"]).returncode)


def results_page_command(args):
    from cwnnk.atomic import atomic_path
    from cwnnk.results_page import results_page

    try:
        page = results_page(args.results, args.figures, args.out, args.configfile)
    except FileNotFoundError as err:
        sys.exit(f"cwnnk: {err}")
    if not args.out:
        print(page, end="")
        return
    with atomic_path(args.out) as tmp:
        tmp.write_text(page)
    print(f"wrote {args.out}", file=sys.stderr)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m cwnnk", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    layers = sub.add_parser("layers", help="build each model (calling a factory model's function) and list its "
                            "analysable layers with shapes and graph-stage cost")
    layers.add_argument("--configfile", nargs="+", default=["config.yaml"], help="config file(s), later ones win")
    sweep = sub.add_parser("width-sweep", help="headline redundancy and rho_hat of random channel subsets of a layer")
    sweep.add_argument("graphs", help="a graphs folder of the workflow, results/graphs/MODEL/LAYER")
    sweep.add_argument("--sizes", type=int, nargs="+", help="channel counts (default 2, 4, 8, ... and all live)")
    sweep.add_argument("--draws", type=int, default=10, help="random subsets per size (default 10)")
    sweep.add_argument("--seed", type=int, default=0)
    sweep.add_argument("--out", help="path prefix of the CSV and figures (default width-sweep-MODEL-LAYER)")
    stability = sub.add_parser("claims-stability", help="claims on perturbed copies of a run's tables: which verdicts "
                                                         "the rounding of another processor could flip")
    stability.add_argument("tables", help="a finished run's tables folder, e.g. results/tables")
    stability.add_argument("--scale", type=float, default=0.01, help="relative noise on each measured cell "
                           "(default 0.01; docs/reliability.md gives what another processor moves)")
    stability.add_argument("--copies", type=int, default=2)
    stability.add_argument("--seed", type=int, default=0)
    plan = sub.add_parser("prune-plan",
                          help="the channels of each layer the CW-NNK order removes at a fraction, as JSON")
    plan.add_argument("channels", help="a finished run's channels.csv, e.g. results/tables/channels.csv")
    plan.add_argument("model", help="the model, as named in channels.csv")
    plan.add_argument("--fraction", type=float, required=True,
                      help="share of each layer's channels to remove, in [0, 1)")
    plan.add_argument("--out", help="write the plan to this JSON file (default: print it)")
    page = sub.add_parser("results-page", help="a finished run's results as a Markdown page (docs/results.md)")
    page.add_argument("results", help="the run's results folder, e.g. results")
    page.add_argument("--out", help="write the page here (default: print it)")
    page.add_argument("--figures", help="copy F0..F8 here and show them on the page")
    page.add_argument("--configfile", default="config.yaml", help="the run's config, shown on the page")
    resume = sub.add_parser("resume", help="after a killed run: unlock and rerun the incomplete jobs, in one command")
    resume.add_argument("snakemake", nargs=argparse.REMAINDER,
                        help="the killed run's snakemake arguments, e.g. --cores all --configfile my.yaml")
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["resume"] and not {"-h", "--help"} & set(argv[1:2]):  # snakemake's options pass through as they are
        resume_command(argv[1:])
    args = parser.parse_args(argv)
    if args.command == "prune-plan":
        prune_plan_command(args)
    elif args.command == "claims-stability":
        claims_stability_command(args)
    elif args.command == "layers":
        layers_command(args)
    elif args.command == "width-sweep":
        width_sweep_command(args)
    elif args.command == "results-page":
        results_page_command(args)


if __name__ == "__main__":
    main()
