"""TwoNN's duplicate policy and the hand-over of a graph folder's kNN to scikit-dimension and DADApy.

scikit-dimension runs for real. DADApy cannot share this environment (it pins an older numpy),
so its convention is checked on the arrays' shape and on a hand-checked example.
"""

import json
import warnings

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from cwnnk.activations import StoreWriter
from cwnnk.graphs import build_layer_graphs, load_layer_graphs
from cwnnk.interop import dadapy_distances, skdim_knn
from cwnnk.intrinsic_dim import distinct_two_nn, twonn
from cwnnk.overlap import analyse_layer
from cwnnk.params import GraphParams

skdim = pytest.importorskip("skdim")

PARAMS = GraphParams(k=8, device="cpu")
N, SHAPE = 160, (4, 4, 4)  # channels 0, 1 duplicate-heavy, 2 plain, 3 dead


@pytest.fixture(scope="module")
def layer(tmp_path_factory):
    rng = np.random.default_rng(3)
    values = np.maximum(rng.normal(size=(N, *SHAPE)), 0).astype(np.float32)
    values[: N // 2, 0] = 0  # half the maps all zero
    values[N // 2 :, 0] = values[N // 2 + rng.integers(0, 30, N - N // 2), 0]  # 30 rows (at most), repeated
    values[:, 1] = values[rng.integers(0, 20, N), 1]  # 20 distinct rows (at most), each repeated
    values[::7, 1] = 0
    values[:, 3] = 0  # dead
    values[100:110] = values[99]  # whole samples equal: duplicates in the aggregate too
    root = tmp_path_factory.mktemp("interop")
    writer = StoreWriter(root / "m.zarr", {"model": "m"}, "none")
    writer.add_split("train", rng.integers(0, 2, N), np.arange(N), {"relu": SHAPE}, chunk_samples=40)
    writer.write("train", "relu", 0, values)
    writer.finish()
    build_layer_graphs(root / "m.zarr", "relu", root / "g", PARAMS, log=lambda m: None)
    analyse_layer(root / "g", root / "relu.json")
    return root, values.reshape(N, SHAPE[0], -1), json.loads((root / "relu.json").read_text())


def skdim_twonn_distinct(points):
    """scikit-dimension's TwoNN on the distinct rows, from brute-force float64 distances."""
    U = np.unique(points.reshape(len(points), -1).astype(np.float64), axis=0)
    D = cdist(U, U)
    np.fill_diagonal(D, np.inf)
    return skdim.id.TwoNN(dist=True).fit(np.sort(D, axis=1)[:, :2]).dimension_, U


def test_twonn_is_skdim_on_distinct_rows(layer):
    root, X, result = layer
    for c in range(3):
        expected, U = skdim_twonn_distinct(X[:, c])
        assert result["channels"][c]["id_twonn"] == pytest.approx(expected, rel=0, abs=1e-8)
        # and the same on every row, duplicates included, gives another number
        if len(U) < N:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                kept = np.asarray(load_layer_graphs(root / "g")[0]["channel_distances"][c])
                naive = skdim.id.TwoNN(dist=True).fit(kept[np.isfinite(kept[:, 1]), :2]).dimension_
            assert abs(naive - expected) > 1e-3
    assert np.isnan(result["channels"][3]["id_twonn"])
    expected, U = skdim_twonn_distinct(X)
    assert len(U) == N - 10
    assert result["row"]["id_layer"] == pytest.approx(expected, rel=0, abs=1e-8)
    assert result["row"]["id_layer_n"] == int(0.9 * len(U))


def test_the_duplicate_heavy_channels_are_duplicate_heavy(layer):
    _, X, _ = layer
    zero = (X == 0).all(axis=2).mean(axis=0)
    distinct = [len(np.unique(X[:, c], axis=0)) for c in range(4)]
    assert zero[0] >= 0.5 and zero[1] >= 0.13 and zero[3] == 1
    assert distinct[0] <= 31 and distinct[1] <= 21 and distinct[2] == N - 10 and distinct[3] == 1


def test_distinct_two_nn_shortcut_and_copies():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(50, 6))
    D = cdist(X, X)
    np.fill_diagonal(D, np.inf)
    order = np.argsort(D, axis=1)[:, :3]
    dist = np.take_along_axis(D, order, 1)
    got, idx = distinct_two_nn(X)
    np.testing.assert_allclose(got, dist[:, :2], rtol=1e-12)
    np.testing.assert_array_equal(idx, order[:, :2])
    given = distinct_two_nn(X, (dist, order))  # no equal rows: the kNN's first two columns
    np.testing.assert_array_equal(given[0], dist[:, :2])
    Y = np.vstack([X, X[:5], np.zeros((3, 6)), -np.zeros((1, 6))])  # copies, and -0.0 equals 0.0
    got, idx = distinct_two_nn(Y)
    assert np.isinf(got[50:55]).all() and (idx[50:55] == -1).all() and np.isinf(got[56:]).all()
    U = np.vstack([X, np.zeros((1, 6))])
    D = cdist(U, U)
    np.fill_diagonal(D, np.inf)
    np.testing.assert_allclose(got[:50], np.sort(D, axis=1)[:50, :2], rtol=1e-12)
    assert np.isfinite(got[55]).all()  # the zero vector counts once


def test_skdim_knn_feeds_fit_pw_and_twonn(layer):
    root, X, result = layer
    for c in (0, 2):
        r = skdim_knn(root / "g", channel=c)
        assert r.indices.shape == r.distances.shape == (len(r.rows), PARAMS.k)
        assert (r.indices >= 0).all() and np.isfinite(r.distances).all()
        assert len(r.rows) + len(r.skipped) == N
        assert skdim.id.TwoNN(dist=True).fit(r.two_nn).dimension_ == pytest.approx(
            result["channels"][c]["id_twonn"], rel=0, abs=1e-8)
        est = skdim.id.lPCA().fit_pw(X[:, c], precomputed_knn=r.indices, n_neighbors=PARAMS.k)
        assert est.dimension_pw_.shape == (len(r.rows),)
    agg = skdim_knn(root / "g")
    assert skdim.id.TwoNN(dist=True).fit(agg.two_nn).dimension_ == pytest.approx(result["row"]["id_layer"], abs=1e-8)


def test_dead_channel_and_bad_channel_are_named(layer):
    root, _, _ = layer
    with pytest.raises(ValueError, match=r"channel 3: no point has 8 candidates \(a dead channel"):
        skdim_knn(root / "g", channel=3)
    with pytest.raises(ValueError, match="channel 3"):
        dadapy_distances(root / "g", channel=3)
    with pytest.raises(ValueError, match=r"channel=4 is not allowed; give 0\.\.3"):
        skdim_knn(root / "g", channel=4)


def dadapy_2nn(distances, fraction=0.9):
    """DADApy 0.3.4's compute_id_2NN(algorithm="base") on Data(distances=(distances, indices)):
    mus = distances[:, 2] / distances[:, 1] over all rows, n_eff = int(N * fraction), slope of
    -log(1 - i / N) on the n_eff smallest log mu through the origin (curve_fit; closed form here)."""
    mus = distances[:, 2] / distances[:, 1]
    n_eff = int(len(mus) * fraction)
    x = np.sort(np.log(mus))[:n_eff]
    y = -np.log(1 - np.arange(1, n_eff + 1) / len(mus))
    return float(x @ y / (x @ x))


def test_dadapy_convention(layer):
    root, X, result = layer
    for c, distinct in [(0, True), (1, True), (2, True), (0, False), (1, False), (2, False), (None, True)]:
        r = dadapy_distances(root / "g", channel=c, distinct=distinct)
        n = len(r.rows)
        assert r.distances.shape == r.indices.shape == (n, 3 if distinct else PARAMS.k + 1)
        assert (r.distances[:, 0] == 0).all() and (r.indices[:, 0] == np.arange(n)).all()
        assert (r.indices >= 0).all() and (r.indices < n).all() and np.isfinite(r.distances).all()
        assert (np.diff(r.distances, axis=1) >= 0).all()
        assert len(np.intersect1d(r.rows, r.skipped)) == 0 and len(r.rows) + len(r.skipped) == N
        points = X[:, c] if c is not None else X.reshape(N, -1)
        rows = points.reshape(N, -1)[r.rows].astype(np.float64)
        # neighbour j of row i is at the stated distance
        np.testing.assert_allclose(np.linalg.norm(rows[r.indices] - rows[:, None], axis=2), r.distances, atol=1e-9)
        if distinct:
            expected = result["channels"][c]["id_twonn"] if c is not None else result["row"]["id_layer"]
            assert dadapy_2nn(r.distances) == pytest.approx(expected, rel=0, abs=1e-8)


def test_dadapy_hand_checked_example():
    # Five points on a line at 0, 1, 3, 7, 15 (and a copy of 3): by hand, the distinct rows'
    # two nearest other rows are 0: (1, 3) at (1, 3); 1: (0, 3) at (1, 2); 3: (1, 0) at (2, 3);
    # 7: (3, 1) at (4, 6); 15: (7, 3) at (8, 12). The copy of 3 (row 5) is left out.
    x = np.array([0.0, 1.0, 3.0, 7.0, 15.0, 3.0])[:, None]
    dist, idx = distinct_two_nn(x)
    np.testing.assert_allclose(dist[:5], [[1, 3], [1, 2], [2, 3], [4, 6], [8, 12]], rtol=1e-12)
    np.testing.assert_array_equal(idx[:5], [[1, 2], [0, 2], [1, 0], [2, 1], [3, 2]])
    assert np.isinf(dist[5]).all()
    # DADApy's input is then (column 0 = self):
    #   distances [[0, 1, 3], [0, 1, 2], [0, 2, 3], [0, 4, 6], [0, 8, 12]]
    #   indices   [[0, 1, 2], [1, 0, 2], [2, 1, 0], [3, 2, 1], [4, 3, 2]]
    # mus = 3, 2, 1.5, 1.5, 1.5; int(0.9 * 5) = 4 smallest log mu = log 1.5 (x3), log 2; in a
    # separate venv, dadapy 0.3.4's Data(distances=(distances, indices)).compute_id_2NN()[0] gave
    # 1.8329829970374845, the closed form below (and cwnnk's twonn on dist) alike.
    d = np.hstack([np.zeros((5, 1)), dist[:5]])
    assert dadapy_2nn(d) == pytest.approx(float(twonn(dist)[0]), abs=1e-12)
    assert dadapy_2nn(d) == pytest.approx(1.8329829970374845, abs=1e-8)


def test_distinct_two_nn_from_the_knn_equals_the_exact_search():
    """With duplicates, the answer read off the stored kNN (and measured where its k candidates are
    all copies of one row) equals a search over the distinct rows."""
    rng = np.random.default_rng(1)
    X = rng.normal(size=(40, 5))
    Y = np.vstack([X, np.repeat(X[:1], 12, 0), np.repeat(X[7:8], 2, 0)])  # X[0] has 13 copies
    D = cdist(Y, Y)
    D[D == 0] = np.inf  # the engine's kNN under duplicates="drop": no zero-distance candidate
    k = 4
    order = np.lexsort((np.broadcast_to(np.arange(len(Y)), D.shape), D), axis=1)[:, :k]
    knn = (np.take_along_axis(D, order, 1), order)
    nearest_is_x0 = np.flatnonzero(np.isin(order[:, 0], [0, *range(40, 52)]))
    assert any(np.isin(order[r], [0, *range(40, 52)]).all() for r in nearest_is_x0 if r < 40)  # the measured case
    got, idx = distinct_two_nn(Y, knn)
    want, want_idx = distinct_two_nn(Y)
    np.testing.assert_allclose(got, want, rtol=1e-12)
    np.testing.assert_array_equal(idx, want_idx)
    assert np.isinf(got[40:]).all() and (idx[40:] == -1).all()  # later copies
