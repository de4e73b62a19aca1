"""The library API (cwnnk.activations_of, cw_nnk_graphs, overlap_summary) and README's example, run verbatim."""

import re

import numpy as np
import pytest
import torch
import torchvision

import cwnnk
from conftest import REPO
from test_any_model import place_weights, write_folder


def readme_example():
    text = (REPO / "README.md").read_text()
    block = re.search(r"<!-- library-example[^>]*-->\n```python\n(.*?)```", text, re.S)
    return block[1]


def test_readme_example_runs_verbatim(tmp_path, monkeypatch, capsys):
    code = readme_example()
    assert len(code.strip().splitlines()) <= 5
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    place_weights(tmp_path / "th")
    write_folder(tmp_path / "my_images", per_class=8)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})
    rho_hat = float(capsys.readouterr().out.strip().splitlines()[-1])
    assert 0 <= rho_hat <= 1


def test_three_calls_on_a_tensor_and_a_store(tmp_path):
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=2)
    x = torch.rand(20, 3, 32, 32)
    acts = cwnnk.activations_of(model, x, ["layer1.*.relu"], batch_size=8)
    assert list(acts) == ["layer1.0.relu", "layer1.1.relu"] and acts["layer1.0.relu"].shape == (20, 64, 8, 8)
    store = cwnnk.activations_of(model, torch.utils.data.DataLoader(torch.utils.data.TensorDataset(
        x, torch.arange(20) % 2), batch_size=6), ["layer1.0.relu"], store=tmp_path / "a.zarr")
    assert np.array_equal(store.samples("layer1.0.relu"), acts["layer1.0.relu"])
    graphs = cwnnk.cw_nnk_graphs(acts["layer1.0.relu"], k=5)
    assert graphs.channels.indices.shape == (64, 20, 5) and graphs.aggregate.indices.shape == (20, 5)
    assert graphs.channel_graph(3).shape == (20, 20)
    summary = cwnnk.overlap_summary(graphs)
    for key in ("rho_hat_mean", "pairwise_overlap_mean", "kappa_mean", "rho_hat_chance_mean", "degree_agg_mean",
                "id_layer"):
        assert key in summary
    assert summary["pairwise"].shape == (64, 64)
    same = cwnnk.cw_nnk_graphs(acts["layer1.0.relu"].reshape(20, 64, -1), k=5, layout="NCD")
    assert np.array_equal(same.channels.indices, graphs.channels.indices)
    engine = np.ascontiguousarray(acts["layer1.0.relu"].reshape(20, 64, -1).transpose(1, 0, 2))
    assert np.array_equal(cwnnk.cw_nnk_graphs(engine, k=5, layout="CND").aggregate.indices, graphs.aggregate.indices)


def test_ambiguous_and_bad_inputs_are_refused():
    acts = np.random.default_rng(0).random((20, 4, 9), dtype=np.float32)
    with pytest.raises(ValueError, match=r"expects one layer's activations as \(N, C, H, W\).*\(N, C, D\) or the "
                                         r"engine's \(C, N, D\).*layout='NCD'"):
        cwnnk.cw_nnk_graphs(acts, k=5)
    with pytest.raises(ValueError, match="needs more than k samples"):
        cwnnk.cw_nnk_graphs(acts.reshape(20, 4, 3, 3), k=25)
    model = torchvision.models.mobilenet_v3_small(weights=None)
    with pytest.raises(ValueError, match=r"pattern 'layer\*' matches no layer; nearest valid"):
        cwnnk.activations_of(model, torch.rand(2, 3, 32, 32), ["layer*"])
    with pytest.raises(ValueError, match=r"must be a \(N, C, H, W\) tensor"):
        cwnnk.activations_of(model, torch.rand(3, 32, 32))
