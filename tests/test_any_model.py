"""Any torchvision model, any layer, any image dataset (issue #21): real torchvision parts at tiny sizes."""

import json
import re
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torch import nn

from cwnnk.config import ConfigError, Experiment, validate
from cwnnk.datasets import load_dataset
from cwnnk.extract import LayerExtractor, UnknownLayerError, resolve_layers
from cwnnk.models import build_model, layer_nodes, pretrained_model
from cwnnk.params import DatasetParams


def tv_spec(name, size=32, **extra):
    return {"arch": "torchvision", "name": name, "input_shape": [3, size, size], "num_classes": 3, "kwargs": {},
            "weights": None, **extra}


def write_folder(root, classes=("cat", "dog"), per_class=6, size=(20, 24), mode="RGB", seed=0):
    """An ImageFolder tree of PNG files: root/<class>/<i>.png."""
    rng = np.random.default_rng(seed)
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            shape = size if mode == "L" else (*size, 3)
            pixels = np.clip(rng.normal(60 + 120 * c, 40, shape), 0, 255).astype(np.uint8)
            Image.fromarray(pixels, mode).save(root / name / f"{i}.png")
    return root


def place_weights(torch_home, name="resnet18", weights="IMAGENET1K_V1", seed=0):
    """Write a weights=None model's state dict where torchvision's weights `name.weights` are cached."""
    enum = torchvision.models.get_model_weights(name)[weights]
    torch.manual_seed(seed)
    state = torchvision.models.get_model(name, weights=None).state_dict()
    path = Path(torch_home) / "hub" / "checkpoints" / Path(enum.url).name
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path, state


@pytest.mark.parametrize("name, layers", [
    ("resnet18", "all"),
    ("mobilenet_v3_small", "all"),
    ("densenet121", ["features.denseblock1.*.relu1", "features.relu0"]),
])
def test_torchvision_layers_equal_the_bare_network(name, layers):
    from torchvision.models.feature_extraction import create_feature_extractor

    spec = tv_spec(name)
    names = resolve_layers(spec, layers)
    assert names and all(len(layer_nodes(spec)) >= len(names) for _ in [0])
    torch.manual_seed(0)
    model = build_model(spec).eval()
    x = torch.rand(2, 3, 32, 32)
    got = LayerExtractor(model, {n: layer_nodes(spec)[n] for n in names})(x)
    want = create_feature_extractor(model.net, return_nodes=names)(x)  # identity normalisation
    for n in names:
        assert got[n].ndim == 4 and torch.allclose(got[n], want[n]), n
    if layers == "all":
        assert all((got[n] >= 0).all() or "features" in n for n in names)  # activations (hardswish dips below 0)


def test_layer_patterns_and_refusals():
    spec = tv_spec("resnet18")
    assert resolve_layers(spec, ["layer*.*.relu"]) == [f"layer{s}.{b}.relu" for s in range(1, 5) for b in range(2)]
    assert resolve_layers(spec, ["layer4.1.relu_1", "relu"]) == ["relu", "layer4.1.relu_1"]
    assert "layer1.0.conv1" in resolve_layers(spec, ["layer1.0.*"])  # any (N, C, H, W) node may be named
    with pytest.raises(UnknownLayerError, match=r"pattern 'block\*' matches no layer; nearest valid"):
        resolve_layers(spec, ["block*"])
    with pytest.raises(UnknownLayerError, match=r"node 'fc' outputs \(N, 3\), not \(N, C, H, W\); nearest valid"):
        resolve_layers(spec, ["fc"])
    with pytest.raises(UnknownLayerError, match=r"'layer1.0.rel'.*nearest valid: layer1.0.relu"):
        resolve_layers(spec, ["layer1.0.rel"])


def test_layers_command_lists_shapes_and_costs(tmp_path, capsys):
    from cwnnk.__main__ import main

    write_folder(tmp_path / "train")
    config = tmp_path / "c.yaml"
    config.write_text(json.dumps({"dataset": {"name": "folder", "root": str(tmp_path / "train"), "image_size": 32},
                                  "model": {"arch": "torchvision", "name": "resnet18"},
                                  "extract": {"layers": ["layer4.*"], "n_samples": 10}}))
    main(["layers", "--configfile", str(config)])
    out = capsys.readouterr().out
    line = next(row for row in out.splitlines() if row.strip().startswith("layer1.0.relu "))
    assert "64 x 8 x 8" in line and " 64 " in line and "yes" in line and "1.0 GiB" in line and "whole" in line
    assert next(row for row in out.splitlines() if row.strip().startswith("layer4.1.relu_1")).endswith("*")


@pytest.mark.parametrize("extra, n", [
    ({}, 30),  # no extract section: extract.n_samples defaults to 1000, more than the 30 training images
    ({"extract": {"n_samples": None}}, 30),
    ({"extract": {"n_samples": 20}}, 20),
    ({"graphs": {"n_samples": 12}}, 12),
])
def test_layers_command_on_a_minimal_config_prints_the_real_n(tmp_path, capsys, extra, n):
    from cwnnk.__main__ import main

    # 40 synthetic images, a quarter held out for validation: the graph stage sees at most 30
    config = {"dataset": {"name": "synthetic", "n_train": 40, "num_classes": 2, "image_size": 32, "channels": 3},
              "model": {"arch": "torchvision", "name": "resnet18"}, "training": {"validation": 0.25}, **extra}
    (tmp_path / "c.yaml").write_text(json.dumps(config))
    main(["layers", "--configfile", str(tmp_path / "c.yaml")])
    out = capsys.readouterr().out
    assert f"graph stage at N = {n}, k = 25" in out
    line = next(row for row in out.splitlines() if row.strip().startswith("layer1.0.relu "))
    assert re.search(r" \d+ s +\d+(\.\d)? (MiB|GiB) +whole", line), line  # the time and memory columns


