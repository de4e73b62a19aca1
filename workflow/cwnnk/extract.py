"""The extract stage: a checkpoint's post-ReLU activations on the training images, streamed
into a Zarr activation store (format: cwnnk.activations; rationale: docs/activations.md).

Layers are resolved by stable name (cwnnk.models: `model.layers` maps it to a torchvision
FX node name) and read with torchvision's feature extraction; models that FX cannot trace
fall back to forward hooks. Batches go to disk as they are computed, so peak memory is set
by the batch size, never by the number of samples.
"""

import contextlib
import math
import os
import re
import time
from collections import OrderedDict

import numpy as np
import torch

from cwnnk.logs import Progress
from cwnnk.models import layer_names, layer_nodes
from cwnnk.params import nearest

METHODS = ("auto", "fx", "hooks")
# Test hook: after this many batches the job stops making progress (sleeps) so that a test
# can kill it mid-write, deterministically. Never set in normal runs.
PAUSE_ENV = "CWNNK_EXTRACT_PAUSE_AFTER_BATCHES"


class UnknownLayerError(ValueError):
    """A requested layer name that the architecture does not have."""


class NonFiniteActivation(FloatingPointError):
    """NaN or Inf in an activation; the message names layer, channel and sample."""


def resolve_layers(spec, requested="all", model=None):
    """Stable names of the layers to extract, in depth order.

    requested: 'all' (every analysable layer of spec's architecture), or names and glob patterns
    ("layer*.*.relu", "features.*"; fnmatch syntax) matched against the layers that may be
    requested (cwnnk.models.layer_nodes: for torchvision and factory models every FX node with a
    (N, C, H, W) output). Raises UnknownLayerError naming a name or pattern that matches nothing,
    a node whose output is not (N, C, H, W) (e.g. channel-last (N, H, W, C)), or 'all' selecting
    nothing, with the nearest valid names.
    """
    from cwnnk.models import channel_last, graph_nodes

    whose = f"model {model!r} ({spec['arch']})" if model else f"architecture {spec['arch']}"
    if requested == "all" or (not isinstance(requested, str) and list(requested) == ["all"]):  # ["all"] too
        names = layer_names(spec)
        if not names:  # e.g. ConvNeXt, whose activations are all channel-last: never analyse nothing silently
            skipped = [name for name, info in graph_nodes(spec).items() if info["activation"] and channel_last(info)]
            why = (f"its {len(skipped)} activation nodes (e.g. {skipped[0]}) are channel-last (N, H, W, C)"
                   if skipped else "it has no activation node with a (N, C, H, W) output")
            near = nearest(skipped[0] if skipped else "", list(layer_nodes(spec)))
            raise UnknownLayerError(f"config key 'extract.layers': 'all' selects no layer of {whose}: {why}; name "
                                    f"(N, C, H, W) nodes instead, e.g. {', '.join(near)} (`python -m cwnnk layers` "
                                    "lists them)")
        return names
    nodes = graph_nodes(spec) if spec["arch"] in ("torchvision", "factory") else {}
    return match_layers(list(layer_nodes(spec)), requested, nodes, whose)


def match_layers(valid, requested, nodes=None, whose="the model"):
    """The names of `valid` (depth order) that the names / glob patterns `requested` select.

    nodes: optional {node name: {"shape": ...}} of every node, to say why a non-spatial node is refused.
    Raises UnknownLayerError naming each name or pattern that selects nothing, with the nearest valid names.
    """
    import fnmatch

    from cwnnk.models import describe_output

    nodes = nodes or {}
    if isinstance(requested, str):
        requested = [requested]
    chosen, problems, unknown = set(), [], []
    for item in requested:
        matches = fnmatch.filter(valid, item) if any(ch in item for ch in "*?[") else [n for n in valid if n == item]
        if matches:
            chosen.update(matches)
            continue
        unknown.append(item)
        if item in nodes:
            problems.append(f"node {item!r} {describe_output(nodes[item])}; nearest valid: "
                            f"{', '.join(nearest(item, valid))}")
        else:
            kind = "pattern" if any(ch in item for ch in "*?[") else "layer"
            problems.append(f"{kind} {item!r} matches no layer; nearest valid: {', '.join(nearest(item, valid))}")
    if problems:
        listing = ", ".join(valid) if len(valid) <= 40 else ", ".join(valid[:40]) + f", ... ({len(valid)} in all)"
        raise UnknownLayerError(f"config key 'extract.layers': unknown layer(s) {unknown} for {whose}: "
                                + "; ".join(problems)
                                + f"; valid layers: {listing} (or 'all'; `python -m cwnnk layers` lists them)")
    return [name for name in valid if name in chosen]


