"""Does redundancy matter? Channels removed by a criterion, and the accuracy the network keeps.

A layer's channels are removed in an order given by a criterion (CRITERIA):
- cwnnk: the greedy CW-NNK order (cwnnk.redundancy.keep_order, channels.csv `prune_order`): the
  channel whose NNK neighbourhoods another kept channel already carries goes first;
- l1: the smallest L1 norm of the filter of the convolution that produces the layer (Li et al., 2017);
- apoz: the largest share of zero activations on the analysed images, then the smallest mean
  activation (Hu et al., 2016);
- random: a seeded permutation, one per draw.

Removing a channel means masking the layer's output channel (multiplying it by 0), which for the
layers that read it is the same as removing it from the network: `masked` does it with forward
hooks on the module calls that produce the layers. `prune_plan` turns orders into the channel
indices to remove at a fraction, and `apply_plan` removes them physically with Torch-Pruning
(optional extra `prune`). `run_pruning` is the `pruning` job (docs/overlap.md, "Pruning").
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import numpy as np

from cwnnk.atomic import read_json

if TYPE_CHECKING:  # torch is imported where a call needs it
    import torch

CRITERIA = ("cwnnk", "l1", "apoz", "random")
ALL = "all"  # the scope that removes channels of every analysed layer at once
PRUNING_COLUMNS = ("model", "layer", "criterion", "fraction", "draw", "n_removed", "n_channels", "test_acc",
                   "test_acc_finetuned")


def n_removed(n_channels, fraction):
    """How many of n_channels a fraction removes: round(fraction * C), never all of them."""
    return min(int(round(fraction * n_channels)), n_channels - 1)


def removal_order(criterion, n_channels, *, prune_order=None, l1=None, apoz=None, mean=None, seed=0):
    """The channel indices of one layer in the order `criterion` removes them (first removed first).

    cwnnk needs prune_order (C,) (the position of each channel in the greedy order); l1 the (C,) filter
    norms; apoz the (C,) share of zero activations and mean the (C,) mean activations; random a seed.
    Ties go to the lower channel index, so every order is reproducible.
    """
    index = np.arange(n_channels)

    def given(name, values):
        if values is None:
            raise ValueError(f"criterion {criterion!r} needs {name}")
        values = np.asarray(values, dtype=np.float64)
        if values.shape != (n_channels,):
            raise ValueError(f"{name} must have shape ({n_channels},), got {values.shape}")
        return values

    if criterion == "cwnnk":
        return np.argsort(given("prune_order", prune_order), kind="stable")
    if criterion == "l1":
        return np.lexsort((index, given("l1", l1)))
    if criterion == "apoz":
        return np.lexsort((index, given("mean", mean), -given("apoz", apoz)))
    if criterion == "random":
        return np.random.default_rng(seed).permutation(n_channels)
    raise ValueError(f"criterion must be one of {list(CRITERIA)}, got {criterion!r}")


# ---------------------------------------------------------------------------- the plan

def prune_orders(channels_csv: str | os.PathLike, model: str) -> dict[str, np.ndarray]:
    """{layer: (C,) greedy CW-NNK order} of one model from a run's channels.csv (its `prune_order`)."""
    from cwnnk.tables import read_table, text_column

    table = read_table(channels_csv, where={"model": model})
    if not table or not len(table["model"]):
        raise ValueError(f"{channels_csv}: no rows of model {model!r}")
    if "prune_order" not in table:
        raise ValueError(f"{channels_csv}: no prune_order column (written by an older cwnnk); rerun the overlap "
                         "and tables stages: snakemake --forcerun overlap")
    layers = text_column(table["layer"])
    orders = {}
    for layer in dict.fromkeys(layers):
        at = layers == layer
        channel = table["channel"][at].astype(np.int64)
        order = np.empty(channel.size, dtype=np.int64)
        order[channel] = table["prune_order"][at].astype(np.int64)
        orders[layer] = order
    return orders


