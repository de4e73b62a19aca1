"""The workflow through real Snakemake runs: dry runs of the shipped configs and one tiny
end-to-end experiment on the synthetic dataset, shared by the tests of this module."""

import json
import os
import re
import subprocess
import sys

import pytest

from conftest import REPO, TINY_CONFIG, snakemake, write_config

TINY_FIGURES = TINY_CONFIG["figures"]


def _job_counts(dry_run_output):
    table = dry_run_output.split("Job stats:")[1]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M)}


def test_default_config_dry_run(tmp_path):
    proc = snakemake("-n", "--cores", "2", "--config", f"results={tmp_path / 'results'}")
    counts = _job_counts(proc.stdout)
    assert counts["train"] == 16  # 2 dropout rates x 2 label-noise levels x 2 training-set sizes x 2 seeds
    assert counts["extract"] == 48  # each run also at its saved epoch 5 and as its untrained twin (epoch 0)


def test_bad_config_stops_before_any_job(tmp_path):
    config = write_config(tmp_path / "bad.yaml", tmp_path / "results", dataset={"name": "mnist"})
    proc = snakemake("-n", "--cores", "1", "--configfile", config, check=False)
    assert proc.returncode != 0
    assert "dataset.name" in proc.stderr and "'mnist'" in proc.stderr and "synthetic" in proc.stderr
    assert not (tmp_path / "results").exists()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """Run the whole tiny experiment once through Snakemake; yield its results folder."""
    root = tmp_path_factory.mktemp("tiny")
    config = write_config(root / "config.yaml", root / "results")
    snakemake("--cores", "2", "--configfile", config)
    return root, config


MODELS = ["convnet-d0-wd0-s1", "convnet-d0.3-wd0-s1"]


def test_tiny_run_trains_every_model(tiny_run):
    root, _ = tiny_run
    for model in MODELS:
        folder = root / "results" / "models" / model
        metrics = json.loads((folder / "metrics.json").read_text())
        assert (folder / "checkpoint.pt").stat().st_size > 0
        assert metrics["final"]["epochs"] == 2 and len(metrics["history"]) == 2
        assert 0 <= metrics["final"]["test_acc"] <= 1
        assert metrics["entry"]["dropout"] in (0.0, 0.3) and metrics["versions"]["torch"]
        assert (root / "results" / "logs" / "train" / f"{model}.log").read_text().count("epoch ") >= 2
        assert (root / "results" / "benchmarks" / "train" / f"{model}.tsv").exists()


def test_training_is_deterministic(tiny_run, tmp_path):
    root, _ = tiny_run
    config = write_config(tmp_path / "config.yaml", tmp_path / "results", sweep={"dropout": [0.3], "seeds": [1]})
    snakemake(f"{tmp_path}/results/models/{MODELS[1]}/metrics.json", "--cores", "1", "--configfile", config)
    first = json.loads((root / "results" / "models" / MODELS[1] / "metrics.json").read_text())
    second = json.loads((tmp_path / "results" / "models" / MODELS[1] / "metrics.json").read_text())
    strip = lambda h: [{k: v for k, v in row.items() if k != "seconds"} for row in h]  # noqa: E731
    assert strip(first["history"]) == strip(second["history"])


def test_rerun_with_unchanged_inputs_runs_nothing(tiny_run):
    root, config = tiny_run
    proc = snakemake("-n", "--cores", "2", "--configfile", config)
    assert "Nothing to be done" in proc.stdout + proc.stderr


def test_external_checkpoint_enters_the_dag(tiny_run, tmp_path):
    root, _ = tiny_run
    import torch

    from cwnnk.models import load_checkpoint

    model, spec = load_checkpoint(root / "results" / "models" / MODELS[0] / "checkpoint.pt")
    torch.save(model.state_dict(), tmp_path / "plain.pt")  # a plain state dict, as others ship them
    layers = [{k: v for k, v in layer.items()} for layer in spec["layers"]]
    external = [{"name": "mine", "path": str(tmp_path / "plain.pt"), "model": {"arch": "convnet", "layers": layers}}]
    config = write_config(tmp_path / "config.yaml", tmp_path / "results", sweep={"dropout": [0.0], "seeds": [1]},
                          external=external)
    snakemake(f"{tmp_path}/results/models/mine/metrics.json", "--cores", "1", "--configfile", config)
    metrics = json.loads((tmp_path / "results" / "models" / "mine" / "metrics.json").read_text())
    trained = json.loads((root / "results" / "models" / MODELS[0] / "metrics.json").read_text())
    assert metrics["kind"] == "external" and metrics["final"]["test_acc"] == trained["final"]["test_acc"]


