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
    place_weights(tmp_path / "th", seed=7)  # random weights of another seed than the twin's (0)
    write_folder(tmp_path / "my_images", per_class=8)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})
    line = capsys.readouterr().out.strip().splitlines()[-1]
    # The weights file placed here is random (place_weights): the model and its untrained twin are two
    # random initialisations, so training cannot have changed anything beyond the interval.
    number = r"([0-9.]+) \[([0-9.]+), ([0-9.]+)\]"
    found = re.fullmatch(rf"layer4\.1\.relu_1: redundancy {number} \(chance ([0-9.]+)\); untrained twin {number}; "
                         r"trained - twin ([-+][0-9.]+) \[([-+][0-9.]+), ([-+][0-9.]+)\]: training changed nothing "
                         r"beyond the interval: this redundancy is what architecture and data give", line)
    assert found, line
    value, lo, hi, chance, twin, twin_lo, twin_hi, diff, diff_lo, diff_hi = map(float, found.groups())
    assert 0 <= lo <= value <= hi <= 1 and 0 <= twin_lo <= twin <= twin_hi <= 1 and chance < value
    assert diff_lo <= 0 <= diff_hi and diff == pytest.approx(value - twin, abs=2e-3)
    assert line in (REPO / "README.md").read_text()  # the README shows what the example prints


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


def test_a_dataset_of_unlabelled_images_is_read_without_labels():
    """(image, None) items, as torchvision gives for unlabelled splits: the images are read, the
    labels stored as 0, as for a dataset of bare images."""

    class Unlabelled(torch.utils.data.Dataset):
        def __init__(self, x):
            self.x = x

        def __len__(self):
            return len(self.x)

        def __getitem__(self, i):
            return self.x[i], None

    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=2)
    x = torch.rand(6, 3, 32, 32)
    from_items = cwnnk.activations_of(model, Unlabelled(x), ["layer1.0.relu"])["layer1.0.relu"]
    assert np.array_equal(from_items, cwnnk.activations_of(model, x, ["layer1.0.relu"])["layer1.0.relu"])


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


def _layer_with_dead_channel_and_equal_images(n=40, seed=0):
    """(N, C, H, W) float32 after a ReLU: channel 1 all zero on every image (dead), and images 30-32
    copies of images 0-2 (equal rows in every point set); labels (N,) of 2 classes."""
    rng = np.random.default_rng(seed)
    values = np.maximum(rng.normal(size=(n, 4, 3, 3)), 0).astype(np.float32)
    values[:, 1] = 0
    values[30:33] = values[0:3]
    return values, rng.integers(0, 2, n)


def _stage_row(tmp_path, values, labels, k):
    """The workflow's graphs and overlap stages on `values`: the extract stage's store writer, then the
    functions the Snakemake scripts call. Returns the overlap JSON."""
    import json

    from cwnnk.activations import StoreWriter
    from cwnnk.graphs import build_layer_graphs
    from cwnnk.overlap import analyse_layer
    from cwnnk.params import GraphParams

    writer = StoreWriter(tmp_path / "m.zarr", {"model": "m"}, "none")
    writer.add_split("train", labels, np.arange(len(values)), {"relu": values.shape[1:]}, chunk_samples=8)
    for start in range(0, len(values), 8):
        writer.write("train", "relu", start, values[start : start + 8])
    writer.finish()
    build_layer_graphs(tmp_path / "m.zarr", "relu", tmp_path / "relu", GraphParams(k=k, device="cpu"),
                       log=lambda m: None)
    analyse_layer(tmp_path / "relu", tmp_path / "relu.json")
    return json.loads((tmp_path / "relu.json").read_text())


# overlap_summary's entries beside the stage's row: the matrix, the PairOverlap, the intervals as pairs and the
# per-channel redundancy and pruning order (the stage's channel rows)
PER_CHANNEL = {"overlap_mean", "overlap_mean_chance", "overlap_max", "overlap_max_chance", "prune_order", "prune_score"}
EXTRAS = {"pairwise", "pairs", "redundancy_ci", "redundancy_excess_ci", *PER_CHANNEL}