class _Done(Exception):
    """Raised by the last hook to skip the rest of the forward pass."""


def _module_call(model, node):
    """(module path, call index) of an FX call_module node name: 'a.relu_1' is the 2nd call of 'a.relu'."""
    try:
        model.get_submodule(node)
        return node, 0
    except AttributeError:
        match = re.fullmatch(r"(.+)_(\d+)", node)
        if match:
            try:
                model.get_submodule(match[1])
                return match[1], int(match[2])
            except AttributeError:
                pass
    raise ValueError(f"FX node {node!r} is not a module (or a repeated call of one) of {type(model).__name__}")


class LayerExtractor:
    """Callable: a batch of images -> OrderedDict {stable layer name: (B, C, H, W) tensor}.

    nodes: {stable name: FX node name} in depth order. method: 'fx' (torchvision's
    create_feature_extractor), 'hooks' (forward hooks on the modules whose outputs the nodes are,
    for models FX cannot trace), or 'auto': hooks where every node is a module's output (no
    tracing, and no torchvision import: seconds per job), else fx. Both give the same values. The
    model must be in eval mode.
    """

    def __init__(self, model, nodes, method="auto"):
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        self.model, self.nodes = model, OrderedDict(nodes)
        self.method = method
        if method == "auto":  # hooks where every node is a module's output, else trace
            try:
                for node in self.nodes.values():
                    _module_call(model, node)
                self.method = "hooks"
            except ValueError:
                self.method = "fx"
        if self.method == "fx":
            from torchvision.models.feature_extraction import create_feature_extractor

            training = model.training
            try:
                self._fx = create_feature_extractor(
                    model, return_nodes={node: name for name, node in self.nodes.items()}).eval()
            finally:
                # Tracing switches the model to train mode and back; a failed trace does not switch back.
                model.train(training)
        if self.method == "hooks":
            self._calls = {}  # (module path, call index) -> [stable names]
            for name, node in self.nodes.items():
                self._calls.setdefault(_module_call(model, node), []).append(name)

    def __call__(self, x):
        if self.method == "fx":
            out = self._fx(x)
            return OrderedDict((name, out[name]) for name in self.nodes)
        return self._hooks(x)

    def _hooks(self, x):
        captured, counts, handles = {}, {}, []

        def make_hook(path):
            def hook(_module, _inputs, output):
                call = counts.get(path, 0)
                counts[path] = call + 1
                for name in self._calls.get((path, call), ()):
                    # Copy: an in-place op later in the forward pass may overwrite this storage.
                    captured[name] = output.detach().clone()
                if len(captured) == len(self.nodes):
                    raise _Done

            return hook

        for path in {p for p, _ in self._calls}:
            handles.append(self.model.get_submodule(path).register_forward_hook(make_hook(path)))
        try:
            self.model(x)
        except _Done:
            pass
        finally:
            for handle in handles:
                handle.remove()
        missing = [name for name in self.nodes if name not in captured]
        if missing:
            raise RuntimeError(f"forward hooks never saw layer(s) {missing} "
                               f"({[self.nodes[m] for m in missing]}) in one forward pass")
        return OrderedDict((name, captured[name]) for name in self.nodes)


