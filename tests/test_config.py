import pytest

from cwnnk.config import ConfigError, expand_models, model_name, validate

from conftest import REPO


def test_defaults_are_filled_in():
    cfg = validate({})
    assert cfg["dataset"]["name"] == "digits"
    assert cfg["graphs"]["k"] == 25 and cfg["graphs"]["solver"] == "exact"
    assert len(cfg["model"]["layers"]) == 4
    assert cfg["external"] == []


@pytest.mark.parametrize(
    "bad, fragments",
    [
        ({"dataset": {"name": "mnist"}}, ["dataset.name", "'mnist'", "digits", "cifar10", "synthetic"]),
        ({"sweep": {"dropout": [0.1, -0.2]}}, ["sweep.dropout.1", "-0.2", ">= 0"]),
        ({"training": {"epochs": "ten"}}, ["training.epochs", "'ten'", "integer"]),
        ({"colour": "red"}, ["unknown key", "colour", "allowed keys", "graphs"]),
        ({"graphs": {"kernal": "gaussian"}}, ["unknown key", "kernal", "'graphs'", "kernel"]),
        ({"graphs": {"solver": "fast"}}, ["graphs.solver", "'fast'", "exact", "pynnk"]),
        ({"external": [{"name": "x", "path": "p.pt", "model": {"arch": "vgg"}}]}, ["external.0.model.arch", "'vgg'"]),
        ({"external": [{"name": "x"}]}, ["external.0", "model"]),
        ({"sweep": {"label_noise": [1.0]}}, ["sweep.label_noise.0", "1.0", "< 1"]),
        ({"sweep": {"label_noise": [-0.1]}}, ["sweep.label_noise.0", ">= 0"]),
        ({"sweep": {"n_train": [5]}}, ["sweep.n_train.0", ">= 10"]),
        ({"sweep": {"width": [0]}}, ["sweep.width.0", "> 0"]),
        ({"sweep": {"epochs": [0]}}, ["sweep.epochs.0", ">= 1"]),
        ({"training": {"save_epochs": [0]}}, ["training.save_epochs.0", ">= 1"]),
        ({"training": {"save_epochs": "5"}}, ["training.save_epochs", "array"]),
        ({"dataset": {"name": "EMNIST"}}, ["dataset.name", "'EMNIST'", "['split']", "folder"]),
        ({"dataset": {"name": "VOCDetection"}}, ["dataset.name", "'VOCDetection'", "image classification"]),
    ],
)
def test_bad_config_names_key_value_and_allowed(bad, fragments):
    with pytest.raises(ConfigError) as err:
        validate(bad)
    for fragment in fragments:
        assert fragment in str(err.value)


def test_all_errors_reported_at_once():
    with pytest.raises(ConfigError) as err:
        validate({"dataset": {"name": "mnist"}, "training": {"lr": -1}})
    assert "dataset.name" in str(err.value) and "training.lr" in str(err.value)


def test_validate_does_not_mutate_input():
    raw = {"graphs": {"k": 10}}
    validate(raw)
    assert raw == {"graphs": {"k": 10}}


def test_sweep_expands_to_readable_stable_names():
    cfg = validate({"sweep": {"dropout": [0.0, 0.2], "weight_decay": [0.0, 5e-4], "augment": ["none", "shift"],
                              "seeds": [1, 2]}})
    models = expand_models(cfg)
    assert len(models) == 32  # 16 runs, each with its untrained twin
    assert "convnet-d0.2-wd0-s1" in models and models["convnet-d0.2-wd0-s1"]["twin"] == "convnet-d0.2-wd0-s1-e0"
    assert "convnet-d0-wd0.0005-shift-s2" in models
    entry = models["convnet-d0.2-wd0-s1"]
    assert entry["dropout"] == 0.2 and entry["seed"] == 1 and entry["kind"] == "trained"
    assert entry["spec"]["input_shape"] == [1, 8, 8]  # digits at native size by default
    assert list(models) == list(expand_models(cfg))  # deterministic order


def test_model_name_format():
    assert model_name("convnet", 0.2, 0, "none", 1) == "convnet-d0.2-wd0-s1"


def test_external_checkpoints_join_the_models():
    cfg = validate({"sweep": {"dropout": [0.1], "seeds": [1]},
                    "external": [{"name": "theirs", "path": "x.pt", "model": {"arch": "resnet18"}}]})
    models = expand_models(cfg)
    assert list(models) == ["convnet-d0.1-wd0-s1", "convnet-d0.1-wd0-s1-e0", "theirs", "theirs-untrained"]
    assert models["theirs"]["kind"] == "external" and models["theirs"]["spec"]["arch"] == "resnet18"
    twin = models["theirs-untrained"]
    assert twin["kind"] == "untrained" and twin["run"] == "theirs" and twin["seed"] == 0 and twin["path"] is None
    assert (twin["spec"] == models["theirs"]["spec"] and twin["twin"] is None
            and models["theirs"]["twin"] == twin["name"])
    off = expand_models(validate({**cfg, "baseline": {"untrained": False}}))
    assert list(off) == ["convnet-d0.1-wd0-s1", "theirs"] and off["theirs"]["twin"] is None