def test_layers_command_lists_channel_last_nodes_as_not_analysable(tmp_path, capsys):
    from cwnnk.__main__ import main

    config = {"dataset": {"name": "synthetic", "n_train": 20, "num_classes": 2, "image_size": 32, "channels": 3},
              "model": {"arch": "torchvision", "name": "convnext_tiny"}, "sweep": {"seeds": [1]}}
    (tmp_path / "c.yaml").write_text(json.dumps(config))
    with pytest.raises(SystemExit) as err:  # `all` selects nothing: the listing comes first, then the error
        main(["layers", "--configfile", str(tmp_path / "c.yaml")])
    assert "'all' selects no layer" in str(err.value) and "channel-last (N, H, W, C)" in str(err.value)
    rows = {row.split()[0]: row for row in capsys.readouterr().out.splitlines() if row.startswith("  features.1.0.")}
    # the first block at 32 px: 96 channels of 8 x 8; its GELU sees (N, H, W, 4C) after the permute
    assert "not analysable: outputs (N, 8, 8, 384): channel-last (N, H, W, C)" in rows["features.1.0.block.4"]
    assert "96 x 8 x 8" in rows["features.1.0.block.0"] and "96 x 8 x 8" in rows["features.1.0.block.6"]
    assert "not analysable" not in rows["features.1.0.add"]


def test_layer_estimates_switch_to_the_streamed_path_for_large_layers():
    from cwnnk.__main__ import estimate

    # 64 x 32 x 32 at N = 1,000: held whole, 1,024 MiB + the layer (250 MiB) + results (36.6 MiB)
    seconds, mib, streamed = estimate(1_000, 64, 1024, 25)
    assert not streamed and mib == pytest.approx(1024 + 250 + 36.62, abs=0.1)
    # ResNet-50 layer1 at N = 10,000 streams: 1,024 MiB + 27.2 bytes per 10,000^2 (2,594 MiB) +
    # results (1,465 MiB), not the layer's 30,625 MiB: the measured peak was 5,086 MiB
    seconds, mib, streamed = estimate(10_000, 256, 3136, 25)
    assert streamed and mib == pytest.approx(1024 + 2594.0 + 1464.8, abs=0.5)


def test_weights_by_name_load_offline_from_torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    write_folder(tmp_path / "train")
    cfg = validate({"dataset": {"name": "folder", "root": str(tmp_path / "train")},
                    "model": {"arch": "torchvision", "name": "resnet18", "weights": "IMAGENET1K_V1"}})
    exp = Experiment.from_config(cfg)
    (name, entry), (twin, twin_entry) = exp.models.items()
    assert name == "resnet18-IMAGENET1K_V1" and entry["kind"] == "external"
    assert twin == entry["twin"] == "resnet18-IMAGENET1K_V1-untrained" and twin_entry["kind"] == "untrained"
    assert twin_entry["spec"] == entry["spec"] and exp.dataset_of(twin) == exp.dataset_of(name)
    spec = entry["spec"]
    assert spec["num_classes"] == 1000 and spec["input_shape"] == [3, 224, 224]  # the weights' own
    assert spec["normalize"]["mean"] == [0.485, 0.456, 0.406]
    data = exp.import_(name).dataset
    assert (data.resize, data.image_size, data.channels) == (256, 224, 3)
    with pytest.raises(FileNotFoundError) as err:  # not placed yet, offline
        pretrained_model(spec)
    assert "resnet18-f37072fd.pth" in str(err.value) and str(tmp_path / "th" / "hub" / "checkpoints") in str(err.value)
    _, state = place_weights(tmp_path / "th")
    model = pretrained_model(spec)
    assert torch.equal(model.net.conv1.weight, state["conv1.weight"]) and not model.training


def test_weights_file_and_class_mismatch(tmp_path):
    write_folder(tmp_path / "train")
    write_folder(tmp_path / "test", seed=1)
    torch.manual_seed(0)
    net = torchvision.models.mobilenet_v3_small(weights=None, num_classes=2)
    torch.save({"model": net.state_dict(), "epoch": 3}, tmp_path / "mine.pth")
    dataset = {"name": "folder", "root": str(tmp_path / "train"), "test_root": str(tmp_path / "test"), "image_size": 32}
    cfg = validate({"dataset": dataset, "model": {"arch": "torchvision", "name": "mobilenet_v3_small",
                                                  "weights": str(tmp_path / "mine.pth")}})
    (name, entry), _twin = Experiment.from_config(cfg).models.items()
    assert name == "mobilenet_v3_small-mine" and entry["path"] == str(tmp_path / "mine.pth")
    model = pretrained_model(entry["spec"])
    assert torch.equal(model.net.features[0][0].weight, net.features[0][0].weight)
    bad = validate({"dataset": dataset, "model": {"arch": "torchvision", "name": "mobilenet_v3_small",
                                                  "num_classes": 5}})
    with pytest.raises(ConfigError, match="predicts 5 classes but dataset 'folder' has 2"):
        Experiment.from_config(bad)


