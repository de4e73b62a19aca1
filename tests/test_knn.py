"""Exact kNN (cwnnk.engine.knn): candidate sets equal a float64 brute force, ties by lower index."""

import contextlib

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import cwnnk.engine.gram
import cwnnk.engine.knn
import cwnnk.engine.pointsets
from cwnnk.engine.gram import GramSum
from cwnnk.engine.knn import exact_knn
from cwnnk.engine.pointsets import GRAM_SCALE


@contextlib.contextmanager
def gram_matrix(on):
    """Search with (on) or without each set's float64 Gram matrix H, whatever the sets' sizes."""
    previous = cwnnk.engine.gram.GRAM_BYTES
    cwnnk.engine.gram.GRAM_BYTES = {"cpu": 1 << 40 if on else 0, "cuda": 1 << 40 if on else 0}
    try:
        yield
    finally:
        cwnnk.engine.gram.GRAM_BYTES = previous


@pytest.fixture
def products():
    """The float32 product pass (a GPU's, and the CPU's for sets too large for H)."""
    with gram_matrix(False):
        yield


def brute_knn(X, k, keep):
    """Reference: float64 direct differences, self excluded, duplicates dropped unless keep."""
    N = len(X)
    indices, sqdist = np.full((N, k), -1), np.full((N, k), np.inf)
    for i in range(N):
        d = ((X - X[i]) ** 2).sum(-1)
        d[i] = np.inf
        if not keep:
            d[d == 0] = np.inf
        order = np.argsort(d, kind="stable")[:k]
        order = order[np.isfinite(d[order])]
        indices[i, : len(order)], sqdist[i, : len(order)] = order, d[order]
    return indices, sqdist


def assert_matches_brute_force(X, result, k, keep, gram=True):
    for c in range(X.shape[0]):
        indices, sqdist = brute_knn(X[c], k, keep)
        np.testing.assert_array_equal(result.indices[c].numpy(), indices)
        # equal up to float64 rounding: the summation order of direct differences, or values read
        # from H, which err by at most GRAM_SCALE times the row's k-th squared distance
        # (exactly equal on integer data)
        found = result.sqdist[c].numpy()
        tol = 1e-13 * sqdist + (GRAM_SCALE * kth(sqdist) if gram else 0)
        with np.errstate(invalid="ignore"):  # inf - inf where both lists are padded
            close = (found == sqdist) | (np.abs(found - sqdist) <= tol)
        assert close.all(), f"set {c}: squared distances {found[~close][:3]}, brute force {sqdist[~close][:3]}"


def kth(sqdist):
    """Each row's largest finite squared distance, (N, 1): the scale of H's errors."""
    return np.where(np.isfinite(sqdist), sqdist, 0).max(-1, keepdims=True)


def assert_gram_of_differences(X, result, c, i, scale=1e-12):
    """The candidates' Gram of row i equals that of their direct differences, within `scale` of the
    row's k-th squared distance (H's accuracy; direct differences of float32 values are exact)."""
    idx = result.indices[c, i].numpy()
    Y = np.where((idx >= 0)[:, None], X[c][idx] - X[c][i], 0)
    atol = scale * kth(result.sqdist[c, i].numpy())[0]
    np.testing.assert_allclose(result.gram[c, i].numpy(), Y @ Y.T, rtol=1e-12, atol=float(atol))


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(2, 40),
    d=st.integers(1, 4),
    levels=st.integers(1, 4),
    k_frac=st.floats(0, 1),
    keep=st.booleans(),
    margin=st.integers(0, 6),
    tiny_tiles=st.booleans(),
    sets_per_batch=st.sampled_from([1, 3]),
    gram=st.booleans(),
)
def test_equals_brute_force_with_ties_and_duplicates(seed, n, d, levels, k_frac, keep, margin, tiny_tiles,
                                                     sets_per_batch, gram):
    # few integer levels: many exact ties and duplicates, and exact float64 arithmetic
    X = np.random.default_rng(seed).integers(0, levels, size=(3, n, d)).astype(float)
    k = 1 + int(k_frac * (n - 2))
    with gram_matrix(gram):
        result = exact_knn(torch.from_numpy(X), k, duplicates="keep" if keep else "drop", margin=margin,
                           tile_bytes=1 if tiny_tiles else 1 << 27, sets_per_batch=sets_per_batch)
    assert_matches_brute_force(X, result, k, keep, gram)


