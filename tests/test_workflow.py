"""The workflow through real Snakemake runs: dry runs of the shipped configs and one tiny
end-to-end experiment on the synthetic dataset, shared by the tests of this module."""

import json
import re

import pytest

from conftest import REPO, snakemake, write_config


def _job_counts(dry_run_output):
    table = dry_run_output.split("Job stats:")[1]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M)}


def test_default_config_dry_run(tmp_path):
    proc = snakemake("-n", "--cores", "2", "--config", f"results={tmp_path / 'results'}")
    counts = _job_counts(proc.stdout)
    assert counts["train"] == 16  # 2 dropout rates x 2 label-noise levels x 2 training-set sizes x 2 seeds
    assert counts["extract"] == 32  # each run also at its saved epoch 5


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


def test_tiny_run_overlap_table_has_every_documented_column(tiny_run):
    import numpy as np

    from cwnnk.tables import read_table

    root, _ = tiny_run
    table = read_table(root / "results" / "tables" / "overlap.csv")
    docs = (REPO / "docs" / "outputs.md").read_text() + (REPO / "docs" / "overlap.md").read_text()
    columns = set()
    for cell in re.findall(r"^\| (`[^|]+)\|", docs, re.M):  # first cell: `a`, `b` or `rho_{stat}`
        for name in re.findall(r"`([a-z0-9_{}]+)`", cell):
            stats = ("mean", "std", "q25", "median", "q75") if "{stat}" in name else ("",)
            columns |= {name.replace("{stat}", stat) for stat in stats}
    assert set(table) <= columns, f"undocumented columns: {sorted(set(table) - columns)}"
    assert len(table["model"]) == 4  # 2 models x 2 layers
    assert sorted(set(table["is_last"])) == [0, 1] and set(table["depth"]) == {0, 1}
    for column in ("rho_hat_mean", "pairwise_overlap_mean", "kappa_mean", "gamma_mean", "degree_agg_mean",
                   "rho_hat_chance_mean", "id_layer", "test_acc", "gap_acc"):
        assert np.isfinite(table[column]).all(), column
    assert ((0 <= table["rho_hat_mean"]) & (table["rho_hat_mean"] <= 1)).all()


def test_tiny_run_draws_every_figure_and_builds_the_report(tiny_run):
    root, config = tiny_run
    for figure in ("F1", "F2", "F3", "F4", "F5", "F6"):
        for ext in ("pdf", "png"):
            assert (root / "results" / "figures" / f"{figure}.{ext}").stat().st_size > 1000
    snakemake("--cores", "1", "--configfile", config, "--report", root / "report.html")
    html = (root / "report.html").read_text(errors="replace")
    assert "F3" in html and "overlap.csv" in html


def test_changing_k_reruns_graphs_and_downstream_only(tiny_run):
    root, config = tiny_run
    write_config(config, root / "results", graphs={"k": 6})
    try:
        counts = _job_counts(snakemake("-n", "--cores", "2", "--configfile", config).stdout)
    finally:
        write_config(config, root / "results")
    assert "train" not in counts and "extract" not in counts
    assert counts["graphs"] == 4 and counts["overlap"] == 4 and counts["tables"] == 1 and counts["figures"] == 1


@pytest.mark.parametrize("preset, jobs", [("cifar10-paper", {"train": 18, "graphs": 72}),
                                          ("cifar10-resnet18", {"train": 4, "graphs": 68}),
                                          ("generalization", {"train": 36, "graphs": 288})])
def test_presets_validate_and_dry_run(preset, jobs, tmp_path):
    import yaml

    from cwnnk.config import validate

    path = REPO / "configs" / f"{preset}.yaml"
    validate(yaml.safe_load(path.read_text()))
    counts = _job_counts(snakemake("-n", "--cores", "2", "--configfile", path,
                                   "--config", f"results={tmp_path / 'results'}").stdout)
    for rule, count in jobs.items():
        assert counts[rule] == count
