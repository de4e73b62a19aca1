"""Pruning (cwnnk.pruning): the per-channel CW-NNK order, the criteria, masking against structural removal
with Torch-Pruning, the plan, claim C5, F8 and the config keys."""

import json

import numpy as np
import pytest
import torch
import torchvision

import cwnnk
from cwnnk.config import ConfigError, validate
from cwnnk.params import PruneParams
from cwnnk.pruning import (
    CRITERIA,
    activation_statistics,
    filter_l1,
    keep_masks,
    masked,
    n_removed,
    producing_conv,
    prune_orders,
    prune_plan,
    removal_order,
)
from cwnnk.redundancy import channel_overlap, keep_order

# ---------------------------------------------------------------------------- the CW-NNK order

def planted_duplicates(seed=0, n=120, independent=6, d=24):
    """(N, C, 4, 6) activations: `independent` unrelated channels, then an exact copy of channel 1 (scaled: the
    same NNK graph under the gaussian kernel's local sigma) and a slightly noisy copy of channel 3."""
    rng = np.random.default_rng(seed)
    acts = rng.standard_normal((n, independent, d)).astype(np.float32)
    copy_1 = 3.0 * acts[:, 1]
    copy_3 = acts[:, 3] + 0.01 * rng.standard_normal((n, d)).astype(np.float32)
    return np.concatenate([acts, copy_1[:, None], copy_3[:, None]], axis=1).reshape(n, independent + 2, 4, 6)


def test_the_greedy_order_removes_one_of_each_planted_duplicate_first():
    """Through the real engine: two planted duplicate pairs (1, 6) and (3, 7) among unrelated channels. The first
    two channels removed are one of each pair; the other member of each pair is then as unique as any channel."""
    summary = cwnnk.overlap_summary(cwnnk.cw_nnk_graphs(planted_duplicates(), k=10, progress=False))
    order = summary["prune_order"]
    first_two = set(np.argsort(order)[:2].tolist())
    assert len(first_two & {1, 6}) == 1 and len(first_two & {3, 7}) == 1, order
    # the duplicates' overlap is near 1, every other pair's near chance
    assert summary["overlap_max"][[1, 6, 3, 7]].min() > 0.9
    assert summary["overlap_max"][[0, 2, 4, 5]].max() < 0.3
    assert np.isfinite(summary["prune_score"]).sum() == 7  # the last channel kept has no score


def test_a_static_ranking_would_remove_both_duplicates_the_greedy_order_keeps_one():
    J = np.full((5, 5), 0.1)
    J[0, 1] = J[1, 0] = 0.9  # a duplicate pair
    J[2, 3] = J[3, 2] = 0.5
    np.fill_diagonal(J, 1.0)
    chance = np.full((5, 5), 0.05)
    order, score = keep_order(J, chance)
    removal = np.argsort(order)
    assert set(removal[:2].tolist()) == {0, 2}  # one of (0, 1), then one of (2, 3): the lower index on ties
    assert score[removal[0]] == pytest.approx(0.85)
    static = channel_overlap(J, chance)["overlap_max"]
    assert set(np.argsort(-static, kind="stable")[:2].tolist()) == {0, 1}


def test_dead_channels_go_first_and_carry_no_score():
    J = np.array([[1, 0.6, 0.1], [0.6, 1, 0.2], [0.1, 0.2, 1]])
    dead = np.array([False, True, False, False, True])
    order, score = keep_order(J, np.zeros((3, 3)), dead)
    assert sorted(order.tolist()) == list(range(5))
    assert set(np.flatnonzero(order < 2)) == {1, 4} and np.isnan(score[[1, 4]]).all()
    overlap = channel_overlap(J, np.zeros((3, 3)), dead)
    assert np.isnan(overlap["overlap_mean"][[1, 4]]).all() and overlap["overlap_max"][0] == pytest.approx(0.6)
    with pytest.raises(ValueError, match="dead marks 4 live channels"):
        keep_order(J, J, np.zeros(4, dtype=bool))


# ---------------------------------------------------------------------------- other criteria

