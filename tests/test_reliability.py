"""Faults and bad input (issue #24, docs/reliability.md): checks before any job runs, canonical
params, no stale temporaries after a kill, errors in the rule logs, errors that name the file."""

import copy
import errno
import sys

import numpy as np
import pytest

from cwnnk.config import ConfigError, Experiment, validate
from cwnnk.preflight import canonical, check, graph_samples

from conftest import REPO, TINY_CONFIG, snakemake, write_config

REPO_SNAKEFILE = REPO / "Snakefile"


def _experiment(**overrides):
    return Experiment.from_config(validate(dict(copy.deepcopy(TINY_CONFIG), results="r", **overrides)))


# --- 1. every check the config decides is made before any job runs ---------------------------

def test_k_against_n_names_the_keys():
    exp = _experiment(graphs={"k": 300})
    assert graph_samples(exp.config) == 60  # extract.n_samples = 60 of 96 training images
    with pytest.raises(ConfigError, match=r"'graphs.k': 300 needs more than k samples.*N = 60.*extract.n_samples = 60"):
        check(exp)
    check(_experiment(graphs={"k": 59}))
    with pytest.raises(ConfigError, match=r"N = 20 .*graphs.n_samples = 20"):
        check(_experiment(graphs={"k": 25, "n_samples": 20}))
    with pytest.raises(ConfigError, match=r"N = 40 \(dataset 'synthetic'"):
        check(_experiment(graphs={"k": 40}, dataset=dict(TINY_CONFIG["dataset"], n_train=40)))
    with pytest.raises(ConfigError, match="figures.manifold_n = 120") as err:
        check(_experiment(graphs={"k": 150}, figures={"manifold_n": 120}, extract={"n_samples": None},
                          dataset=dict(TINY_CONFIG["dataset"], n_train=400)))
    assert "N = " not in str(err.value)  # the 400 stored samples are enough


def _sweep(**overrides):
    return dict(TINY_CONFIG["sweep"], **overrides)


def test_training_set_sizes_above_the_dataset_name_the_key_and_limit():
    # digits: sklearn's 1,797 images less the 360 of the stratified 20 % test split.
    with pytest.raises(ConfigError, match=r"'sweep.n_train': level 2000 exceeds the 1437 training images of "
                                          r"dataset 'digits'; expected levels of at most 1437") as err:
        check(_experiment(dataset={"name": "digits"}, sweep=_sweep(n_train=[None, 400, 2000])))
    assert "level 400" not in str(err.value)
    with pytest.raises(ConfigError, match=r"'dataset.n_train': 3000 exceeds the 1437 training images"):
        check(_experiment(dataset={"name": "digits", "n_train": 3000}))
    check(_experiment(dataset={"name": "digits"}, sweep=_sweep(n_train=[None, 1437])))
    # cifar10 would silently train a level above its 5,000 images per chosen class on all of them.
    cifar = {"name": "cifar10", "classes": [0, 8], "download": True}
    with pytest.raises(ConfigError, match=r"'sweep.n_train': level 10001 exceeds the 10000 training images"):
        check(_experiment(dataset=cifar, sweep=_sweep(n_train=[10000, 10001])))


def test_sweep_levels_are_checked_against_k_after_the_validation_split():
    training = dict(TINY_CONFIG["training"], validation=0.2)
    # Level 40 keeps 40 - 8 = 32 after the validation split; 50 keeps 40, 51 keeps 51 - 10 = 41.
    with pytest.raises(ConfigError, match=r"'sweep.n_train': level 40 leaves graphs of N = 32 .*training.validation "
                                          r"= 0.2 holds out 8.*not more than graphs.k = 40; use levels of at least 51"):
        check(_experiment(graphs={"k": 40}, training=training, sweep=_sweep(n_train=[None, 40])))
    with pytest.raises(ConfigError, match="level 50 leaves graphs of N = 40"):
        check(_experiment(graphs={"k": 40}, training=training, sweep=_sweep(n_train=[50])))
    check(_experiment(graphs={"k": 40}, training=training, sweep=_sweep(n_train=[51])))
    check(_experiment(graphs={"k": 39}, sweep=_sweep(n_train=[40])))  # no validation split: N = 40
    # The dataset's own size counts the validation split too (96 - 19 = 77, then extract.n_samples).
    with pytest.raises(ConfigError, match=r"'graphs.k': 80 .*N = 77 .*training.validation = 0.2 holds out 19"):
        check(_experiment(graphs={"k": 80}, training=training, extract={"n_samples": None},
                          figures={"manifold_n": 200}))
    # A split that leaves nothing to train on is named by its own key.
    with pytest.raises(ConfigError, match=r"'training.validation': 0.95 holds out 10 of the 10 training images "
                                          r"\(sweep.n_train level 10\)"):
        check(_experiment(training=dict(TINY_CONFIG["training"], validation=0.95), sweep=_sweep(n_train=[10])))