def test_external_name_clash_is_refused():
    cfg = validate({"sweep": {"dropout": [0.1], "seeds": [1]},
                    "external": [{"name": "convnet-d0.1-wd0-s1", "path": "x.pt", "model": {}}]})
    with pytest.raises(ConfigError, match="external.0.name"):
        expand_models(cfg)


def test_cifar_subset_sets_class_count():
    cfg = validate({"dataset": {"name": "cifar10", "classes": [0, 8]}})
    spec = next(iter(expand_models(cfg).values()))["spec"]
    assert spec["num_classes"] == 2 and spec["input_shape"] == [3, 32, 32]


def test_new_sweep_factors_are_named_only_when_used():
    assert model_name("convnet", 0.2, 0, "none", 1, 0.0, None, 1.0, None) == "convnet-d0.2-wd0-s1"
    assert (model_name("convnet", 0, 0, "shift", 2, 0.4, 300, 0.5, 30)
            == "convnet-d0-wd0-shift-ln0.4-n300-w0.5-ep30-s2")
    cfg = validate({"sweep": {"dropout": [0.0], "label_noise": [0.0, 0.2], "width": [0.5], "seeds": [1]},
                    "training": {"epochs": 6, "save_epochs": [2, 4]}})
    models = expand_models(cfg)
    assert list(models) == ["convnet-d0-wd0-w0.5-s1", "convnet-d0-wd0-w0.5-s1-e2", "convnet-d0-wd0-w0.5-s1-e4",
                            "convnet-d0-wd0-w0.5-s1-e0", "convnet-d0-wd0-ln0.2-w0.5-s1",
                            "convnet-d0-wd0-ln0.2-w0.5-s1-e2", "convnet-d0-wd0-ln0.2-w0.5-s1-e4",
                            "convnet-d0-wd0-ln0.2-w0.5-s1-e0"]
    twin = models["convnet-d0-wd0-ln0.2-w0.5-s1-e0"]
    assert twin["kind"] == "untrained" and twin["epoch"] == 0 and twin["seed"] == 1 and twin["label_noise"] == 0.2
    snap = models["convnet-d0-wd0-ln0.2-w0.5-s1-e2"]
    assert snap["kind"] == "snapshot" and snap["run"] == "convnet-d0-wd0-ln0.2-w0.5-s1" and snap["epoch"] == 2
    assert [layer["channels"] for layer in snap["spec"]["layers"]] == [8, 8, 8, 8]  # 16 x 0.5


def test_experiment_hands_the_factors_to_train_and_extract():
    from cwnnk.config import Experiment

    cfg = validate({"sweep": {"dropout": [0.0], "label_noise": [0.1], "n_train": [200], "epochs": [5],
                              "seeds": [1]}, "training": {"save_epochs": [3]}})
    exp = Experiment.from_config(cfg)
    run = "convnet-d0-wd0-ln0.1-n200-ep5-s1"
    params = exp.train(run)
    assert params.epochs == 5 and params.save_epochs == (3,)
    assert params.dataset.label_noise == 0.1 and params.dataset.n_train == 200
    assert exp.extract(f"{run}-e3").dataset == params.dataset
    assert exp.extract(f"{run}-e0").dataset == params.dataset  # the twin sees the run's images
    assert exp.snapshots(run) == [f"{run}-e3", f"{run}-e0"] and params.untrained_twin


def test_save_epoch_beyond_a_run_and_width_on_resnet_are_refused():
    with pytest.raises(ConfigError, match=r"training.save_epochs.*\[15\].*15 epochs"):
        expand_models(validate({"training": {"save_epochs": [15]}}))
    with pytest.raises(ConfigError, match="sweep.width"):
        expand_models(validate({"model": {"arch": "resnet18"}, "dataset": {"name": "cifar10"},
                                "sweep": {"width": [2]}}))
    from cwnnk.params import DatasetParams, TrainParams

    with pytest.raises(ValueError, match="sweep.label_noise"):
        DatasetParams(label_noise=1.5)
    with pytest.raises(ValueError, match="training.save_epochs"):
        TrainParams(epochs=5, save_epochs=(5,))


@pytest.mark.parametrize("dataset, expected", [
    ({"name": "digits"}, True),
    ({"name": "CIFAR100"}, True),  # its train flag
    ({"name": "SVHN"}, True),  # split="test"
    ({"name": "EuroSAT"}, False),  # one split only
    ({"name": "Caltech101"}, False),
    ({"name": "folder", "root": "x"}, False),
    ({"name": "folder", "root": "x", "test_root": "y"}, True),
])
def test_has_test_split_follows_the_dataset(dataset, expected):
    """Whether accuracy (and claim C4) can be measured: the tables and captions say why not."""
    from cwnnk.config import has_test_split

    assert has_test_split(dataset) is expected


def test_the_config_layer_loads_no_torch():
    """Validating a config needs no torch (a dry run's import cost): cwnnk.config, cwnnk.preflight and
    cwnnk.catalog are torch-free; only building a model or loading images imports it."""
    import subprocess
    import sys

    code = ("import sys, yaml; import cwnnk.config, cwnnk.preflight; "
            "cwnnk.config.validate(yaml.safe_load(open('config.yaml'))); "
            "print(sorted(m for m in ('torch', 'torchvision', 'scipy') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
