"""The extract stage (cwnnk.extract): checkpoint -> activation store.

Stores must equal a direct forward pass, written without the library's layer plumbing, for
the convnet and ResNet-18 (FX and hook paths); plus layer resolution, subsampling, a killed
extraction, non-finite activations and a run through Snakemake.
"""

import json
import os
import subprocess
import sys
from collections import Counter, OrderedDict

import numpy as np
import pytest
import torch

from cwnnk.activations import StoreError, open_activations
from cwnnk.config import expand_models, validate
from cwnnk.datasets import Split, load_dataset, load_synthetic
from cwnnk.extract import (
    PAUSE_ENV,
    LayerExtractor,
    NonFiniteActivation,
    UnknownLayerError,
    extract_to_store,
    resolve_layers,
    run_extract,
    select_samples,
)
from cwnnk.models import build_model, layer_names, load_checkpoint, save_checkpoint
from cwnnk.params import ExtractParams

from conftest import kill_when_logged

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATASET = {"name": "synthetic", "n_train": 60, "n_test": 30, "num_classes": 3, "image_size": 12}


def _config(**extract):
    return validate({
        "dataset": DATASET, "sweep": {"dropout": [0.2], "seeds": [1]},
        "model": {"arch": "convnet", "layers": [
            {"channels": 5, "kernel": 3, "padding": "same"},
            {"channels": 6, "kernel": 3, "padding": "same", "pool": True},
            {"channels": 4, "kernel": 3},
        ]},
        "extract": dict({"n_samples": None, "batch_size": 16}, **extract),
    })


@pytest.fixture(scope="module")
def convnet(tmp_path_factory):
    """A random convnet checkpoint (with input normalisation), its config entry and config."""
    cfg = _config()
    entry = next(iter(expand_models(cfg).values()))
    torch.manual_seed(0)
    spec = dict(entry["spec"], normalize={"mean": [0.4], "std": [0.25]})
    path = tmp_path_factory.mktemp("convnet") / "checkpoint.pt"
    save_checkpoint(path, build_model(spec), spec)
    return entry, path, cfg


def _convnet_reference(model, x):
    """Post-ReLU outputs of every conv block, computed by hand."""
    out, h = OrderedDict(), (x - model.normalize.mean) / model.normalize.std
    for name, block in model.features.named_children():
        h = torch.relu(torch.nn.functional.conv2d(h, block.conv.weight, block.conv.bias, padding=block.conv.padding))
        out[name] = h
        if hasattr(block, "pool"):
            h = torch.nn.functional.max_pool2d(h, 2)
    return out


def _resnet_reference(model, x):
    """Post-ReLU outputs of ResNet-18 (stem, inside and at the end of every BasicBlock), out of place."""
    net, out = model.net, OrderedDict()
    h = torch.relu(net.bn1(net.conv1(model.normalize(x))))
    out["stem"] = h
    h = net.maxpool(h)
    for stage in range(1, 5):
        for b, block in enumerate(getattr(net, f"layer{stage}")):
            y = torch.relu(block.bn1(block.conv1(h)))
            out[f"layer{stage}.{b}.relu"] = y
            y = block.bn2(block.conv2(y))
            h = torch.relu(y + (block.downsample(h) if block.downsample is not None else h))
            out[f"layer{stage}.{b}"] = h
    return out


def xparams(cfg, layers="all", dataset=None, **changes):
    """The ExtractParams of the fixture's config (or another dataset), with `changes`."""
    settings = {key: value for key, value in cfg["extract"].items() if key != "layers"}
    return ExtractParams(dataset=dataset or cfg["dataset"], layers=layers, device="cpu", **dict(settings, **changes))


def _assert_store_matches(store, reference):
    for layer, expected in reference.items():
        expected = expected.numpy()
        n, c = expected.shape[:2]
        assert store.shapes[layer] == expected.shape
        np.testing.assert_allclose(store.aggregate(layer), expected.reshape(n, -1), rtol=1e-5, atol=1e-6)
        for ch in (0, c - 1):
            np.testing.assert_allclose(store.channel(layer, ch), expected[:, ch].reshape(n, -1), rtol=1e-5, atol=1e-6)


