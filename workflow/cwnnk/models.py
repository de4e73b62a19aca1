"""Model architectures, their analysable layers, and checkpoints that rebuild them.

A model is fully described by a JSON-able `spec`:
    {"arch": "convnet" | "resnet18", "input_shape": [C, H, W], "num_classes": K,
     "normalize": {"mean": [...], "std": [...]}, ...architecture keys}
The checkpoint stores the spec beside the state dict, so the file alone rebuilds the model.

Analysable layers are post-ReLU conv outputs in depth order, each with a stable name
(used in result paths) mapped to a torchvision FX node name (used for extraction).
"""

from collections import OrderedDict

import torch
from torch import nn

from cwnnk.atomic import atomic_path

ARCHS = ("convnet", "resnet18")
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


def build_model(spec):
    """Instantiate the architecture described by spec (weights freshly initialised)."""
    arch = spec.get("arch")
    if arch == "convnet":
        return ConvNet(spec)
    if arch == "resnet18":
        return ResNet18(spec)
    raise ValueError(f"model arch must be one of {ARCHS}, got {arch!r}")


def layer_names(spec):
    """Stable names of the analysable layers of spec's architecture, in depth order."""
    with torch.device("meta"):
        return list(build_model(spec).layers)


def save_checkpoint(path, model, spec):
    with atomic_path(path) as tmp:
        torch.save({"format": CHECKPOINT_FORMAT, "spec": spec, "state_dict": model.state_dict()}, tmp)


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
        for label, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("mismatched shapes", mismatched)):
            if keys:
                lines.append(f"  {label} ({len(keys)}): " + ", ".join(keys[:20]) + (" ..." if len(keys) > 20 else ""))
        raise ValueError("\n".join(lines))


def load_checkpoint(path, spec=None, map_location="cpu"):
    """Load a checkpoint into a model in eval mode; return (model, spec).

    Accepts this project's format ({'spec', 'state_dict'}) or a plain state dict, in which
    case `spec` must be given. A given spec overrides the stored one (external checkpoints).
    """
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as err:  # noqa: BLE001 - truncated, random bytes, a refused pickle: all name the file
        # torch's own message for a refused pickle advises weights_only=False, which would run its code: not here.
        detail = str(err).strip().splitlines()[-1] if "weights_only" not in str(err) else (
            "refused by torch's safe loader (weights_only=True): not a file of tensors, or a pickle that runs code")
        raise ValueError(f"{path}: not a readable PyTorch checkpoint ({type(err).__name__}: {detail}); the file may "
                         "be truncated or not a .pt file: copy it again (external) or rerun the stage that wrote "
                         "it") from err
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