def test_each_criterion_orders_as_its_paper_says():
    l1 = np.array([3.0, 1.0, 2.0, 1.0])
    assert removal_order("l1", 4, l1=l1).tolist() == [1, 3, 2, 0]  # smallest norm first, ties by index
    apoz, mean = np.array([0.2, 0.9, 0.9, 0.5]), np.array([1.0, 0.3, 0.1, 0.2])
    assert removal_order("apoz", 4, apoz=apoz, mean=mean).tolist() == [2, 1, 3, 0]  # most zeros, then least mean
    assert removal_order("cwnnk", 4, prune_order=np.array([2, 0, 3, 1])).tolist() == [1, 3, 0, 2]
    with pytest.raises(ValueError, match="criterion 'l1' needs l1"):
        removal_order("l1", 4)
    with pytest.raises(ValueError, match="criterion must be one of"):
        removal_order("taylor", 4)


def test_random_draws_are_reproducible_by_seed():
    first = removal_order("random", 64, seed=[0, 1, 2])
    assert np.array_equal(first, removal_order("random", 64, seed=[0, 1, 2]))
    assert not np.array_equal(first, removal_order("random", 64, seed=[0, 2, 2]))
    assert sorted(first.tolist()) == list(range(64))


def test_n_removed_rounds_and_never_removes_a_whole_layer():
    assert [n_removed(16, f) for f in (0, 0.1, 0.25, 0.5, 0.75)] == [0, 2, 4, 8, 12]
    assert n_removed(2, 0.75) == 1 and n_removed(4, 0.1) == 0


def test_filter_l1_and_activation_statistics_on_a_real_convnet_and_store(tmp_path):
    model = convnet()
    assert producing_conv(model, "features.conv2.relu") == "features.conv2.conv"
    l1 = filter_l1(model, "features.conv2.relu")
    expected = model.features.conv2.conv.weight.detach().abs().sum((1, 2, 3)).double().numpy()
    np.testing.assert_allclose(l1, expected)
    x = torch.rand(20, 1, 8, 8)
    cwnnk.activations_of(model, x, ["features.conv1.relu"], store=tmp_path / "s.zarr", progress=False)
    apoz, mean = activation_statistics(cwnnk.open_activations(tmp_path / "s.zarr"), "features.conv1.relu")
    with torch.no_grad():
        acts = model.features.conv1.relu(model.features.conv1.conv(model.normalize(x))).numpy()
    np.testing.assert_allclose(apoz, (acts == 0).mean((0, 2, 3)))
    np.testing.assert_allclose(mean, acts.mean((0, 2, 3)), rtol=1e-5)


def test_a_sum_of_branches_has_no_single_producing_convolution():
    net = torchvision.models.resnet18(num_classes=10)
    assert producing_conv(net, "layer1.0.relu") == "layer1.0.conv1"
    assert producing_conv(net, "layer1.0.relu_1") is None  # after the residual add
    assert filter_l1(net, "layer1.0.relu_1") is None


# ---------------------------------------------------------------------------- masking = removal

def convnet(seed=0):
    from cwnnk.models import build_model

    torch.manual_seed(seed)
    spec = dict(arch="convnet", input_shape=[1, 8, 8], num_classes=5, dropout=0.0,
                layers=[dict(channels=6, kernel=3, padding="same", pool=True),
                        dict(channels=8, kernel=3, padding="same", pool=True)])
    return build_model(spec).eval()


def test_masking_equals_structural_removal_on_the_builtin_convnet():
    pytest.importorskip("torch_pruning")
    model, x = convnet(), torch.rand(7, 1, 8, 8)
    nodes = dict(model.layers)  # conv1 -> features.conv1.relu, ...
    plan = {"conv1": {"n_channels": 6, "remove": [0, 4]}, "conv2": {"n_channels": 8, "remove": [1, 2, 7]}}
    with torch.no_grad(), masked(model, keep_masks(plan), nodes):
        masked_logits = model(x)
    full = model(x).detach()
    assert not torch.allclose(masked_logits, full)  # the mask does something; the hooks are gone after the block
    cwnnk.apply_plan(model, plan, torch.rand(1, 1, 8, 8), nodes)
    assert model.features.conv1.conv.out_channels == 4 and model.features.conv2.conv.in_channels == 4
    assert model.features.conv2.conv.out_channels == 5 and model.classifier.in_features == 5 * 2 * 2
    with torch.no_grad():
        torch.testing.assert_close(model(x), masked_logits, rtol=1e-5, atol=1e-5)