def _same(a, b):
    return (np.isnan(a) and np.isnan(b)) if isinstance(a, float) and np.isnan(a) else abs(a - b) <= 1e-12


def test_library_summary_equals_the_overlap_stage(tmp_path):
    """cw_nnk_graphs + overlap_summary give the graphs + overlap stages' row, key for key, on a layer with a
    dead channel and equal images; without labels only the loo_* columns are missing."""
    values, labels = _layer_with_dead_channel_and_equal_images()
    stage = _stage_row(tmp_path, values, labels, k=6)
    row = stage["row"]
    summary = cwnnk.overlap_summary(cwnnk.cw_nnk_graphs(values, k=6, labels=labels, device="cpu"))
    assert set(summary) == set(row) | EXTRAS
    assert summary["redundancy_ci"] == (row["redundancy_ci_lo"], row["redundancy_ci_hi"])
    differ = {key: (summary[key], row[key]) for key in row if not _same(summary[key], row[key])}
    assert not differ
    np.testing.assert_allclose(summary["pairwise"], stage["pairwise"], rtol=0, atol=1e-12)
    for key in PER_CHANNEL:
        np.testing.assert_allclose(summary[key], [ch[key] for ch in stage["channels"]], rtol=0, atol=1e-12)
    assert row["n_dead_channels"] == 1 and row["zero_map_fraction_max"] == 1.0
    assert {"loo_error_layer", "loo_error_agg", "kkt_failed", "not_pd"} <= set(summary)
    # TwoNN on the 37 distinct images (duplicate policy): 90% of them are fitted. The kNN distances
    # (equal images dropped as candidates, each copy counted) would fit floor(0.9 * 40) = 36.
    assert summary["id_layer_n"] == int(0.9 * 37)
    unlabelled = cwnnk.overlap_summary(cwnnk.cw_nnk_graphs(values, k=6, device="cpu"))
    assert set(summary) - set(unlabelled) == {key for key in row if key.startswith("loo_")}
    assert all(_same(unlabelled[key], row[key]) for key in unlabelled if key not in EXTRAS)


def test_dead_channel_is_left_out_of_the_channel_metrics():
    """Channels [X, dead, X]: the two live channels have the same graph, so every node's union is half
    its sum: rho = 1/2 and rho_hat = (1/2) / (1 - 1/2) = 1, Jaccard 1. Counting the dead channel
    would give rho_hat = (1/2) / (1 - 1/3) = 3/4 and a mean pairwise Jaccard of 1/3."""
    values, _ = _layer_with_dead_channel_and_equal_images()
    values = values[:, [0, 1, 0]]
    summary = cwnnk.overlap_summary(cwnnk.cw_nnk_graphs(values, k=6, device="cpu"))
    assert summary["n_dead_channels"] == 1 and summary["n_channels"] == 3
    assert summary["rho_mean"] == pytest.approx(0.5, abs=1e-12)
    assert summary["rho_hat_mean"] == pytest.approx(1.0, abs=1e-12)
    assert summary["pairwise_overlap_mean"] == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_array_equal(summary["pairwise"], [[1, 0, 1], [0, 1, 0], [1, 0, 1]])


