"""Per-node overlap metrics, chance levels and layer summaries (cwnnk.overlap)."""

import re
from pathlib import Path

import numpy as np
import pytest

import cwnnk.overlap as ov
from cwnnk.overlap import (
    chance_levels,
    jaccard_chance_table,
    layer_summary,
    node_metrics,
    summarize,
    zero_degree_fraction,
)

DOCS = Path(__file__).resolve().parents[1] / "docs" / "overlap.md"


def _rows(sets, N, k, rng):
    """(N, k) indices, weights, distances from one set of neighbours per node.

    Each row also holds non-neighbour candidates (weight exactly 0) and -1 padding, as the
    NNK engine writes them.
    """
    idx = np.full((N, k), -1, dtype=np.int64)
    w = np.zeros((N, k))
    dist = np.full((N, k), np.inf)
    for i, nb in enumerate(sets):
        others = [j for j in range(N) if j != i and j not in nb]
        n_extra = int(rng.integers(0, min(len(others), k - len(nb)) + 1))
        cand = list(nb) + list(rng.choice(others, n_extra, replace=False))
        order = rng.permutation(len(cand))
        idx[i, : len(cand)] = np.asarray(cand, dtype=np.int64)[order]
        w[i, : len(cand)] = np.where(order < len(nb), rng.uniform(0.1, 1.0, len(cand)), 0.0)
        dist[i, : len(cand)] = np.sort(rng.uniform(0.5, 2.0, len(cand)))
    return idx, w, dist


def make_layer(channel_sets, agg_sets, N, k=8, seed=0):
    """Arrays for layer_summary from python sets: channel_sets[c][i], agg_sets[i]."""
    rng = np.random.default_rng(seed)
    ch = [_rows(sets, N, k, rng) for sets in channel_sets]
    agg = _rows(agg_sets, N, k, rng)
    ci, cw, cd = (np.stack(a) for a in zip(*ch))
    return ci, cw, cd, *agg


def random_sets(rng, N, n_channels, low, high):
    """Independent uniform random neighbour sets with degrees uniform in [low, high]."""
    return [[set(rng.choice(np.delete(np.arange(N), i), rng.integers(low, high + 1),
                            replace=False).tolist()) for i in range(N)]
            for _ in range(n_channels)]


def brute_force(channel_sets, agg_sets, N):
    """Reference values straight from the definitions, with python sets."""
    C = len(channel_sets)
    P = np.zeros((C, C))
    out = {"rho": [], "kappa": [], "gamma": [], "pair": [], "union": []}
    for i in range(N):
        sets = [channel_sets[c][i] for c in range(C)]
        U, S = set().union(*sets), sum(map(len, sets))
        out["union"].append(len(U))
        out["rho"].append(1 - len(U) / S if S else np.nan)
        out["gamma"].append(len(agg_sets[i]) / (S / C) if S else np.nan)
        out["kappa"].append(len(agg_sets[i] & U) / len(agg_sets[i]) if agg_sets[i] else np.nan)
        pair = []
        for a in range(C):
            for b in range(C):
                if a != b:
                    ab = sets[a] | sets[b]
                    j = len(sets[a] & sets[b]) / len(ab) if ab else 0.0
                    P[a, b] += j / N
                    pair.append(j)
        out["pair"].append(np.mean(pair))
    np.fill_diagonal(P, 1.0)
    return {key: np.array(v) for key, v in out.items()}, P


# Hand-worked layer: C = 2 channels A, B; N = 5 nodes.
HAND_A = [{1, 2}, {0}, set(), {0, 1, 2}, {0}]
HAND_B = [{2, 3}, set(), set(), {0, 1, 2}, {0}]
HAND_AGG = [{2, 4}, set(), {0}, {0, 1, 2, 4}, {0}]