def prune_plan(orders: Mapping[str, np.ndarray | Sequence[int] | dict[str, Any]],
               fraction: float) -> dict[str, dict[str, Any]]:
    """The channels to remove at `fraction` of each layer: {layer: {"n_channels": C, "remove": [indices]}}.

    orders: {layer: (C,) position of each channel in the CW-NNK removal order}, as `prune_orders`
    reads them from channels.csv, or {layer: overlap_summary(...)} (its `prune_order`). Removes
    round(fraction * C) channels per layer, the first ones of the order; indices ascending. The
    result is plain JSON (json.dumps).
    """
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 <= fraction < 1:
        raise ValueError(f"prune_plan() argument 'fraction': {fraction!r} is not allowed; expected a number in [0, 1)")
    plan = {}
    for layer, order in orders.items():
        order = np.asarray(order["prune_order"] if isinstance(order, dict) else order)
        C = order.size
        if C < 2 or sorted(order.tolist()) != list(range(C)):
            raise ValueError(f"the order of layer {layer!r} must be a permutation of 0 .. C - 1 with C >= 2, got "
                             f"{order.tolist()[:10]}{' ...' if C > 10 else ''}")
        remove = np.argsort(order, kind="stable")[:n_removed(C, fraction)]
        plan[layer] = {"n_channels": int(C), "remove": sorted(int(c) for c in remove)}
    return plan


def write_plan(plan, path):
    """Write a plan as JSON, atomically (no checksum key: every key of a plan is a layer)."""
    from cwnnk.atomic import write_json

    write_json(path, plan, checksum=False)


def keep_masks(plan):
    """{layer: (C,) bool, False for a removed channel} of a plan."""
    masks = {}
    for layer, entry in plan.items():
        keep = np.ones(entry["n_channels"], dtype=bool)
        keep[entry["remove"]] = False
        masks[layer] = keep
    return masks


# ---------------------------------------------------------------------------- masking (torch)

def _node_calls(model, nodes):
    """{(module path, call index): layer} of the FX node of each layer (its module's nth call)."""
    from cwnnk.extract import _module_call

    calls = {}
    for layer, node in nodes.items():
        try:
            calls[_module_call(model, node)] = layer
        except ValueError:
            raise ValueError(f"layer {layer!r} (FX node {node!r}) is not the output of a module call of "
                             f"{type(model).__name__}; pruning masks module outputs (an activation module such as "
                             "nn.ReLU)") from None
    return calls


@contextmanager
def masked(model: torch.nn.Module, masks: Mapping[str, np.ndarray | Sequence[bool] | dict[str, Any]],
           nodes: Mapping[str, str] | None = None) -> Iterator[torch.nn.Module]:
    """Inside the block, model's layers output 0 on the removed channels (axis 1).

    masks: a plan (prune_plan), or {layer: (C,) bool, False = removed}; nodes: {layer: FX node name}
    (default: the layer names are the node names). Forward hooks on the producing module calls
    multiply their output by the mask in forward passes of the whole model, in eval and train mode alike (a
    fine-tune trains the rest).
    """
    import torch

    masks = {layer: keep_masks({layer: m})[layer] if isinstance(m, dict) else m for layer, m in masks.items()}
    nodes = {layer: (nodes or {}).get(layer, layer) for layer in masks}
    calls = _node_calls(model, nodes)
    factors = {layer: torch.as_tensor(np.asarray(keep, dtype=np.float32)) for layer, keep in masks.items()}
    counts, handles = {}, []

    def reset(_module, _inputs):
        counts.clear()

    def make_hook(path):
        def hook(_module, _inputs, output):
            call = counts.get(path, 0)
            counts[path] = call + 1
            layer = calls.get((path, call))
            if layer is None:
                return None
            factor = factors[layer]
            if output.dim() < 2 or output.shape[1] != factor.numel():
                raise ValueError(f"layer {layer!r} outputs shape {tuple(output.shape)}; the mask has "
                                 f"{factor.numel()} channels on axis 1")
            shape = (1, -1) + (1,) * (output.dim() - 2)
            return output * factor.to(output.device, output.dtype).view(shape)

        return hook

    handles.append(model.register_forward_pre_hook(reset))
    for path in {p for p, _ in calls}:
        handles.append(model.get_submodule(path).register_forward_hook(make_hook(path)))
    try:
        yield model
    finally:
        for handle in handles:
            handle.remove()


