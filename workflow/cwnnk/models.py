"""Model architectures, their analysable layers, and checkpoints that rebuild them.

A model is fully described by a JSON-able `spec`:
    {"arch": "convnet" | "resnet18" | "torchvision" | "factory", "input_shape": [C, H, W],
     "num_classes": K, "normalize": {"mean": [...], "std": [...]}, ...architecture keys}
The checkpoint stores the spec beside the state dict, so the file alone rebuilds the model.

"torchvision": any classification model of torchvision's registry by `name` (e.g. resnet50,
vgg11, mobilenet_v3_small), built with weights=None; its `weights` (a torchvision weights name
such as IMAGENET1K_V1, a file, or null) are loaded by `initial_state_dict`. "factory": a user
architecture, `factory: "package.module:function"` returning an nn.Module (called with `kwargs`).

Analysable layers of the built-in archs are post-ReLU conv outputs in depth order, each with a
stable name (used in result paths) mapped to a torchvision FX node name (used for extraction).
For torchvision and factory models the stable name is the FX node name of the bare network
(`torchvision.models.feature_extraction.get_graph_node_names`), e.g. "layer1.0.relu"; every
node with a (N, C, H, W) output is analysable and `all` means its activation nodes.
"""

from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

from cwnnk.atomic import atomic_path
from cwnnk.params import nearest

ARCHS = ("convnet", "resnet18", "torchvision", "factory")
# torchvision models whose auxiliary classifiers make training mode return a tuple of logits.
AUX_LOGITS = ("googlenet", "inception_v3")
CHECKPOINT_FORMAT = 1


class Normalize(nn.Module):
    """Per-channel input standardisation, kept inside the model so checkpoints carry it."""

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x):
        return (x - self.mean) / self.std


def _normalize(spec):
    norm = spec.get("normalize") or {}
    channels = spec["input_shape"][0]
    return Normalize(norm.get("mean", [0.0] * channels), norm.get("std", [1.0] * channels))


class ConvNet(nn.Module):
    """The paper family: conv -> ReLU -> [max-pool] -> dropout blocks, then a linear classifier.

    spec keys: layers: [{channels, kernel, padding: valid|same, pool: bool}], dropout.
    """

    def __init__(self, spec):
        super().__init__()
        self.spec = spec
        in_ch, h, w = spec["input_shape"]
        self.normalize = _normalize(spec)
        blocks = OrderedDict()
        for i, layer in enumerate(spec["layers"], start=1):
            block = OrderedDict(
                conv=nn.Conv2d(in_ch, layer["channels"], layer["kernel"], padding=layer.get("padding", "valid")),
                relu=nn.ReLU(),
            )
            if layer.get("padding", "valid") == "valid":
                h, w = h - layer["kernel"] + 1, w - layer["kernel"] + 1
            if layer.get("pool", False):
                block["pool"] = nn.MaxPool2d(2)
                h, w = h // 2, w // 2
            block["drop"] = nn.Dropout(spec.get("dropout", 0.0))
            if h < 1 or w < 1:
                raise ValueError(
                    f"model.layers[{i - 1}] leaves a {h}x{w} map from input {spec['input_shape']}: "
                    "use smaller kernels, 'same' padding or fewer pools"
                )
            blocks[f"conv{i}"] = nn.Sequential(block)
            in_ch = layer["channels"]
        self.features = nn.Sequential(blocks)
        self.classifier = nn.Linear(in_ch * h * w, spec["num_classes"])
        self.layers = OrderedDict((name, f"features.{name}.relu") for name in blocks)

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(self.normalize(x)), 1))