def test_convnet_store_equals_forward_pass(convnet, tmp_path):
    entry, checkpoint, cfg = convnet
    store = tmp_path / "activations" / "m.zarr"
    run_extract(entry, checkpoint, store, xparams(cfg, test_split=True))
    assert not list(store.parent.glob(".*tmp*"))  # nothing left beside the store
    model, spec = load_checkpoint(checkpoint)
    dataset = load_dataset(cfg["dataset"])
    for split in ("train", "test"):
        acts = open_activations(store, split)
        data = dataset.split(split)
        assert acts.layers == ["conv1", "conv2", "conv3"] and len(acts) == len(data)
        np.testing.assert_array_equal(acts.labels, data.labels.numpy())
        np.testing.assert_array_equal(acts.indices, data.indices)
        with torch.no_grad():
            _assert_store_matches(acts, _convnet_reference(model, data.images))
    attrs = acts.attrs
    assert attrs["complete"] is True and attrs["spec"] == spec and attrs["model"] == entry["name"]
    assert attrs["checkpoint"]["sha256"] and attrs["dataset"]["name"] == "synthetic"
    assert attrs["transform"]["normalize"] == {"mean": [0.4], "std": [0.25]}
    assert attrs["shapes"] == {"conv1": [5, 12, 12], "conv2": [6, 12, 12], "conv3": [4, 4, 4]}  # before pooling
    assert attrs["extraction"]["method"] == "hooks" and attrs["versions"]["zarr"] and attrs["created"]
    assert set(attrs["splits"]) == {"train", "test"} and attrs["splits"]["train"]["indices_sha256"]


@pytest.fixture(scope="module")
def resnet():
    spec = {"arch": "resnet18", "input_shape": [3, 16, 16], "num_classes": 3, "cifar_stem": True,
            "normalize": {"mean": [0.5] * 3, "std": [0.2] * 3}}
    torch.manual_seed(1)
    model = build_model(spec).eval()
    with torch.no_grad():  # non-trivial batch-norm statistics, so eval mode matters
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    dataset = load_synthetic(n_train=10, n_test=2, num_classes=2, image_size=16, channels=3)
    with torch.no_grad():
        reference = _resnet_reference(model, dataset.train.images)
    return model, spec, dataset, reference


@pytest.mark.parametrize("method", ["fx", "hooks"])
def test_resnet18_every_layer_equals_forward_pass(resnet, method):
    model, spec, dataset, reference = resnet
    names = layer_names(spec)
    assert names == list(reference)  # 17 layers: the stem, then two per BasicBlock (one ReLU module, called twice)
    extractor = LayerExtractor(model, OrderedDict((name, model.layers[name]) for name in names), method)
    assert extractor.method == method
    with torch.inference_mode():
        out = extractor(dataset.train.images)
    assert list(out) == names
    for name in names:
        np.testing.assert_allclose(out[name].numpy(), reference[name].numpy(), rtol=1e-5, atol=1e-6, err_msg=name)


def test_auto_hooks_module_outputs_with_the_bits_fx_gives(resnet):
    """auto takes forward hooks where every layer is a module's output (here all 17, ReLU modules called twice
    included): no tracing, no torchvision import, and the same bits as torchvision's feature extractor."""
    model, spec, dataset, _ = resnet
    nodes = OrderedDict((name, model.layers[name]) for name in layer_names(spec))
    auto, fx = LayerExtractor(model, nodes, "auto"), LayerExtractor(model, nodes, "fx")
    assert auto.method == "hooks"
    with torch.inference_mode():
        a, f = auto(dataset.train.images), fx(dataset.train.images)
    for name in nodes:
        assert torch.equal(a[name], f[name]), name
    flatten = LayerExtractor(model, OrderedDict(out="net.flatten"), "auto")  # a function call: traced
    assert flatten.method == "fx"


# Both ReLU calls of blocks with and without a downsampling shortcut. (All 17 layers would
# write ~4,000 chunks per batch: correct, but slow for a unit test; the test above checks
# every layer of both the FX and the hook path without a store.)
RESNET_LAYERS = ["stem", "layer1.0.relu", "layer1.1", "layer2.0.relu", "layer2.0", "layer3.0"]