def test_imported_weights_file_is_evaluated_on_a_test_split(tmp_path):
    from cwnnk.train import run_import

    write_folder(tmp_path / "train")
    write_folder(tmp_path / "test", seed=1)
    torch.manual_seed(0)
    net = torchvision.models.mobilenet_v3_small(weights=None, num_classes=2)
    with torch.no_grad():  # a head that always says "dog" (class 1): logits (0, 1) whatever the image
        net.classifier[3].weight.zero_()
        net.classifier[3].bias.copy_(torch.tensor([0.0, 1.0]))
    torch.save(net.state_dict(), tmp_path / "dog.pth")
    cfg = validate({"dataset": {"name": "folder", "root": str(tmp_path / "train"), "test_root": str(tmp_path / "test"),
                                "image_size": 32},
                    "model": {"arch": "torchvision", "name": "mobilenet_v3_small",
                              "weights": str(tmp_path / "dog.pth")}})
    exp = Experiment.from_config(cfg)
    (name, entry), _twin = exp.models.items()
    run_import(entry, exp.import_(name), tmp_path / "model.pt", tmp_path / "metrics.json", log=lambda *a: None)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    final = metrics["final"]
    assert metrics["n_test"] == 12 and "accuracy_skipped" not in metrics
    assert final["test_acc"] == 0.5 and final["train_acc"] == 0.5  # 6 dogs of 12 images in each split
    # cross-entropy of logits (0, 1): log(1 + e) for a cat, log(1 + 1/e) for a dog, half each
    assert final["test_loss"] == pytest.approx((np.log1p(np.e) + np.log1p(1 / np.e)) / 2, rel=1e-5)


def test_class_mismatches_of_pretrained_weights(tmp_path, monkeypatch):
    write_folder(tmp_path / "train")
    write_folder(tmp_path / "test", seed=1)
    named = {"arch": "torchvision", "name": "resnet18", "weights": "IMAGENET1K_V1"}
    folder = {"name": "folder", "root": str(tmp_path / "train"), "image_size": 32}
    cfg = validate({"dataset": folder, "model": dict(named, num_classes=2)})
    with pytest.raises(ConfigError, match=r"'model.num_classes': 2, but weights resnet18 IMAGENET1K_V1 predict 1000 "
                                          "classes; cwnnk never replaces a pretrained head"):
        Experiment.from_config(cfg)
    # 1000 ImageNet classes cannot be scored on a 2-class folder: its images are analysed, accuracy is skipped
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    place_weights(tmp_path / "th")
    exp = Experiment.from_config(validate({"dataset": dict(folder, test_root=str(tmp_path / "test")), "model": named}))
    name = next(iter(exp.models))
    from cwnnk.train import run_import

    run_import(exp.models[name], exp.import_(name), tmp_path / "c.pt", tmp_path / "m.json", lambda *a: None)
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["final"]["test_acc"] is None and metrics["final"]["train_acc"] is None
    assert "predicts 1000 classes (its weights' own), the dataset has 2" in metrics["accuracy_skipped"]
    assert "the dataset's images are analysed" in metrics["accuracy_skipped"]
    # a model trained here must predict the dataset's classes
    cfg = validate({"dataset": folder, "model": {"arch": "torchvision", "name": "resnet18", "num_classes": 5}})
    with pytest.raises(ConfigError, match="predicts 5 classes but dataset 'folder' has 2"):
        Experiment.from_config(cfg)


@pytest.mark.parametrize("wrap", ["plain", "DataParallel", "model."])
def test_weights_file_prefixes_are_stripped_only_where_they_fit(tmp_path, monkeypatch, wrap):
    (tmp_path / "my_factories.py").write_text(FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path))
    import my_factories

    torch.manual_seed(0)
    held = my_factories.Holder()  # its own keys start with 'model.': 'model.0.weight', ...
    state = {"plain": held.state_dict(), "DataParallel": nn.DataParallel(held).state_dict(),
             "model.": {f"model.{key}": value for key, value in held.state_dict().items()}}[wrap]
    assert next(iter(state)) == {"plain": "model.0.weight", "DataParallel": "module.model.0.weight",
                                 "model.": "model.model.0.weight"}[wrap]
    torch.save({"state_dict": state}, tmp_path / "held.pth")
    write_folder(tmp_path / "train")
    cfg = validate({"dataset": {"name": "folder", "root": str(tmp_path / "train"), "image_size": 16},
                    "model": {"arch": "factory", "factory": "my_factories:Holder",
                              "weights": str(tmp_path / "held.pth")},
                    "extract": {"layers": ["model.1"]}})
    (name, entry), _twin = Experiment.from_config(cfg).models.items()
    model = pretrained_model(entry["spec"])
    assert torch.equal(model.net.model[0].weight, held.model[0].weight)
    assert torch.equal(model.net.model[7].bias, held.model[7].bias)