class ResNet18(nn.Module):
    """torchvision's ResNet-18 (no pretrained weights), optionally with the CIFAR stem
    (3x3 stride-1 first conv, no max-pool), for inputs with any channel count."""

    def __init__(self, spec):
        super().__init__()
        from torchvision.models import resnet18

        self.spec = spec
        self.normalize = _normalize(spec)
        self.net = resnet18(weights=None, num_classes=spec["num_classes"])
        in_ch = spec["input_shape"][0]
        if spec.get("cifar_stem", False):
            self.net.conv1 = nn.Conv2d(in_ch, 64, 3, stride=1, padding=1, bias=False)
            self.net.maxpool = nn.Identity()
        elif in_ch != 3:
            self.net.conv1 = nn.Conv2d(in_ch, 64, 7, stride=2, padding=3, bias=False)
        self.layers = OrderedDict(stem="net.relu")
        for stage in range(1, 5):
            for block in range(2):
                name = f"layer{stage}.{block}"
                # BasicBlock applies its one ReLU module twice: FX names the second call relu_1.
                self.layers[f"{name}.relu"] = f"net.{name}.relu"
                self.layers[name] = f"net.{name}.relu_1"

    def forward(self, x):
        return self.net(self.normalize(x))


def classification_models():
    """Names of torchvision's classification models (`list_models(module=torchvision.models)`)."""
    import torchvision

    return torchvision.models.list_models(module=torchvision.models)


def torchvision_builder(name):
    """The builder of torchvision classification model `name`; ValueError naming the nearest names."""
    import torchvision

    valid = classification_models()
    if name not in valid:
        raise ValueError(f"config key 'model.name': {name!r} is not a torchvision classification model; nearest: "
                         f"{', '.join(nearest(name, valid))} (all: torchvision.models.list_models("
                         "module=torchvision.models))")
    return torchvision.models.get_model_builder(name)


def import_factory(path):
    """The callable named by 'package.module:function'; ValueError saying what is wrong."""
    from importlib import import_module

    if not isinstance(path, str) or path.count(":") != 1 or not all(path.split(":")):
        raise ValueError(f"config key 'model.factory': {path!r} must be 'package.module:function'")
    module, attr = path.split(":")
    try:
        obj = import_module(module)
    except ImportError as err:
        raise ValueError(f"config key 'model.factory': cannot import module {module!r} of {path!r} ({err}); "
                         "is it on PYTHONPATH?") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"config key 'model.factory': module {module!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"config key 'model.factory': {path!r} is not callable")
    return obj


def weights_enum(spec):
    """The torchvision weights object of spec's `weights` name, or None (no weights, or a file)."""
    weights = spec.get("weights")
    if spec.get("arch") != "torchvision" or not weights or is_weights_file(weights):
        return None
    from torchvision.models import get_model_weights

    enum = get_model_weights(spec["name"])
    names = list(enum.__members__)
    if weights not in names:
        raise ValueError(f"config key 'model.weights': {weights!r} is neither a weights name of "
                         f"{spec['name']} (choose one of {names}) nor a path to a .pt/.pth file")
    return enum[weights]


def is_weights_file(weights):
    """True when `weights` names a file (a path or a .pt/.pth/.bin/.ckpt name), not a weights enum name."""
    import os

    return isinstance(weights, str) and ("/" in weights or os.sep in weights or
                                         weights.endswith((".pt", ".pth", ".bin", ".ckpt", ".tar")))


class Wrapped(nn.Module):
    """A torchvision or user network behind the input normalisation: normalize -> net.

    layers maps the stable names (the bare network's FX node names) to this module's node names.
    """

    def __init__(self, spec):
        super().__init__()
        self.normalize = _normalize(spec)
        kwargs = dict(spec.get("kwargs") or {})
        if spec["arch"] == "torchvision":
            if spec["name"] in AUX_LOGITS and not spec.get("weights"):
                # Trained here: without the auxiliary heads training mode returns the logits alone
                # (cross-entropy needs them); pretrained weights carry the heads' keys, so keep them there.
                kwargs.setdefault("aux_logits", False)
            self.net = torchvision_builder(spec["name"])(weights=None, num_classes=spec["num_classes"], **kwargs)
        else:
            self.net = import_factory(spec["factory"])(**kwargs)
            if not isinstance(self.net, nn.Module):
                raise TypeError(f"config key 'model.factory': {spec['factory']} returned "
                                f"{type(self.net).__name__}, not a torch.nn.Module")
            _check_head(self.net, spec)
        self.spec = spec

    @property
    def layers(self):
        return OrderedDict((name, f"net.{name}") for name, info in graph_nodes(self.spec).items() if info["all"])

    def forward(self, x):
        return self.net(self.normalize(x))


