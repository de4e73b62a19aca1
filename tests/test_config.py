import pytest

from cwnnk.config import ConfigError, expand_models, model_name, validate


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
    assert len(models) == 16
    assert "convnet-d0.2-wd0-s1" in models
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
    assert list(models) == ["convnet-d0.1-wd0-s1", "theirs"]
    assert models["theirs"]["kind"] == "external" and models["theirs"]["spec"]["arch"] == "resnet18"


def test_external_name_clash_is_refused():
    cfg = validate({"sweep": {"dropout": [0.1], "seeds": [1]},
                    "external": [{"name": "convnet-d0.1-wd0-s1", "path": "x.pt", "model": {}}]})
    with pytest.raises(ConfigError, match="external.0.name"):
        expand_models(cfg)


def test_cifar_subset_sets_class_count():
    cfg = validate({"dataset": {"name": "cifar10", "classes": [0, 8]}})
    spec = next(iter(expand_models(cfg).values()))["spec"]
    assert spec["num_classes"] == 2 and spec["input_shape"] == [3, 32, 32]