def test_torchvision_weights_file_saved_from_data_parallel(tmp_path):
    write_folder(tmp_path / "train")
    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None, num_classes=2)
    torch.save(nn.DataParallel(net).state_dict(), tmp_path / "dp.pth")  # keys 'module.conv1.weight', ...
    spec = dict(tv_spec("resnet18", num_classes=2), weights=str(tmp_path / "dp.pth"))
    assert torch.equal(pretrained_model(spec).net.fc.weight, net.fc.weight)
    torch.save({"module.other.weight": torch.zeros(1)}, tmp_path / "other.pth")  # the prefix alone is not enough
    with pytest.raises(ValueError, match=r"unexpected keys \(1\): module.other.weight"):
        pretrained_model(dict(spec, weights=str(tmp_path / "other.pth")))


@pytest.mark.parametrize("name", ["mobilenet_v3_small", "googlenet"])  # googlenet: aux heads in training mode
def test_torchvision_model_trained_from_scratch(tmp_path, name):
    from cwnnk.models import load_checkpoint
    from cwnnk.train import run_train

    cfg = validate({"dataset": {"name": "synthetic", "n_train": 16, "n_test": 8, "num_classes": 2, "image_size": 32,
                                "channels": 3},
                    "model": {"arch": "torchvision", "name": name, "weights": None},
                    "training": {"epochs": 1, "batch_size": 8}, "sweep": {"seeds": [1]}, "device": "cpu",
                    "baseline": {"untrained": False}})
    exp = Experiment.from_config(cfg)
    (run, entry), = exp.models.items()
    assert entry["kind"] == "trained"
    run_train(entry, exp.train(run), tmp_path / "model.pt", tmp_path / "metrics.json", log=lambda *a: None)
    model, spec = load_checkpoint(tmp_path / "model.pt")  # checks every key and shape against the architecture
    assert spec["name"] == name and type(model.net) is type(torchvision.models.get_model(name, weights=None))
    assert model(torch.rand(3, 3, 32, 32)).shape == (3, 2)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["n_train"] == 16 and metrics["n_test"] == 8 and len(metrics["history"]) == 1
    assert 0 <= metrics["final"]["train_acc"] <= 1 and 0 <= metrics["final"]["test_acc"] <= 1
    assert np.isfinite(metrics["final"]["train_loss"])


def test_inception_v3_trains_on_its_main_logits():
    model = build_model(tv_spec("inception_v3", size=75)).train()  # 75 px: inception_v3's smallest input
    assert model.net.AuxLogits is None
    logits = model(torch.rand(2, 3, 75, 75))
    assert isinstance(logits, torch.Tensor) and logits.shape == (2, 3)


@pytest.mark.parametrize("model, fragments", [
    ({"arch": "torchvision", "name": "resnet81"}, ["'resnet81' is not a torchvision classification model",
                                                   "resnet18"]),
    ({"arch": "torchvision", "name": "resnet18", "weights": "IMAGENET_V9"},
     ["'IMAGENET_V9' is neither a weights name of resnet18", "IMAGENET1K_V1"]),
    ({"arch": "factory", "factory": "no_such_module_xyz:build"}, ["cannot import module 'no_such_module_xyz'"]),
])
def test_bad_models_are_refused_by_name(tmp_path, model, fragments):
    write_folder(tmp_path / "train")
    cfg = validate({"dataset": {"name": "folder", "root": str(tmp_path / "train"), "image_size": 32}, "model": model})
    with pytest.raises(ConfigError) as err:
        Experiment.from_config(cfg)
    for fragment in fragments:
        assert fragment in str(err.value)


FACTORY = '''
import torch
from torch import nn


def tiny(width=4):
    return nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(width, width, 3),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 2))


def not_a_module():
    return "a string"


class Holder(nn.Module):
    """A network whose own keys start with 'model.'."""

    def __init__(self):
        super().__init__()
        self.model = tiny()

    def forward(self, x):
        return self.model(x)


class Mixed(nn.Module):
    """conv -> ReLU (N, C, H, W), then a ConvNeXt-style MLP on (N, H, W, C), by movedim there and transposes back."""

    def __init__(self, width=4):
        super().__init__()
        self.conv, self.relu = nn.Conv2d(3, width, 3, padding=1), nn.ReLU()
        self.mlp = nn.Sequential(nn.Linear(width, 2 * width), nn.GELU(), nn.Linear(2 * width, width))
        self.head = nn.Linear(width, 2)

    def forward(self, x):
        x = self.relu(self.conv(x))
        x = x + self.mlp(torch.movedim(x, 1, -1)).transpose(1, 3).transpose(2, 3)
        return self.head(x.mean((2, 3)))
'''