def untrained_twin(model: nn.Module, seed: int = 0) -> nn.Module:
    """The untrained twin of `model`: the same architecture, seeded random weights, no training.

    A cwnnk model (build_model, load_checkpoint: it carries its `spec`) is built anew from its spec
    after torch.manual_seed(seed), input normalisation included: the workflow's twin, and for a run
    trained here with seed s, untrained_twin(model, s) is its own initial state (epoch 0). A
    torchvision classification model is built anew by the torchvision builder of its architecture
    (weights=None, its number of classes) after torch.manual_seed(seed): its constructor's own
    initialisation, and the same weights as the workflow's twin of that model. Any other nn.Module
    is deep-copied and each submodule with reset_parameters() is re-initialised in module order
    after torch.manual_seed(seed) (a constructor's own init scheme, if any, is not rerun). Eval mode.
    """
    import copy

    if not isinstance(model, nn.Module):
        raise TypeError(f"untrained_twin needs a torch nn.Module, got {type(model).__name__}")
    spec = getattr(model, "spec", None)
    rebuild = _torchvision_rebuild(model) if not (isinstance(spec, dict) and "arch" in spec) else None
    # The seed is set inside a fork of the CPU generator: the caller's random state is left as it was.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if isinstance(spec, dict) and "arch" in spec:
            return build_model(spec).eval()
        if rebuild is not None:
            return rebuild().eval()
        twin = copy.deepcopy(model)
        for module in twin.modules():
            if callable(getattr(module, "reset_parameters", None)):
                module.reset_parameters()
        return twin.eval()


def _torchvision_rebuild(model):
    """A function that builds `model`'s torchvision architecture afresh, or None when it is not a
    torchvision classification model that some builder (with its number of classes) reproduces key
    for key and shape for shape."""
    import functools

    import torchvision

    module = type(model).__module__
    if not module.startswith("torchvision.models."):
        return None
    shapes = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    biases = [shape for key, shape in shapes.items() if key.endswith(".bias") and len(shape) == 1]
    classes = biases[-1][0] if biases else 1000
    for name in torchvision.models.list_models(module=torchvision.models):
        builder = torchvision.models.get_model_builder(name)
        if builder.__module__ != module:
            continue
        build = functools.partial(builder, weights=None, num_classes=classes)
        with torch.device("meta"):  # shapes only: nothing allocated or initialised
            candidate = build()
        if {key: tuple(value.shape) for key, value in candidate.state_dict().items()} == shapes:
            return build
    return None


def build_model(spec):
    """Instantiate the architecture described by spec (weights freshly initialised)."""
    arch = spec.get("arch")
    if arch == "convnet":
        return ConvNet(spec)
    if arch == "resnet18":
        return ResNet18(spec)
    if arch in ("torchvision", "factory"):
        return Wrapped(spec)
    raise ValueError(f"model arch must be one of {ARCHS}, got {arch!r}")


# Modules whose output counts as an activation (what `extract.layers: all` keeps).
_ACTIVATION_NAMES = ("ReLU", "ReLU6", "LeakyReLU", "PReLU", "ELU", "SELU", "CELU", "GELU", "SiLU", "Mish",
                     "Hardswish", "Hardtanh", "Softplus")
_FUNCTION_NODE = __import__("re").compile(r"(^|\.)(relu|relu6|gelu|silu|hardswish|leaky_relu|elu|mish)_?\d*$")


def _is_activation(model, node):
    from cwnnk.extract import _module_call

    try:
        module = model.get_submodule(_module_call(model, node)[0])
    except ValueError:  # a function call node (F.relu, torch.relu, ...)
        return bool(_FUNCTION_NODE.search(node))
    if isinstance(module, nn.Sequential) and len(module):  # e.g. torchvision's Conv2dNormActivation
        module = module[-1]
    return type(module).__name__ in _ACTIVATION_NAMES


_PERMUTES = ("permute", "transpose", "swapaxes", "swapdims", "movedim", "moveaxis")
_RESHAPES = ("view", "reshape", "flatten", "unflatten", "squeeze", "unsqueeze")