def test_missing_external_checkpoint_and_dataset_folder(tmp_path):
    ext = {"name": "ext", "path": str(tmp_path / "gone.pt"), "model": TINY_CONFIG["model"]}
    with pytest.raises(ConfigError, match=r"'external.0.path': '.*gone.pt' \(model 'ext'\) does not exist"):
        check(_experiment(external=[ext]))
    cifar = {"name": "cifar10", "root": str(tmp_path / "nowhere"), "n_train": 100}
    with pytest.raises(ConfigError, match=r"'dataset.root': no CIFAR-10 at '.*nowhere/cifar-10-batches-py'"):
        check(_experiment(dataset=cifar))


def test_missing_external_checkpoint_stops_snakemake_at_parse_time(tmp_path):
    """Even with finished results: never 'Nothing to be done' with a model missing from the tables."""
    ext = {"name": "ext", "path": str(tmp_path / "gone.pt"), "model": TINY_CONFIG["model"]}
    cfg = write_config(tmp_path / "config.yaml", tmp_path / "results", external=[ext])
    proc = snakemake("--cores", "1", "--configfile", cfg, check=False)
    assert proc.returncode != 0 and "Nothing to be done" not in proc.stdout + proc.stderr
    assert "cannot run" in proc.stderr and "external.0.path" in proc.stderr and "gone.pt" in proc.stderr
    assert not (tmp_path / "results").exists()  # stopped before any job
    proc = snakemake("-n", "--configfile", cfg, check=False)  # a dry run stops the same way
    assert proc.returncode != 0 and "external.0.path" in proc.stderr


# --- 2. canonical params ------------------------------------------------------------------

def _reordered(obj):
    if isinstance(obj, dict):
        return {key: _reordered(obj[key]) for key in reversed(list(obj))}
    if isinstance(obj, list):
        return [_reordered(value) for value in obj]
    return obj


def test_key_order_does_not_change_any_params():
    config = dict(copy.deepcopy(TINY_CONFIG), results="r")
    a, b = (Experiment.from_config(validate(c)) for c in (config, _reordered(config)))
    m = next(iter(a.models))
    assert list(a.models[m]["spec"]["layers"][0]) != list(b.models[m]["spec"]["layers"][0])  # the order differs
    assert repr(canonical(a.models[m])) == repr(canonical(b.models[m]))  # rule params `entry`
    for params in (lambda e: e.train(m), lambda e: e.extract(m), lambda e: e.import_(m), lambda e: e.graphs,
                   lambda e: e.overlap, lambda e: e.manifolds, lambda e: e.figures):
        assert repr(params(a).to_dict()) == repr(params(b).to_dict())
    assert a.layers == b.layers


# --- 5. errors that name the file (and layer, channel, sample) and what to do -----------------

def _store(path, values):
    """A complete activation store with one layer 'conv1' holding values (N, C, H, W)."""
    from cwnnk.activations import StoreWriter

    n = len(values)
    writer = StoreWriter(path, {"model": "m"}, "zstd")
    writer.add_split("train", np.arange(n) % 3, np.arange(n) + 100, {"conv1": values.shape[1:]}, 8)
    for start in range(0, n, 8):
        writer.write("train", "conv1", start, values[start : start + 8])
    writer.finish()
    return path


@pytest.fixture
def values():
    return np.random.default_rng(0).random((24, 3, 4, 4), dtype=np.float32)