def test_factory_model(tmp_path, monkeypatch):
    (tmp_path / "my_factories.py").write_text(FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path))
    write_folder(tmp_path / "train")
    dataset = {"name": "folder", "root": str(tmp_path / "train"), "image_size": 16}
    model = {"arch": "factory", "factory": "my_factories:tiny", "kwargs": {"width": 5}}
    cfg = validate({"dataset": dataset, "model": model})
    # `all` (the default) needs the network built, which validation never does
    with pytest.raises(ConfigError, match=r"\['all'\] for model 'tiny-.*' \(my_factories:tiny\): a factory model's "
                                          r"layers must be named one by one, in depth order.*python -m cwnnk layers"):
        Experiment.from_config(cfg)
    name = next(iter(Experiment.from_config(cfg, build=True).models))  # what `python -m cwnnk layers` does
    assert name.startswith("tiny-") and Experiment.from_config(cfg, build=True).layers[name] == ("1", "4")
    exp = Experiment.from_config(validate({"dataset": dataset, "model": model, "extract": {"layers": ["1", "4"]}}))
    assert exp.layers[name] == ("1", "4")
    model = build_model(exp.models[name]["spec"])
    out = LayerExtractor(model.eval(), layer_nodes(exp.models[name]["spec"]))(torch.rand(2, 3, 16, 16))
    assert out["1"].shape == (2, 5, 16, 16) and out["4"].shape == (2, 5, 6, 6)
    cfg = validate({"dataset": dataset, "model": {"arch": "factory", "factory": "my_factories:not_a_module"},
                    "extract": {"layers": ["1"]}})
    exp = Experiment.from_config(cfg)  # imported, not called
    with pytest.raises(TypeError, match="my_factories:not_a_module returned str, not a torch.nn.Module"):
        build_model(next(iter(exp.models.values()))["spec"])


def test_factory_head_must_match_the_classes(tmp_path, monkeypatch):
    (tmp_path / "my_factories.py").write_text(FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path))
    dataset = {"name": "synthetic", "num_classes": 3, "image_size": 16, "channels": 3}
    cfg = validate({"dataset": dataset, "model": {"arch": "factory", "factory": "my_factories:tiny"},
                    "extract": {"layers": ["1"]}})
    spec = next(iter(Experiment.from_config(cfg).models.values()))["spec"]  # the head is checked when built
    with pytest.raises(ValueError, match=r"my_factories:tiny outputs \(N, 2\) on \(N, 3, 16, 16\) images, but the "
                                         r"model must predict 3 classes \(model.num_classes, or the dataset's "):
        build_model(spec)
    # pretrained weights on a folder without a test split may have other classes than the folder: model.num_classes
    write_folder(tmp_path / "train")
    cfg = validate({"dataset": {"name": "folder", "root": str(tmp_path / "train"), "image_size": 16},
                    "model": {"arch": "factory", "factory": "my_factories:tiny", "num_classes": 5,
                              "weights": str(tmp_path / "mine.pth")}, "extract": {"layers": ["1"]}})
    spec = next(iter(Experiment.from_config(cfg).models.values()))["spec"]
    with pytest.raises(ValueError, match=r"outputs \(N, 2\) .* must predict 5 classes .*: make "
                                         r"its head .*, or set model.num_classes to its width"):
        build_model(spec)


CALLED_FACTORY = '''
from pathlib import Path

from torch import nn

MARK = Path(__file__).with_name("factory-called")


def build():
    with MARK.open("a") as f:
        f.write("called\\n")
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
'''