def check_finite(values, layer, split, start, indices):
    """Raise NonFiniteActivation naming layer, channel and sample if values (B, C, H, W) has NaN/Inf."""
    bad = ~torch.isfinite(values)
    if not bool(bad.any()):
        return
    i, c, y, x = (int(v) for v in bad.nonzero()[0])
    value = float(values[i, c, y, x])
    raise NonFiniteActivation(
        f"non-finite activation ({value}) in layer {layer!r}, channel {c}, sample {start + i} of the stored "
        f"{split} samples (source index {int(indices[start + i])}), at y={y}, x={x}; {int(bad.sum())} non-finite "
        "values in this layer's batch. Are the checkpoint's weights finite?"
    )


def select_samples(split, n_samples, seed):
    """Positions (sorted) of the stored samples of a Split: all, or a stratified subsample."""
    from cwnnk.datasets import stratified_subset

    return stratified_subset(split.labels.numpy(), n_samples, seed)




@contextlib.contextmanager
def full_float32():
    """Full-precision float32 convolutions and matmuls on CUDA (no TF32), deterministic cuDNN.

    TF32, PyTorch's default for cuDNN convolutions, moves activations by about 1e-3 relative,
    enough to reorder near-tied neighbours in the graph stage.
    """
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    saved = cudnn.allow_tf32, matmul.allow_tf32, cudnn.deterministic, cudnn.benchmark
    cudnn.allow_tf32 = matmul.allow_tf32 = False
    cudnn.deterministic, cudnn.benchmark = True, False
    try:
        yield
    finally:
        cudnn.allow_tf32, matmul.allow_tf32, cudnn.deterministic, cudnn.benchmark = saved


def _pause_for_tests(done, log):
    after = os.environ.get(PAUSE_ENV)
    if after and done >= int(after):
        log(f"{PAUSE_ENV}={after}: pausing after {done} batches (test hook)")
        while True:
            time.sleep(60)


def extract_to_store(model, nodes, dataset, path, *, splits=("train",), n_samples=None, seed=0,
                     batch_size=256, compressor="zstd", device="cpu", method="auto", attrs=None, log=print):
    """Stream the activations of `nodes` for the selected samples of `dataset` into a new store.

    model: in eval mode on `device`. nodes: {stable name: FX node name}, depth order.
    path must not exist (the caller writes to a temporary sibling and renames it).
    Returns the store's root attributes.
    """
    with full_float32():
        return _extract_to_store(model, nodes, dataset, path, splits, n_samples, seed, batch_size, compressor, device,
                                 method, attrs, log)


def _extract_to_store(model, nodes, dataset, path, splits, n_samples, seed, batch_size, compressor, device, method,
                      attrs, log):
    from cwnnk.activations import StoreWriter
    from cwnnk.provenance import now, sha256_array, versions

    extractor = LayerExtractor(model, nodes, method)
    selected = {s: select_samples(dataset.split(s), n_samples, seed) for s in splits}
    with torch.inference_mode():
        probe = extractor(dataset.train.images[:1].to(device))
    shapes = OrderedDict((name, tuple(int(d) for d in v.shape[1:])) for name, v in probe.items())
    attrs = dict(attrs or {})
    attrs.update(
        fx_nodes=dict(nodes),
        extraction=dict(method=extractor.method, batch_size=batch_size, compressor=compressor, device=str(device),
                        mode="eval, torch.inference_mode, float32 without TF32"),
        versions=versions(), created=now(),
    )
    writer = StoreWriter(path, attrs, compressor)
    for s, positions in selected.items():
        split = dataset.split(s)
        indices = split.indices[positions].astype(np.int64)
        info = dict(source_size=len(split), n_samples=n_samples, seed=seed, indices_sha256=sha256_array(indices))
        writer.add_split(s, split.labels.numpy()[positions], indices, shapes, batch_size, info)
    log(f"extracting {len(nodes)} layers ({', '.join(f'{k} {v}' for k, v in shapes.items())}) with {extractor.method} "
        f"for {', '.join(f'{len(p)} {s}' for s, p in selected.items())} samples, batch {batch_size}, device {device}")
    progress = Progress(sum(math.ceil(len(p) / batch_size) for p in selected.values()), "batch", log)
    for s, positions in selected.items():
        split = dataset.split(s)
        stored_indices = split.indices[positions]
        for start in range(0, len(positions), batch_size):
            batch = torch.as_tensor(positions[start : start + batch_size])
            with torch.inference_mode():
                out = extractor(split.images[batch].to(device))
                for layer, values in out.items():
                    check_finite(values, layer, s, start, stored_indices)
                    writer.write(s, layer, start, values.float().cpu().numpy())
            del out
            progress.step(detail=f"{s}: {start + len(batch)}/{len(positions)} samples")
            _pause_for_tests(progress.done, log)
    writer.finish()
    return writer.group.attrs.asdict()