# ---------------------------------------------------------------------------- criteria (torch)

_CHANNELWISE = ("BatchNorm", "ReLU", "ReLU6", "LeakyReLU", "PReLU", "ELU", "SELU", "CELU", "GELU", "SiLU", "Mish",
                "Hardswish", "Hardtanh", "Sigmoid", "Tanh", "Dropout", "Dropout2d", "MaxPool", "AvgPool", "Identity")
_CHANNELWISE_FUNCTIONS = ("relu", "relu_", "relu6", "gelu", "silu", "dropout", "max_pool2d", "avg_pool2d",
                          "hardswish", "leaky_relu")


def _fx_nodes(model):
    """{name: torch.fx Node} of the module calls of model's traced graph, named as torchvision's
    get_graph_node_names names them (the module's path, `_1`, `_2` for its later calls); {} when FX cannot
    trace the model. torch.fx alone: importing torchvision costs a job seconds."""
    import torch.fx

    try:
        graph = torch.fx.Tracer().trace(model)
    except Exception:  # noqa: BLE001 - any tracing failure: no producer known
        return {}
    names, calls = {}, {}
    for node in graph.nodes:
        if node.op == "call_module":
            k = calls.get(node.target, 0)
            calls[node.target] = k + 1
            names[node.target if k == 0 else f"{node.target}_{k}"] = node
    return names


def producing_conv(model, node, fx_nodes=None):
    """The module path of the convolution whose output channels are `node`'s, through channel-wise
    modules only (batch norm, activations, dropout, pooling); None when no single one is (a sum of
    branches, a model FX cannot trace). fx_nodes: _fx_nodes(model), to trace a model once for many nodes."""
    import torch.nn as nn

    at = (_fx_nodes(model) if fx_nodes is None else fx_nodes).get(node)
    while at is not None:
        if at.op == "call_module":
            module = model.get_submodule(at.target)
            if isinstance(module, nn.modules.conv._ConvNd) and not isinstance(module, nn.modules.conv._ConvTransposeNd):
                return at.target
            if not type(module).__name__.startswith(_CHANNELWISE):
                return None
        elif at.op not in ("call_function", "call_method") or \
                getattr(at.target, "__name__", at.target) not in _CHANNELWISE_FUNCTIONS:
            return None
        args = [a for a in at.args if hasattr(a, "op")]
        at = args[0] if len(args) == 1 else None
    return None


def filter_l1(model, node, fx_nodes=None):
    """(C,) L1 norm of each output filter of the convolution producing `node`, or None (producing_conv)."""
    path = producing_conv(model, node, fx_nodes)
    if path is None:
        return None
    weight = model.get_submodule(path).weight.detach()
    return weight.abs().flatten(1).sum(1).double().cpu().numpy()


def activation_statistics(store, layer):
    """(apoz, mean): per channel, the share of zero activations and the mean activation over the stored
    images of a layer (a cwnnk.activations store, read one channel at a time)."""
    C = store.num_channels(layer)
    apoz, mean = np.empty(C), np.empty(C)
    for c in range(C):
        values = store.channel(layer, c)
        apoz[c] = float(np.mean(values == 0))
        mean[c] = float(np.mean(values, dtype=np.float64))
    return apoz, mean


# ---------------------------------------------------------------------------- the experiment

def _orders(criterion, layers, inputs, draw, seed):
    """{layer: removal order} of one criterion, or None where it is undefined for some layer (l1). A random
    draw permutes a layer by (seed, draw, depth): the same alone and with the other layers."""
    orders = {}
    for layer in layers:
        info = inputs[layer]
        if criterion == "l1" and info["l1"] is None:
            return None
        orders[layer] = removal_order(criterion, info["n_channels"], prune_order=info["prune_order"], l1=info["l1"],
                                      apoz=info["apoz"], mean=info["mean"], seed=[seed, draw, info["depth"]])
    return orders