def _moved_axis(op, args, axis, rank):
    """Where op (one of _PERMUTES, with its arguments after the tensor) puts axis `axis` of a rank-`rank` tensor."""
    if op in ("transpose", "swapaxes", "swapdims"):
        a, b = (d % rank for d in args[:2])
        return b if axis == a else a if axis == b else axis
    if op == "permute":
        dims = args[0] if len(args) == 1 and isinstance(args[0], (list, tuple)) else args
        dims = [d % rank for d in dims]
    else:  # movedim(source, destination): the moved axes at their places, the others in order around them
        source, destination = ([v] if isinstance(v, int) else list(v) for v in args[:2])
        dims = [None] * rank
        for s, d in zip(source, destination):
            dims[d % rank] = s % rank
        rest = iter(d for d in range(rank) if d not in dims)
        dims = [next(rest) if d is None else d for d in dims]
    return dims.index(axis) if axis in dims else None


def _reshaped_axis(axis, before, after):
    """Position of axis `axis` of shape `before` in shape `after`: where the same elements precede it
    and it keeps its size (a flatten of (N, C, H, W) to (N, C, H*W) keeps C at 1); else None."""
    import math

    for j in range(len(after)):
        if after[j] == before[axis] and math.prod(after[:j]) == math.prod(before[:axis]):
            return j
    return None


def _check_head(net, spec):
    """A factory's network must output one logit per class on spec's images: checked on one image when the
    network is built (in a job; validation never calls a factory)."""
    training = net.training
    try:
        with torch.no_grad():
            out = net.eval()(_one_image(net, spec["input_shape"]))
    finally:
        net.train(training)
    width = tuple(out.shape[1:]) if isinstance(out, torch.Tensor) else None
    if width != (spec["num_classes"],):
        shown = f"(N, {', '.join(map(str, width))})" if width is not None else f"a {type(out).__name__}"
        raise ValueError(
            f"config key 'model.factory': {spec['factory']} outputs {shown} on (N, "
            f"{', '.join(map(str, spec['input_shape']))}) images, but the model must predict {spec['num_classes']} "
            "classes (model.num_classes, or the dataset's classes where it is unset): make its head output one "
            "logit per class" + (", or set model.num_classes to its width (weights with other classes are "
                                 "analysed, not evaluated, on a folder without dataset.test_root)"
                                 if spec.get("weights") else ""))


