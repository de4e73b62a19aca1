"""cwnnk.params and cwnnk.config.Experiment: one validated object per stage, built once."""

import json
import re

import pytest
import yaml

from cwnnk.config import ConfigError, Experiment, validate
from cwnnk.params import (
    DatasetParams,
    ExtractParams,
    FigureParams,
    GraphParams,
    ImportParams,
    ManifoldParams,
    OverlapParams,
    TrainParams,
)

from conftest import REPO, TINY_CONFIG

ALL = (DatasetParams, TrainParams, ImportParams, ExtractParams, GraphParams, OverlapParams, ManifoldParams,
       FigureParams)


@pytest.fixture(scope="module")
def experiment():
    return Experiment.from_config(validate(yaml.safe_load((REPO / "config.yaml").read_text())))


def test_every_stage_of_the_default_experiment(experiment):
    model = next(iter(experiment.models))
    assert model == "convnet-d0-wd0-s1"
    train = experiment.train(model)
    assert (train.seed, train.weight_decay, train.augment, train.epochs, train.lr) == (1, 0.0, "none", 15, 0.05)
    assert train.dataset == DatasetParams(name="digits", image_size=16, validation=0.1)
    extract = experiment.extract(model)
    assert extract.layers == ("conv1", "conv2", "conv3", "conv4") and extract.n_samples == 1000
    assert experiment.graphs == GraphParams(k=25, kernel="gaussian", sigma="local", solver="exact", seed=0,
                                            device="auto")
    assert experiment.manifolds.graphs is experiment.graphs and experiment.manifolds.dims == (1, 2, 4, 8, 16)
    assert experiment.figures == FigureParams(heatmap_model=model, solver_model=model)


def test_round_trip_through_builtin_dicts(experiment):
    """Rules hand Snakemake each object's dict (it tracks builtin params only); scripts rebuild it."""
    model = next(iter(experiment.models))
    for params in (experiment.train(model), experiment.import_(model), experiment.extract(model), experiment.graphs,
                   experiment.overlap, experiment.manifolds, experiment.figures):
        plain = params.to_dict()
        assert type(params).from_dict(plain) == params
        assert repr(plain) == repr(params.to_dict())  # what Snakemake records


def test_key_order_does_not_change_params():
    """An equivalent config with its keys in another order gives identical params (no rerun)."""
    a = dict(TINY_CONFIG, dataset={"name": "synthetic", "image_size": 10, "n_train": 96, "n_test": 48,
                                   "num_classes": 3},
             graphs={"kernel": "gaussian", "k": 8})
    b = dict(TINY_CONFIG, dataset={"num_classes": 3, "n_test": 48, "n_train": 96, "image_size": 10,
                                   "name": "synthetic"},
             graphs={"k": 8, "kernel": "gaussian"})
    ea, eb = Experiment.from_config(validate(a)), Experiment.from_config(validate(b))
    model = next(iter(ea.models))
    for stage in ("train", "extract"):
        assert repr(getattr(ea, stage)(model).to_dict()) == repr(getattr(eb, stage)(model).to_dict())
    assert repr(ea.graphs.to_dict()) == repr(eb.graphs.to_dict())


@pytest.mark.parametrize("build, key", [
    (lambda: GraphParams(k=1), "graphs.k"),
    (lambda: GraphParams(k=True), "graphs.k"),
    (lambda: GraphParams(kernel="rbf"), "graphs.kernel"),
    (lambda: GraphParams(device="gpu"), "device"),
    (lambda: TrainParams(lr=0), "training.lr"),
    (lambda: TrainParams(augment="flip"), r"sweep.augment\[\]"),
    (lambda: ExtractParams(layers=()), "extract.layers"),
    (lambda: ExtractParams(compressor="lz4"), "extract.compressor"),
    (lambda: DatasetParams(name="mnist"), "dataset.name"),
    (lambda: DatasetParams(validation=-0.1), "training.validation"),
    (lambda: DatasetParams(validation=1.0), "training.validation"),
    (lambda: DatasetParams(validation="a"), "training.validation"),
    (lambda: DatasetParams(validation=True), "training.validation"),
    (lambda: OverlapParams(tol=0.5), "overlap.tol"),
    (lambda: ManifoldParams(dims=()), "figures.manifold_dims"),
])
def test_bad_values_name_their_config_key(build, key):
    with pytest.raises(ValueError, match=f"config key '{key}'"):
        build()


def test_unknown_keys_are_refused_by_name():
    with pytest.raises(ValueError, match=r"GraphParams: unknown key\(s\) \['kk'\]"):
        GraphParams.from_dict({"kk": 3})


def test_params_are_frozen():
    with pytest.raises(AttributeError):
        GraphParams().k = 3


def test_unknown_layer_is_a_config_error():
    with pytest.raises(ConfigError, match="extract.layers.*conv9"):
        Experiment.from_config(validate(dict(TINY_CONFIG, extract={"layers": ["conv9"]})))


@pytest.mark.parametrize("value, expected", [(-0.1, ">= 0"), (1.0, "< 1"), ("a", "expected number")])
def test_bad_validation_fraction_stops_the_config(value, expected):
    """Checked once at the boundary: the schema refuses it before any params are built."""
    with pytest.raises(ConfigError, match=f"config key 'training.validation': .*{expected}"):
        validate(dict(TINY_CONFIG, training=dict(TINY_CONFIG["training"], validation=value)))


def test_validation_split_reaches_train_and_extract_alike():
    exp = Experiment.from_config(validate(dict(TINY_CONFIG, training=dict(TINY_CONFIG["training"], validation=0.2,
                                                                          save_epochs=[1]))))
    run = next(iter(exp.models))
    train = exp.train(run)
    assert train.dataset.validation == 0.2 and "validation" not in train.to_dict()
    assert exp.extract(run).dataset == exp.extract(f"{run}-e1").dataset == train.dataset
    default = Experiment.from_config(validate(TINY_CONFIG))
    assert default.config["training"]["validation"] == 0.0 and default.train(run).dataset.validation == 0.0


def test_tracked_params_leave_the_device_out_at_any_depth(experiment):
    """Rule params hold tracked(): no `device`, so that changing it reruns nothing; from_dict(..., device=)
    puts it back wherever the settings (or the settings nested in them) have one."""
    exp = experiment
    model = exp.pruned[0]
    for params in (exp.train(model), exp.extract(model), exp.graphs, exp.manifolds, exp.prune(model)):
        tracked = params.tracked()
        assert "device" not in json.dumps(tracked)
        back = type(params).from_dict(tracked, device="cuda:1")
        assert "device" in json.dumps(back.to_dict())
        assert all(value == "cuda:1" for value in re.findall(r'"device": "([^"]*)"', json.dumps(back.to_dict())))
        assert back.tracked() == tracked
    assert exp.overlap.tracked() == exp.overlap.to_dict()  # no device: the same dict as before
