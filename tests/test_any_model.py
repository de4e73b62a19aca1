"""Any torchvision model, any layer, any image dataset (issue #21): real torchvision parts at tiny sizes."""

import json
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

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
    (name, entry), = exp.models.items()
    assert name == "resnet18-IMAGENET1K_V1" and entry["kind"] == "external"
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
    (name, entry), = Experiment.from_config(cfg).models.items()
    assert name == "mobilenet_v3_small-mine" and entry["path"] == str(tmp_path / "mine.pth")
    model = pretrained_model(entry["spec"])
    assert torch.equal(model.net.features[0][0].weight, net.features[0][0].weight)
    bad = validate({"dataset": dataset, "model": {"arch": "torchvision", "name": "mobilenet_v3_small",
                                                  "num_classes": 5}})
    with pytest.raises(ConfigError, match="predicts 5 classes but dataset 'folder' has 2"):
        Experiment.from_config(bad)


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
from torch import nn


def tiny(width=4):
    return nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(width, width, 3),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 2))


def not_a_module():
    return "a string"
'''


def test_factory_model(tmp_path, monkeypatch):
    (tmp_path / "my_factories.py").write_text(FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path))
    write_folder(tmp_path / "train")
    dataset = {"name": "folder", "root": str(tmp_path / "train"), "image_size": 16}
    cfg = validate({"dataset": dataset, "model": {"arch": "factory", "factory": "my_factories:tiny",
                                                  "kwargs": {"width": 5}}})
    exp = Experiment.from_config(cfg)
    name = next(iter(exp.models))
    assert name.startswith("tiny-") and exp.layers[name] == ("1", "4")
    model = build_model(exp.models[name]["spec"])
    out = LayerExtractor(model.eval(), layer_nodes(exp.models[name]["spec"]))(torch.rand(2, 3, 16, 16))
    assert out["1"].shape == (2, 5, 16, 16) and out["4"].shape == (2, 5, 6, 6)
    cfg = validate({"dataset": dataset, "model": {"arch": "factory", "factory": "my_factories:not_a_module"}})
    with pytest.raises(TypeError, match="my_factories:not_a_module returned str, not a torch.nn.Module"):
        Experiment.from_config(cfg)


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
    with pytest.raises(FileNotFoundError, match="torchvision FashionMNIST not found under"):
        load_dataset(DatasetParams(name="FashionMNIST", root=str(tmp_path)))
    with pytest.raises(ConfigError, match=r"'Mnist' is not allowed.*nearest: .*MNIST"):
        validate({"dataset": {"name": "Mnist"}})


def test_snakemake_runs_a_pretrained_torchvision_model_on_an_image_folder(tmp_path, monkeypatch):
    """Config to figures: resnet18's IMAGENET1K_V1 weights (a file placed in TORCH_HOME), an ImageFolder of PNGs
    without a test split, beside a torchvision model trained here on the same images."""
    from conftest import TINY_CONFIG, snakemake

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    place_weights(tmp_path / "th")
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
    assert all((results / "figures" / f"F{i}.png").is_file() for i in range(1, 7))
    assert sys.executable  # the run used this interpreter (conftest.snakemake)
