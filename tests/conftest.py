"""Shared fixtures: the repository root, a Snakemake runner and the tiny experiment config."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]

# A complete experiment small enough to run end to end in about a minute on 2 cores: the workflow's own
# test config (.test/config.yaml, which CI also runs through Snakemake), less its results folder.
TINY_CONFIG = {key: value for key, value in yaml.safe_load((REPO / ".test" / "config.yaml").read_text()).items()
               if key != "results"}


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
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n"
                             f"{proc.stderr[-8000:]}")
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