def test_masking_equals_structural_removal_on_a_torchvision_resnet18():
    """A plan on two block-internal ReLUs of resnet18 (node names as the contract), applied with Torch-Pruning's
    DependencyGraph: the physically smaller network computes the masked network's logits. A block output (after
    the residual sum) is refused: Torch-Pruning would remove the whole coupled group, which is not the mask."""
    pytest.importorskip("torch_pruning")
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=10).eval()
    with torch.no_grad():  # non-trivial batch-norm statistics, so that the masked channels matter
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 1.5)
    x = torch.rand(2, 3, 64, 64)
    orders = {"layer1.0.relu": np.random.default_rng(0).permutation(64),
              "layer3.1.relu": np.random.default_rng(1).permutation(256)}
    plan = prune_plan(orders, 0.25)
    assert [len(p["remove"]) for p in plan.values()] == [16, 64]
    with torch.no_grad(), masked(net, keep_masks(plan)):
        masked_logits = net(x)
    cwnnk.apply_plan(net, plan, torch.rand(1, 3, 64, 64))
    assert net.layer1[0].conv1.out_channels == 48 and net.layer3[1].conv2.in_channels == 192
    with torch.no_grad():
        torch.testing.assert_close(net(x), masked_logits, rtol=1e-4, atol=1e-4)
    coupled = torchvision.models.resnet18(num_classes=10).eval()
    with pytest.raises(ValueError, match=r"layer 'layer1.0.relu_1'.*no single convolution"):
        cwnnk.apply_plan(coupled, {"layer1.0.relu_1": {"n_channels": 64, "remove": [0]}}, torch.rand(1, 3, 64, 64))


def test_masking_a_node_that_is_no_module_call_is_refused_by_name():
    model = convnet()
    with pytest.raises(ValueError, match=r"layer 'x' \(FX node 'flatten'\) is not the output of a module call"):
        with masked(model, {"x": np.ones(8, dtype=bool)}, {"x": "flatten"}):
            pass


def test_finetune_is_seeded_and_leaves_masked_channels_silent():
    from cwnnk.datasets import Split
    from cwnnk.params import TrainParams
    from cwnnk.train import finetune

    x, y = torch.rand(40, 1, 8, 8), torch.randint(0, 5, (40,))
    train = Split(x, y, torch.arange(40))
    keep = np.ones(6, dtype=bool)
    keep[[1, 3]] = False
    results = []
    for _ in range(2):
        model = convnet()
        with masked(model, {"conv1": keep}, dict(model.layers)):
            finetune(model, train, TrainParams(batch_size=8, seed=3), epochs=2, lr=0.01)
            seen = []
            handle = model.features.conv1.register_forward_hook(lambda m, i, out: seen.append(out))
            with torch.no_grad():
                model(x)
            handle.remove()
            inner = seen[0]  # the first block's output (ReLU, pool, dropout)
        results.append(model.classifier.weight.detach().clone())
        assert (inner[:, [1, 3]] == 0).all() and (inner[:, [0, 2]] != 0).any()
    torch.testing.assert_close(results[0], results[1], rtol=0, atol=0)
    assert not torch.equal(results[0], convnet().classifier.weight)


# ---------------------------------------------------------------------------- the plan

def test_prune_plan_from_channels_csv_is_json(tmp_path):
    from cwnnk.tables import write_table

    rows = [dict(model="m", layer=layer, channel=c, prune_order=int(o))
            for layer, orders in (("a", [3, 0, 2, 1]), ("b", [1, 0])) for c, o in enumerate(orders)]
    rows.append(dict(model="other", layer="a", channel=0, prune_order=0))
    write_table(tmp_path / "channels.csv", rows)
    orders = prune_orders(tmp_path / "channels.csv", "m")
    plan = prune_plan(orders, 0.5)
    assert plan == {"a": {"n_channels": 4, "remove": [1, 3]}, "b": {"n_channels": 2, "remove": [1]}}
    assert json.loads(json.dumps(plan)) == plan
    assert prune_plan(orders, 0) == {"a": {"n_channels": 4, "remove": []}, "b": {"n_channels": 2, "remove": []}}
    for bad in (1.0, -0.1, "half", True):
        with pytest.raises(ValueError, match="prune_plan.. argument 'fraction'"):
            prune_plan(orders, bad)
    with pytest.raises(ValueError, match="order of layer 'a' must be a permutation"):
        prune_plan({"a": [0, 0, 1]}, 0.5)
    with pytest.raises(ValueError, match="no rows of model 'nope'"):
        prune_orders(tmp_path / "channels.csv", "nope")