def _one_image(net, input_shape):
    """A (1, C, H, W) input on net's device (uninitialised on the meta device, where it costs nothing)."""
    param = next(iter(net.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    return (torch.empty if device.type == "meta" else torch.zeros)(1, *input_shape, device=device)


def _channel_axes(fx, shapes, input_shape):
    """{node name: position of the image's channel axis in its output, or None where not followed},
    for the nodes computed from the input image (the others, e.g. a position-bias table, are left out).

    The input's channels are axis 1. A permute or transpose moves the axis (ConvNeXt's blocks and Swin
    compute on (N, H, W, C)), a reshape keeps it where its elements stay in place, a convolution puts
    it back at 1, and any other op keeps it when its output has the rank of its input.
    fx: create_feature_extractor's GraphModule returning every node; shapes: node name -> full shape
    (batch axis included), input_shape: the input's.
    """
    output = next(node for node in fx.graph.nodes if node.op == "output")
    name_of = {node: name for name, node in output.args[0].items()}
    shape_of = {node: input_shape if node.op == "placeholder" else shapes.get(name_of.get(node))
                for node in fx.graph.nodes}
    axes = {}  # node -> axis, for the nodes computed from the input
    for node in fx.graph.nodes:
        shape = shape_of[node]
        sources = [n for n in node.all_input_nodes if n in axes]
        if node.op != "placeholder" and not sources:
            continue
        source = next((n for n in sources if axes[n] is not None), None)
        axis = None if source is None else axes[source]
        before = None if source is None else shape_of[source]
        op = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", "")
        args = list(node.args[1:]) or list(node.kwargs.values())
        module = fx.get_submodule(node.target) if node.op == "call_module" else None
        first = module[0] if isinstance(module, nn.Sequential) and len(module) else module
        if node.op == "placeholder" or isinstance(first, (nn.Conv2d, nn.ConvTranspose2d)):
            axis = 1
        elif axis is None or shape is None or before is None:
            axis = None
        elif type(module).__name__ == "Permute" and hasattr(module, "dims"):  # torchvision.ops.Permute
            axis = _moved_axis("permute", [list(module.dims)], axis, len(before))
        elif node.op in ("call_method", "call_function") and op in _PERMUTES:
            axis = _moved_axis(op, args, axis, len(before))
        elif node.op in ("call_method", "call_function") and op in _RESHAPES:
            axis = _reshaped_axis(axis, before, shape)
        elif len(shape) != len(before):
            axis = None
        axes[node] = axis
    return {name: axes[node] for node, name in name_of.items() if node in axes}


def trace_nodes(net, input_shape):
    """Every FX node of an nn.Module in eval order: name -> {shape (per sample, or None),
    from_input (computed from the image), channel_axis (where the image's channels are in the
    output; None where not followed: _channel_axes), spatial (output is (N, C, H, W)), activation,
    all (a spatial activation node, what `all` keeps)}.

    A 4-D output whose channels are not on axis 1 (channel-last (N, H, W, C), as inside ConvNeXt's
    blocks and throughout Swin), or not computed from the image, is not spatial: its rows would be
    read as channels. input_shape: (C, H, W) of one image. Runs one forward pass of a single image
    on net's device (a meta-device net costs nothing).
    """
    from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

    training = net.training
    net.eval()
    try:
        nodes = get_graph_node_names(net)[1][1:]  # the first is the input placeholder
        x = _one_image(net, input_shape)
        fx = create_feature_extractor(net, return_nodes=nodes)
        with torch.no_grad():
            out = fx(x)
    finally:
        net.train(training)
    shapes = {name: tuple(value.shape) for name, value in out.items() if isinstance(value, torch.Tensor)}
    axes = _channel_axes(fx, shapes, tuple(x.shape))
    info = OrderedDict()
    for name in nodes:
        shape = shapes[name][1:] if name in shapes else None
        maps = shape is not None and len(shape) == 3 and name in axes
        activation = maps and _is_activation(net, name)
        spatial = maps and axes[name] in (1, None)
        info[name] = dict(shape=shape, from_input=name in axes, channel_axis=axes.get(name), spatial=spatial,
                          activation=activation, all=spatial and activation)
    return info


def channel_last(info):
    """True for a node (trace_nodes' info) with a 4-D output whose channels are its last axis."""
    return info["shape"] is not None and len(info["shape"]) == 3 and info["channel_axis"] == 3


def describe_output(info):
    """Why a node (trace_nodes' info) is not analysable, e.g. "outputs (N, 8, 8, 384): channel-last
    (N, H, W, C), not (N, C, H, W)"."""
    shape = info["shape"]
    if shape is None:
        return "outputs no tensor, not (N, C, H, W)"
    if not info["from_input"]:
        return "is not computed from the image"
    text = f"outputs (N, {', '.join(map(str, shape))})"
    if channel_last(info):
        return text + ": channel-last (N, H, W, C), not (N, C, H, W)"
    if len(shape) == 3 and info["channel_axis"] not in (1, None):
        return text + f" with its channels on axis {info['channel_axis']}, not (N, C, H, W)"
    return text + ", not (N, C, H, W)"


def _bare_net(spec, probe):
    """probe(spec's bare network), built on the meta device (no weights, no data), or on CPU
    (weights=None) where building or probing needs an op without a meta kernel (e.g. regnet)."""
    try:
        with torch.device("meta"):
            net = build_model(spec).net
        return probe(net)
    except Exception:  # noqa: BLE001 - any op without a meta kernel; a real error raises again on CPU
        return probe(build_model(spec).net)


def _graph_nodes(spec_json):
    import json

    spec = json.loads(spec_json)
    return _bare_net(spec, lambda net: trace_nodes(net, spec["input_shape"]))


_NODE_CACHE = {}


def graph_nodes(spec):
    """Every FX node of a torchvision/factory spec's network: name -> {shape (per sample, or None),
    spatial (output is (N, C, H, W)), all (an activation node that `all` keeps)}; depth order.

    Traced once per spec on the meta device (no weights, no data).
    """
    import json

    key = json.dumps({k: v for k, v in spec.items() if k not in ("normalize", "weights")}, sort_keys=True)
    if key not in _NODE_CACHE:
        _NODE_CACHE[key] = _graph_nodes(key)
    return _NODE_CACHE[key]


def layer_names(spec):
    """Stable names of the analysable layers of spec's architecture, in depth order."""
    if spec.get("arch") in ("torchvision", "factory"):
        return [name for name, info in graph_nodes(spec).items() if info["all"]]
    with torch.device("meta"):
        return list(build_model(spec).layers)


def layer_nodes(spec):
    """{stable name: FX node name of the built model} for every layer that may be requested by name.

    Built-in archs: their analysable layers. torchvision/factory: every node with (N, C, H, W) output.
    """
    if spec.get("arch") in ("torchvision", "factory"):
        return OrderedDict((name, f"net.{name}") for name, info in graph_nodes(spec).items() if info["spatial"])
    with torch.device("meta"):
        return OrderedDict(build_model(spec).layers)


def hub_file(weights):
    """The torch hub cache path where a torchvision weights object's file is (or must be) placed."""
    import os

    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)


def missing_hub_weights(spec, enum):
    """What to do when torchvision weights `enum` of `spec` are not in the torch hub cache (the import job's
    error, and the dry run's check in cwnnk.preflight)."""
    path = hub_file(enum)
    return (f"weights {spec['name']} {spec['weights']} are not in the torch hub cache: place {path.name} "
            f"(from {enum.url}) at {path} (the folder follows TORCH_HOME, now {torch.hub.get_dir()}), "
            "or set model.download: true on a machine with internet")


def initial_state_dict(spec, download=False):
    """The state dict (keys of the bare network) of spec's `weights`, or None when it has none.

    A torchvision weights name is read from the torch hub cache (TORCH_HOME/hub/checkpoints), offline
    unless download is true; when absent the error names the exact file to place and where. A file is
    either a plain state dict or a checkpoint dict ({'state_dict': ...}, {'model': ...}); a wrapper's
    key prefix (a cwnnk checkpoint's 'net.', nn.DataParallel's 'module.', a 'model.' wrapper) is
    removed where every key has it and the keys then fit the architecture (strip_prefixes).
    """
    weights = spec.get("weights")
    if not weights:
        return None
    enum = weights_enum(spec)
    if enum is not None:
        path = hub_file(enum)
        if not path.is_file():
            if not download:
                raise FileNotFoundError(missing_hub_weights(spec, enum))
            torch.hub.load_state_dict_from_url(enum.url, model_dir=str(path.parent), progress=False)
        return torch.load(path, map_location="cpu", weights_only=True)
    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(f"config key 'model.weights': no file {path.resolve()}")
    obj = _safe_load(path, "config key 'model.weights'")
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict):
        raise ValueError(f"{path} holds a {type(obj).__name__}, not a state dict or a checkpoint dict")
    return strip_prefixes(obj, _bare_net(spec, lambda net: set(net.state_dict())))