def test_validation_and_dry_runs_never_call_a_factory(tmp_path, monkeypatch):
    """A config is code (docs/reliability.md): a factory is imported to check that it exists, and called only
    by the jobs that build the model, and by `python -m cwnnk layers`, which says so."""
    import subprocess
    import sys

    from conftest import snakemake, write_config

    (tmp_path / "called_factory.py").write_text(CALLED_FACTORY)
    mark = tmp_path / "factory-called"
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", f"{tmp_path}:{__import__('os').environ.get('PYTHONPATH', '')}")
    config = write_config(tmp_path / "config.yaml", tmp_path / "results",
                          dataset={"name": "synthetic", "n_train": 40, "n_test": 20, "num_classes": 3,
                                   "image_size": 10, "channels": 3},
                          model={"arch": "factory", "factory": "called_factory:build"},
                          extract={"layers": ["1", "3"], "n_samples": 40})
    exp = Experiment.from_config(validate(__import__("yaml").safe_load(config.read_text())))
    assert all(layers == ("1", "3") for layers in exp.layers.values()) and not mark.exists()
    proc = snakemake("-n", "--cores", "1", "--configfile", config, cwd=tmp_path)
    assert "train" in proc.stdout and "graphs" in proc.stdout  # the whole DAG is planned ...
    assert not mark.exists()  # ... without calling the factory
    proc = subprocess.run([sys.executable, "-m", "cwnnk", "layers", "--configfile", str(config)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("cwnnk layers builds each model to list its nodes: a factory model's function is "
                                  "called") and mark.exists()


def test_extract_refuses_factory_layers_out_of_depth_order(tmp_path, monkeypatch):
    from cwnnk.extract import run_extract
    from cwnnk.train import run_train

    (tmp_path / "called_factory.py").write_text(CALLED_FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = validate({"dataset": {"name": "synthetic", "n_train": 16, "n_test": 8, "num_classes": 3, "image_size": 8,
                                "channels": 3},
                    "model": {"arch": "factory", "factory": "called_factory:build"}, "extract": {"layers": ["3", "1"]},
                    "training": {"epochs": 1, "batch_size": 8}, "sweep": {"seeds": [1]}, "device": "cpu",
                    "baseline": {"untrained": False}})
    exp = Experiment.from_config(cfg)
    (run, entry), = exp.models.items()
    run_train(entry, exp.train(run), tmp_path / "model.pt", tmp_path / "metrics.json", log=lambda *a: None)
    with pytest.raises(UnknownLayerError, match=r"\['3', '1'\] for model .* are not in the network's depth order; "
                                                r"list them as \['1', '3'\]"):
        run_extract(entry, tmp_path / "model.pt", tmp_path / "m.zarr", exp.extract(run), log=lambda *a: None)
    assert not (tmp_path / "m.zarr").exists()


def test_all_skips_channel_last_activations_of_a_factory(tmp_path, monkeypatch):
    (tmp_path / "my_factories.py").write_text(FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path))
    spec = {"arch": "factory", "factory": "my_factories:Mixed", "input_shape": [3, 6, 6], "num_classes": 2}
    assert resolve_layers(spec, "all") == ["relu"]  # the GELU's output is (N, 6, 6, 8): rows, not channels
    assert {"conv", "relu", "add"} <= set(layer_nodes(spec)) and "mlp.1" not in layer_nodes(spec)
    with pytest.raises(UnknownLayerError, match=r"node 'mlp.1' outputs \(N, 6, 6, 8\): channel-last \(N, H, W, C\)"):
        resolve_layers(spec, ["mlp.1"])
    x = torch.rand(2, 3, 6, 6)
    model = build_model(spec).eval()
    # the transposes bring the MLP's output back to (N, C, H, W): `add` holds conv channels
    out = LayerExtractor(model, {"add": "net.add", "relu": "net.relu"})(x)
    mlp = model.net.mlp(out["relu"].permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    assert torch.allclose(out["add"], out["relu"] + mlp)


def test_convnext_channel_last_nodes_are_refused():
    spec = tv_spec("convnext_tiny")
    with pytest.raises(UnknownLayerError) as err:
        resolve_layers(spec, "all", "cnx")
    text = str(err.value)
    assert "'all' selects no layer of model 'cnx'" in text and "its 18 activation nodes" in text  # 3+3+9+3 blocks
    assert "channel-last (N, H, W, C)" in text and "features.1.0.block.6" in text
    with pytest.raises(UnknownLayerError) as err:
        resolve_layers(spec, ["features.1.0.block.4"])
    text = str(err.value)
    assert "node 'features.1.0.block.4' outputs (N, 8, 8, 384): channel-last (N, H, W, C), not (N, C, H, W)" in text
    nearest = text.split("nearest valid: ")[1].split(";")[0].split(", ")
    assert {"features.1.0.block.0", "features.1.0.block.6"} <= set(nearest)
    # the depthwise conv before the permute and the permute back are (N, C, H, W), as the block's sum
    names = ["features.1.0.block.0", "features.1.0.block.6", "features.1.0.add"]
    assert resolve_layers(spec, names) == names
    torch.manual_seed(0)
    model = build_model(spec).eval()
    x = torch.rand(2, 3, 32, 32)
    out = LayerExtractor(model, {n: layer_nodes(spec)[n] for n in names})(x)
    block = model.net.features[1][0]
    assert out["features.1.0.block.6"].shape == (2, 96, 8, 8)
    assert torch.allclose(out["features.1.0.add"], block(model.net.features[0](x)), atol=1e-6)


def test_swin_is_channel_last_throughout():
    spec = tv_spec("swin_t")
    # only the patch embedding's conv, the permute back before pooling and the pool are (N, C, H, W)
    assert list(layer_nodes(spec)) == ["features.0.0", "permute", "avgpool"]
    with pytest.raises(UnknownLayerError, match=r"no activation node with a \(N, C, H, W\) output"):
        resolve_layers(spec, "all")
    with pytest.raises(UnknownLayerError, match=r"node 'features.1.0.norm1' outputs \(N, 8, 8, 96\): channel-last"):
        resolve_layers(spec, ["features.1.0.norm1"])
    with pytest.raises(UnknownLayerError, match=r"_get_relative_position_bias' is not computed from the image"):
        resolve_layers(spec, ["features.1.0.attn._get_relative_position_bias"])


def test_image_folder_decodes_pngs_lazily_and_converts_channels(tmp_path):
    write_folder(tmp_path / "rgb", per_class=5)
    data = load_dataset(DatasetParams(name="folder", root=str(tmp_path / "rgb"), image_size=16, n_train=6))
    assert data.classes == ("cat", "dog") and data.test is None and len(data.train) == 6
    assert np.bincount(data.train.labels.numpy()).tolist() == [3, 3]  # stratified
    x = data.train.images[torch.tensor([0, 5])]
    assert x.shape == (2, 3, 16, 16) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    write_folder(tmp_path / "gray", mode="L")
    gray = load_dataset(DatasetParams(name="folder", root=str(tmp_path / "gray"), image_size=12, channels=3))
    g = gray.train.images[:2]
    assert g.shape == (2, 3, 12, 12) and torch.equal(g[:, 0], g[:, 2])
    one = load_dataset(DatasetParams(name="folder", root=str(tmp_path / "rgb"), image_size=12, channels=1))
    assert one.train.images[:1].shape == (1, 1, 12, 12)


def test_image_folder_refusals(tmp_path):
    (tmp_path / "empty" / "cat").mkdir(parents=True)
    (tmp_path / "empty" / "dog").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="is not an image folder tree"):
        load_dataset(DatasetParams(name="folder", root=str(tmp_path / "empty"), image_size=8))
    write_folder(tmp_path / "one", classes=("cat",))
    with pytest.raises(ValueError, match=r"has 1 class folder\(s\) \(\['cat'\]\); cwnnk needs at least 2"):
        load_dataset(DatasetParams(name="folder", root=str(tmp_path / "one"), image_size=8))
    write_folder(tmp_path / "bad")
    (tmp_path / "bad" / "dog" / "broken.png").write_bytes(b"not a png at all")
    data = load_dataset(DatasetParams(name="folder", root=str(tmp_path / "bad"), image_size=8))
    with pytest.raises(ValueError, match=r"cannot read image .*dog/broken\.png"):
        data.train.images[np.arange(len(data.train))]
    with pytest.raises(ConfigError, match="dataset.root"):
        validate({"dataset": {"name": "folder", "root": str(tmp_path / "nowhere")}})


def _write_mnist(root, n, seed):
    """torchvision's MNIST on-disk format: root/MNIST/raw/*-idx?-ubyte (big-endian idx files)."""
    rng = np.random.default_rng(seed)
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, count in (("train", n), ("t10k", n // 2)):
        images = rng.integers(0, 256, (count, 28, 28), dtype=np.uint8)
        labels = (np.arange(count) % 10).astype(np.uint8)
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 2051, count, 28, 28) + images.tobytes())
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, count) + labels.tobytes())


