"""Faults and bad input (issue #24, docs/reliability.md): checks before any job runs, canonical
params, no stale temporaries after a kill, errors in the rule logs, errors that name the file."""

import copy
import errno
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml

from conftest import TINY_CONFIG, snakemake, write_config
from cwnnk.config import ConfigError, Experiment, validate
from cwnnk.preflight import canonical, check, graph_samples


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
    proc = snakemake("-n", "--configfile", cfg, check=False)  # a dry run warns (and plans what it can)
    assert "a run would stop here: config key 'external.0.path'" in proc.stderr


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
