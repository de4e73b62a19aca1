"""Solver `exact`: KKT to 1e-9 and scipy's nnls on the factorised problem as an independent check.

The kernel problems are rebuilt here from X and the candidates, independently of the engine.
"""

import numpy as np
import pytest
import scipy.linalg
import scipy.optimize
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import cwnnk.engine.nnls
import cwnnk.engine.stream
from cwnnk.engine import GramSum, NNKResult, nnk, nnk_stream

TAU = 1e-10


def reference_problems(X, result, kernel, sigma):
    """(K_SS, K_Si, usable) per node, from X (N, D) and the result's candidates, as docs/method.md says."""
    N = len(X)
    problems = []
    last = []
    for i in range(N):
        S = result.indices[i][result.indices[i] >= 0]
        last.append(np.linalg.norm(X[i] - X[S[-1]]) if len(S) else np.nan)
    global_sigma = np.nanmean(last) / 3
    for i in range(N):
        S = result.indices[i][result.indices[i] >= 0]
        P = np.concatenate([X[S], X[i][None]])
        if kernel == "gaussian":
            s = last[i] / 3 if sigma == "local" else global_sigma
            D2 = ((P[:, None] - P[None]) ** 2).sum(-1)
            K = np.exp(-D2 / (2 * s**2)) if s > 0 else (D2 == 0).astype(float)
            usable = np.ones(len(S), bool)
        else:
            norm = np.linalg.norm(P, axis=1)
            U = P / np.where(norm > 0, norm, 1)[:, None]
            K = 0.5 + 0.5 * U @ U.T
            usable = (norm[:-1] > 0) & (norm[-1] > 0)
        problems.append((S, K[:-1, :-1], K[:-1, -1], usable))
    return problems


def factor(K):
    """Cholesky factor of K, with docs/method.md's ridge eps * trace / k (times 10) where K is not PD."""
    ridge = np.finfo(float).eps * np.trace(K) / len(K)
    for power in (None, *range(17)):
        try:
            return np.linalg.cholesky(K if power is None else K + ridge * 10.0**power * np.eye(len(K)))
        except np.linalg.LinAlgError:
            pass
    raise AssertionError("no ridge made K positive definite")


def check_node(theta, K, b, usable):
    """KKT of the engine's weights, and its objective against nnls on K = L L^T, A = L^T, y = L^-1 b."""
    theta, K, b = theta[usable], K[np.ix_(usable, usable)], b[usable]
    if len(b) == 0:
        return None
    g = b - K @ theta
    on = theta > 0
    assert (theta >= 0).all()
    assert np.all(np.abs(g[on]) <= 1e-9) and np.all(g[~on] <= 1e-9), g
    L = factor(K)
    x, _ = scipy.optimize.nnls(L.T, scipy.linalg.solve_triangular(L, b, lower=True), maxiter=50 * len(b))
    objective = lambda t: 0.5 * t @ K @ t - b @ t  # noqa: E731
    assert objective(theta) <= objective(x) + 1e-12 * max(1, abs(objective(x)))
    if np.linalg.cond(K) < 1e8:
        np.testing.assert_array_equal(on, x > TAU)
        np.testing.assert_allclose(theta, np.where(x > TAU, x, 0), atol=1e-7)
        return True
    return False


def check_all(X, result, kernel="gaussian", sigma="local"):
    """Check every node; return how many problems were well conditioned."""
    assert result.counts["kkt_failed"] == 0
    well = 0
    for i, (S, K, b, usable) in enumerate(reference_problems(X, result, kernel, sigma)):
        theta = result.weights[i, : len(S)]
        assert (result.weights[i, len(S):] == 0).all() and (theta[~usable] == 0).all()
        well += bool(check_node(theta, K, b, usable))
    return well


def manifold(dim, n, seed, ambient=64):
    """Points on a smooth dim-dimensional manifold embedded in `ambient` dimensions."""
    rng = np.random.default_rng(seed)
    t = rng.uniform(0, 1, size=(n, dim))
    freq = rng.integers(1, 4, size=(dim, 12))
    features = np.concatenate([np.sin(2 * np.pi * t @ freq), np.cos(2 * np.pi * t @ freq)], 1)
    return features @ rng.normal(size=(24, ambient))


def relu(n, d, seed):
    rng = np.random.default_rng(seed)
    return np.maximum(0, rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) + 0.3)