def test_torchvision_dataset_class_in_its_own_format(tmp_path):
    _write_mnist(tmp_path, 40, 0)
    data = load_dataset(DatasetParams(name="MNIST", root=str(tmp_path), n_train=20, n_test=10, channels=3,
                                      image_size=16))
    assert len(data.train) == 20 and len(data.test) == 10 and data.num_classes == 10
    assert data.train.images[:3].shape == (3, 3, 16, 16)
    native = load_dataset(DatasetParams(name="MNIST", root=str(tmp_path)))
    assert native.train.images[:1].shape == (1, 1, 28, 28)
    with pytest.raises(FileNotFoundError, match="torchvision FashionMNIST.* not found under"):
        load_dataset(DatasetParams(name="FashionMNIST", root=str(tmp_path)))
    with pytest.raises(ConfigError, match=r"'Mnist' is not allowed.*nearest: .*MNIST"):
        validate({"dataset": {"name": "Mnist"}})


@pytest.mark.slow
def test_snakemake_runs_a_pretrained_torchvision_model_on_an_image_folder(tmp_path, monkeypatch):
    """Config to figures: resnet18's IMAGENET1K_V1 weights (a file placed in TORCH_HOME), an ImageFolder of PNGs
    without a test split, beside the tiny ConvNet trained here on the same images; every table says why
    accuracy and C4 are missing. The weights file holds random weights (seed 7): the twin comparison must
    show it, and the library, run as a user would on the same folder, gives the workflow's numbers."""
    from conftest import TINY_CONFIG, snakemake

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    place_weights(tmp_path / "th", seed=7)
    write_folder(tmp_path / "train", per_class=8)
    config = dict(TINY_CONFIG, results=str(tmp_path / "results"),
                  dataset={"name": "folder", "root": str(tmp_path / "train"), "image_size": 12},
                  sweep={"dropout": [0.0], "seeds": [1]},
                  external=[{"name": "r18", "model": {"arch": "torchvision", "name": "resnet18",
                                                      "weights": "IMAGENET1K_V1"}, "layers": ["layer4.*.relu"]}],
                  extract={"n_samples": 12, "batch_size": 8}, graphs={"k": 4})
    (tmp_path / "c.yaml").write_text(json.dumps(config))
    snakemake("--cores", "2", "--configfile", tmp_path / "c.yaml", timeout=1200)
    results = tmp_path / "results"
    metrics = json.loads((results / "models" / "r18" / "metrics.json").read_text())
    assert metrics["final"]["test_acc"] is None and "no test split" in metrics["accuracy_skipped"]
    store = json.loads((results / "activations" / "r18.zarr" / "zarr.json").read_text())["attributes"]
    assert store["transform"]["preprocess_source"] == "resnet18 IMAGENET1K_V1.transforms()"
    assert store["transform"]["input_shape"] == [3, 224, 224]
    from cwnnk.tables import read_table

    table = read_table(results / "tables" / "overlap.csv")
    rows = {(m, layer) for m, layer in zip(table["model"], table["layer"])}
    assert {("r18", "layer4.0.relu"), ("r18", "layer4.1.relu"), ("convnet-d0-wd0-s1", "conv2")} <= rows
    assert all("no test split" in reason for reason in table["accuracy_skipped"])
    assert all((results / "figures" / f"F{i}.png").is_file() for i in range(0, 8))
    # The report: bounded (pairwise.csv stays out) and answering first, one row per model and layer
    snakemake("--configfile", tmp_path / "c.yaml", "--report", tmp_path / "report.html")
    assert (tmp_path / "report.html").stat().st_size < 20 * 2**20
    front = (results / "report" / "front_page.rst").read_text()
    answer = read_table(results / "tables" / "answer.csv")
    assert len(answer["model"]) == sum(table["kind"] != "untrained")  # final models only, each analysed layer
    for model, layer in zip(answer["model"], answer["layer"]):
        assert f"   * - {model}\n     - {layer}\n" in front
    assert front.index("The answer") < front.index("This run's verdicts") < front.index("Channel redundancy and")
    # an imported model is not the built-in experiment: no synthetic manifolds nor solver comparison (F5, F6)
    assert not (results / "tables" / "manifolds.csv").exists() and not (results / "tables" / "solvers.csv").exists()
    assert "figures.calibration is off" in read_table(results / "tables" / "claims.csv")["evidence"][0]
    from test_workflow import _documented_columns

    generalization = read_table(results / "tables" / "generalization.csv")
    assert (generalization["n_models"] == 0).all()
    assert all("no test split" in reason for reason in generalization["skipped"])
    claims = read_table(results / "tables" / "claims.csv")
    c4 = claims["claim"] == "C4"
    assert c4.sum() == 3 and (claims["verdict"][c4] == "undefined").all()
    assert all("no test split" in evidence for evidence in claims["evidence"][c4])
    for name in ("overlap", "generalization", "early_stopping", "claims"):
        columns = set(read_table(results / "tables" / f"{name}.csv"))
        assert columns <= _documented_columns(), f"{name}.csv: undocumented {columns - _documented_columns()}"

    # Random weights look like trained ones by their name; the twin (r18-untrained, seed 0) tells them apart.
    r18 = table["model"] == "r18"
    assert (table["twin"][r18] == "r18-untrained").all()
    assert (table["training_effect"][r18] == "none beyond the interval").all()
    assert "what architecture and data give, not what training did" in claims["evidence"][claims["claim"] == "C2"][0]

    # The library on the same folder, as a user writes it, gives the workflow's numbers.
    import cwnnk

    weights = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    images = torchvision.datasets.ImageFolder(tmp_path / "train", transform=weights.transforms())
    model = torchvision.models.resnet18(weights=weights)
    library = cwnnk.redundancy_vs_untrained(model, images, ["layer4.*.relu"], k=4, n_samples=12, seed=0)
    assert list(library) == ["layer4.0.relu", "layer4.1.relu"]
    for layer, got in library.items():
        at = int(np.flatnonzero(r18 & (table["layer"] == layer))[0])
        for name, value in (("redundancy", got.redundancy), ("redundancy_ci_lo", got.redundancy_ci[0]),
                            ("redundancy_ci_hi", got.redundancy_ci[1]), ("redundancy_chance", got.redundancy_chance),
                            ("redundancy_twin", got.untrained), ("redundancy_vs_twin", got.difference),
                            ("redundancy_vs_twin_ci_lo", got.difference_ci[0]),
                            ("redundancy_vs_twin_ci_hi", got.difference_ci[1])):
            assert value == pytest.approx(table[name][at], abs=1e-9), (layer, name)
        assert got.effect == table["training_effect"][at]