def test_unreadable_checkpoints_name_the_file(tmp_path):
    import torch

    from cwnnk.models import build_model, load_checkpoint, save_checkpoint

    spec = _experiment().models["convnet-d0-wd0-s1"]["spec"]
    good = tmp_path / "good.pt"
    save_checkpoint(good, build_model(spec), spec)
    truncated, random_bytes = tmp_path / "truncated.pt", tmp_path / "random.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    random_bytes.write_bytes(np.random.default_rng(0).bytes(4096))
    for path in (truncated, random_bytes):
        with pytest.raises(ValueError, match=rf"{path}: not a readable PyTorch checkpoint .*truncated or not a .pt"):
            load_checkpoint(path, spec)
    torch.save({"x": torch.zeros(1)}, tmp_path / "plain.pt")
    load_checkpoint(good)  # the good one still loads


@pytest.mark.parametrize("stream", [False, True])
def test_damaged_chunk_names_store_and_layer(tmp_path, values, stream):
    from cwnnk.activations import StoreError
    from cwnnk.graphs import build_layer_graphs
    from cwnnk.params import GraphParams

    store = _store(tmp_path / "m.zarr", values)
    chunk = store / "train" / "conv1" / "c.1.2.0.0"
    chunk.write_bytes(chunk.read_bytes()[:10])  # truncated
    with pytest.raises(StoreError, match=r"m.zarr: layer 'conv1' cannot be read .*damaged.*rerun the extract stage"):
        build_layer_graphs(store, "conv1", tmp_path / "g", GraphParams(k=4, device="cpu"), log=lambda m: None,
                           stream=stream)
    assert not (tmp_path / "g").exists()


@pytest.mark.parametrize("stream", [False, True])  # the layer read whole, or a block of channels at a time
def test_nan_in_a_channel_names_store_layer_channel_and_sample(tmp_path, values, stream, monkeypatch):
    import cwnnk.graphs
    from cwnnk.graphs import NonFiniteData, build_layer_graphs
    from cwnnk.params import GraphParams

    # one channel per block: the streamed check sees channel 2 as the first of its block
    monkeypatch.setattr(cwnnk.graphs, "BLOCK_BYTES", 1)

    values[5, 2, 1, 3] = np.nan
    store = _store(tmp_path / "m.zarr", values)
    with pytest.raises(NonFiniteData, match=r"m.zarr: non-finite data \(nan\) in layer 'conv1', channel 2, stored "
                                            r"sample 5 \(source index 105\), value 7 .*1 non-finite values in "
                                            r"channel\(s\) \[2\].*rerun the extract stage"):
        build_layer_graphs(store, "conv1", tmp_path / "g", GraphParams(k=4, device="cpu"), log=lambda m: None,
                           stream=stream)
    assert not (tmp_path / "g").exists()


def test_all_nan_channel_is_non_finite_data_not_missing_chunks(tmp_path, values):
    import zarr

    from cwnnk.activations import StoreError, open_activations

    store = _store(tmp_path / "m.zarr", values)
    zarr.open_array(str(store / "train" / "conv1"), mode="r+")[:, 1] = np.nan  # zarr drops these chunks
    with pytest.raises(StoreError, match=r"non-finite data: channel\(s\) \[1\] of train/conv1") as err:
        open_activations(store)
    assert "lacks" not in str(err.value)


def test_disk_full_names_the_output(tmp_path, values, monkeypatch):
    import cwnnk.graphs
    from cwnnk.graphs import build_layer_graphs
    from cwnnk.params import GraphParams

    def full(file, **arrays):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cwnnk.graphs.np, "savez", full)
    store = _store(tmp_path / "m.zarr", values)
    out = tmp_path / "graphs" / "conv1"
    with pytest.raises(OSError, match=rf"No space left on device while writing {out}; free disk space") as err:
        build_layer_graphs(store, "conv1", out, GraphParams(k=4, device="cpu"), log=lambda m: None)
    assert err.value.errno == errno.ENOSPC
    assert list(out.parent.iterdir()) == []  # no output, no temporary


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    from cwnnk.preflight import load_yaml, main

    bad = tmp_path / "config.yaml"
    bad.write_text("device: cpu\ngraphs:\n  k: [8\nthreads: 1\n")
    with pytest.raises(ConfigError, match=rf"{bad} line 4, column 8: YAML syntax error"):
        load_yaml(bad)
    assert main([str(bad)]) == 1
    proc = snakemake("-n", cwd=tmp_path, check=False)  # the Snakefile's default config.yaml
    assert proc.returncode != 0 and "config.yaml line 4" in proc.stderr