def with_duplicates(n, d, seed):
    rng = np.random.default_rng(seed)
    X = relu(n, d, seed)
    X[rng.integers(0, n, n // 3)] = X[rng.integers(0, n, n // 3)]
    X[rng.random(n) < 0.1] = 0
    return X


CASES = {
    "relu_local": (lambda: relu(500, 16, 0), dict(k=20)),
    "relu_global": (lambda: relu(400, 8, 1), dict(k=15, sigma="global")),
    "curve_in_64d": (lambda: manifold(1, 600, 2), dict(k=25)),
    "surface_in_64d": (lambda: manifold(2, 800, 3), dict(k=25)),
    "duplicates_drop": (lambda: with_duplicates(400, 6, 4), dict(k=12)),
    "duplicates_keep": (lambda: with_duplicates(400, 6, 5), dict(k=12, duplicates="keep")),
    "cosine_k_above_d_plus_1": (lambda: relu(500, 3, 6), dict(k=12, kernel="cosine")),
    "cosine_zero_vectors": (lambda: with_duplicates(300, 5, 7), dict(k=10, kernel="cosine")),
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("bpp_rounds", ["default", 0])
def test_kkt_and_nnls_on_thousands_of_problems(case, bpp_rounds, monkeypatch):
    """bpp_rounds 0 sends every node to Lawson-Hanson, the path of the stragglers."""
    if bpp_rounds != "default":
        monkeypatch.setattr(cwnnk.engine.nnls, "BPP_ROUNDS", bpp_rounds)
    make, kwargs = CASES[case]
    X = make()
    result = nnk(X, **kwargs)
    well = check_all(X, result, kwargs.get("kernel", "gaussian"), kwargs.get("sigma", "local"))
    if case.startswith("relu"):
        assert well > 0.9 * len(X)  # the comparison of supports and weights did run


def test_manifolds_are_ill_conditioned_and_counted():
    result = nnk(manifold(1, 600, 2), 25)
    assert result.counts["not_pd"] > 0
    assert result.degree.mean() < 4  # a curve: about two neighbours per node


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(6, 50),
    d=st.integers(1, 6),
    k_frac=st.floats(0, 1),
    kernel=st.sampled_from(["gaussian", "cosine"]),
    sigma=st.sampled_from(["local", "global"]),
    duplicates=st.sampled_from(["drop", "keep"]),
    scale=st.sampled_from([1e-3, 1.0, 1e3]),
)
def test_random_problems(seed, n, d, k_frac, kernel, sigma, duplicates, scale):
    X = scale * with_duplicates(n, d, seed)
    k = 1 + int(k_frac * (n - 2))
    result = nnk(X, k, kernel=kernel, sigma=sigma, duplicates=duplicates)
    check_all(X, result, kernel, sigma)


def test_several_point_sets_at_once_equal_one_at_a_time():
    X = np.stack([relu(150, 6, s) for s in range(3)])
    together = nnk(X, 10)
    for c in range(3):
        alone = nnk(X[c], 10)
        one = together.channel(c)
        np.testing.assert_array_equal(one.indices, alone.indices)
        np.testing.assert_allclose(one.weights, alone.weights, rtol=0, atol=1e-12)
        assert {name: int(v) for name, v in one.counts.items()} == {name: int(v) for name, v in alone.counts.items()}


@pytest.mark.parametrize("lookahead", [0, 1 << 26])
def test_a_stream_of_arrays_equals_one_call_each(monkeypatch, lookahead):
    """nnk_stream over arrays of different shapes (one pipeline, solves overlapping the next
    array's search, finishing mid-stream or only at the end) gives each array's own nnk result."""
    monkeypatch.setitem(cwnnk.engine.stream.LOOKAHEAD_BYTES, "cpu", lookahead)
    arrays = [relu(120, 5, 1), np.stack([relu(90, 4, s) for s in range(4)]), relu(60, 7, 2)]
    streamed = list(nnk_stream(iter(arrays), 9, device="cpu"))
    assert len(streamed) == 3
    for X, got in zip(arrays, streamed):
        alone = nnk(X, 9, device="cpu")
        np.testing.assert_array_equal(got.indices, alone.indices)
        np.testing.assert_allclose(got.weights, alone.weights, rtol=0, atol=1e-12)
        assert {n: v.tolist() for n, v in got.counts.items()} == {n: v.tolist() for n, v in alone.counts.items()}


def test_a_layers_stream_with_its_aggregate_equals_one_call_each():
    """gram=GramSum() (channel blocks, then their concatenation, whose Gram matrix is summed from
    the channels'): the channels' results are nnk's own, the aggregate's equal to rounding: the
    same candidates and support, weights within 1e-9."""
    rng = np.random.default_rng(5)
    acts = np.maximum(0, rng.normal(size=(150, 5, 9)) + rng.normal(size=(150, 5, 1))).astype(np.float32)
    acts[rng.random((150, 5)) < 0.1] = 0  # zero maps
    blocks = [np.ascontiguousarray(acts[:, lo:hi].transpose(1, 0, 2)) for lo, hi in ((0, 2), (2, 5))]
    aggregate = acts.reshape(150, -1)
    *channels, streamed = nnk_stream([*blocks, aggregate], 8, device="cpu", gram=GramSum())
    for X, got in zip(blocks, channels):
        alone = nnk(X, 8, device="cpu")
        np.testing.assert_array_equal(got.weights, alone.weights)
    alone = nnk(aggregate, 8, device="cpu")
    np.testing.assert_array_equal(streamed.indices, alone.indices)
    np.testing.assert_array_equal(streamed.weights > 0, alone.weights > 0)
    np.testing.assert_allclose(streamed.weights, alone.weights, rtol=0, atol=1e-9)
    assert {n: int(v) for n, v in streamed.counts.items()} == {n: int(v) for n, v in alone.counts.items()}


def test_an_aggregate_that_is_not_the_channels_concatenation_is_refused():
    blocks = [np.stack([relu(60, 4, s) for s in range(3)])]
    with pytest.raises(ValueError, match=r"gram=GramSum: the array of shape \(60, 11\).*\(60, 12\)"):
        list(nnk_stream([*blocks, relu(60, 11, 9)], 5, device="cpu", gram=GramSum()))


def test_a_bad_array_in_a_stream_stops_it_cleanly():
    """An array that cannot be solved (here k >= N) raises its clear error, and the solver
    thread does not outlive the stream."""
    import threading

    before = threading.active_count()
    with pytest.raises(ValueError, match=r"k=9 is not allowed.*N = 5"):
        list(nnk_stream([relu(120, 5, 1), relu(5, 3, 2)], 9, device="cpu"))
    assert threading.active_count() == before


def test_numpy_and_torch_inputs_agree():
    X = relu(100, 5, 8)
    a, b = nnk(X, 8), nnk(torch.from_numpy(X).float(), 8)
    assert isinstance(a, NNKResult) and a.weights.dtype == np.float64 and a.indices.dtype == np.int64
    np.testing.assert_allclose(a.weights, b.weights, atol=1e-5)


# Degenerate input (docs/method.md, section 2), each counted.


def test_duplicates_drop_are_no_candidates_and_are_counted():
    X = np.array([[0.0, 0], [0, 0], [1, 0], [0, 2], [3, 3], [1, 0]])
    result = nnk(X, 3)
    assert (result.distances > 0).all()
    # pairs at distance 0: (0, 1), (2, 5), each counted from both ends
    assert result.counts["duplicates"] == 4
    np.testing.assert_array_equal(result.indices[0], [2, 5, 3])


def test_fewer_candidates_than_k_are_padded():
    X = np.array([[0.0], [0], [0], [1], [2]])
    result = nnk(X, 3)
    np.testing.assert_array_equal(result.indices[0], [3, 4, -1])
    assert np.isinf(result.distances[0, 2]) and result.weights[0, 2] == 0


def test_keep_gives_duplicates_equal_weights_and_sigma_zero():
    X = np.array([[0.0, 0]] * 4 + [[1, 0], [0, 1], [2, 2]])
    result = nnk(X, 3, duplicates="keep")
    # point 0 has three duplicates: its 3rd candidate is at distance 0, so sigma = 0
    assert result.sigma[0] == 0 and result.counts["zero_sigma"] == 4
    np.testing.assert_array_equal(result.indices[0], [1, 2, 3])
    np.testing.assert_allclose(result.weights[0], [1 / 3] * 3)
    np.testing.assert_allclose(nnk(X, 3, duplicates="keep", solver="pynnk").weights[0], [1, 1, 1])


def test_zero_vector_under_cosine_has_no_neighbours_and_is_no_neighbour():
    X = np.array([[0.0, 0], [1, 0], [0, 1], [1, 1], [2, 1], [1, 2]])
    result = nnk(X, 3, kernel="cosine")
    assert result.degree[0] == 0 and np.isnan(result.error[0])
    assert result.counts["zero_vectors"] == 1
    assert (result.weights[result.indices == 0] == 0).all()


def test_identical_candidates_are_merged_with_equal_weights():
    # three copies of one point near the query: K_SS is singular, the copies share one weight
    X = np.array([[0.0, 0], [1, 0], [1, 0], [1, 0], [0, 3], [5, 5]])
    result = nnk(X, 4)
    np.testing.assert_array_equal(result.indices[0], [1, 2, 3, 4])
    w = result.weights[0]
    assert w[0] > 0 and w[0] == w[1] == w[2]
    assert result.counts["not_pd"] >= 1 and result.counts["kkt_failed"] == 0


# Argument and data errors name what is wrong.


def test_non_finite_value_names_point_set_and_row():
    X = np.zeros((3, 10, 2))
    X[1, 7, 0] = np.nan
    with pytest.raises(ValueError, match=r"point set 1, row 7"):
        nnk(X, 3)
    with pytest.raises(ValueError, match=r"row 4"):
        nnk(np.where(np.arange(10)[:, None] == 4, np.inf, 1.0) * np.ones((10, 2)), 3)


def test_float32_input_gives_the_float64_result():
    """float32 points are searched as they are (no float64 copy of the data) with the same result."""
    X = np.stack([relu(400, 24, s) for s in range(2)]).astype(np.float32)
    single, double = nnk(X, 15), nnk(X.astype(np.float64), 15)
    np.testing.assert_array_equal(single.indices, double.indices)
    np.testing.assert_allclose(single.weights, double.weights, rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        (dict(kernel="laplace"), r"kernel='laplace'.*'gaussian', 'cosine'"),
        (dict(sigma="median"), r"sigma='median'.*'local', 'global'"),
        (dict(solver="lbfgs"), r"solver='lbfgs'.*'exact', 'pynnk'"),
        (dict(duplicates="merge"), r"duplicates='merge'.*'drop', 'keep'"),
        (dict(k=10), r"k=10.*1 <= k < N = 10"),
        (dict(k=0), r"k=0"),
        (dict(k=2.5), r"k=2.5"),
        (dict(tol=-1.0), r"tol=-1.0"),
    ],
)
def test_bad_arguments_are_named(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        nnk(relu(10, 3, 0), **{"k": 3, **kwargs})


def test_bad_shape_is_named():
    with pytest.raises(ValueError, match=r"shape \(10,\)"):
        nnk(np.zeros(10), 3)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none on this machine)")
@pytest.mark.parametrize("solver", ["exact", "pynnk"])
def test_cuda_matches_cpu(solver):
    X = np.stack([relu(1000, 32, s) for s in range(4)])  # well conditioned: weights are stable to 1e-9
    cpu, gpu = nnk(X, 25, solver=solver, device="cpu"), nnk(X, 25, solver=solver, device="cuda")
    np.testing.assert_array_equal(cpu.indices, gpu.indices)
    np.testing.assert_allclose(cpu.weights, gpu.weights, rtol=0, atol=1e-9)
    np.testing.assert_allclose(cpu.error, gpu.error, rtol=0, atol=1e-9)


def test_deep_relu_layers_meet_kkt_with_bounded_weights(monkeypatch):
    """Low-dimensional post-ReLU maps (ResNet-18's 4x4 layer4, random weights) give K_SS so ill
    conditioned that block principal pivoting cycles; those nodes go to Lawson-Hanson.
    Since K has non-negative entries and a unit diagonal, an optimal theta has ||theta|| <= 2 sqrt(k)."""
    from cwnnk.bench.gpu import resnet18_layers

    calls = []
    original = cwnnk.engine.nnls.lawson_hanson
    monkeypatch.setattr(cwnnk.engine.nnls, "lawson_hanson", lambda *a: calls.append(len(a[1])) or original(*a))
    acts = resnet18_layers(160, torch.device("cpu"))["layer4.1.relu"][:, :96]
    result = nnk(acts.transpose(0, 1).contiguous(), 25, device="cpu")
    assert calls, "this data no longer exercises Lawson-Hanson; pick harder data"
    assert result.counts["kkt_failed"].sum() == 0
    assert result.counts["not_pd"].sum() > 0  # K_SS's own check still counts, whichever solver finished
    assert np.linalg.norm(result.weights, axis=-1).max() <= 2 * np.sqrt(25) + 1e-9


def test_nodes_off_kkt_are_solved_again_with_nnls(monkeypatch):
    """The last resort: if both batched solvers leave a node off KKT, scipy's NNLS solves it."""
    X = relu(300, 8, 3)
    expected = nnk(X, 15)
    monkeypatch.setattr(cwnnk.engine.nnls, "BPP_ROUNDS", 0)
    monkeypatch.setattr(cwnnk.engine.nnls, "lawson_hanson", lambda K, b, valid, tol: (torch.zeros_like(b), b[:, 0] * 0))
    result = nnk(X, 15)
    assert result.counts["kkt_failed"] == 0
    np.testing.assert_allclose(result.weights, expected.weights, rtol=0, atol=1e-9)