def test_preflight_catches_missing_hub_weights_and_k_above_a_folders_images(tmp_path, monkeypatch):
    """What a dry run can know, it checks: a torchvision weights name absent from the torch hub cache, and graphs.k
    at or above the N an image folder gives (its files counted, no image opened)."""
    from cwnnk.preflight import problems

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    write_folder(tmp_path / "train", per_class=8)  # 16 images
    folder = {"name": "folder", "root": str(tmp_path / "train"), "image_size": 32}
    named = {"arch": "torchvision", "name": "resnet18", "weights": "IMAGENET1K_V1"}
    exp = Experiment.from_config(validate({"dataset": folder, "model": named, "graphs": {"k": 16}}))
    found = [message for _, message in problems(exp)]
    assert any("resnet18 IMAGENET1K_V1" in m and "not in the torch hub cache" in m and "resnet18-f37072fd.pth" in m
               for m in found)
    assert any("config key 'graphs.k': 16 needs more than k samples per graph, but the graphs have N = 16" in m
               for m in found)
    place_weights(tmp_path / "th")
    exp = Experiment.from_config(validate({"dataset": folder, "model": named, "graphs": {"k": 10}}))
    assert problems(exp) == []


def test_an_image_folder_with_a_symlink_loop_or_a_linked_duplicate_is_refused(tmp_path):
    """torchvision walks an ImageFolder following links: a link back up the tree reads every image again and
    again (under the class folder it sits in), a linked file reads one image twice, possibly under another
    label. Both are refused, naming the two paths."""
    import os

    from cwnnk.datasets import load_dataset
    from cwnnk.params import DatasetParams

    loop = write_folder(tmp_path / "loop")
    os.symlink("..", loop / "cat" / "up")  # cat/up/dog/0.png is dog/0.png read again, labelled cat
    with pytest.raises(ValueError, match=r"image folder .*loop: .*loop/cat/0.png and .*loop/cat/up/cat/0.png are the "
                                         r"same file .*a symlink loop or a linked duplicate"):
        load_dataset(DatasetParams(name="folder", root=str(loop)))
    twin = write_folder(tmp_path / "twin")
    os.symlink(twin / "cat" / "0.png", twin / "dog" / "copy.png")
    with pytest.raises(ValueError, match=r"twin/cat/0.png and .*twin/dog/copy.png are the same file"):
        load_dataset(DatasetParams(name="folder", root=str(twin)))
    plain = write_folder(tmp_path / "plain")  # a tree without links loads as before
    assert len(load_dataset(DatasetParams(name="folder", root=str(plain))).train) == 12