def relu_layer(seed, c=3, n=400, d=32, dead=0.1):
    rng = np.random.default_rng(seed)
    X = np.maximum(0, rng.normal(size=(c, n, d)) + rng.normal(size=(c, n, 1)))
    X[rng.random((c, n)) < dead] = 0  # all-zero maps: a large group of exact duplicates
    return X


@pytest.mark.parametrize("keep", [False, True])
def test_continuous_data_is_certified_by_the_float32_pass(products, keep):
    X = relu_layer(0)
    result = exact_knn(torch.from_numpy(X), 10, duplicates="keep" if keep else "drop", tile_bytes=1 << 20)
    assert_matches_brute_force(X, result, 10, keep, gram=False)
    assert result.rows_by_pass["brute"] == 0
    assert result.rows_by_pass["float32"] > 0.99 * sum(result.rows_by_pass.values())


@pytest.mark.parametrize("keep", [False, True])
def test_continuous_data_is_certified_from_the_gram_matrix(keep):
    """Sets small enough for H (the default at this size) are searched from it in float64 alone."""
    X = relu_layer(0)
    assert X.shape[1] ** 2 * 8 <= cwnnk.engine.gram.GRAM_BYTES["cpu"]
    result = exact_knn(torch.from_numpy(X), 10, duplicates="keep" if keep else "drop", tile_bytes=1 << 20)
    assert_matches_brute_force(X, result, 10, keep)
    assert result.rows_by_pass == {"float32": 0, "float64": sum(len(np.unique(x, axis=0)) for x in X), "brute": 0}
    for c in range(3):
        for i in range(0, 400, 7):
            assert_gram_of_differences(X, result, c, i, GRAM_SCALE)


@pytest.mark.parametrize("gram", [False, True])
def test_gram_holds_the_candidates_differences(gram):
    X = relu_layer(1, c=2, n=200)
    with gram_matrix(gram):
        result = exact_knn(torch.from_numpy(X), 8, duplicates="keep")
    for c in range(2):
        for i in range(200):
            assert_gram_of_differences(X, result, c, i, GRAM_SCALE if gram else 1e-12)
    n_dup = [(X[c][:, None] == X[c][None]).all(-1).sum(1) - 1 for c in range(2)]
    np.testing.assert_array_equal(result.n_dup.numpy(), np.stack(n_dup))


def test_rows_far_from_their_mean_get_the_gram_of_direct_differences():
    """Two tight clusters far apart: H's rounding error (eps |v|^2, |v| ~ 1e4) would swamp the
    neighbourhoods' scale (1e-2), so those rows' distances and Grams come from direct differences."""
    rng = np.random.default_rng(9)
    X = rng.normal(size=(1, 300, 16)) * 1e-2
    X[0, 150:] += 1e4
    result = exact_knn(torch.from_numpy(X), 10)
    assert result.rows_by_pass["float64"] == 300
    assert_matches_brute_force(X, result, 10, keep=False, gram=False)
    for i in range(300):
        assert_gram_of_differences(X, result, 0, i)


def concatenation(blocks):
    """The points (N, sum C_b D) whose coordinates are those of each point in the blocks' sets, in
    order (a layer's aggregate of its channels)."""
    return np.concatenate([X.transpose(1, 0, 2) for X in blocks], axis=1).reshape(blocks[0].shape[1], -1)


def search_channels_then_aggregate(blocks, k, keep=False, sets_per_batch=None):
    """exact_knn of each block of sets, adding their H to a GramSum, then of their concatenation from it."""
    total = GramSum()
    duplicates = "keep" if keep else "drop"
    for X in blocks:
        exact_knn(torch.from_numpy(X), k, duplicates=duplicates, sets_per_batch=sets_per_batch, add_gram_to=total)
    agg = concatenation(blocks)
    return agg, total, exact_knn(torch.from_numpy(agg)[None], k, duplicates=duplicates, gram_from=total)