def test_prune_plan_cli_writes_json(tmp_path):
    import subprocess
    import sys

    from cwnnk.tables import write_table

    write_table(tmp_path / "channels.csv", [dict(model="m", layer="a", channel=c, prune_order=o)
                                            for c, o in enumerate([1, 0, 3, 2])])
    out = tmp_path / "plan.json"
    subprocess.run([sys.executable, "-m", "cwnnk", "prune-plan", str(tmp_path / "channels.csv"), "m",
                    "--fraction", "0.5", "--out", str(out)], check=True, capture_output=True)
    assert json.loads(out.read_text()) == {"a": {"n_channels": 4, "remove": [0, 1]}}


# ---------------------------------------------------------------------------- config

@pytest.mark.parametrize(
    "bad, fragments",
    [
        ({"fractions": [0.1, 0.5]}, ["pruning.fractions", "starts at 0"]),
        ({"fractions": [0, 1.0]}, ["pruning.fractions", "< 1"]),
        ({"fractions": [0, 0.5, 0.25]}, ["pruning.fractions", "increasing"]),
        ({"fractions": [0]}, ["pruning.fractions", "at least one fraction above"]),
        ({"fractions": "0.5"}, ["pruning.fractions", "array"]),
        ({"random_draws": 0}, ["pruning.random_draws", ">= 1"]),
        ({"finetune_epochs": -1}, ["pruning.finetune_epochs", ">= 0"]),
        ({"finetune_lr_factor": 0}, ["pruning.finetune_lr_factor", "> 0"]),
        ({"finetune_each_layer": "yes"}, ["pruning.finetune_each_layer", "boolean"]),
        ({"enabled": "no"}, ["pruning.enabled", "boolean"]),
        ({"seed": -1}, ["pruning.seed", ">= 0"]),
        ({"fraction": [0, 0.5]}, ["pruning", "'fraction'"]),
        ({"models": []}, ["pruning.models", "non-empty"]),
        ({"models": "*"}, ["pruning.models", "array"]),
    ],
)
def test_bad_pruning_keys_are_refused_by_name(bad, fragments):
    with pytest.raises((ConfigError, ValueError)) as err:
        validate({"pruning": bad})
        PruneParams(**bad)
    for fragment in fragments:
        assert fragment in str(err.value), str(err.value)


def test_prune_params_refuse_bad_values_by_config_key():
    for bad, key in (({"fractions": (0, 0.5, 0.5)}, "pruning.fractions"),
                     ({"random_draws": 1.5}, "pruning.random_draws"),
                     ({"finetune_lr_factor": -1}, "pruning.finetune_lr_factor")):
        with pytest.raises(ValueError, match=key):
            PruneParams(**bad)
    assert PruneParams(finetune_lr_factor=0.2).finetune_lr == pytest.approx(0.2 * 0.05)
    assert set(CRITERIA) == {"cwnnk", "l1", "apoz", "random"}


# ---------------------------------------------------------------------------- claim C5 and F8

def pruning_table(advantage, n_models=3, fractions=(0.25, 0.5, 0.75), seed=0):
    """A pruning.csv as the stage writes it: scope `all` and one layer; CW-NNK's accuracy `advantage` above every
    baseline's (random: three draws around its mean)."""
    rng = np.random.default_rng(seed)
    rows = []
    for m in range(n_models):
        for layer in ("conv1", "all"):
            for f in (0.0, *fractions):
                base = 0.95 - 0.5 * f + 0.01 * rng.standard_normal()
                for criterion, draws in (("cwnnk", 1), ("l1", 1), ("apoz", 1), ("random", 3)):
                    for draw in range(draws):
                        acc = base + (advantage * f if criterion == "cwnnk" else 0.002 * (draw - 1) * (f > 0))
                        rows.append(dict(model=f"m{m}", layer=layer, criterion=criterion, fraction=f, draw=draw,
                                         n_removed=int(16 * f), n_channels=16, test_acc=acc,
                                         test_acc_finetuned=acc + 0.01 if layer == "all" else None))
    return rows


def _table(rows, tmp_path, name="pruning.csv"):
    from cwnnk.tables import read_table, write_table

    write_table(tmp_path / name, rows)
    return read_table(tmp_path / name)