def test_a_constant_channel_is_dead_like_an_all_zero_one(tmp_path):
    """Channels [X, dead, X] with the dead channel's maps all 0.7 instead of 0: the same map on every image is
    as empty as all zeros, so the summary equals the all-zero layer's (not rho_hat 3/4 and J 1/3 as when it
    counted as live), through the library and through the graphs and overlap stages alike (streamed too)."""
    import cwnnk.graphs

    values, labels = _layer_with_dead_channel_and_equal_images()
    zero = values[:, [0, 1, 0]].copy()
    constant = zero.copy()
    constant[:, 1] = 0.7
    expect = cwnnk.overlap_summary(cwnnk.cw_nnk_graphs(zero, k=6, device="cpu"))
    graphs = cwnnk.cw_nnk_graphs(constant, k=6, device="cpu")
    assert graphs.constant_map.tolist() == [False, True, False] and graphs.zero_map_fraction[1] == 0
    summary = cwnnk.overlap_summary(graphs)
    for key in ("n_dead_channels", "rho_hat_mean", "pairwise_overlap_mean", "redundancy", "redundancy_chance"):
        assert summary[key] == pytest.approx(expect[key], abs=1e-12), key
    assert summary["n_dead_channels"] == 1 and summary["prune_order"][1] == 0  # removed first, like a dead one
    stage = _stage_row(tmp_path, constant, labels, k=6)
    assert stage["row"]["n_dead_channels"] == 1 and [ch["dead"] for ch in stage["channels"]] == [0, 1, 0]
    assert stage["row"]["rho_hat_mean"] == pytest.approx(1.0, abs=1e-12)
    monkeypatch = pytest.MonkeyPatch()
    with monkeypatch.context() as m:
        m.setattr(cwnnk.graphs, "STREAM_BYTES", 0)
        m.setattr(cwnnk.graphs, "GRAM_COPIES", 0)
        assert cwnnk.cw_nnk_graphs(constant, k=6, device="cpu").constant_map.tolist() == [False, True, False]


def test_a_streamed_layer_gives_the_same_summary(monkeypatch):
    """A layer too large to hold whole streams (its aggregate read from the Gram matrix, its TwoNN input
    from GramPoints): the library's summary is that of the whole layer."""
    import cwnnk.graphs

    values, labels = _layer_with_dead_channel_and_equal_images()
    whole = cwnnk.overlap_summary(cwnnk.cw_nnk_graphs(values, k=6, labels=labels, device="cpu"))
    monkeypatch.setattr(cwnnk.graphs, "STREAM_BYTES", 0)
    monkeypatch.setattr(cwnnk.graphs, "GRAM_COPIES", 0)
    assert cwnnk.graphs.streams(*values.reshape(40, 4, -1).shape)
    streamed = cwnnk.overlap_summary(cwnnk.cw_nnk_graphs(values, k=6, labels=labels, device="cpu"))
    assert set(streamed) == set(whole) and streamed["id_layer_n"] == int(0.9 * 37)
    assert all(abs(streamed[key] - whole[key]) <= 1e-9 or _same(streamed[key], whole[key])
               for key in whole if key not in EXTRAS)


def test_library_progress_bar_on_stderr_and_its_switch(capfd, monkeypatch):
    """cw_nnk_graphs shows a tqdm bar on stderr (here at once; by default after 2 s), nothing on stdout;
    progress=False silences it (as TQDM_DISABLE=1 set before Python starts does); log=print prints the
    workflow's progress lines instead."""
    from cwnnk.logs import ProgressBar

    monkeypatch.setattr(ProgressBar, "DELAY", 0.0)
    acts = np.maximum(0, np.random.default_rng(0).normal(size=(40, 6, 9))).astype(np.float32)
    cwnnk.cw_nnk_graphs(acts, 5, layout="NCD")
    out, err = capfd.readouterr()
    assert "CW-NNK graphs, 6 channels" in err and "/7 [" in err and "point set" in err and out == ""
    cwnnk.cw_nnk_graphs(acts, 5, layout="NCD", progress=False)
    assert capfd.readouterr() == ("", "")
    cwnnk.cw_nnk_graphs(acts, 5, layout="NCD", log=print)
    assert "point set 7/7 done" in capfd.readouterr().out


def test_library_errors_name_the_argument():
    acts = np.ones((20, 3, 4), dtype=np.float32)
    with pytest.raises(ValueError, match=r"cw_nnk_graphs\(\) argument 'k': 0 is not allowed"):
        cwnnk.cw_nnk_graphs(acts, 0, layout="NCD")
    with pytest.raises(ValueError, match=r"cw_nnk_graphs\(\) argument 'kernel': 'cos' is not allowed"):
        cwnnk.cw_nnk_graphs(acts, 5, layout="NCD", kernel="cos")