def test_hand_worked_two_channels():
    ci, cw, cd, ai, aw, ad = make_layer([HAND_A, HAND_B], HAND_AGG, N=5, k=4)
    nm = node_metrics(ci, cw, ai, aw)
    nan = np.nan
    # node 0: U = {1,2,3}, S = 4; J = |{2}| / |{1,2,3}|; agg {2,4} meets U in {2}
    # node 1: A = {0}, B empty: rho 0, J 0; agg empty -> kappa undefined; gamma 0 / 0.5
    # node 2: both empty: rho, gamma undefined, J = 0; kappa = |{0} & {}| / 1 = 0
    # node 3: identical channels: rho = 1/2 = 1 - 1/C, J = 1; kappa 3/4, gamma 4 / 3
    # node 4: identical channels {0}; agg {0}: kappa 1, gamma 1
    np.testing.assert_array_equal(nm.degree_channel, [[2, 1, 0, 3, 1], [2, 0, 0, 3, 1]])
    np.testing.assert_array_equal(nm.degree_agg, [2, 0, 1, 4, 1])
    np.testing.assert_array_equal(nm.union, [3, 1, 0, 3, 1])
    np.testing.assert_array_equal(nm.sum, [4, 1, 0, 6, 2])
    np.testing.assert_allclose(nm.rho, [0.25, 0, nan, 0.5, 0.5])
    np.testing.assert_allclose(nm.rho_hat, [0.5, 0, nan, 1, 1])
    np.testing.assert_allclose(nm.pairwise_overlap, [1 / 3, 0, 0, 1, 1])
    np.testing.assert_allclose(nm.kappa, [0.5, nan, 0, 0.75, 1])
    np.testing.assert_allclose(nm.gamma, [1, 0, nan, 4 / 3, 1])
    mean_j = (1 / 3 + 0 + 0 + 1 + 1) / 5
    np.testing.assert_allclose(nm.pairwise, [[1, mean_j], [mean_j, 1]])

    row, pairwise, _ = layer_summary(ci, cw, cd, ai, aw, ad)
    np.testing.assert_allclose(pairwise, nm.pairwise)
    assert row["n_nodes"] == 5 and row["n_channels"] == 2 and row["k"] == 4
    assert row["n_nodes_no_channel_neighbours"] == 1
    assert row["n_nodes_no_agg_neighbours"] == 1
    assert row["rho_mean"] == pytest.approx((0.25 + 0 + 0.5 + 0.5) / 4)
    assert row["rho_hat_median"] == pytest.approx(0.75)
    assert row["pairwise_overlap_mean"] == pytest.approx(mean_j)
    assert row["kappa_mean"] == pytest.approx((0.5 + 0 + 0.75 + 1) / 4)
    assert row["degree_channel_mean"] == pytest.approx(13 / 10)
    assert row["zero_degree_channel_mean"] == pytest.approx((1 / 5 + 2 / 5) / 2)
    assert row["zero_degree_channel_max"] == pytest.approx(2 / 5)


def test_hand_worked_three_channels():
    # One node of interest (0): A = {1,2}, B = {2,3}, C = {4}; agg = {1,4,5}.
    # U = 4, S = 5: rho = 1/5, rho_hat = (1/5) / (2/3) = 3/10; J_AB = 1/3, J_AC = J_BC = 0;
    # kappa = |{1,4}| / 3 = 2/3; gamma = 3 / (5/3) = 9/5.
    N = 6
    rest = [{0}] * (N - 1)
    sets = [[{1, 2}] + rest, [{2, 3}] + rest, [{4}] + rest]
    ci, cw, cd, ai, aw, ad = make_layer(sets, [{1, 4, 5}] + rest, N=N)
    nm = node_metrics(ci, cw, ai, aw)
    assert nm.rho[0] == pytest.approx(0.2)
    assert nm.rho_hat[0] == pytest.approx(0.3)
    assert nm.pairwise_overlap[0] == pytest.approx(1 / 9)
    assert nm.kappa[0] == pytest.approx(2 / 3)
    assert nm.gamma[0] == pytest.approx(1.8)
    # Nodes 1..5 have identical channels {0}: J = 1 there.
    assert nm.pairwise[0, 1] == pytest.approx((1 / 3 + 5) / 6)
    assert nm.pairwise[0, 2] == pytest.approx(5 / 6)