@pytest.mark.parametrize("keep,sets_per_batch", [(False, None), (True, 2)])
def test_a_concatenation_is_searched_from_its_sets_gram_matrices(monkeypatch, keep, sets_per_batch):
    """With the channels' H summed (zero maps and a repeated sample among them: duplicates in
    point space), the aggregate computes no product of its own and is exact."""
    X = relu_layer(2, c=4, n=300, d=12)
    X[:, 7] = X[:, 8]  # one sample twice: a duplicate in the aggregate too
    made = []
    product = cwnnk.engine.pointsets.PointSets.gram_matrix
    monkeypatch.setattr(cwnnk.engine.pointsets.PointSets, "gram_matrix",
                        lambda ps, buffers: made.append(ps.U.shape[1]) or product(ps, buffers))
    agg, _, result = search_channels_then_aggregate([X[:3], X[3:]], 10, keep, sets_per_batch)
    assert made and agg.shape[1] not in made
    assert result.rows_by_pass["brute"] < 10
    assert_matches_brute_force(agg[None], result, 10, keep)
    for i in range(0, 300, 3):
        assert_gram_of_differences(agg[None], result, 0, i, GRAM_SCALE)


def test_the_summed_gram_matrix_errs_within_one_products_bound():
    """Sum_c H_c errs from the exact (x_p - m).(x_q - m) by at most c (|v_p|^2 + |v_q|^2) with c of
    one product of the whole length D (bound_constant), which the certificates assume; points
    far from the origin make the errors large. Sets searched in pairs, one of each pair with
    duplicates: the other's distinct rows are then numbered by hash, not in point order."""
    rng = np.random.default_rng(4)
    X = 300 + rng.normal(size=(8, 200, 24)) * rng.uniform(1, 50, size=(8, 1, 24))  # float64: products round
    X[::2, :10] = X[::2, 10:11]  # duplicates in sets 0, 2, 4, 6
    agg, total, _ = search_channels_then_aggregate([X[:5], X[5:]], 6, sets_per_batch=2)
    v = (agg - total.mean.numpy()).astype(np.longdouble)  # the centred points as H's product saw them
    exact = v @ v.T  # 64-bit significands
    sq = np.diag(exact)
    c = cwnnk.engine.pointsets.bound_constant(agg.shape[1], torch.float64, torch.device("cpu"))
    error = np.abs(total.A.numpy().astype(np.longdouble) - exact)
    assert (error <= c * (sq[:, None] + sq[None, :])).all()
    assert error.max() > 0  # rounded: the bound is what is tested, not exactness


def test_a_gram_sum_with_a_set_too_large_for_h_leaves_the_concatenation_its_own(monkeypatch):
    """A set without H voids the sum; the concatenation then makes its own H (and is exact)."""
    X = relu_layer(3, c=2, n=120, d=6)
    monkeypatch.setitem(cwnnk.engine.gram.GRAM_BYTES, "cpu", 8 * 120**2)  # H of 120 rows; the first set has one
    X[1, :110] = relu_layer(4, c=1, n=110, d=6)[0]
    total = GramSum()
    exact_knn(torch.from_numpy(X[:1]), 5, add_gram_to=total)
    assert not total.void
    monkeypatch.setitem(cwnnk.engine.gram.GRAM_BYTES, "cpu", 0)  # the second set gets no H
    exact_knn(torch.from_numpy(X[1:]), 5, add_gram_to=total)
    assert total.void and total.A is None and not total.covers(torch.zeros(1, 120, 12))