def test_tiny_run_writes_graph_files_per_channel(tiny_run):
    import numpy as np
    import scipy.sparse

    root, _ = tiny_run
    folder = root / "results" / "graphs" / MODELS[0] / "conv2"
    channels = sorted(folder.glob("channel_*.npz"))
    assert len(channels) == 4  # channel count read from the store, not from a list
    for path in [*channels, folder / "aggregate.npz"]:
        W = scipy.sparse.load_npz(path)
        assert W.shape == (60, 60) and W.nnz > 0 and W.min() >= 0 and W.diagonal().sum() == 0
    with np.load(folder / "knn.npz") as knn:
        assert knn["channel_indices"].shape == (4, 60, 8) and knn["agg_distances"].shape == (60, 8)
    summary = json.loads((folder / "summary.json").read_text())
    assert set(summary["counts"]) >= {"duplicates", "zero_vectors", "not_pd", "kkt_failed"}
    assert len(summary["zero_map_fraction"]) == 4


def test_long_jobs_log_their_progress(tiny_run):
    """Each job that can run long says in its log how far it is, with a rate."""
    logs = tiny_run[0] / "results" / "logs"
    model = MODELS[0]
    train = (logs / "train" / f"{model}.log").read_text()
    assert re.search(r"epoch 2/2 .* images/s", train)
    assert re.search(r"batch 1/\d+ done \(train: \d+/60 samples, .* batch/s",
                     (logs / "extract" / f"{model}.log").read_text())
    graphs = (logs / "graphs" / model / "conv1.log").read_text()
    assert re.search(r"point set 4/5 done \(channels 0-3 of 4, .* point set/s", graphs)
    assert "point set 5/5 done (the aggregate" in graphs
    assert "done in" in (logs / "overlap" / model / "conv1.log").read_text()


def _documented_columns():
    """The column names the tables of docs/outputs.md and docs/overlap.md document."""
    docs = (REPO / "docs" / "outputs.md").read_text() + (REPO / "docs" / "overlap.md").read_text()
    columns = set()
    for cell in re.findall(r"^\| (`[^|]+)\|", docs, re.M):  # first cell: `a`, `b` or `rho_{stat}`
        for name in re.findall(r"`([a-z0-9_{}]+)`", cell):
            stats = ("mean", "std", "q25", "median", "q75") if "{stat}" in name else ("",)
            columns |= {name.replace("{stat}", stat) for stat in stats}
    return columns


def test_tiny_run_overlap_table_has_every_documented_column(tiny_run):
    import numpy as np

    from cwnnk.tables import read_table

    root, _ = tiny_run
    table = read_table(root / "results" / "tables" / "overlap.csv")
    columns = _documented_columns()
    assert set(table) <= columns, f"undocumented columns: {sorted(set(table) - columns)}"
    assert len(table["model"]) == 8  # (2 models + their 2 untrained twins) x 2 layers
    assert sorted(set(table["is_last"])) == [0, 1] and set(table["depth"]) == {0, 1}
    for column in ("rho_hat_mean", "pairwise_overlap_mean", "kappa_mean", "gamma_mean", "degree_agg_mean",
                   "rho_hat_chance_mean", "id_layer", "test_acc", "gap_acc"):
        assert np.isfinite(table[column]).all(), column
    assert ((0 <= table["rho_hat_mean"]) & (table["rho_hat_mean"] <= 1)).all()