def pruning_rows(model, nodes, inputs, dataset, params, log=print):
    """The rows of one model's pruning experiment (PRUNING_COLUMNS, without `model`).

    nodes: {layer: FX node} of the analysed layers, depth order; inputs: {layer: {n_channels,
    prune_order, l1 (None: undefined), apoz, mean, depth}}; dataset: the model's Dataset (train split to
    fine-tune on, test split to evaluate); params: cwnnk.params.PruneParams. Every fine-tune starts
    from the same weights with the same seed.
    """
    from cwnnk.device import resolve_device
    from cwnnk.train import evaluate, finetune

    device = resolve_device(params.train.device)
    model.to(device)
    start = {name: value.detach().clone() for name, value in model.state_dict().items()}
    layers = list(nodes)
    scopes = [*([[layer] for layer in layers] if len(layers) > 1 else []), layers]

    def measure(masks, tune):
        model.load_state_dict(start)
        with masked(model, masks, nodes):
            acc = evaluate(model, dataset.test, device)[1]
            tuned = np.nan
            if tune:
                finetune(model, dataset.train, params.train, params.finetune_epochs, params.finetune_lr)
                tuned = evaluate(model, dataset.test, device)[1]
        return acc, tuned

    tune_all = params.finetune_epochs > 0
    base = measure({}, tune_all)
    log(f"unpruned: test acc {base[0]:.4f}" + (f", {base[1]:.4f} after the fine-tune" if tune_all else ""))
    rows = []
    for scope in scopes:
        name = ALL if len(scope) > 1 or len(layers) == 1 else scope[0]
        tune = tune_all and (name == ALL or params.finetune_each_layer)
        total = sum(inputs[layer]["n_channels"] for layer in scope)
        for criterion in CRITERIA:
            for draw in range(params.random_draws if criterion == "random" else 1):
                orders = _orders(criterion, scope, inputs, draw, params.seed)
                if orders is None:
                    log(f"{name}: no single convolution produces every layer, so criterion l1 is skipped")
                    break
                for fraction in params.fractions:
                    removed = {layer: order[:n_removed(order.size, fraction)] for layer, order in orders.items()}
                    if fraction == 0:
                        acc, tuned = base[0], base[1] if tune else np.nan
                    else:
                        acc, tuned = measure({layer: {"n_channels": inputs[layer]["n_channels"], "remove": drop}
                                              for layer, drop in removed.items()}, tune)
                    rows.append(dict(layer=name, criterion=criterion, fraction=fraction, draw=draw,
                                     n_removed=sum(d.size for d in removed.values()), n_channels=total,
                                     test_acc=acc, test_acc_finetuned=tuned))
        done = [r for r in rows if r["layer"] == name and r["fraction"] == max(params.fractions)]
        log(f"{name}: at {max(params.fractions):.0%} removed, test acc " + ", ".join(
            f"{r['criterion']}{'' if r['criterion'] != 'random' else r['draw']} {r['test_acc']:.3f}" for r in done))
    return rows


def run_pruning(entry, params, checkpoint, store_path, overlap_jsons, layers, out_csv, log=print):
    """The `pruning` job: one model's pruning experiment, written to out_csv (PRUNING_COLUMNS).

    overlap_jsons: the overlap stage's JSON of each analysed layer (their channels' prune_order),
    in the order of `layers`; store_path: the model's activation store (APoZ and mean activation).
    """
    import time

    from cwnnk.activations import open_activations
    from cwnnk.datasets import load_dataset
    from cwnnk.models import layer_nodes, load_checkpoint
    from cwnnk.tables import write_table

    began = time.perf_counter()
    model, spec = load_checkpoint(checkpoint)
    all_nodes = layer_nodes(spec)
    nodes = {layer: all_nodes[layer] for layer in layers}
    store = open_activations(store_path)
    fx_nodes = _fx_nodes(model)
    inputs = {}
    for layer, path in zip(layers, overlap_jsons):
        info = read_json(path, rerun="the overlap stage (snakemake --forcerun overlap)")
        if info["layer"] != layer:
            raise ValueError(f"{path}: holds layer {info['layer']!r}, expected {layer!r}")
        channels = sorted(info["channels"], key=lambda ch: ch["channel"])
        if "prune_order" not in channels[0]:
            raise ValueError(f"{path}: written by an older cwnnk, without prune_order; rerun it: "
                             "snakemake --forcerun overlap")
        apoz, mean = activation_statistics(store, layer)
        inputs[layer] = dict(depth=len(inputs), n_channels=len(channels),
                             prune_order=np.array([ch["prune_order"] for ch in channels]),
                             l1=filter_l1(model, nodes[layer], fx_nodes), apoz=apoz, mean=mean)
    dataset = load_dataset(params.train.dataset)
    if dataset.test is None:
        raise ValueError(f"model {entry['name']!r}: the dataset has no test split to measure pruning on")
    log(f"pruning {entry['name']}: layers {layers}, fractions {list(params.fractions)}, "
        f"{params.random_draws} random draws, fine-tune {params.finetune_epochs} epoch(s) at lr {params.finetune_lr:g}")
    rows = [dict(model=entry["name"], **row) for row in pruning_rows(model, nodes, inputs, dataset, params, log)]
    write_table(out_csv, rows, PRUNING_COLUMNS)
    log(f"{len(rows)} rows in {time.perf_counter() - began:.1f}s")
    return rows