# --- 3 and 4: through Snakemake --------------------------------------------------------------

ONE_MODEL = {"sweep": {"dropout": [0.0], "seeds": [1]}}
M = "convnet-d0-wd0-s1"


def _temporaries(results):
    return sorted(str(p) for p in results.rglob(".*.tmp-*"))


@pytest.mark.slow
def test_every_stage_killed_and_rerun_gives_the_clean_tables(tmp_path):
    """SIGKILL each stage at its pause point (its output complete under a temporary name); after
    the documented recovery (--unlock, then --rerun-incomplete, naming the killed job's output:
    Snakemake does not remake a missing intermediate file whose consumers are up to date) no
    temporary is left and the tables equal the clean run's, byte for byte."""
    from cwnnk.atomic import PAUSE_ENV

    from conftest import kill_when_logged

    results = tmp_path / "results"
    cfg = write_config(tmp_path / "config.yaml", results, **ONE_MODEL)
    targets = [results / "tables" / f"{table}.csv" for table in ("overlap", "channels", "pairwise")]
    run = ("--cores", "1", "--configfile", cfg)
    snakemake(*targets, *run, cwd=tmp_path)
    clean = [t.read_bytes() for t in targets]
    logs = results / "logs"
    stages = [("train", f"models/{M}/checkpoint.pt", logs / "train" / f"{M}.log"),
              ("extract", f"activations/{M}.zarr", logs / "extract" / f"{M}.log"),
              ("graphs", f"graphs/{M}/conv1", logs / "graphs" / M / "conv1.log"),
              ("overlap", f"overlap/{M}/conv2.json", logs / "overlap" / M / "conv2.log"),
              ("tables", "tables/channels.csv", logs / "tables.log")]  # overlap.csv is already in place
    cmd = [sys.executable, "-m", "snakemake", "-s", REPO_SNAKEFILE, "--directory", tmp_path, *targets, *run]
    for rule, pattern, log in stages:
        kill_when_logged([*cmd, "--forcerun", rule], log, "pausing before renaming", {PAUSE_ENV: pattern})
        assert _temporaries(results), rule  # the kill left its temporary behind
        output = results / pattern.replace(".zarr", ".zarr/zarr.json")
        assert not output.exists(), rule  # Snakemake removed the old output before the job
        snakemake("--unlock", "--configfile", cfg, cwd=tmp_path)
        snakemake(output, *targets, *run, "--rerun-incomplete", cwd=tmp_path)
        assert "left by a run that was killed" in log.read_text(), rule
        assert _temporaries(results) == [] and output.exists(), rule
        assert [t.read_bytes() for t in targets] == clean, rule


@pytest.mark.slow
def test_failing_import_extract_and_graphs_jobs_log_their_traceback(tmp_path):
    import torch

    from cwnnk.models import build_model, save_checkpoint

    results = tmp_path / "results"
    paths = {name: tmp_path / f"{name}.pt" for name in ("good", "nan", "bad")}
    external = [{"name": name, "path": str(path), "model": TINY_CONFIG["model"]} for name, path in paths.items()]
    spec = _experiment(external=[]).models[M]["spec"]
    torch.manual_seed(0)
    model = build_model(spec)
    save_checkpoint(paths["good"], model, spec)
    with torch.no_grad():
        model.features.conv2.conv.bias[1] = float("nan")
    save_checkpoint(paths["nan"], model, spec)
    paths["bad"].write_bytes(paths["good"].read_bytes()[:1000])  # truncated
    cfg = write_config(tmp_path / "config.yaml", results, external=external, **ONE_MODEL)
    run = ("--cores", "1", "--configfile", cfg)
    snakemake(results / "activations" / "good.zarr" / "zarr.json", *run, cwd=tmp_path)
    chunk = results / "activations" / "good.zarr" / "train" / "conv1" / "c.0.0.0.0"
    chunk.write_bytes(chunk.read_bytes()[:10])
    proc = snakemake(results / "models" / "bad" / "metrics.json", results / "activations" / "nan.zarr" / "zarr.json",
                     results / "graphs" / "good" / "conv1", *run, "--keep-going", cwd=tmp_path, check=False)
    assert proc.returncode != 0
    logs = results / "logs"
    expected = {logs / "import_checkpoint" / "bad.log": f"{paths['bad']}: not a readable PyTorch checkpoint",
                logs / "extract" / "nan.log": "NonFiniteActivation: non-finite activation (nan) in layer 'conv2', "
                                              "channel 1",
                logs / "graphs" / "good" / "conv1.log": "layer 'conv1' cannot be read"}
    for log, message in expected.items():
        text = log.read_text()
        assert "failed" in text and "Traceback (most recent call last)" in text and message in text, (log, text)