def test_resnet18_store_equals_forward_pass(resnet, tmp_path):
    model, spec, dataset, reference = resnet
    nodes = OrderedDict((name, model.layers[name]) for name in RESNET_LAYERS)
    attrs = extract_to_store(model, nodes, dataset, tmp_path / "r.zarr", batch_size=4)
    assert attrs["extraction"]["method"] == "hooks" and attrs["layers"] == RESNET_LAYERS
    _assert_store_matches(open_activations(tmp_path / "r.zarr"), {k: reference[k] for k in RESNET_LAYERS})


def test_an_untraceable_model_is_extracted_with_hooks(convnet, tmp_path):
    """A model with data-dependent control flow cannot be traced: auto extracts its module outputs with hooks,
    without trying FX; asking for fx raises and leaves the model in eval mode."""
    _, checkpoint, cfg = convnet
    model, spec = load_checkpoint(checkpoint)

    class Untraceable(type(model)):
        def forward(self, x):
            if x.sum() < -1:  # data-dependent control flow: FX cannot trace it
                x = -x
            return super().forward(x)

    model.__class__ = Untraceable
    assert not model.training
    dataset = load_dataset(cfg["dataset"])
    nodes = OrderedDict((name, model.layers[name]) for name in ("conv1", "conv3"))
    with pytest.raises(Exception):
        LayerExtractor(model, nodes, "fx")
    assert not model.training  # the failed trace must not leave dropout switched on
    attrs = extract_to_store(model, nodes, dataset, tmp_path / "h.zarr", n_samples=20)
    assert attrs["extraction"]["method"] == "hooks"
    acts = open_activations(tmp_path / "h.zarr")
    with torch.no_grad():
        reference = _convnet_reference(model, dataset.train.images[select_samples(dataset.train, 20, 0)])
    _assert_store_matches(acts, {k: reference[k] for k in nodes})


def test_resolve_layers(convnet):
    spec = convnet[0]["spec"]
    assert resolve_layers(spec, "all") == ["conv1", "conv2", "conv3"]
    assert resolve_layers(spec, ["conv3", "conv1"]) == ["conv1", "conv3"]  # depth order
    resnet = {"arch": "resnet18", "input_shape": [3, 16, 16], "num_classes": 3}
    assert resolve_layers(resnet, ["layer4.1", "stem"]) == ["stem", "layer4.1"]
    with pytest.raises(UnknownLayerError, match=r"unknown layer\(s\) \['conv9'\] for model 'm'.*valid layers: "
                                                r"conv1, conv2, conv3"):
        resolve_layers(spec, ["conv1", "conv9"], "m")


def test_unknown_layer_fails_at_job_start(convnet, tmp_path):
    entry, checkpoint, cfg = convnet
    with pytest.raises(UnknownLayerError, match="valid layers: conv1, conv2, conv3"):
        run_extract(entry, checkpoint, tmp_path / "m.zarr", xparams(cfg, ["relu"]))
    assert not (tmp_path / "m.zarr").exists()


def test_subsample_keeps_class_balance_and_is_seeded():
    labels = np.repeat([0, 1, 2, 3], [500, 300, 150, 50])
    split = Split(torch.zeros(len(labels), 1, 2, 2), torch.as_tensor(labels), np.arange(len(labels)) + 1000)
    picks = select_samples(split, 100, seed=3)
    assert len(picks) == len(set(picks)) == 100 and (np.diff(picks) > 0).all()
    assert Counter(labels[picks]) == {0: 50, 1: 30, 2: 15, 3: 5}
    np.testing.assert_array_equal(picks, select_samples(split, 100, seed=3))
    assert not np.array_equal(picks, select_samples(split, 100, seed=4))


def test_stored_subsample_is_balanced(convnet, tmp_path):
    entry, checkpoint, cfg = convnet
    run_extract(entry, checkpoint, tmp_path / "m.zarr", xparams(cfg, ["conv3"], n_samples=30, seed=5))
    acts = open_activations(tmp_path / "m.zarr")
    full = load_dataset(cfg["dataset"]).train
    assert len(acts) == 30 and acts.layers == ["conv3"]
    assert Counter(acts.labels.tolist()) == {0: 10, 1: 10, 2: 10}
    np.testing.assert_array_equal(acts.labels, full.labels.numpy()[np.searchsorted(full.indices, acts.indices)])


