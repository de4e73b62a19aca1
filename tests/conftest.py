"""Shared fixtures: the repository root, a Snakemake runner and the tiny experiment config."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]

# A complete experiment small enough to run end to end in well under a minute on 2 cores.
TINY_CONFIG = {
    "threads": 1,
    "device": "cpu",
    "dataset": {"name": "synthetic", "n_train": 96, "n_test": 48, "num_classes": 3, "image_size": 10},
    "model": {"arch": "convnet", "layers": [
        {"channels": 4, "kernel": 3, "padding": "same"},
        {"channels": 4, "kernel": 3, "padding": "same", "pool": True},
    ]},
    "training": {"epochs": 2, "batch_size": 32, "lr": 0.05, "save_epochs": []},
    "sweep": {"dropout": [0.0, 0.3], "seeds": [1], "label_noise": [0.0], "n_train": [None]},
    "extract": {"n_samples": 60, "batch_size": 16},
    "graphs": {"k": 8},
    "figures": {"manifold_n": 200, "manifold_dims": [1, 2]},
}


def write_config(path, results, **overrides):
    """Write TINY_CONFIG (top-level keys replaced by overrides) with results under `results`."""
    cfg = dict(TINY_CONFIG, results=str(results), **overrides)
    Path(path).write_text(yaml.safe_dump(cfg))
    return Path(path)


def snakemake(*args, cwd=REPO, check=True, timeout=900):
    """Run the project's Snakefile with this interpreter's snakemake; return the CompletedProcess.

    Targets go first: --configfile takes every value after it.
    """
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(cwd), *map(str, args)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=dict(os.environ))
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}")
    return proc


@pytest.fixture
def tiny_config(tmp_path):
    return write_config(tmp_path / "config.yaml", tmp_path / "results")


def kill_when_logged(cmd, log, text, env=None, timeout=300):
    """Run cmd (in a session of its own, with `env` added); SIGKILL it and its children once the
    file `log` contains `text` (a stage's test hook saying it paused)."""
    import signal
    import time

    proc = subprocess.Popen(list(map(str, cmd)), env=dict(os.environ, **(env or {})), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + timeout
        while text not in (Path(log).read_text() if Path(log).exists() else ""):
            assert proc.poll() is None, f"{cmd} exited ({proc.returncode}) before {log} said {text!r}"
            assert time.monotonic() < deadline, f"{log} never said {text!r}"
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