# Prefixes that wrappers add to every key: a cwnnk checkpoint (beside its normalize.* buffers),
# nn.DataParallel / DistributedDataParallel, and Lightning-style or EMA modules holding the model.
_WRAPPER_PREFIXES = ("net.", "module.", "model.")


def strip_prefixes(state, expected):
    """state with wrapper prefixes removed (nested ones too, e.g. 'module.model.'), where every key has
    the prefix and the stripped keys are exactly `expected` (the architecture's); else state unchanged,
    so a network whose own keys start with 'model.' loads as it is and a mismatch is listed as found."""
    if set(state) == set(expected):
        return state
    for prefix in _WRAPPER_PREFIXES:
        keys = [key for key in state if not (prefix == "net." and key.startswith("normalize."))]
        if keys and all(key.startswith(prefix) for key in keys):
            stripped = strip_prefixes({key[len(prefix):]: state[key] for key in keys}, expected)
            if set(stripped) == set(expected):
                return stripped
    return state


def pretrained_model(spec, download=False):
    """spec's model in eval mode with its `weights` loaded (mismatches listed by check_state_dict)."""
    model = build_model(spec)
    state = initial_state_dict(spec, download)
    if state is not None:
        check_state_dict(model.net, state, f"weights {spec['weights']!r}")
        model.net.load_state_dict(state)
    return model.eval()