def test_store_holds_only_images_the_model_trained_on(convnet, tmp_path):
    """With a validation split (training.validation) the store's training samples are the images
    trained on: the held-out ones are never stored, subsampled or not."""
    entry, checkpoint, cfg = convnet
    dataset = dict(cfg["dataset"], validation=0.25)
    split = load_dataset(dataset)
    held = set(split.validation.indices.tolist())
    assert len(held) == 15 and len(split.train) == 45
    for n_samples, store in ((None, tmp_path / "all.zarr"), (30, tmp_path / "sub.zarr")):
        run_extract(entry, checkpoint, store, xparams(cfg, ["conv3"], dataset=dataset, n_samples=n_samples,
                                                       test_split=True))
        acts = open_activations(store)
        assert len(acts) == (n_samples or 45) and not held & set(acts.indices.tolist())
        assert set(acts.indices.tolist()) <= set(split.train.indices.tolist())
        assert acts.attrs["dataset"]["config"]["validation"] == 0.25
        assert len(open_activations(store, "test")) == 30  # the test split is untouched
    # Without the split the store takes every training image, the held-out ones included.
    run_extract(entry, checkpoint, tmp_path / "none.zarr", xparams(cfg, ["conv3"]))
    assert held <= set(open_activations(tmp_path / "none.zarr").indices.tolist())


def _kill_when_paused(cmd, log, batches, timeout):
    """Run cmd with the pause hook set; SIGKILL it (and its children) once `log` says it paused."""
    kill_when_logged(cmd, log, f"pausing after {batches} batches", {PAUSE_ENV: str(batches)}, timeout)


def test_killed_extraction_is_refused_and_a_rerun_completes(convnet, tmp_path):
    entry, checkpoint, cfg = convnet
    store, log = tmp_path / "m.zarr", tmp_path / "extract.log"
    script = (
        "import json, sys; from cwnnk.extract import run_extract; from cwnnk.logs import stage_logger;"
        "from cwnnk.params import ExtractParams; a = json.loads(sys.argv[1]);"
        "run_extract(a['entry'], a['checkpoint'], a['store'], ExtractParams.from_dict(a['extract']),"
        " stage_logger('extract', a['log']).info)"
    )
    args = json.dumps({"entry": entry, "checkpoint": str(checkpoint), "store": str(store), "log": str(log),
                       "extract": xparams(cfg, batch_size=8).to_dict()})
    _kill_when_paused([sys.executable, "-c", script, args], log, batches=2, timeout=120)
    assert "batch 2/8 done" in log.read_text()
    with pytest.raises(StoreError, match="no activation store here"):
        open_activations(store)
    (partial,) = tmp_path.glob(".m.zarr.tmp-*")  # the half-written temporary, with chunks in it
    assert any((partial / "train" / "conv1").glob("c.*"))
    with pytest.raises(StoreError, match="incomplete"):
        open_activations(partial)
    messages = []
    run_extract(entry, checkpoint, store, xparams(cfg), messages.append)
    assert len(open_activations(store)) == 60 and not partial.exists()
    assert any("removing" in m and "killed" in m for m in messages)


def test_non_finite_activation_names_layer_channel_and_sample(convnet, tmp_path):
    entry, checkpoint, cfg = convnet
    model, spec = load_checkpoint(checkpoint)
    with torch.no_grad():
        model.features.conv2.conv.bias[4] = float("nan")  # channel 4 of conv2 is NaN for every sample
    bad = tmp_path / "nan.pt"
    save_checkpoint(bad, model, spec)
    with pytest.raises(NonFiniteActivation, match=r"\(nan\) in layer 'conv2', channel 4, sample 0 of the stored "
                                                  r"train samples \(source index 0\)"):
        run_extract(entry, bad, tmp_path / "m.zarr", xparams(cfg))
    assert not list(tmp_path.glob("*.zarr")) and not list(tmp_path.glob(".*tmp*"))