# ---------------------------------------------------------------------------- messages

def test_disk_full_names_the_output_and_ends_without_none(tmp_path):
    import errno

    from cwnnk.atomic import atomic_path

    with pytest.raises(OSError) as err:
        with atomic_path(tmp_path / "tables" / "overlap.csv"):
            raise OSError(errno.ENOSPC, "No space left on device")  # as a full disk raises it: no filename
    text = str(err.value)
    assert "while writing" in text and "overlap.csv" in text and "free disk space" in text
    assert not text.endswith(": None")


class _RunsCode:  # a pickled object of this class is what torch's safe loader refuses
    pass


def test_a_weights_file_that_fails_to_load_gives_no_advice_to_run_its_code(tmp_path):
    import torch

    from cwnnk.models import initial_state_dict

    path = tmp_path / "w.pt"
    torch.save({"conv1.weight": _RunsCode()}, path)
    spec = {"arch": "torchvision", "name": "resnet18", "weights": str(path), "num_classes": 10,
            "input_shape": [3, 32, 32], "kwargs": {}}
    with pytest.raises(ValueError) as err:
        initial_state_dict(spec)
    text = str(err.value)
    assert text.startswith(f"config key 'model.weights': {path}: not a readable PyTorch checkpoint")
    assert "refused by torch's safe loader" in text and "weights_only=False" not in text


def test_extract_layers_all_as_a_list_means_all():
    base = Experiment.from_config(validate(dict(TINY_CONFIG, results="r")))
    listed = Experiment.from_config(validate(dict(TINY_CONFIG, results="r",
                                                  extract=dict(TINY_CONFIG["extract"], layers=["all"]))))
    assert listed.layers == base.layers and all(len(v) == 2 for v in listed.layers.values())


def test_a_straggler_never_deletes_a_finished_output(tmp_path, monkeypatch):
    """Two writers of one output in the order that failed: an orphaned job on another host (A) still writing
    while its resubmitted twin (B) finishes. B leaves A's temporary alone (its owner is not provably gone) and A's
    late rename replaces B's complete output with its own complete one: the output is never absent. A straggler
    whose temporary was old enough to be taken for abandoned fails with a named error, and B's output stays."""
    import os
    import time

    import cwnnk.atomic as atomic

    out, host = tmp_path / "overlap.json", atomic._HOST

    def straggler(text, age=0.0):
        monkeypatch.setattr(atomic, "_HOST", "another_host")
        writer = atomic.atomic_path(out)
        tmp = writer.__enter__()
        tmp.write_text(text)
        if age:
            os.utime(tmp, (time.time() - age, time.time() - age))
        monkeypatch.setattr(atomic, "_HOST", host)
        return writer, tmp

    a, tmp_a = straggler("A")
    atomic.write_json(out, "B")
    assert tmp_a.exists() and '"B"' in out.read_text()
    a.__exit__(None, None, None)
    assert out.read_text() == "A" and not tmp_a.exists()

    old, tmp_old = straggler("C", age=atomic.STALE_AFTER_S + 60)
    atomic.write_json(out, "D")
    assert not tmp_old.exists() and '"D"' in out.read_text()
    with pytest.raises(FileNotFoundError, match=r"overlap.json.*another run.*left as it is"):
        old.__exit__(None, None, None)
    assert '"D"' in out.read_text()


def test_a_folder_output_is_replaced_whole(tmp_path):
    from cwnnk.atomic import atomic_path

    out = tmp_path / "graphs"
    for text in ("first", "second"):
        with atomic_path(out) as tmp:
            tmp.mkdir()
            (tmp / f"{text}.txt").write_text(text)
    assert [p.name for p in out.iterdir()] == ["second.txt"]
    assert not list(tmp_path.glob(".graphs.tmp-*"))