def test_the_gram_matrix_is_made_by_one_blas_thread(monkeypatch):
    """numpy's BLAS, whose default is every core, runs one thread beside torch's, and gets its
    own setting back afterwards."""
    from threadpoolctl import threadpool_info, threadpool_limits

    def blas_threads():
        return {lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"}

    seen, original = [], np.matmul
    monkeypatch.setattr(np, "matmul", lambda *a, **kw: seen.append(blas_threads()) or original(*a, **kw))
    with threadpool_limits(2, user_api="blas"):
        exact_knn(torch.from_numpy(relu_layer(2, c=1, n=50)), 5)
        assert blas_threads() == {2}
    assert seen == [{1}]


def test_the_gram_matrix_leaves_the_gil_to_other_threads():
    """While a set's Gram matrix is made, another Python thread (the engine's solver) keeps
    running: a product that held the GIL (as scipy's dsyrk wrapper does) stops it for most of
    the product (measured: 73 to 79 % of it in one stretch; 1 % or less with the GIL released)."""
    import threading
    import time

    from cwnnk.engine.gram import Buffers, self_products

    V = torch.from_numpy(np.random.default_rng(0).normal(size=(2000, 1500)))
    self_products([V[:10]], 10, Buffers(V.device))  # imports and first-call costs out of the way
    stamps, running = [], threading.Event()

    def other():
        x = torch.zeros(4)
        running.set()
        while running.is_set():
            x.add_(1.0)
            stamps.append(time.perf_counter())

    thread = threading.Thread(target=other)
    thread.start()
    running.wait()
    start = time.perf_counter()
    self_products([V], len(V), Buffers(V.device))  # 2000^2 x 1500 multiply-adds: a tenth of a second or more
    end = time.perf_counter()
    running.clear()
    thread.join()
    inside = [start] + [t for t in stamps if start < t < end] + [end]
    stall = max(b - a for a, b in zip(inside, inside[1:]))
    assert stall < 0.3 * (end - start), f"the other thread stood still {stall:.3f} s of a {end - start:.3f} s product"


def test_reduced_precision_float32_products_stay_exact(products):
    X = relu_layer(2, c=1)
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("medium")  # TF32/bf16 allowed: the bound widens, results stay exact
    try:
        result = exact_knn(torch.from_numpy(X), 10)
    finally:
        torch.set_float32_matmul_precision(previous)
    assert_matches_brute_force(X, result, 10, keep=False, gram=False)


@pytest.mark.parametrize("held", [True, False])
@pytest.mark.parametrize("widest", ["default", "never"])
def test_float32_points_far_from_the_origin(products, monkeypatch, held, widest):
    """float32 input (searched as is, float64 made tile by tile) on concentrated data far from the
    origin, where the float32 bound cannot certify the first pool: rows go to a wider pool or, with
    `never`, to the float64 pass; both exact. `held` False centres the points block by block."""
    if not held:
        monkeypatch.setattr(cwnnk.engine.pointsets, "CENTRED_BYTES", 0)
        monkeypatch.setattr(cwnnk.engine.pointsets, "CONVERT_BYTES", 4096)
    if widest == "never":
        monkeypatch.setattr(cwnnk.engine.knn, "WIDER_POOL", {"cpu": 0, "cuda": 0})
    rng = np.random.default_rng(4)
    X = (100 + rng.normal(size=(2, 200, 4096)) * 0.05).astype(np.float32)  # distances within ~2%
    X[:, 5] = X[:, 9]  # a duplicate pair
    result = exact_knn(torch.from_numpy(X), 10, tile_bytes=1 << 20, sets_per_batch=2)  # together where held
    assert_matches_brute_force(X.astype(np.float64), result, 10, keep=False, gram=False)
    assert result.rows_by_pass["float64" if widest == "never" else "float32"] > 0
    for c in range(2):  # the Gram is exact too: differences of float32 values are exact in float64
        for i in range(200):  # every row: those certified by a widened pool get their Gram anew
            Y = X[c][result.indices[c, i].numpy()].astype(np.float64) - X[c][i]
            np.testing.assert_allclose(result.gram[c, i].numpy(), Y @ Y.T, rtol=1e-12)


def test_a_pass_whose_probe_settles_few_rows_is_skipped(products, monkeypatch):
    """Float32 bounds too loose for the data (products allowed in bfloat16 precision): after the
    first tile of rows, the others go to the float64 pass at once, and the result stays exact."""
    monkeypatch.setattr(cwnnk.engine.knn, "WIDER_POOL", {"cpu": 0, "cuda": 0})
    bounded = {torch.float32: 0, torch.float64: 0}  # query rows whose bounds each pass computed
    original = cwnnk.engine.knn.bounds
    monkeypatch.setattr(cwnnk.engine.knn, "bounds",
                        lambda sets, rows, dtype, *a: bounded.update({dtype: bounded[dtype] + len(rows)})
                        or original(sets, rows, dtype, *a))
    X = relu_layer(5, c=1, n=700)
    n_distinct = len(np.unique(X[0], axis=0))
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("medium")
    try:
        result = exact_knn(torch.from_numpy(X).float(), 10, tile_bytes=1 << 17)  # tiles of 26 rows
    finally:
        torch.set_float32_matmul_precision(previous)
    assert_matches_brute_force(X.astype(np.float32).astype(np.float64), result, 10, keep=False, gram=False)
    assert bounded[torch.float32] == (1 << 17) // (n_distinct * 8 + 32 * 12)
    assert result.rows_by_pass["float32"] < bounded[torch.float32] / 2
    assert bounded[torch.float64] == n_distinct - result.rows_by_pass["float32"]


@pytest.mark.parametrize("brute_elements", [0, 1 << 30])
def test_few_rows_left_by_the_first_pass_go_to_the_brute_force(products, monkeypatch, brute_elements):
    """Float32 bounds made too loose to certify (bfloat16 precision allowed): the rows left go to
    the float64 pass, or straight to the brute force where they are few enough; both exact."""
    monkeypatch.setattr(cwnnk.engine.knn, "BRUTE_ELEMENTS", {"cpu": brute_elements, "cuda": brute_elements})
    X = relu_layer(7, c=2, n=300)
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("medium")
    try:
        result = exact_knn(torch.from_numpy(X).float(), 10)
    finally:
        torch.set_float32_matmul_precision(previous)
    assert_matches_brute_force(X.astype(np.float32).astype(np.float64), result, 10, keep=False, gram=False)
    assert (result.rows_by_pass["float64"] == 0) == (brute_elements > 0)
    assert (result.rows_by_pass["brute"] > 100) == (brute_elements > 0)


def assert_same_knn(a, b):
    for name in ("indices", "sqdist", "gram", "group", "n_dup"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert a.rows_by_pass == b.rows_by_pass


@pytest.mark.parametrize("gram", [False, True])
@pytest.mark.parametrize("keep", [False, True])
def test_sets_searched_in_one_batch_equal_sets_searched_alone(keep, gram):
    """Sets of different numbers of distinct rows (a set of one row among them) share one batch;
    its smaller sets' pools are padded. Each set's result is what it gets searched alone."""
    X = relu_layer(8, c=4, n=300, d=8)
    X[1, 100:] = 0  # 101 distinct rows
    X[2, 20:] = X[2, 0]  # 20: smaller than the pool
    X[3] = 1.5  # one
    X = torch.from_numpy(X)
    with gram_matrix(gram):
        together = exact_knn(X, 25, duplicates="keep" if keep else "drop", sets_per_batch=4)
        alone = exact_knn(X, 25, duplicates="keep" if keep else "drop", sets_per_batch=1)
    assert_matches_brute_force(X.numpy(), together, 25, keep, gram)
    for name in ("indices", "sqdist", "group", "n_dup"):
        assert torch.equal(getattr(together, name), getattr(alone, name)), name
    # a padded pool's Gram is a product of another shape: equal up to its summation order
    torch.testing.assert_close(together.gram, alone.gram, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("bad", [0, -2, 1.5, True])
def test_a_batch_size_that_is_not_a_positive_integer_is_refused(bad):
    with pytest.raises(ValueError, match=f"sets_per_batch={bad!r}"):
        exact_knn(torch.zeros((2, 5, 3)), 2, sets_per_batch=bad)


def test_all_points_equal_leaves_no_candidate_under_drop():
    X = np.ones((1, 5, 3))
    dropped = exact_knn(torch.from_numpy(X), 3)
    assert (dropped.indices == -1).all() and torch.isinf(dropped.sqdist).all()
    kept = exact_knn(torch.from_numpy(X), 3, duplicates="keep")
    np.testing.assert_array_equal(kept.indices[0].numpy(), [[1, 2, 3], [0, 2, 3], [0, 1, 3], [0, 1, 2], [0, 1, 2]])
    assert (kept.sqdist == 0).all()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none on this machine)")
def test_cuda_matches_cpu():
    X = torch.from_numpy(relu_layer(3, c=4, n=1000, d=64))
    cpu = exact_knn(X, 25, duplicates="keep")
    gpu = exact_knn(X.cuda(), 25, duplicates="keep")
    assert torch.equal(cpu.indices, gpu.indices.cpu())
    torch.testing.assert_close(cpu.sqdist, gpu.sqdist.cpu(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(cpu.gram, gpu.gram.cpu(), rtol=1e-9, atol=1e-9)
