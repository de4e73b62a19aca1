import pytest
import torch

from cwnnk.models import build_model, layer_names, load_checkpoint, save_checkpoint

COMPANION = {  # the authors' companion network: 4 conv layers of 5 channels, kernels 5,5,5,3, valid
    "arch": "convnet", "input_shape": [3, 32, 32], "num_classes": 2, "dropout": 0.2,
    "layers": [{"channels": 5, "kernel": 5}, {"channels": 5, "kernel": 5, "pool": True},
               {"channels": 5, "kernel": 5}, {"channels": 5, "kernel": 3, "pool": True}],
}
RESNET = {"arch": "resnet18", "input_shape": [3, 32, 32], "num_classes": 10, "cifar_stem": True}


def _activations(model, x):
    from torchvision.models.feature_extraction import create_feature_extractor

    return create_feature_extractor(model.eval(), dict((node, name) for name, node in model.layers.items()))(x)


def test_companion_network_shapes_and_layers():
    model = build_model(COMPANION).eval()
    assert model(torch.rand(4, 3, 32, 32)).shape == (4, 2)
    assert layer_names(COMPANION) == ["conv1", "conv2", "conv3", "conv4"]
    acts = _activations(model, torch.rand(2, 3, 32, 32))
    # 32 -5-> 28 -5-> 24 (pool after ReLU) -> 12 -5-> 8 -3-> 6 (pool after ReLU)
    assert [tuple(a.shape[1:]) for a in acts.values()] == [(5, 28, 28), (5, 24, 24), (5, 8, 8), (5, 6, 6)]
    assert all((a >= 0).all() for a in acts.values())  # post-ReLU


def test_convnet_same_padding_and_too_small_input():
    spec = dict(COMPANION, input_shape=[1, 16, 16], layers=[{"channels": 7, "kernel": 3, "padding": "same"}])
    assert build_model(spec)(torch.rand(1, 1, 16, 16)).shape == (1, 2)
    with pytest.raises(ValueError, match=r"model.layers\[2\]"):
        build_model(dict(COMPANION, input_shape=[3, 12, 12]))


def test_resnet18_shapes_and_layers():
    model = build_model(RESNET).eval()
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    names = layer_names(RESNET)
    assert names[:3] == ["stem", "layer1.0.relu", "layer1.0"] and names[-1] == "layer4.1" and len(names) == 17
    acts = _activations(model, torch.rand(2, 3, 32, 32))
    assert acts["stem"].shape == (2, 64, 32, 32) and acts["layer4.1"].shape == (2, 512, 4, 4)
    assert acts["layer2.0.relu"].shape == (2, 128, 16, 16)
    assert all((a >= 0).all() for a in acts.values())


def test_resnet18_other_input_channels():
    spec = dict(RESNET, input_shape=[1, 16, 16])
    assert build_model(spec)(torch.rand(2, 1, 16, 16)).shape == (2, 10)


def test_unknown_arch():
    with pytest.raises(ValueError, match="vgg"):
        build_model({"arch": "vgg"})


@pytest.mark.parametrize("spec", [COMPANION, RESNET])
def test_checkpoint_round_trip_rebuilds_identical_outputs(tmp_path, spec):
    torch.manual_seed(0)
    spec = dict(spec, normalize={"mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3]})
    model = build_model(spec).eval()
    save_checkpoint(tmp_path / "ck.pt", model, spec)
    loaded, loaded_spec = load_checkpoint(tmp_path / "ck.pt")
    x = torch.rand(3, 3, 32, 32)
    assert loaded_spec == spec and not loaded.training
    assert torch.equal(loaded(x), model(x))


def test_mismatched_checkpoint_lists_keys(tmp_path):
    model = build_model(COMPANION)
    state = model.state_dict()
    state.pop("features.conv1.conv.bias")
    state["extra.weight"] = torch.zeros(1)
    state["features.conv2.conv.weight"] = torch.zeros(6, 5, 5, 5)
    torch.save(state, tmp_path / "theirs.pt")
    with pytest.raises(ValueError) as err:
        load_checkpoint(tmp_path / "theirs.pt", COMPANION)
    text = str(err.value)
    assert "theirs.pt" in text
    assert "missing keys (1): features.conv1.conv.bias" in text
    assert "unexpected keys (1): extra.weight" in text
    assert "features.conv2.conv.weight: checkpoint (6, 5, 5, 5) vs model (5, 5, 5, 5)" in text


def test_plain_state_dict_needs_a_spec(tmp_path):
    torch.save(build_model(COMPANION).state_dict(), tmp_path / "plain.pt")
    with pytest.raises(ValueError, match="declare its architecture"):
        load_checkpoint(tmp_path / "plain.pt")
    model, spec = load_checkpoint(tmp_path / "plain.pt", COMPANION)
    assert spec == COMPANION
