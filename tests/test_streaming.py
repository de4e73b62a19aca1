"""Large layers stream (issue #21 item 6): the graphs stage reads a layer a block of channels at a
time and reads its aggregate's kNN from the channels' summed Gram matrices (cwnnk.engine.gramknn),
with the same graphs as the path that holds the layer whole."""

import numpy as np
import pytest
import torch

from cwnnk.activations import StoreWriter, open_activations
from cwnnk.engine import GramSum, nnk, nnk_stream
from cwnnk.engine.gramknn import gram_knn
from cwnnk.engine.knn import exact_knn
from cwnnk.graphs import StoredLayer, build_layer_graphs, cw_nnk, load_layer_graphs, streams
from cwnnk.intrinsic_dim import distinct_two_nn, gram_two_nn
from cwnnk.params import GraphParams

QUIET = dict(log=lambda *a, **k: None)


def relu_layer(n=200, c=5, d=12, seed=0):
    """(N, C, D) ReLU-like activations with the degenerate cases the engine counts: equal samples
    (in every channel), all-zero samples, a channel half of whose maps are zero."""
    rng = np.random.default_rng(seed)
    X = np.maximum(rng.normal(size=(n, c, d)), 0).astype(np.float32)
    X[5] = X[7]
    X[10] = X[11] = X[12]
    X[20] = X[21] = 0
    X[: n // 2, 2] = 0
    return X


def summed(X, k):
    """The aggregate of X (N, C, D) as GramPoints, summed from its channels' Gram matrices."""
    N = X.shape[0]
    gram = GramSum(always=True)
    list(nnk_stream([np.ascontiguousarray(X.transpose(1, 0, 2))], k, gram=gram))
    flat = X.reshape(N, -1).astype(np.float64)
    return gram.points(zero=~flat.any(1), sq=(flat**2).sum(1))


@pytest.mark.parametrize("duplicates", ["drop", "keep"])
def test_gram_knn_equals_the_exact_search_on_coordinates(duplicates):
    X = relu_layer()
    points = summed(X, 8)
    got = gram_knn(points, 8, duplicates)
    want = exact_knn(torch.from_numpy(X.reshape(len(X), -1))[None], 8, duplicates=duplicates)
    assert torch.equal(got.indices, want.indices)
    torch.testing.assert_close(got.sqdist, want.sqdist, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got.gram, want.gram, rtol=0, atol=1e-10)
    assert torch.equal(got.n_dup, want.n_dup)
    assert points.uncertain == 0


def test_gram_knn_breaks_exact_ties_by_lower_index():
    """Points on an integer grid: many distances are exactly equal; the candidates must be the
    brute force's, ties to the lower index, as exact_knn orders them."""
    grid = np.stack(np.meshgrid(np.arange(6), np.arange(6)), -1).reshape(-1, 1, 2).astype(np.float32)
    points = summed(grid, 4)
    got = gram_knn(points, 4).indices[0].numpy()
    d2 = ((grid[:, None, 0] - grid[None, :, 0]) ** 2).sum(-1)
    np.fill_diagonal(d2, np.inf)
    want = np.lexsort((np.broadcast_to(np.arange(len(grid)), d2.shape), d2), axis=1)[:, :4]
    np.testing.assert_array_equal(got, want)
    # node 7 = (1, 1) has four neighbours at distance 1: (0,1)=1, (1,0)=6, (2,1)=13, (1,2)=8 -> 1, 6, 8, 13
    np.testing.assert_array_equal(got[7], [1, 6, 8, 13])


def test_gram_sum_always_keeps_the_gram_matrix_of_large_sets(monkeypatch):
    """Sets of more distinct rows than GRAM_BYTES allows get no H, which voids a plain GramSum;
    always=True makes them get it, and the sum is still a Gram matrix of the aggregate (centred on
    each channel's mean of its distinct rows: the same distances)."""
    import cwnnk.engine.gram

    monkeypatch.setitem(cwnnk.engine.gram.GRAM_BYTES, "cpu", 0)
    X = relu_layer(n=80)
    plain = GramSum()
    list(nnk_stream([np.ascontiguousarray(X.transpose(1, 0, 2))], 6, gram=plain))
    assert plain.void
    points = summed(X, 6)
    V = X.reshape(len(X), -1).astype(np.float64)
    H = points.H.numpy()
    d2 = np.diag(H)[:, None] + np.diag(H)[None, :] - 2 * H
    np.testing.assert_allclose(d2, ((V[:, None] - V[None]) ** 2).sum(-1), rtol=0, atol=1e-10)
    assert points.dim == V.shape[1]


@pytest.mark.parametrize("kernel", ["gaussian", "cosine"])
@pytest.mark.parametrize("duplicates", ["drop", "keep"])
def test_streamed_layer_gives_the_graphs_of_the_whole_layer(kernel, duplicates):
    X = relu_layer()
    params = GraphParams(k=8, kernel=kernel, duplicates=duplicates, device="cpu")
    whole = cw_nnk(X, params, stream=False, **QUIET)
    streamed = cw_nnk(X, params, stream=True, **QUIET)
    assert whole[3] is None and streamed[3] is not None
    for name in ("zero_map_fraction", "constant_map"):
        np.testing.assert_array_equal(whole[1][name], streamed[1][name], err_msg=name)
    for a, b in ((whole[0], streamed[0]), (whole[2], streamed[2])):  # channels, aggregate
        np.testing.assert_array_equal(a.indices, b.indices)
        np.testing.assert_allclose(a.weights, b.weights, rtol=0, atol=1e-9)
        assert {n: np.asarray(v).tolist() for n, v in a.counts.items()} == \
            {n: np.asarray(v).tolist() for n, v in b.counts.items()}
    # the aggregate counts the equal samples (5 = 7, 10 = 11 = 12, 20 = 21) and the zero ones (20, 21)
    assert int(streamed[2].counts["duplicates"]) == 2 + 6 + 2
    assert int(streamed[2].counts["zero_vectors"]) == 2


def test_twonn_from_the_gram_matrix_equals_twonn_from_coordinates():
    X = relu_layer()
    flat = X.reshape(len(X), -1)
    points = summed(X, 3)
    result = nnk(flat, 3, device="cpu")
    knn = (result.distances, result.indices)
    want = distinct_two_nn(flat, knn, equal_rows=True)
    got = gram_two_nn(points, knn, equal_rows=True)
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_allclose(got[0], want[0], rtol=1e-10)
    assert np.isinf(got[0][[7, 11, 12, 21]]).all()  # later copies carry no TwoNN input


def _write_store(path, values, chunk=16):
    n = len(values)
    writer = StoreWriter(path, {"model": "m"}, "none")
    writer.add_split("train", np.arange(n) % 3, np.arange(n), {"relu": values.shape[1:]}, chunk_samples=chunk)
    for start in range(0, n, chunk):
        writer.write("train", "relu", start, values[start : start + chunk])
    writer.finish()
    return path


def test_streamed_graph_stage_writes_the_files_of_the_whole_layer(tmp_path):
    values = relu_layer(n=96, c=4, d=9).reshape(96, 4, 3, 3)
    store = _write_store(tmp_path / "m.zarr", values)
    params = GraphParams(k=6, device="cpu")
    build_layer_graphs(store, "relu", tmp_path / "whole", params, stream=False, **QUIET)
    build_layer_graphs(store, "relu", tmp_path / "streamed", params, stream=True, **QUIET)
    (whole, s1), (streamed, s2) = load_layer_graphs(tmp_path / "whole"), load_layer_graphs(tmp_path / "streamed")
    assert (s1["streamed"], s2["streamed"]) == (False, True)
    assert s1["aggregate_uncertain_rows"] is None and s2["aggregate_uncertain_rows"] == 0
    assert whole.keys() == streamed.keys()
    for name in whole:
        if whole[name].dtype.kind == "f":
            np.testing.assert_allclose(streamed[name], whole[name], rtol=1e-10, atol=1e-9, err_msg=name)
        else:
            np.testing.assert_array_equal(streamed[name], whole[name], err_msg=name)


def test_stored_layer_reads_blocks_of_channels_and_refuses_other_keys(tmp_path):
    values = relu_layer(n=32, c=4, d=4).reshape(32, 4, 2, 2)
    store = open_activations(_write_store(tmp_path / "m.zarr", values))
    positions = np.array([3, 1, 30])
    layer = StoredLayer(store, "relu", positions)
    assert layer.shape == (3, 4, 4)
    np.testing.assert_array_equal(layer[:, 1:3], values[positions, 1:3].reshape(3, 2, 4))
    with pytest.raises(TypeError, match=r"\[:, a:b\]"):
        layer[0, 1:3]


def test_which_layers_stream():
    # 64 x 32 x 32 at N = 1,000: 262 MB, held whole; at N = 10,000 (2.6 GB, over 2.4 GB of N x N): streamed
    assert not streams(1_000, 64, 1024) and streams(10_000, 64, 1024)
    # ResNet-50 layer1 (256 x 56 x 56) at N = 10,000 streams; 512 x 4 x 4 at N = 50,000 (1.6 GB) is
    # smaller whole than as three 50,000^2 matrices (60 GB)
    assert streams(10_000, 256, 56 * 56) and not streams(50_000, 512, 16)