def test_tiny_run_states_each_claim(tiny_run):
    """claims.csv has a row per claim and sub-claim, each with a verdict; the tiny run (2 models and their
    twins, 2 manifold dimensions, no saved epochs) can decide only C2, and each other row says why."""
    import numpy as np

    from cwnnk.claims import COLUMNS
    from cwnnk.tables import read_table

    root, _ = tiny_run
    claims = read_table(root / "results" / "tables" / "claims.csv")
    assert list(claims) == list(COLUMNS) and set(claims) <= _documented_columns()
    assert list(claims["claim"]) == (["C1", "C2", "C2", "C3", "C3", "C3", "C3"] + ["C4"] * 3
                                     + ["early stopping", "C5"])
    assert list(claims["factor"][4:7]) == ["dropout", "weight_decay", "augment"]
    # C5 pairs the 2 pruned models at the 4 fractions above 0
    assert claims["n"][-1] == 8 and claims["n_models"][-1] == 2 and "vs apoz" in claims["evidence"][-1]
    # C2 rests on every (model, layer) row's interval and its twin's, which 2 models have: decided
    assert set(claims["verdict"][1:3]) <= {"supported", "not supported"} and claims["n"][1] == 4
    assert "untrained twins: median" in claims["evidence"][1]
    others = np.r_[0, 3:len(claims["claim"]) - 1]
    assert set(claims["verdict"][others]) == {"undefined"}
    assert all(e.startswith("undefined: ") for e in claims["evidence"][others])
    assert "needs 6 models" in claims["evidence"][3]  # C3 depth: a two-sided sign test over 2 models
    assert "no training run with saved epochs" in claims["evidence"][-2]
    # dropout 0 and 0.3 with one seed: one block of two models, whose test cannot reach p < 0.05
    assert "cannot reach p < 0.05" in claims["evidence"][4] and "holds weight_decay" in claims["evidence"][5]
    assert set(read_table(root / "results" / "tables" / "generalization.csv")) <= _documented_columns()


def test_claims_stability_on_the_tiny_runs_tables(tiny_run):
    """claims_stability recomputes the claims from the run's own tables (the unperturbed copy gives claims.csv's
    verdicts) and from copies moved by 1 % noise, and names the rows whose verdict changes."""
    from cwnnk.claims import claims_stability
    from cwnnk.tables import read_table

    root, _ = tiny_run
    tables = root / "results" / "tables"
    rows = claims_stability(tables, scale=0.01, copies=2)
    assert [r["verdict"] for r in rows] == list(read_table(tables / "claims.csv")["verdict"])
    assert all(len(r["verdicts"]) == 2 and r["fragile"] == (set(r["verdicts"]) != {r["verdict"]}) for r in rows)
    fragile = [r["test"] for r in rows if r["fragile"]]
    assert not fragile, f"verdicts a 1 % move of the measured columns flips: {fragile}"
    # Noise as large as the values themselves moves the decided C2 rows' evidence, not the table's shape.
    assert len(claims_stability(tables, scale=1.0, copies=1)) == len(rows)


def _declared_closure():
    """Canonical names of the distributions that README's `pip install -e .` brings in: the
    project's dependencies (pyproject.toml, no extras) and theirs, recursively."""
    import tomllib
    from importlib import metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    todo = [(Requirement(r), "") for r in project["dependencies"]]
    seen = set()
    while todo:
        req, extra = todo.pop()
        if req.marker and not req.marker.evaluate({"extra": extra}):
            continue
        key = (canonicalize_name(req.name), tuple(sorted(req.extras)))
        if key in seen:
            continue
        seen.add(key)
        try:
            requires = metadata.distribution(req.name).requires or []
        except metadata.PackageNotFoundError:
            continue
        for sub in map(Requirement, requires):
            todo += [(sub, e) for e in ("", *req.extras)]
    return {name for name, _ in seen} | {"cwnnk", "pip", "setuptools"}  # venv ships pip, setuptools (3.11)


# Runs snakemake with every module hidden whose distribution README's install does not bring in.
_AS_INSTALLED = """
import importlib.abc, json, runpy, sys
hidden = set(json.loads(sys.argv.pop(1)))
class Hide(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in hidden:
            raise ModuleNotFoundError(f"No module named {name!r} (not installed by README's pip install -e .)",
                                      name=name)
sys.meta_path.insert(0, Hide())
sys.argv[0] = "snakemake"
runpy.run_module("snakemake", run_name="__main__")
"""


def snakemake_as_installed(*args):
    """snakemake as README's install leaves it: test-only packages (pytest pulls in pygments,
    for one) cannot be imported."""
    import os
    import subprocess
    import sys
    from importlib import metadata

    from packaging.utils import canonicalize_name

    declared = _declared_closure()
    hidden = sorted(top for top, dists in metadata.packages_distributions().items()
                    if not any(canonicalize_name(d) in declared for d in dists))
    assert "pytest" in hidden
    cmd = [sys.executable, "-c", _AS_INSTALLED, json.dumps(hidden), "-s", str(REPO / "Snakefile"),
           "--directory", str(REPO), *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=dict(os.environ))