def run_extract(entry, checkpoint, store, params, log=print):
    """The `extract` stage: checkpoint -> complete activation store at `store`, atomically.

    store: the store's folder, or its zarr.json (the rule's output). entry: the model's config
    entry (cwnnk.config.expand_models); params: ExtractParams. A failure or a kill leaves no
    store at `store`.
    """
    from cwnnk.activations import store_root
    from cwnnk.atomic import atomic_path
    from cwnnk.datasets import load_dataset
    from cwnnk.device import resolve_device
    from cwnnk.models import load_checkpoint
    from cwnnk.provenance import sha256_file

    start = time.perf_counter()
    store = store_root(store)
    device = resolve_device(params.device)
    model, spec = load_checkpoint(checkpoint, map_location="cpu")
    names = resolve_layers(spec, params.layers if params.layers == "all" else list(params.layers), entry.get("name"))
    named = [] if params.layers == "all" else list(params.layers)
    if named and not any(ch in "".join(named) for ch in "*?[") and names != named:
        # a factory model's layers are named in the config unchecked (cwnnk.config._named_layers): the
        # tables' depth and last layer follow the config's order, so it must be the network's
        raise UnknownLayerError(f"config key 'extract.layers': {named} for model {entry.get('name')!r} are not in "
                                f"the network's depth order; list them as {names}")
    nodes = OrderedDict((name, layer_nodes(spec)[name]) for name in names)
    model.to(device).eval()
    dataset = load_dataset(params.dataset)
    settings = params.to_dict()
    attrs = dict(
        model=entry.get("name"), entry={k: v for k, v in entry.items() if k != "spec"},
        checkpoint={"path": str(checkpoint), "sha256": sha256_file(checkpoint)},
        spec=spec,
        dataset={"name": dataset.name, "config": settings.pop("dataset"), "classes": list(dataset.classes)},
        transform={"images": ("cwnnk.datasets.load_dataset: float32 in [0, 1], bilinear resize to image_size"
                              if params.dataset.name in ("digits", "cifar10", "synthetic") else
                              f"cwnnk.datasets.image_transform: {params.dataset.interpolation} resize of the shorter "
                              f"side to {params.dataset.resize or params.dataset.image_size}, centre crop to "
                              f"{params.dataset.image_size}, {params.dataset.channels} channels, float32 in [0, 1]"),
                   "preprocess_source": spec.get("preprocess", {}).get("source", "config"),
                   "image_size": params.dataset.image_size, "input_shape": list(dataset.input_shape),
                   "normalize": spec.get("normalize"), "normalize_applied_by": "the model (cwnnk.models.Normalize)",
                   "augment": "none"},
        extract_config=settings,
    )
    with atomic_path(store, log) as tmp:  # first removes the temporaries of a killed extraction
        extract_to_store(model, nodes, dataset, tmp, splits=params.splits, n_samples=params.n_samples,
                         seed=params.seed, batch_size=params.batch_size, compressor=params.compressor, device=device,
                         attrs=attrs, log=log)
    log(f"wrote {store} in {time.perf_counter() - start:.1f}s")