def test_temporaries_count_as_abandoned_only_when_provably_so():
    """Longer than any job may run, so that a live job on another host is never taken for dead."""
    import cwnnk.atomic as atomic

    limits = [int(text.rstrip("h")) * 3600 for text in
              __import__("re").findall(r'runtime="(\d+)h"', (REPO / "workflow" / "rules" / "common.smk").read_text())]
    assert atomic.STALE_AFTER_S > max(limits)


@pytest.mark.slow
def test_a_killed_run_resumes_with_one_command(tmp_path):
    """While a run is going, `python -m cwnnk resume` refuses to touch it. Once that run is killed in its
    graphs stage (SIGKILL: a lock, an incomplete output and a temporary left), the same command with the run's
    own arguments finishes it, as docs/reliability.md gives it; a second resume finds nothing to do."""
    import os
    import signal
    import subprocess
    import time

    from cwnnk.atomic import PAUSE_ENV

    results = tmp_path / "results"
    cfg = write_config(tmp_path / "config.yaml", results, **ONE_MODEL)
    args = ["--cores", "1", "--configfile", str(cfg)]
    log = results / "logs" / "graphs" / M / "conv1.log"
    run = subprocess.Popen([sys.executable, "-m", "snakemake", "-s", str(REPO_SNAKEFILE), *args], cwd=tmp_path,
                           env=dict(os.environ, **{PAUSE_ENV: f"graphs/{M}/conv1"}), start_new_session=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    resume = [sys.executable, "-m", "cwnnk", "resume", "-s", str(REPO_SNAKEFILE), *args]
    try:
        deadline = time.monotonic() + 300
        while "pausing before renaming" not in (log.read_text() if log.exists() else ""):
            assert run.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
        busy = subprocess.run(resume, cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert busy.returncode != 0 and "still running in" in busy.stderr, busy.stderr[-2000:]
    finally:
        os.killpg(run.pid, signal.SIGKILL)
        run.wait()
    assert _temporaries(results) and (tmp_path / ".snakemake" / "locks").exists()
    proc = subprocess.run(resume, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (results / "tables" / "claims.csv").exists() and _temporaries(results) == []
    again = subprocess.run(resume + ["-n"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr


def test_a_flipped_bit_in_a_checkpoint_fails_on_read_naming_the_file(tmp_path):
    """torch's loader skips the zip's checksums: a checkpoint with one bit flipped loads with other weights. The
    sha256 recorded in metrics.json when it was written catches it, wherever a stage reads the checkpoint."""
    import json

    import torch

    from cwnnk.models import build_model, load_checkpoint, save_checkpoint

    spec = _experiment().models["convnet-d0-wd0-s1"]["spec"]
    path = tmp_path / "models" / "m" / "checkpoint.pt"
    digest = save_checkpoint(path, build_model(spec), spec)
    (path.parent / "metrics.json").write_text(json.dumps({"checkpoint_sha256": digest}))
    load_checkpoint(path)
    data = bytearray(path.read_bytes())
    weights = torch.load(path, weights_only=True)["state_dict"]["features.conv1.conv.weight"]
    at = bytes(data).find(weights.numpy().tobytes()[:16])  # a byte of the stored weights
    assert at > 0
    data[at] ^= 0x10
    path.write_bytes(bytes(data))
    assert not torch.equal(torch.load(path, weights_only=True)["state_dict"]["features.conv1.conv.weight"], weights)
    with pytest.raises(ValueError, match=rf"{path}: its content is not what was written .*metrics.json.*rerun the "
                                         r"stage that wrote it"):
        load_checkpoint(path)


@pytest.mark.parametrize("compressor", ["zstd", "none"])
def test_a_flipped_bit_in_an_activation_chunk_fails_on_read(tmp_path, values, compressor):
    """Every chunk carries a CRC32C that zarr checks on read: one flipped bit, even one that would decode to
    other values, stops the graphs stage with the store named, before any table can change."""
    from cwnnk.activations import StoreError, StoreWriter
    from cwnnk.graphs import build_layer_graphs
    from cwnnk.params import GraphParams

    store = tmp_path / "m.zarr"
    n = len(values)
    writer = StoreWriter(store, {"model": "m"}, compressor)
    writer.add_split("train", np.arange(n) % 3, np.arange(n) + 100, {"conv1": values.shape[1:]}, 8)
    for start in range(0, n, 8):
        writer.write("train", "conv1", start, values[start : start + 8])
    writer.finish()
    chunk = store / "train" / "conv1" / "c.1.2.0.0"
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0x01
    chunk.write_bytes(bytes(data))
    with pytest.raises(StoreError, match=r"m.zarr: layer 'conv1' cannot be read .*rerun the extract stage"):
        build_layer_graphs(store, "conv1", tmp_path / "g", GraphParams(k=4, device="cpu"), log=lambda m: None)
    assert not (tmp_path / "g").exists()


def _flip(path, at=None, bit=0x01):
    """Flip one bit of a file (by default in its middle byte)."""
    data = bytearray(path.read_bytes())
    at = len(data) // 2 if at is None else at
    data[at] ^= bit
    path.write_bytes(bytes(data))


def test_json_artifacts_carry_a_checksum_that_a_flipped_bit_breaks(tmp_path):
    import hashlib
    import json

    from cwnnk.atomic import CHECKSUM_KEY, DamagedArtifact, read_json, write_json

    path = tmp_path / "a.json"
    obj = {"row": {"rho": 0.40484, "n": np.int64(5), "nan": float("nan")}, "by": {10: [1.5e-300, 2], 2: (3, "x")}}
    write_json(path, obj)
    written = json.loads(path.read_text())
    recorded = written.pop(CHECKSUM_KEY)
    assert recorded == hashlib.sha256(json.dumps(written, indent=2, sort_keys=True).encode()).hexdigest()
    read = read_json(path, rerun="X")
    assert read["row"]["rho"] == 0.40484 and read["row"]["n"] == "5" and read["by"] == {"10": [1.5e-300, 2],
                                                                                          "2": [3, "x"]}
    text = path.read_text()
    path.write_text(text.replace("0.40484", "0.40485"))  # a changed digit still parses
    with pytest.raises(DamagedArtifact, match=rf"{path}: its content is not what was written .*rerun the overlap"):
        read_json(path, rerun="the overlap stage")
    path.write_text(text)
    _flip(path, at=text.index("0.40484"), bit=0x80)  # not UTF-8 any more
    with pytest.raises(DamagedArtifact, match=rf"{path}: not readable JSON .*damaged after it was written; rerun X"):
        read_json(path, rerun="X")
    path.write_text(json.dumps({"row": 1}))  # written by an older cwnnk: read unchecked
    assert read_json(path, rerun="X") == {"row": 1}


def test_a_flipped_bit_in_a_graph_file_fails_on_read(tmp_path, values):
    """summary.json records each graph file's sha256; the overlap stage's reader checks knn.npz against it."""
    import hashlib

    from cwnnk.activations import StoreWriter
    from cwnnk.atomic import DamagedArtifact, read_json
    from cwnnk.graphs import build_layer_graphs, load_layer_graphs
    from cwnnk.overlap import analyse_layer
    from cwnnk.params import GraphParams

    store, n = tmp_path / "m.zarr", len(values)
    writer = StoreWriter(store, {"model": "m"}, "zstd")
    writer.add_split("train", np.arange(n) % 3, np.arange(n) + 100, {"conv1": values.shape[1:]}, 8)
    for start in range(0, n, 8):
        writer.write("train", "conv1", start, values[start : start + 8])
    writer.finish()
    folder = tmp_path / "g"
    build_layer_graphs(store, "conv1", folder, GraphParams(k=4, device="cpu"), log=lambda m: None)
    summary = read_json(folder / "summary.json", rerun="X")
    assert summary["files_sha256"] == {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
                                       for p in sorted(folder.glob("*.npz"))}
    assert set(summary["files_sha256"]) == {"aggregate.npz", "knn.npz", "channel_0000.npz", "channel_0001.npz",
                                            "channel_0002.npz"}
    arrays, _ = load_layer_graphs(folder)
    _flip(folder / "knn.npz", at=(folder / "knn.npz").read_bytes().index(arrays["channel_weights"].tobytes()[:64]))
    with pytest.raises(DamagedArtifact, match=rf"{folder / 'knn.npz'}: its content is not what was written .*"
                                              r"rerun the graphs stage \(snakemake --forcerun graphs\)"):
        analyse_layer(folder, tmp_path / "o.json")
    assert not (tmp_path / "o.json").exists()