def collect_pruning(paths, out_csv):
    """The `pruning_table` job: every model's pruning rows in one table (the header alone without a model),
    the files' lines copied as they are. Returns the number of rows."""
    from cwnnk.tables import atomic_table, verify_table

    header = ",".join(PRUNING_COLUMNS)
    lines = []
    for path in paths:
        verify_table(path)
        with open(path, encoding="utf-8") as f:
            first, *rows = f.read().splitlines()
        if first != header:
            raise ValueError(f"{path}: header {first!r}, expected {header!r}; rerun its pruning job")
        lines += rows
    with atomic_table(out_csv) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write("\n".join([header, *lines]) + "\n")
    return len(lines)


# ---------------------------------------------------------------------------- Torch-Pruning

def apply_plan(model: torch.nn.Module, plan: Mapping[str, Mapping[str, Any]],
               example_inputs: torch.Tensor | Sequence[torch.Tensor] | Mapping[str, torch.Tensor],
               nodes: Mapping[str, str] | None = None) -> torch.nn.Module:
    """Remove a plan's channels from `model` physically (in place) with Torch-Pruning's DependencyGraph.

    For each layer, the convolution producing it (producing_conv) loses the plan's output channels,
    and Torch-Pruning removes what depends on them (its batch norm, the next layer's input channels).
    A layer whose channels are coupled to other convolutions' (a residual sum) is refused: there,
    masking the layer is not what removing its channels does. Needs `pip install torch-pruning`
    (the extra `cwnnk[prune]`). Returns the model.
    """
    try:
        import torch_pruning as tp
    except ImportError:
        raise ImportError("apply_plan needs Torch-Pruning: pip install torch-pruning (or cwnnk[prune])") from None
    nodes = {layer: (nodes or {}).get(layer, layer) for layer in plan}
    fx_nodes = _fx_nodes(model)
    convs = {}
    for layer, node in nodes.items():
        path = producing_conv(model, node, fx_nodes)
        if path is None:
            raise ValueError(f"layer {layer!r} (FX node {node!r}): no single convolution produces it, through "
                             "channel-wise modules only; Torch-Pruning cannot remove its channels alone")
        convs[layer] = model.get_submodule(path)
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=example_inputs)
    for layer, entry in plan.items():
        conv = convs[layer]
        if conv.out_channels != entry["n_channels"]:
            raise ValueError(f"layer {layer!r}: the plan has {entry['n_channels']} channels, its convolution "
                             f"{conv.out_channels}")
        if not entry["remove"]:
            continue
        group = graph.get_pruning_group(conv, tp.prune_conv_out_channels, idxs=list(entry["remove"]))
        coupled = [item.dep.target.module for item in group.items
                   if item.dep.handler == tp.prune_conv_out_channels and item.dep.target.module is not conv]
        if coupled:
            raise ValueError(f"layer {layer!r}: its channels are coupled to {len(coupled)} other convolution(s) (a "
                             "residual sum); removing them is not what masking this layer does")
        group.prune()
    return model