@pytest.mark.parametrize("path", ["sparse", "dense"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_brute_force(monkeypatch, path, seed):
    # Both intersection paths, forced, against the set definitions; channels share part
    # of their neighbours so that every kind of intersection occurs.
    calls = []

    def forced(*args):
        calls.append(path)
        return path == "dense"

    monkeypatch.setattr(ov, "_dense_is_cheaper", forced)
    rng = np.random.default_rng(seed)
    N, C = 30, 5
    base = random_sets(rng, N, 1, 0, 6)[0]
    own = random_sets(rng, N, C + 1, 0, 4)
    keep = rng.random((C + 1, N)) < 0.6
    sets = [[(base[i] if keep[c, i] else set()) | own[c][i] for i in range(N)]
            for c in range(C + 1)]
    ci, cw, cd, ai, aw, ad = make_layer(sets[:C], sets[C], N=N, k=12, seed=seed)
    nm = node_metrics(ci, cw, ai, aw)
    ref, P = brute_force(sets[:C], sets[C], N)
    np.testing.assert_array_equal(nm.union, ref["union"])
    for name, got in (("rho", nm.rho), ("kappa", nm.kappa), ("gamma", nm.gamma),
                      ("pair", nm.pairwise_overlap)):
        np.testing.assert_allclose(got, ref[name], rtol=1e-6, atol=1e-12, err_msg=name)
    np.testing.assert_allclose(nm.pairwise, P, rtol=1e-6)
    assert calls  # the forced path ran


def test_identical_channels_give_full_overlap():
    rng = np.random.default_rng(3)
    N, C = 40, 4
    sets = random_sets(rng, N, 1, 1, 6)[0]
    agg = random_sets(rng, N, 1, 1, 6)[0]
    ci, cw, cd, ai, aw, ad = make_layer([sets] * C, agg, N=N)
    nm = node_metrics(ci, cw, ai, aw)
    np.testing.assert_allclose(nm.rho_hat, 1.0)
    np.testing.assert_allclose(nm.pairwise_overlap, 1.0)
    np.testing.assert_allclose(nm.pairwise, np.ones((C, C)))
    np.testing.assert_allclose(nm.gamma, [len(agg[i]) / len(sets[i]) for i in range(N)])


def test_independent_channels_sit_at_chance():
    rng = np.random.default_rng(4)
    N, C = 300, 6
    sets = random_sets(rng, N, C + 1, 3, 25)
    ci, cw, cd, ai, aw, ad = make_layer(sets[:C], sets[C], N=N, k=30)
    nm = node_metrics(ci, cw, ai, aw)
    chance = chance_levels(nm.degree_channel, nm.degree_agg)
    for name in ("union", "rho", "rho_hat", "kappa", "pairwise_overlap"):
        diff = getattr(nm, name) - chance[f"{name}_chance"]
        # Each node is an independent draw from the null model: the mean difference must
        # vanish within a few standard errors.
        assert abs(diff.mean()) < 4 * diff.std() / np.sqrt(N), name


def test_chance_formulas_match_monte_carlo():
    rng = np.random.default_rng(5)
    N, draws = 21, 40000
    m = N - 1
    deg = np.array([4, 9, 15, 0])  # one node, C = 4 channels, one of them empty
    d_agg = 6
    # Uniform random subsets: the first d points of a random permutation of the m others.
    ranks = np.argsort(rng.random((draws, len(deg) + 1, m)), axis=-1)
    member = np.zeros((draws, len(deg) + 1, m), dtype=bool)
    for c, d in enumerate([*deg, d_agg]):
        np.put_along_axis(member[:, c], ranks[:, c, :d], True, axis=-1)
    ch, agg = member[:, :-1], member[:, -1]
    in_union = ch.any(axis=1)
    union = in_union.sum(-1)
    inter = (ch[:, :, None] & ch[:, None]).sum(-1)
    both = (ch[:, :, None] | ch[:, None]).sum(-1)
    jac = np.where(both > 0, inter / np.maximum(both, 1), 0.0)
    off = ~np.eye(len(deg), dtype=bool)
    mc = {
        "union_chance": union,
        "rho_chance": 1 - union / deg.sum(),
        "rho_hat_chance": (1 - union / deg.sum()) / (1 - 1 / len(deg)),
        "kappa_chance": (agg & in_union).sum(-1) / d_agg,
        "pairwise_overlap_chance": jac[:, off].mean(-1),
    }
    # The other N - 1 nodes only fill the degree arrays.
    degree = np.tile(deg[:, None], (1, N))
    chance = chance_levels(degree, np.full(N, d_agg))
    for name, samples in mc.items():
        se = samples.std() / np.sqrt(draws)
        assert abs(chance[name][0] - samples.mean()) < 4 * se + 1e-12, name


def test_jaccard_chance_table_closed_forms():
    m = 10
    t = jaccard_chance_table(m, m)
    assert t[0, 0] == 0 and t[0, 3] == 0 and t[3, 0] == 0
    assert t[1, 1] == pytest.approx(1 / m)  # the same point with probability 1/m
    assert t[m, 4] == pytest.approx(4 / m)  # A = everything: J = |B| / m
    np.testing.assert_allclose(t, t.T)
    # a = b = 2 out of 4: |A & B| is 0, 1, 2 with probabilities 1/6, 4/6, 1/6.
    assert jaccard_chance_table(2, 4)[2, 2] == pytest.approx(4 / 6 * 1 / 3 + 1 / 6 * 1)


def test_channel_permutation():
    rng = np.random.default_rng(6)
    N, C = 50, 6
    base = random_sets(rng, N, 1, 2, 6)[0]
    own = random_sets(rng, N, C + 1, 0, 4)
    sets = [[base[i] | own[c][i] if c % 2 else own[c][i] for i in range(N)]
            for c in range(C + 1)]
    ci, cw, cd, ai, aw, ad = make_layer(sets[:C], sets[C], N=N, k=12)
    perm = rng.permutation(C)
    row, P, _ = layer_summary(ci, cw, cd, ai, aw, ad)
    row_p, P_p, _ = layer_summary(ci[perm], cw[perm], cd[perm], ai, aw, ad)
    np.testing.assert_allclose(P_p, P[np.ix_(perm, perm)], rtol=1e-12)
    assert row.keys() == row_p.keys()
    for key in row:
        assert row_p[key] == pytest.approx(row[key], rel=1e-12, nan_ok=True), key


def test_summarize_is_nan_aware():
    s = summarize([1.0, 2.0, np.nan, 3.0, 4.0])
    assert s == pytest.approx({"mean": 2.5, "std": np.sqrt(1.25), "q25": 1.75,
                               "median": 2.5, "q75": 3.25, "n": 4})
    empty = summarize([np.nan, np.nan])
    assert empty["n"] == 0 and all(np.isnan(empty[s]) for s in ov.STATS)


def test_zero_degree_fraction():
    np.testing.assert_allclose(zero_degree_fraction([[0, 1, 0, 2], [3, 3, 3, 3]]), [0.5, 0.0])


def test_every_column_is_documented():
    ci, cw, cd, ai, aw, ad = make_layer([HAND_A, HAND_B], HAND_AGG, N=5, k=4)
    row, _, _ = layer_summary(ci, cw, cd, ai, aw, ad)
    documented = set(re.findall(r"^\| `([a-z0-9_{}]+)`", DOCS.read_text(), flags=re.M))
    expanded = {c.replace("{stat}", s) for c in documented for s in ov.STATS}
    missing = [key for key in row if key not in documented | expanded]
    assert not missing, f"columns missing from {DOCS.name}: {missing}"


def test_bad_input_names_argument_and_shapes():
    ci, cw, cd, ai, aw, ad = make_layer([HAND_A, HAND_B], HAND_AGG, N=5, k=4)
    with pytest.raises(ValueError, match=r"agg_indices.*\(2, 5, 4\).*got \(5, 3\)"):
        layer_summary(ci, cw, cd, ai[:, :3], aw, ad)
    with pytest.raises(ValueError, match=r"agg_weights.*\(4, 4\)"):
        node_metrics(ci, cw, ai, aw[:4])
    with pytest.raises(ValueError, match=r"ch_weights.*\(2, 5, 3\)"):
        node_metrics(ci, cw[:, :, :3], ai, aw)
    with pytest.raises(ValueError, match=r"ch_distances.*\(1, 5, 4\)"):
        layer_summary(ci, cw, cd[:1], ai, aw, ad)
    with pytest.raises(ValueError, match=r"C >= 2.*\(1, 5, 4\)"):
        node_metrics(ci[:1], cw[:1], ai, aw)
    with pytest.raises(ValueError, match=r"ch_indices.*\[-1, 4\]"):
        node_metrics(ci + 5, cw, ai, aw)


@pytest.mark.parametrize("dense", [False, True])
def test_repeated_neighbour_raises(monkeypatch, dense):
    monkeypatch.setattr(ov, "_dense_is_cheaper", lambda *args: dense)
    ci, cw, cd, ai, aw, ad = make_layer([HAND_A, HAND_B], HAND_AGG, N=5, k=4)
    ci[0, 3, :3] = 1  # node 3 of channel A lists point 1 three times
    cw[0, 3, :3] = 0.5
    with pytest.raises(ValueError, match="repeats a neighbour"):
        node_metrics(ci, cw, ai, aw)


def test_dead_channels_are_counted_and_left_out():
    """A dead channel (no neighbour anywhere) is counted; the summaries are those of the live
    channels; the C x C matrix keeps it (J = 0 off the diagonal)."""
    rng = np.random.default_rng(3)
    N = 30
    live = random_sets(rng, N, 3, 2, 5)
    empty = [set() for _ in range(N)]
    agg = random_sets(rng, N, 1, 2, 6)[0]
    sets = [live[0], empty, live[1], empty, live[2]]  # channels 1 and 3 dead
    dead = np.array([False, True, False, True, False])
    row, P, _ = layer_summary(*make_layer(sets, agg, N), dead=dead)
    ref, P_live, _ = layer_summary(*make_layer(live, agg, N))  # the same live channels alone
    assert row["n_dead_channels"] == 2 and row["n_channels"] == 5 and ref["n_dead_channels"] == 0
    for name in ("rho_hat", "rho", "gamma", "pairwise_overlap", "degree_channel", "rho_hat_chance",
                 "pairwise_overlap_chance", "union", "kappa"):
        assert row[f"{name}_mean"] == pytest.approx(ref[f"{name}_mean"]), name
    assert row["zero_degree_channel_max"] == 1.0  # over every channel: the dead ones have no edge
    assert P.shape == (5, 5) and np.allclose(np.diag(P), 1)
    assert np.allclose(P[np.ix_(~dead, ~dead)], P_live)
    assert np.all(P[dead][:, ~dead] == 0) and np.all(P[~dead][:, dead] == 0)
    # Without the mask the dead channels weigh in (the reason for leaving them out).
    blind, P_blind, _ = layer_summary(*make_layer(sets, agg, N))
    assert blind["pairwise_overlap_mean"] < row["pairwise_overlap_mean"]
    assert blind["degree_channel_mean"] < row["degree_channel_mean"]
    assert np.allclose(P_blind, P)
    # Fewer than two live channels: nothing to overlap.
    one, _, _ = layer_summary(*make_layer([live[0], empty, empty], agg, N), dead=[False, True, True])
    assert one["n_dead_channels"] == 2 and np.isnan(one["rho_hat_mean"]) and np.isnan(one["pairwise_overlap_mean"])
    assert one["degree_channel_mean"] == pytest.approx(np.mean([len(s) for s in live[0]]))
    with pytest.raises(ValueError, match="dead"):
        layer_summary(*make_layer(sets, agg, N), dead=[True, False])