@pytest.mark.parametrize("advantage, verdict", [(0.2, "supported"), (-0.2, "not supported")])
def test_c5_pairs_models_and_fractions_against_every_baseline(tmp_path, advantage, verdict):
    from cwnnk.claims import c5_pruning

    row = c5_pruning(_table(pruning_table(advantage), tmp_path))
    assert row["verdict"] == verdict and row["n"] == 9 and row["n_models"] == 3, row
    assert row["value"] == pytest.approx(100 * advantage * 0.5, abs=1.0)  # mean fraction 0.5
    assert row["factor"] in ("random", "l1", "apoz") and "after fine-tuning" in row["evidence"]


def test_c5_is_undefined_without_rows_or_enough_pairs(tmp_path):
    from cwnnk.claims import c5_pruning

    assert "no final model with a test split" in c5_pruning({})["evidence"]
    few = c5_pruning(_table(pruning_table(0.2, n_models=1, fractions=(0.5, 0.75)), tmp_path))
    assert few["verdict"] == "undefined" and "fewer than 5 pairs differ" in few["evidence"], few
    # too few pairs against one baseline, but a clear loss against another: the claim (all three) fails
    rows = pruning_table(-0.2)
    for r in rows:
        if r["criterion"] == "l1" and r["model"] != "m0":
            r["test_acc"] = next(x["test_acc"] for x in rows if x["criterion"] == "cwnnk" and x["model"] == r["model"]
                                 and x["layer"] == r["layer"] and x["fraction"] == r["fraction"])
    mixed = c5_pruning(_table(rows, tmp_path))
    assert mixed["verdict"] == "not supported", mixed
    rows = [r for r in pruning_table(0.2) if r["criterion"] != "l1"]
    assert "no pairs against l1" in c5_pruning(_table(rows, tmp_path))["evidence"]


def test_f8_draws_each_criterion_and_a_placeholder_without_rows(tmp_path):
    from cwnnk.figures import f8_data, f8_pruning

    table = _table(pruning_table(0.2), tmp_path)
    data = f8_data(table, "test_acc", every_layer=False)
    assert list(data) == ["cwnnk", "l1", "apoz", "random"]
    fractions, mean, lo, hi = data["random"]
    assert fractions.tolist() == [0, 0.25, 0.5, 0.75] and (lo <= mean).all() and (mean <= hi).all() and (hi > lo).any()
    assert (data["cwnnk"][1][1:] > data["l1"][1][1:]).all()
    assert f8_data(table, "test_acc_finetuned", every_layer=True) == {}  # one-layer rows are not fine-tuned here
    paths = f8_pruning(table, tmp_path / "F8")
    assert all(p.stat().st_size > 10_000 for p in paths)
    empty = f8_pruning({}, tmp_path / "F8-empty")
    assert all(p.exists() for p in empty)


def test_pruning_models_select_final_models_and_a_pattern_that_matches_none_is_refused():
    import yaml

    from cwnnk.config import Experiment

    from conftest import REPO

    config = validate(yaml.safe_load((REPO / "config.yaml").read_text()))
    pruned = Experiment.from_config(config).pruned
    assert len(pruned) == 8 and all(m.endswith("-s1") for m in pruned)  # config.yaml: the seed-1 runs
    everything = Experiment.from_config(dict(config, pruning=dict(config["pruning"], models=["*"]))).pruned
    assert len(everything) == 16 and not any(m.endswith(("-e0", "-e5")) for m in everything)
    with pytest.raises(ConfigError, match=r"pruning.models.*\['\*-s3'\] match no final model.*convnet-d0-wd0-s1"):
        Experiment.from_config(dict(config, pruning=dict(config["pruning"], models=["*-s1", "*-s3"])))
    assert Experiment.from_config(dict(config, pruning=dict(config["pruning"], enabled=False))).pruned == []


def test_the_documented_resnet18_example_runs():
    """docs/overlap.md's torchvision example: images -> CW-NNK order -> plan -> masked and Torch-Pruning-pruned
    resnet18 with the same logits (its own assert)."""
    import re

    from conftest import REPO

    pytest.importorskip("torch_pruning")
    blocks = re.findall(r"```python\n(.*?)```", (REPO / "docs" / "overlap.md").read_text(), re.S)
    (block,) = [b for b in blocks if "torchvision.models.resnet18" in b and "apply_plan" in b]
    scope = {}
    exec(compile(block, "docs/overlap.md", "exec"), scope)
    assert scope["net"].layer1[0].conv1.out_channels == 48 and scope["net"].layer2[0].conv1.out_channels == 96