def save_checkpoint(path, model, spec):
    """Write a checkpoint atomically; return its sha256, which the stage records as `checkpoint_sha256` in the
    metrics.json it writes beside it (verify_checkpoint compares the two whenever the checkpoint is read)."""
    from cwnnk.provenance import sha256_file

    with atomic_path(path) as tmp:
        torch.save({"format": CHECKPOINT_FORMAT, "spec": spec, "state_dict": model.state_dict()}, tmp)
        digest = sha256_file(tmp)
    return digest


def verify_checkpoint(path):
    """Raise ValueError if a checkpoint's sha256 differs from the one recorded in the metrics.json beside it
    when it was written: torch's loader skips the zip's checksums, so a damaged or replaced file would load.
    A checkpoint without a recorded digest (an external file) is not checked."""
    from cwnnk.atomic import read_json
    from cwnnk.provenance import sha256_file

    metrics = Path(path).with_name("metrics.json")
    if not metrics.is_file():  # an external checkpoint, not written by a stage
        return
    info = read_json(metrics, rerun="the stage that wrote it (snakemake --forcerun train, or import_checkpoint / "
                                    "untrained_twin for an imported model)")
    recorded = info.get("checkpoint_sha256") if isinstance(info, dict) else None
    if recorded and sha256_file(path) != recorded:
        raise ValueError(f"{path}: its content is not what was written (sha256 differs from checkpoint_sha256 in "
                         f"{metrics}): the file was damaged or replaced since; rerun the stage that wrote it "
                         "(snakemake --forcerun train, or import_checkpoint / untrained_twin for an imported model)")


def check_state_dict(model, state_dict, source):
    """Raise ValueError listing missing, unexpected and shape-mismatched keys, if any."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    mismatched = [
        f"{key}: checkpoint {tuple(state_dict[key].shape)} vs model {tuple(expected[key].shape)}"
        for key in sorted(set(expected) & set(state_dict))
        if tuple(state_dict[key].shape) != tuple(expected[key].shape)
    ]
    if missing or unexpected or mismatched:
        lines = [f"{source} does not match the architecture {model.__class__.__name__}:"]
        for label, keys in (("missing keys", missing), ("unexpected keys", unexpected),
                            ("mismatched shapes", mismatched)):
            if keys:
                lines.append(f"  {label} ({len(keys)}): " + ", ".join(keys[:20]) + (" ..." if len(keys) > 20 else ""))
        raise ValueError("\n".join(lines))


def _safe_load(path, key=None, map_location="cpu"):
    """torch.load with weights_only=True; a file it cannot read fails naming the file (and the config key) and what
    to do, never with torch's advice to pass weights_only=False, which would run the file's code."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as err:  # noqa: BLE001 - truncated, random bytes, a refused pickle: all name the file
        detail = str(err).strip().splitlines()[-1] if "weights_only" not in str(err) else (
            "refused by torch's safe loader (weights_only=True): not a file of tensors, or a pickle that runs code")
        where = f"{key}: " if key else ""
        raise ValueError(f"{where}{path}: not a readable PyTorch checkpoint ({type(err).__name__}: {detail}); the "
                         "file may be truncated or not a .pt file: copy it again (external) or rerun the stage "
                         "that wrote it") from err


def load_checkpoint(path, spec=None, map_location="cpu"):
    """Load a checkpoint into a model in eval mode; return (model, spec).

    Accepts this project's format ({'spec', 'state_dict'}) or a plain state dict, in which
    case `spec` must be given. A given spec overrides the stored one (external checkpoints). A checkpoint
    a stage wrote is first checked against the sha256 recorded beside it (verify_checkpoint).
    """
    verify_checkpoint(path)
    obj = _safe_load(path, map_location=map_location)
    if isinstance(obj, dict) and "state_dict" in obj:
        state_dict, spec = obj["state_dict"], spec or obj.get("spec")
    else:
        state_dict = obj
    if spec is None:
        raise ValueError(f"{path} is a plain state dict: declare its architecture spec in the config")
    model = build_model(spec)
    check_state_dict(model, state_dict, str(path))
    model.load_state_dict(state_dict)
    return model.eval(), spec