def test_tiny_run_prunes_each_final_model_reproducibly(tiny_run):
    """pruning.csv: per final model (the twins are not pruned), each layer alone and both at once, by each
    criterion at each fraction; the unpruned rows give the accuracy train measured; a rerun of a pruning job
    (random draws, fine-tunes) writes the same bytes."""
    import numpy as np

    from cwnnk.pruning import PRUNING_COLUMNS
    from cwnnk.tables import read_table, text_column

    root, config = tiny_run
    table = read_table(root / "results" / "tables" / "pruning.csv")
    assert list(table) == list(PRUNING_COLUMNS) and set(table) <= _documented_columns()
    assert sorted(set(table["model"])) == sorted(MODELS)
    # 3 scopes (conv1, conv2, all) x (cwnnk, l1, apoz + 3 random draws) x 5 fractions, per model
    assert len(table["model"]) == 2 * 3 * 6 * 5
    overlap = read_table(root / "results" / "tables" / "overlap.csv")
    for model in MODELS:
        unpruned = table["test_acc"][(text_column(table["model"]) == model) & (table["fraction"] == 0)]
        assert np.allclose(unpruned, overlap["test_acc"][text_column(overlap["model"]) == model][0])
    all_rows = text_column(table["layer"]) == "all"
    assert np.isfinite(table["test_acc_finetuned"][all_rows]).all()
    assert np.isnan(table["test_acc_finetuned"][~all_rows]).all()
    assert (table["n_removed"][all_rows & (table["fraction"] == 0.5)] == 4).all()  # 2 of 4 channels, 2 layers
    target = root / "results" / "pruning" / f"{MODELS[1]}.csv"
    before, stat = target.read_bytes(), target.stat()
    snakemake(target, "--cores", "1", "--configfile", config, "--forcerun", "pruning")
    assert target.read_bytes() == before
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # the same file: downstream stays up to date


def test_verification_cost_is_measured_on_the_runs_own_artifacts(tiny_run):
    from cwnnk.bench.verify import job_seconds, verification_seconds

    root, _ = tiny_run
    cost = verification_seconds(root / "results")
    assert set(cost) == {"checkpoints", "store chunks", "graph files", "JSON artifacts", "tables"}
    assert all(seconds > 0 for seconds in cost.values())  # every kind of artifact was found and checked
    assert 0 < sum(cost.values()) < job_seconds(root / "results")


