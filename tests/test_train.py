"""Training with a held-out validation split (cwnnk.train, config key training.validation)."""

import dataclasses
import json

import numpy as np
import pytest
import torch

from cwnnk.config import Experiment, validate
from cwnnk.datasets import load_dataset
from cwnnk.train import evaluate, run_train, summarize_history, train_model

from conftest import TINY_CONFIG


def _experiment(validation, save_epochs=()):
    training = dict(TINY_CONFIG["training"], epochs=3, validation=validation, save_epochs=list(save_epochs))
    cfg = validate(dict(TINY_CONFIG, training=training, sweep=dict(TINY_CONFIG["sweep"], dropout=[0.0])))
    return Experiment.from_config(cfg)


def _spec(exp, run, dataset):
    mean, std = dataset.channel_stats()
    return dict(exp.models[run]["spec"], normalize={"mean": mean, "std": std})


def test_validation_images_never_reach_the_training():
    exp = _experiment(0.25)
    run = next(iter(exp.models))
    params = exp.train(run).replace(device="cpu")
    dataset = load_dataset(params.dataset)
    assert len(dataset.validation) == 24 and len(dataset.train) == 72
    spec = _spec(exp, run, dataset)
    model, history = train_model(spec, dataset, params, log=lambda *_: None)
    # The same training without the held-out images anywhere: identical weights, epoch by epoch
    # identical training metrics, so the validation images took no part in the updates.
    alone = dataclasses.replace(dataset, validation=None)
    model_alone, history_alone = train_model(spec, alone, params, log=lambda *_: None)
    for a, b in zip(model.state_dict().values(), model_alone.state_dict().values()):
        assert torch.equal(a, b)
    for row, other in zip(history, history_alone):
        assert {key: row[key] for key in other if key != "seconds"} == \
            {key: other[key] for key in other if key != "seconds"}
        assert 0 <= row["val_acc"] <= 1 and row["val_loss"] > 0
        assert "val_acc" not in other and "val_loss" not in other
    # The recorded numbers are the final model's on the validation split.
    assert ((history[-1]["val_loss"], history[-1]["val_acc"])
            == pytest.approx(evaluate(model, dataset.validation, "cpu")))
    final = summarize_history(history)
    assert final["val_acc"] == history[-1]["val_acc"] and "val_acc" not in summarize_history(history_alone)


def test_metrics_carry_the_validation_history_per_saved_epoch(tmp_path):
    exp = _experiment(0.25, save_epochs=[1, 2])
    run = next(iter(exp.models))
    snaps = [(exp.models[m], tmp_path / m / "checkpoint.pt", tmp_path / m / "metrics.json") for m in exp.snapshots(run)]
    run_train(exp.models[run], exp.train(run), tmp_path / run / "checkpoint.pt", tmp_path / run / "metrics.json",
              log=lambda *_: None, snapshots=snaps)
    final = json.loads((tmp_path / run / "metrics.json").read_text())
    assert final["n_train"] == 72 and final["n_validation"] == 24 and final["training"]["validation"] == 0.25
    assert len(final["history"]) == 3 and all("val_acc" in r for r in final["history"])
    for epoch, (_, _, path) in zip((1, 2), snaps[:2]):  # the third is the untrained twin (epoch 0)
        snap = json.loads(path.read_text())
        assert snap["final"]["val_acc"] == final["history"][epoch - 1]["val_acc"]
        assert snap["final"]["val_loss"] == final["history"][epoch - 1]["val_loss"]


def test_without_validation_the_metrics_are_as_before(tmp_path):
    exp = _experiment(0.0)
    run = next(iter(exp.models))
    run_train(exp.models[run], exp.train(run).replace(untrained_twin=False), tmp_path / "checkpoint.pt",
              tmp_path / "metrics.json", log=lambda *_: None)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["n_train"] == 96 and "n_validation" not in metrics and "validation" not in metrics["training"]
    assert not any(key.startswith("val_") for row in metrics["history"] for key in row)
    assert not any(key.startswith("val_") for key in metrics["final"])
    assert np.isfinite(metrics["final"]["test_acc"])


def test_the_untrained_twin_is_the_runs_initial_state_and_changes_no_training(tmp_path):
    """The run's twin <run>-e0 is saved before the first step: the seeded initial weights (build_model after
    torch.manual_seed(seed)), evaluated, never trained; and saving it leaves the training bit for bit as it was."""
    from cwnnk.models import build_model, load_checkpoint

    exp = _experiment(0.25)
    run = next(iter(exp.models))
    twin = exp.models[run]["twin"]
    assert twin == f"{run}-e0" and exp.snapshots(run) == [twin]
    params = exp.train(run)
    run_train(exp.models[run], params, tmp_path / run / "checkpoint.pt", tmp_path / run / "metrics.json",
              log=lambda *_: None, snapshots=[(exp.models[twin], tmp_path / twin / "checkpoint.pt",
                                               tmp_path / twin / "metrics.json")])
    model, spec = load_checkpoint(tmp_path / twin / "checkpoint.pt")
    torch.manual_seed(params.seed)
    initial = build_model(spec).state_dict()
    assert all(torch.equal(model.state_dict()[key], value) for key, value in initial.items())
    metrics = json.loads((tmp_path / twin / "metrics.json").read_text())
    assert metrics["kind"] == "untrained" and [row["epoch"] for row in metrics["history"]] == [0]
    assert metrics["final"]["test_acc"] == pytest.approx(evaluate(model, load_dataset(params.dataset).test, "cpu")[1])
    run_train(exp.models[run], params.replace(untrained_twin=False), tmp_path / "alone.pt", tmp_path / "alone.json",
              log=lambda *_: None)
    trained, _ = load_checkpoint(tmp_path / run / "checkpoint.pt")
    alone, _ = load_checkpoint(tmp_path / "alone.pt")
    assert all(torch.equal(a, b) for a, b in zip(trained.state_dict().values(), alone.state_dict().values()))
    assert not torch.equal(trained.state_dict()["features.conv1.conv.weight"], initial["features.conv1.conv.weight"])
    with pytest.raises(ValueError, match=r"snapshots for epochs \[\] but .* give \[0\]"):
        run_train(exp.models[run], params, tmp_path / "x.pt", tmp_path / "x.json", log=lambda *_: None)