def test_non_finite_check_finds_the_first_bad_value():
    from cwnnk.extract import check_finite

    values = torch.zeros(5, 3, 2, 2)
    check_finite(values, "l", "train", 0, np.arange(100))
    values[3, 2, 1, 0] = float("inf")
    with pytest.raises(NonFiniteActivation, match=r"\(inf\) in layer 'l', channel 2, sample 13 .*source index 26\)"
                                                  r", at y=1, x=0; 1 non-finite"):
        check_finite(values, "l", "train", 10, np.arange(100) * 2)


@pytest.mark.slow
def test_snakemake_builds_the_stores(tmp_path):
    """The extract rule through Snakemake on a tiny synthetic experiment (train, then extract)."""
    import yaml

    config = {
        "results": str(tmp_path / "results"), "device": "cpu", "threads": 1,
        "dataset": {"name": "synthetic", "n_train": 48, "n_test": 24, "num_classes": 3, "image_size": 12},
        "model": {"arch": "convnet", "layers": [{"channels": 4, "kernel": 3, "padding": "same", "pool": True},
                                                {"channels": 4, "kernel": 3, "padding": "same"}]},
        "training": {"epochs": 2, "batch_size": 16},
        "sweep": {"dropout": [0.0], "seeds": [1]},
        "extract": {"n_samples": 30, "batch_size": 16, "test_split": True, "layers": ["conv2"]},
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    store = tmp_path / "results" / "activations" / "convnet-d0-wd0-s1.zarr"
    def command(*args):  # targets first: --configfile takes every value after it
        return [sys.executable, "-m", "snakemake", "-s", os.path.join(REPO, "Snakefile"), "--directory", REPO, *args,
                "--cores", "2", "--configfile", str(tmp_path / "config.yaml")]

    def snakemake(*args):
        return subprocess.run(command(*args), capture_output=True, text=True, timeout=600)

    proc = snakemake(str(store / "zarr.json"))  # the rule's output: the store's root metadata
    assert proc.returncode == 0, proc.stderr[-6000:]
    assert sorted(p.name for p in store.iterdir()) == ["test", "train", "zarr.json"]  # nothing of Snakemake's
    acts = open_activations(store)
    assert acts.layers == ["conv2"] and len(acts) == 30 and acts.shapes["conv2"] == (30, 4, 6, 6)
    assert len(open_activations(store, "test")) == 24
    log_path = tmp_path / "results" / "logs" / "extract" / "convnet-d0-wd0-s1.log"
    assert "batch 4/4 done" in log_path.read_text()
    assert (tmp_path / "results" / "benchmarks" / "extract" / "convnet-d0-wd0-s1.tsv").exists()
    # A forced rerun, killed after its first batch: Snakemake deleted the old store's zarr.json (the rule's
    # output) before the job, so neither the reader nor a later rule accepts the old store; a rerun replaces it.
    created = acts.attrs["created"]
    _kill_when_paused(command(str(store / "zarr.json"), "--forcerun", "extract"), log_path, batches=1, timeout=300)
    with pytest.raises(StoreError, match="no zarr.json.*rerun the extract stage"):
        open_activations(store)
    snakemake("--unlock")  # the kill left a lock behind (docs/reliability.md: unlock, then rerun)
    proc = snakemake(str(store / "zarr.json"), "--rerun-incomplete")
    assert proc.returncode == 0, proc.stderr[-6000:]
    assert open_activations(store).attrs["created"] != created and not list(store.parent.glob(".*tmp*"))
    assert sorted(p.name for p in store.iterdir()) == ["test", "train", "zarr.json"]
    # An unknown layer stops the run at parse time, naming the valid layers.
    config["extract"]["layers"] = ["conv7"]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    proc = snakemake("-n")
    assert proc.returncode != 0 and "unknown layer(s) ['conv7']" in proc.stderr and "conv1, conv2" in proc.stderr


def test_full_float32_restores_the_backend_flags():
    from cwnnk.extract import full_float32

    cudnn = torch.backends.cudnn
    before = cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32, cudnn.deterministic, cudnn.benchmark
    with full_float32():
        assert not cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32 and cudnn.deterministic
    assert (cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32, cudnn.deterministic, cudnn.benchmark) == before