def test_results_page_is_read_from_the_runs_tables(tiny_run, tmp_path):
    import csv

    root, _ = tiny_run
    out = tmp_path / "docs" / "results.md"
    proc = subprocess.run([sys.executable, "-m", "cwnnk", "results-page", str(root / "results"), "--out", str(out),
                           "--figures", str(tmp_path / "docs" / "img"), "--configfile", str(root / "config.yaml")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    page = out.read_text()
    claims = list(csv.DictReader(open(root / "results" / "tables" / "claims.csv")))
    for row in claims:  # every verdict, with its evidence as claims.csv words it
        assert f"| {row['claim']} | {row['test']} | **{row['verdict']}** |" in page
        assert row["evidence"].replace("|", "/") in page
    answer = list(csv.DictReader(open(root / "results" / "tables" / "answer.csv")))
    for layer in ("conv1", "conv2"):
        values = [float(r["redundancy"]) for r in answer if r["layer"] == layer]
        assert f"| {layer} | {len(values)} | {sum(values) / len(values):.3f} |" in page
    jobs = sum(1 for _ in (root / "results" / "benchmarks").rglob("*.tsv"))  # one row per job
    assert f"| jobs | {jobs:,}, " in page
    assert "![F0](img/F0.png)" in page and (tmp_path / "docs" / "img" / "F0.png").is_file()
    assert "graphs:" in page  # the config, shown
    proc = subprocess.run([sys.executable, "-m", "cwnnk", "results-page", str(tmp_path / "nowhere")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "no overlap.csv, answer.csv, claims.csv; run the workflow" in proc.stderr


def test_tiny_run_draws_every_figure_and_builds_the_report(tiny_run):
    """README's `snakemake --report results/report.html`, with only what README's install
    brings in; every figure's caption says what it tests and how many models it rests on."""
    root, config = tiny_run
    for figure in ("F1", "F2", "F3", "F4", "F5", "F6", "F7", "F8"):
        for ext in ("pdf", "png"):
            assert (root / "results" / "figures" / f"{figure}.{ext}").stat().st_size > 1000
    proc = snakemake_as_installed("--cores", "1", "--configfile", config, "--report", root / "report.html")
    assert proc.returncode == 0, f"the report needs an undeclared package:\n{proc.stderr[-3000:]}"
    html = (root / "report.html").read_text(errors="replace")
    assert "F3" in html and "overlap.csv" in html
    text = re.sub(r"(\\n|\s)+", " ", html)  # captions sit in JSON strings, line breaks as \n
    assert text.count("Claim tested") == 8 and "{{" not in html
    assert text.count("This run's verdicts, claim by claim: claims.csv") == 1
    assert "has no test split" not in text
    assert text.count("all 2 models of the run") == 3  # F1, F2, F3
    assert text.count("beside their 2 untrained twins") == 1  # F2
    assert text.count(f"one model, {MODELS[0]}, of the 2 of the run") == 2  # F4, F6


def test_dropping_the_intermediates_keeps_the_run_complete(tiny_run, tmp_path):
    """docs/workflow.md, disk use: after `rm -r results/activations results/graphs` a rerun does nothing."""
    import shutil

    root, _ = tiny_run
    results = tmp_path / "results"
    shutil.copytree(root / "results", results)  # copy2: modification times kept
    shutil.rmtree(results / "activations")
    shutil.rmtree(results / "graphs")
    config = write_config(tmp_path / "config.yaml", results)
    proc = snakemake("-n", "--cores", "1", "--configfile", config)
    assert "Nothing to be done" in proc.stdout + proc.stderr


def test_library_docs_lower_level_example_runs(tiny_run, monkeypatch):
    """docs/library.md's lower-level example, on the tiny run's store (its layer and a k that fits 60 images)."""
    root, _ = tiny_run
    blocks = re.findall(r"```python\n(.*?)```", (REPO / "docs" / "library.md").read_text(), re.S)
    (block,) = [b for b in blocks if 'open_activations("results/activations/convnet-d0.2-wd0-s1.zarr")' in b]
    code = (block.replace("convnet-d0.2-wd0-s1", MODELS[1]).replace('"conv3"', '"conv2"')
            .replace("k=25", "k=8"))
    monkeypatch.chdir(root)
    scope = {}
    exec(compile(code, "docs/library.md", "exec"), scope)
    assert len(scope["W"]) == 4 and scope["W"][0].shape == (60, 60)


def test_changing_k_reruns_graphs_and_downstream_only(tiny_run):
    root, config = tiny_run
    write_config(config, root / "results", graphs={"k": 6})
    try:
        counts = _job_counts(snakemake("-n", "--cores", "2", "--configfile", config).stdout)
    finally:
        write_config(config, root / "results")
    assert "train" not in counts and "extract" not in counts
    # 2 models and their 2 twins x 2 layers
    assert counts["graphs"] == 8 and counts["overlap"] == 8 and counts["tables"] == 1 and counts["figures"] == 1
    assert counts["pruning"] == 2 and counts["pruning_table"] == 1  # the CW-NNK order comes from the graphs


def test_changing_the_device_reruns_nothing(tiny_run):
    """`device` is an execution setting (a job resource, not a tracked param): cpu and auto give the same results
    on a machine without a GPU, and results on either device are valid."""
    root, config = tiny_run
    write_config(config, root / "results", device="auto")
    try:
        proc = snakemake("-n", "--cores", "2", "--configfile", config)
    finally:
        write_config(config, root / "results")
    assert "Nothing to be done" in proc.stdout + proc.stderr


@pytest.mark.parametrize("level, new", [
    ({"label_noise": [0.0, 0.2]}, {"convnet-d0-wd0-ln0.2-s1", "convnet-d0.3-wd0-ln0.2-s1"}),
    ({"n_train": [None, 50]}, {"convnet-d0-wd0-n50-s1", "convnet-d0.3-wd0-n50-s1"}),
])
def test_adding_a_factor_level_runs_only_the_new_models(tiny_run, level, new):
    """A new sweep level trains, extracts and analyses only its own models; the finished ones
    are reused and only the run-wide tables and figures are redone."""
    from conftest import TINY_CONFIG

    root, config = tiny_run
    write_config(config, root / "results", sweep=dict(TINY_CONFIG["sweep"], **level))
    try:
        out = snakemake("-n", "--cores", "2", "--configfile", config).stdout
    finally:
        write_config(config, root / "results")
    counts = _job_counts(out)
    jobs = re.findall(r"^rule (\w+):\n(?:    .*\n)*?    wildcards: model=([^,\s]+)", out, re.M)
    analysed = new | {f"{model}-e0" for model in new}  # each new run's untrained twin comes from its train job
    for stage, models in (("train", new), ("extract", analysed), ("graphs", analysed), ("overlap", analysed),
                          ("pruning", new)):
        assert {model for rule, model in jobs if rule == stage} == models, stage
    assert counts["train"] == 2 and counts["extract"] == 4 and counts["graphs"] == counts["overlap"] == 8
    assert counts["tables"] == counts["generalization"] == counts["figures"] == 1
    assert "solvers" not in counts and "manifolds" not in counts


@pytest.mark.parametrize("preset, jobs", [("cifar10-paper", {"train": 18, "graphs": 144}),
                                          ("cifar10-paper-authors", {"train": 18, "graphs": 144}),
                                          ("cifar10-resnet18", {"train": 4, "graphs": 136}),
                                          ("generalization", {"train": 36, "graphs": 36 * 9 * 4, "pruning": 36}),
                                          ("digits-authors", {"train": 16, "graphs": 16 * 3 * 4})])
def test_presets_validate_and_dry_run(preset, jobs, tmp_path):
    import yaml

    from cwnnk.config import validate

    path = REPO / "configs" / f"{preset}.yaml"
    validate(yaml.safe_load(path.read_text()))
    preset = yaml.safe_load(path.read_text())
    if preset["dataset"]["name"] == "cifar10":
        # CIFAR-10 is not on this machine: the check before any job refuses a run without it ...
        proc = snakemake("-n", "--cores", "2", "--configfile", path, "--config", f"results={tmp_path / 'results'}",
                         check=False)
        assert proc.returncode != 0 and "config key 'dataset.root': no CIFAR-10 at" in proc.stderr
        # ... and plans it where the data is there (an empty stand-in suffices for a dry run)
        (tmp_path / "cifar" / "cifar-10-batches-py").mkdir(parents=True)
        preset["dataset"]["root"] = str(tmp_path / "cifar")
    (tmp_path / "preset.yaml").write_text(yaml.safe_dump(preset))
    counts = _job_counts(snakemake("-n", "--cores", "2", "--configfile", tmp_path / "preset.yaml",
                                   "--config", f"results={tmp_path / 'results'}").stdout)
    for rule, count in jobs.items():
        assert counts[rule] == count
    stated = re.search(r"^# Jobs: .*?= ([\d,]+)\.$", path.read_text(), re.M | re.S)
    if stated:  # the job count a preset's comment gives
        assert int(stated[1].replace(",", "")) == counts["total"], stated[0]


@pytest.mark.parametrize("preset, base", [("cifar10-paper-authors", "cifar10-paper"), ("digits-authors", None)])
def test_authors_kernel_presets_change_the_kernel_alone(preset, base):
    import yaml

    read = lambda path: yaml.safe_load(path.read_text())  # noqa: E731
    variant = read(REPO / "configs" / f"{preset}.yaml")
    original = read(REPO / ("config.yaml" if base is None else f"configs/{base}.yaml"))
    assert variant["graphs"].pop("kernel") == "cosine" and original["graphs"].pop("kernel") == "gaussian"
    assert variant.pop("results") != original.pop("results")
    assert variant == original


def test_validation_split_through_snakemake(tmp_path):
    """training.validation 0.2 with saved epochs: early_stopping.csv gets the epoch the validation
    split picks, and the held-out images are neither trained on nor stored."""
    import numpy as np

    from cwnnk.activations import open_activations
    from cwnnk.datasets import load_dataset
    from cwnnk.tables import read_table

    from conftest import TINY_CONFIG

    results = tmp_path / "results"
    config = write_config(tmp_path / "config.yaml", results, sweep=dict(TINY_CONFIG["sweep"], dropout=[0.0]),
                          training=dict(TINY_CONFIG["training"], epochs=3, save_epochs=[1, 2], validation=0.2))
    snakemake(results / "tables" / "early_stopping.csv", "--cores", "2", "--configfile", config)
    run = "convnet-d0-wd0-s1"
    metrics = json.loads((results / "models" / run / "metrics.json").read_text())
    assert metrics["n_train"] == 77 and metrics["n_validation"] == 19  # 96 images, round(0.2 * 96) held out
    val_acc = [row["val_acc"] for row in metrics["history"]]
    assert len(val_acc) == 3 and all(0 <= v <= 1 for v in val_acc)
    (early,) = [dict(zip(t, v)) for t in [read_table(results / "tables" / "early_stopping.csv")]
                for v in zip(*t.values())]
    assert early["run"] == run and early["n_epochs"] == 3 and np.isnan(early["val_skipped"])  # an empty column
    # The rule (patience 1) worked out here on the history of epochs 1, 2, 3: stop at the first
    # evaluation that fails to improve strictly, keep the one before.
    error = [1 - v for v in val_acc]
    expected = 1 if not error[1] < error[0] else 2 if not error[2] < error[1] else 3
    assert early["val_epoch"] == expected
    overlap = read_table(results / "tables" / "overlap.csv")
    last = (overlap["is_last"] == 1) & (overlap["kind"] != "untrained")  # the twin (epoch 0) is no stopping point
    at = dict(zip(overlap["epoch"][last].tolist(), overlap["test_acc"][last].tolist()))
    assert early["val_test_acc"] == at[expected]
    assert overlap["val_acc"][last].tolist() == [val_acc[int(e) - 1] for e in overlap["epoch"][last]]
    assert {"val_acc", "val_loss"} <= set(overlap) and set(overlap) <= _documented_columns()
    assert set(read_table(results / "tables" / "early_stopping.csv")) <= _documented_columns()
    # The stores hold only images trained on: none of the held-out ones.
    for model in (run, f"{run}-e1", f"{run}-e0"):
        store = open_activations(results / "activations" / f"{model}.zarr")
        held = load_dataset(store.attrs["dataset"]["config"]).validation.indices
        assert len(held) == 19 and not set(held.tolist()) & set(store.indices.tolist())
        assert len(store) == 60


def test_tiny_run_compares_every_model_with_its_untrained_twin(tiny_run):
    """Each run's twin <run>-e0 is its seeded initial state, analysed on the same images and layers; the
    model's rows carry the twin's headline and trained minus twin with an interval that holds it."""
    import numpy as np
    import torch

    from cwnnk.activations import open_activations
    from cwnnk.models import build_model, load_checkpoint
    from cwnnk.tables import read_table

    root, _ = tiny_run
    results = root / "results"
    table = read_table(results / "tables" / "overlap.csv")
    for model in MODELS:
        twin = f"{model}-e0"
        net, spec = load_checkpoint(results / "models" / twin / "checkpoint.pt")
        torch.manual_seed(1)  # the run's seed
        assert all(torch.equal(net.state_dict()[k], v) for k, v in build_model(spec).state_dict().items())
        stores = [open_activations(results / "activations" / f"{m}.zarr") for m in (model, twin)]
        assert np.array_equal(stores[0].indices, stores[1].indices)  # the same images
        rows = table["model"] == model
        twin_rows = table["model"] == twin
        assert (table["twin"][rows] == twin).all() and (table["kind"][twin_rows] == "untrained").all()
        assert np.array_equal(table["redundancy_twin"][rows], table["redundancy"][twin_rows])
        diff = table["redundancy_vs_twin"][rows]
        assert np.allclose(diff, table["redundancy"][rows] - table["redundancy"][twin_rows])
        assert ((table["redundancy_vs_twin_ci_lo"][rows] <= diff).all()
                and (diff <= table["redundancy_vs_twin_ci_hi"][rows]).all())
        assert set(table["training_effect"][rows]) <= {"raised", "lowered", "none beyond the interval"}
        assert (table["redundancy_ci_lo"][rows] <= table["redundancy"][rows]).all()


@pytest.mark.parametrize("setting, expected", [("auto", True), (False, False), (True, True)])
def test_calibration_figures_run_for_the_built_in_experiment_or_when_asked(setting, expected, tmp_path):
    """figures.calibration: auto runs the manifolds and solvers jobs (F5, F6) for built-in archs; false drops them
    (claims.csv's C1 is then undefined, F5 and F6 say why), true keeps them."""
    figures = dict(TINY_FIGURES, calibration=setting)
    config = write_config(tmp_path / "c.yaml", tmp_path / "results", figures=figures)
    counts = _job_counts(snakemake("-n", "--cores", "2", "--configfile", config).stdout)
    assert ("manifolds" in counts and "solvers" in counts) == expected
    assert counts["claims"] == counts["figures"] == 1
