"""The headline redundancy (cwnnk.redundancy): width robustness on a real layer, the interval's
coverage on synthetic channels of known overlap, the twin comparison and the untrained twin itself."""

import numpy as np
import pytest
import torch
import torchvision

import cwnnk
from cwnnk.overlap import chance_levels, node_metrics
from cwnnk.redundancy import PairOverlap, compare, effect, interval


def digits(size, n=None):
    """scikit-learn's handwritten digits as (N, 3, size, size) images in [0, 1] and their labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 16
    x = torch.nn.functional.interpolate(x, size=size, mode="bilinear").repeat(1, 3, 1, 1)
    return (x, d.target) if n is None else (x[:n], d.target[:n])


def pairs_of(sets):
    """PairOverlap of channel neighbour sets given as indices (C, N, d) (all weights 1)."""
    indices = np.asarray(sets)
    weights = np.ones(indices.shape)
    nm = node_metrics(indices, weights, indices[0], weights[0])
    chance = chance_levels(nm.degree_channel, nm.degree_agg)
    return PairOverlap(nm.pairwise, chance["pairwise_chance"], nm.pairwise_overlap, chance["pairwise_overlap_chance"])


# ---------------------------------------------------------------------------- width

def test_headline_does_not_move_with_width_where_rho_hat_saturates():
    """resnet18 layer4.1.relu_1 (512 channels, random init) on 150 real digits: random channel subsets
    of 32, 128 and 512. rho_hat climbs to its chance level as the union covers every other image; the
    headline, a mean over channel pairs, stays put (issue: less than a quarter of rho_hat's move)."""
    x, y = digits(96)
    torch.manual_seed(0)
    acts = cwnnk.activations_of(torchvision.models.resnet18(num_classes=10), x, ["layer4.1.relu_1"], n_samples=150,
                                labels=y)["layer4.1.relu_1"]
    graphs = cwnnk.cw_nnk_graphs(acts, k=10)
    rows = cwnnk.width_sweep(graphs, sizes=[32, 128, 512], n_draws=5)
    assert [r["n_channels"] for r in rows] == [32] * 5 + [128] * 5 + [512]

    def mean(column, n):
        return np.mean([r[column] for r in rows if r["n_channels"] == n])

    headline = [mean("redundancy", n) for n in (32, 128, 512)]
    rho_hat = [mean("rho_hat", n) for n in (32, 128, 512)]
    assert np.ptp(rho_hat) > 0.2  # the saturation is real here, so the comparison means something
    assert np.ptp(headline) < np.ptp(rho_hat) / 4
    # at full width rho_hat sits on its chance level, the headline well above its own
    assert mean("rho_hat", 512) - mean("rho_hat_chance", 512) < 0.01 and mean("union_saturation", 512) > 0.99
    assert mean("redundancy", 512) > 2 * mean("redundancy_chance", 512)
    summary = cwnnk.overlap_summary(graphs)
    assert summary["rho_hat_saturated"] == 1 and summary["redundancy"] == pytest.approx(mean("redundancy", 512))
    assert summary["redundancy"] == pytest.approx(summary["pairwise_overlap_mean"], abs=1e-12)  # one number, two names
    lo, hi = summary["redundancy_ci"]
    assert lo < summary["redundancy"] < hi


def test_width_sweep_refuses_impossible_sizes(tmp_path):
    from cwnnk.overlap import width_sweep

    sets = np.array([[[1, 2], [0, 2], [0, 1]]] * 3)
    with pytest.raises(ValueError, match=r"sizes must lie in \[2, C\] = \[2, 3\], got \[2, 4\]"):
        width_sweep(sets, np.ones(sets.shape), sets[0], np.ones(sets[0].shape), [2, 4])
    with pytest.raises(FileNotFoundError, match="incomplete graph folder"):
        cwnnk.width_sweep(tmp_path)


# ---------------------------------------------------------------------------- interval

def synthetic_layer(rng, n_nodes, n_channels, d=8):
    """Channel neighbour sets with known structure: node i has a base set of d other nodes; channel c
    keeps each base neighbour with probability s_i q_c (node effect s_i ~ U(0.3, 1), channel effect
    q_c ~ U(0.2, 0.9)) and fills up to d with random other nodes. Returns indices (C, N, d)."""
    s = rng.uniform(0.3, 1.0, n_nodes)
    q = rng.uniform(0.2, 0.9, n_channels)
    base = np.argsort(rng.random((n_nodes, n_nodes - 1)), axis=1)[:, :d]  # positions among the others
    keep = rng.random((n_channels, n_nodes, d)) < s[None, :, None] * q[:, None, None]
    score = rng.random((n_channels, n_nodes, n_nodes - 1))
    rows = np.arange(n_nodes)[None, :, None]
    score[np.arange(n_channels)[:, None, None], rows, base[None]] = np.where(keep, -1.0, score[
        np.arange(n_channels)[:, None, None], rows, base[None]])
    picked = np.argsort(score, axis=2)[:, :, :d]  # kept base neighbours first, then random others
    return picked + (picked >= np.arange(n_nodes)[None, :, None])  # others' positions -> node ids (skip i)


def true_overlap(n_nodes, d=8, trials=200_000, seed=99):
    """E[J] of two random channels at a random node of synthetic_layer's model, by Monte Carlo."""
    rng = np.random.default_rng(seed)
    s = rng.uniform(0.3, 1.0, trials)
    q = rng.uniform(0.2, 0.9, (2, trials))
    m = n_nodes - 1
    sets = []
    for c in range(2):  # the base set is points 0..d-1 of the m others (by symmetry)
        score = rng.random((trials, m))
        keep = rng.random((trials, d)) < (s * q[c])[:, None]
        score[:, :d] = np.where(keep, -1.0, score[:, :d])
        member = np.zeros((trials, m), dtype=bool)
        np.put_along_axis(member, np.argsort(score, axis=1)[:, :d], True, axis=1)
        sets.append(member)
    inter, union = (sets[0] & sets[1]).sum(1), (sets[0] | sets[1]).sum(1)
    return float(np.mean(inter / union))


def test_interval_covers_the_known_overlap():
    """200 synthetic layers (12 channels x 80 nodes) drawn from one model of known E[J]: the 95% interval,
    resampling nodes and channels, holds it in at least 90% of them; resampling nodes alone (the
    channel term left out) would not: channels vary in how much they keep of the shared neighbourhood."""
    truth = true_overlap(80)
    rng = np.random.default_rng(0)
    hits, node_only_hits, widths = 0, 0, []
    for _ in range(200):
        pairs = pairs_of(synthetic_layer(rng, 80, 12))
        r = interval(pairs, n_boot=400)
        hits += r["redundancy_ci_lo"] <= truth <= r["redundancy_ci_hi"]
        widths.append(r["redundancy_ci_hi"] - r["redundancy_ci_lo"])
        boots = np.random.default_rng(1).integers(0, 80, (400, 80))
        lo, hi = np.quantile(pairs.node[boots].mean(axis=1), [0.025, 0.975])
        node_only_hits += lo <= truth <= hi
    assert 0.9 <= hits / 200 <= 1.0
    assert node_only_hits / 200 < 0.85
    assert np.mean(widths) < truth  # informative: narrower than the value itself


def test_identical_channels_have_redundancy_one_and_a_degenerate_interval():
    rng = np.random.default_rng(3)
    one = np.argsort(rng.random((30, 29)), axis=1)[:, :5]
    one = one + (one >= np.arange(30)[:, None])
    r = interval(pairs_of([one] * 4))
    assert r["redundancy"] == r["redundancy_ci_lo"] == r["redundancy_ci_hi"] == 1.0
    assert r["redundancy_excess"] == pytest.approx(1 - r["redundancy_chance"])


def test_pair_overlap_survives_json_with_and_without_live_channels():
    """The overlap stage stores PairOverlap in JSON; a layer whose channels are all dead stores a 0 x 0 matrix,
    which must read back as one (the tables stage compares it with its twin: NaN, not a crash)."""
    import json

    pairs = pairs_of(synthetic_layer(np.random.default_rng(2), 30, 4))
    back = PairOverlap.from_dict(json.loads(json.dumps(pairs.to_dict())))
    assert np.array_equal(back.pairwise, pairs.pairwise) and np.array_equal(back.node_chance, pairs.node_chance)
    empty = PairOverlap(np.zeros((0, 0)), np.zeros((0, 0)), np.full(30, np.nan), np.full(30, np.nan))
    dead = PairOverlap.from_dict(json.loads(json.dumps(empty.to_dict())))
    assert dead.pairwise.shape == (0, 0) and dead.node.shape == (30,)
    assert np.isnan(compare(pairs, dead)["difference"]) and compare(dead, pairs)["effect"] == ""


def test_interval_is_seeded_and_undefined_below_two_channels():
    pairs = pairs_of(synthetic_layer(np.random.default_rng(5), 40, 6))
    assert interval(pairs) == interval(pairs)
    empty = PairOverlap(np.zeros((0, 0)), np.zeros((0, 0)), np.full(40, np.nan), np.full(40, np.nan))
    assert all(np.isnan(v) for v in interval(empty).values())
    with pytest.raises(ValueError, match=r"PairOverlap.node_chance must have shape \(40,\)"):
        PairOverlap(pairs.pairwise, pairs.pairwise_chance, pairs.node, pairs.node_chance[:3])


# ---------------------------------------------------------------------------- comparison

def test_compare_a_layer_with_itself_and_with_unrelated_channels():
    rng = np.random.default_rng(7)
    layer = pairs_of(synthetic_layer(rng, 60, 8))
    same = compare(layer, layer)
    assert same["difference"] == 0 and same["difference_ci_lo"] <= 0 <= same["difference_ci_hi"]
    assert same["effect"] == "none beyond the interval"
    # channels that keep nothing of a shared neighbourhood: random sets, overlap at chance
    random_sets = np.argsort(rng.random((8, 60, 59)), axis=2)[:, :, :8]
    unrelated = pairs_of(random_sets + (random_sets >= np.arange(60)[None, :, None]))
    lower = compare(unrelated, layer)
    assert lower["difference"] < 0 and lower["difference_ci_hi"] < 0 and lower["effect"] == "lowered"
    assert compare(layer, unrelated)["effect"] == "raised"
    with pytest.raises(ValueError, match="same images in both layers: 60 nodes against 40"):
        compare(layer, pairs_of(synthetic_layer(rng, 40, 8)))
    assert effect(np.nan, 1.0) == ""


# ---------------------------------------------------------------------------- the untrained twin

def test_untrained_twin_of_a_cwnnk_model_is_its_seeded_initial_state():
    from cwnnk.models import build_model, untrained_twin

    spec = {"arch": "convnet", "input_shape": [1, 8, 8], "num_classes": 3, "dropout": 0.0,
            "layers": [{"channels": 4, "kernel": 3, "padding": "same", "pool": False}],
            "normalize": {"mean": [0.3], "std": [2.0]}}
    torch.manual_seed(5)
    initial = build_model(spec).state_dict()
    trained = build_model(spec)
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(1.0)  # "training": every weight moved
    twin = untrained_twin(trained, seed=5)
    assert not twin.training and twin.spec == spec
    for key, value in initial.items():  # the same architecture and normalisation, the seed's weights
        assert torch.equal(twin.state_dict()[key], value), key
    other = untrained_twin(trained, seed=6).state_dict()
    assert not torch.equal(other["features.conv1.conv.weight"], initial["features.conv1.conv.weight"])


def test_untrained_twin_of_any_module_reinitialises_every_layer():
    from cwnnk.models import untrained_twin

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.BatchNorm2d(4))
    with torch.no_grad():
        net[0].weight.fill_(7.0)
        net[2].weight.fill_(7.0)
    torch.manual_seed(42)
    expected = torch.rand(3)
    torch.manual_seed(42)
    a, b = untrained_twin(net, 1), untrained_twin(net, 1)
    assert torch.equal(torch.rand(3), expected)  # the caller's random state is left as it was
    assert net[0].weight.eq(7).all()  # the model itself is untouched
    assert not a[0].weight.eq(7).any() and a[2].weight.eq(1).all()
    assert torch.equal(a[0].weight, b[0].weight)
    with pytest.raises(TypeError, match="needs a torch nn.Module"):
        untrained_twin("resnet18")


def test_redundancy_vs_untrained_in_one_call():
    """The library's comparison on a small torchvision model: both models see the same images, the
    twin is untrained_twin's, and the numbers are the two overlap summaries'."""
    from cwnnk.models import untrained_twin

    x, y = digits(32, n=60)
    torch.manual_seed(1)
    model = torchvision.models.resnet18(num_classes=10)
    out = cwnnk.redundancy_vs_untrained(model, x, ["layer1.0.relu"], k=6, labels=y, twin_seed=3)
    r = out["layer1.0.relu"]
    acts = cwnnk.activations_of(untrained_twin(model, 3), x, ["layer1.0.relu"], labels=y)["layer1.0.relu"]
    twin = cwnnk.overlap_summary(cwnnk.cw_nnk_graphs(acts, k=6))
    assert r.untrained == twin["redundancy"] and r.untrained_ci == twin["redundancy_ci"]
    assert r.difference == pytest.approx(r.redundancy - r.untrained)
    assert r.difference_ci[0] <= r.difference <= r.difference_ci[1]
    assert str(r).startswith(f"layer1.0.relu: redundancy {r.redundancy:.3f}")
