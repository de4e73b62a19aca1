"""Configuration: schema validation with defaults, clear errors, and the model sweep.

The schema (workflow/schemas/config.schema.yaml) is the single source of defaults and
descriptions; docs/configuration.md is checked against it by a test.
"""

import copy
import itertools
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import jsonschema
import yaml

from cwnnk.catalog import dataset_classes, dataset_num_classes, dataset_signature, split_arguments
from cwnnk.params import (
    DatasetParams,
    ExtractParams,
    FigureParams,
    GraphParams,
    ImportParams,
    ManifoldParams,
    OverlapParams,
    PruneParams,
    TrainParams,
    nearest,
)

SCHEMA_PATH = Path(__file__).resolve().parents[1] / "schemas" / "config.schema.yaml"


class ConfigError(ValueError):
    """A configuration value that the schema or a cross-key check rejects."""


def load_schema(path=SCHEMA_PATH):
    return yaml.safe_load(Path(path).read_text())


def _with_defaults(validator_class):
    """A validator that fills in schema defaults for missing keys before checking them."""
    check_properties = validator_class.VALIDATORS["properties"]

    def properties(validator, props, instance, schema):
        if isinstance(instance, dict):
            for key, sub in props.items():
                if "default" in sub and key not in instance:
                    instance[key] = copy.deepcopy(sub["default"])
        yield from check_properties(validator, props, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": properties})


_Validator = _with_defaults(jsonschema.Draft202012Validator)


def _key(path):
    return ".".join(str(p) for p in path) or "<top level>"


def _describe(error):
    """One line naming the key, the bad value and what is allowed."""
    key, value, rule = _key(error.absolute_path), error.instance, error.validator
    if rule == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        extra = sorted(set(value) - set(allowed))
        where = _key(error.absolute_path)
        return f"unknown key(s) {extra} in '{where}'; allowed keys: {allowed}"
    if rule == "enum":
        return f"config key '{key}': {value!r} is not allowed; choose one of {error.validator_value}"
    if rule == "type":
        return f"config key '{key}': {value!r} has type {type(value).__name__}; expected {error.validator_value}"
    if rule in ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum"):
        op = {"minimum": ">=", "exclusiveMinimum": ">", "maximum": "<=", "exclusiveMaximum": "<"}[rule]
        return f"config key '{key}': {value!r} is out of range; it must be {op} {error.validator_value}"
    if rule == "required":
        return f"config key '{key}': {error.message}"
    return f"config key '{key}': {value!r} is not allowed ({error.message})"


def validate(config, schema=None):
    """Return a validated deep copy of config with every default filled in.

    Raises ConfigError listing every problem, one line each.
    """
    config = copy.deepcopy(dict(config))
    validator = _Validator(schema or load_schema())
    errors = sorted(validator.iter_errors(config), key=lambda e: list(map(str, e.absolute_path)))
    problems = [_describe(e) for e in errors]
    name = config.get("dataset", {}).get("name")
    if isinstance(name, str) and not any(e.absolute_path and list(e.absolute_path)[:2] == ["dataset", "name"]
                                         for e in errors):
        problems[:0] = _dataset_problems(config["dataset"])
    if problems:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems))
    _check_model(config["model"], "model")
    try:  # what the schema cannot say (fractions start at 0 and increase), checked where PruneParams says it
        PruneParams(**{key: value for key, value in config["pruning"].items() if key not in ("enabled", "models")})
    except ValueError as err:
        raise ConfigError(f"invalid configuration:\n  {err}") from None
    return config


def _dataset_problems(dataset):
    """Messages for a dataset name that is neither built in nor a torchvision class, or a missing folder."""
    from cwnnk.params import DATASETS

    name = dataset["name"]
    if name in DATASETS:
        if name == "folder" and not Path(dataset.get("root", "")).is_dir():
            return [f"config key 'dataset.root': {dataset.get('root')!r} is not a folder (dataset.name: folder "
                    "reads an ImageFolder tree: one sub-folder of images per class)"]
        return []

    if name not in dataset_classes():
        return [f"config key 'dataset.name': {name!r} is not allowed; choose one of {list(DATASETS)} or a "
                f"torchvision dataset class (nearest: {', '.join(nearest(name, dataset_classes()))})"]
    try:
        split_arguments(name)
    except ValueError as err:  # a torchvision class cwnnk cannot read as image classification
        return [str(err)]
    return []


def _check_model(model, where):
    arch = model.get("arch", "convnet")
    if arch == "convnet" and not model.get("layers"):
        raise ConfigError(f"config key '{where}.layers': a convnet needs at least one layer")
    if arch == "torchvision" and not model.get("name"):
        raise ConfigError(f"config key '{where}.name': arch torchvision needs the model's name in torchvision's "
                          "registry (e.g. resnet50, vgg11, mobilenet_v3_small)")
    if arch == "factory" and not model.get("factory"):
        raise ConfigError(f"config key '{where}.factory': arch factory needs 'package.module:function'")
    if arch in ("convnet", "resnet18") and model.get("weights"):
        raise ConfigError(f"config key '{where}.weights': arch {arch} takes no weights; declare a checkpoint "
                          "under 'external' instead")


def _fmt(x):
    return format(x, "g")


def model_name(arch, dropout, weight_decay, augment, seed, label_noise=0.0, n_train=None, width=1.0, epochs=None):
    """Readable, stable model name, e.g. convnet-d0.2-wd0-s1.

    Factors at their default are left out, so today's names stay: augmentation (-shift),
    label noise (-ln0.2), training-set size (-n200), width multiplier (-w0.5) and a swept
    training length (-ep30) appear only when used. A saved epoch E of a run is `<run>-eE`.
    """
    parts = [f"{arch}-d{_fmt(dropout)}-wd{_fmt(weight_decay)}"]
    if augment != "none":
        parts.append(augment)
    if label_noise:
        parts.append(f"ln{_fmt(label_noise)}")
    if n_train is not None:
        parts.append(f"n{n_train}")
    if width != 1:
        parts.append(f"w{_fmt(width)}")
    if epochs is not None:
        parts.append(f"ep{epochs}")
    return "-".join(parts + [f"s{seed}"])


def _label(dropout, wd, augment, label_noise, n_train, width):
    """The regularization level a model is grouped by in figures (seeds and epochs pooled)."""
    extra = [f"ln{_fmt(label_noise)}" if label_noise else "", f"n{n_train}" if n_train is not None else "",
             f"w{_fmt(width)}" if width != 1 else ""]
    return " ".join([f"d{_fmt(dropout)} wd{_fmt(wd)} {augment}", *filter(None, extra)])


def _widen(spec, width):
    """The spec with every convnet layer's channels scaled by width (at least 1 channel)."""
    if width == 1:
        return spec
    if spec["arch"] != "convnet":
        raise ConfigError(f"config key 'sweep.width': {width!r} needs arch convnet (resnet18 has a fixed width)")
    return dict(spec, layers=[dict(layer, channels=max(1, round(layer["channels"] * width)))
                              for layer in spec["layers"]])


def has_test_split(dataset_cfg):
    """Whether the dataset config has a test split (a folder needs test_root; a torchvision class
    its own test split)."""
    from cwnnk.params import DATASETS

    name = dataset_cfg["name"]
    if name == "folder":
        return bool(dataset_cfg.get("test_root"))
    if name in DATASETS:
        return True
    return split_arguments(name)[1] is not None


def _external_spec(model_cfg, dataset_cfg, weights):
    """Spec of a torchvision or factory model: input size and classes follow the weights or the dataset."""
    from cwnnk.models import import_factory, torchvision_builder, weights_enum

    arch = model_cfg["arch"]
    spec = {"arch": arch, **({"name": model_cfg["name"]} if arch == "torchvision" else
                             {"factory": model_cfg["factory"]}),
            "kwargs": dict(model_cfg.get("kwargs") or {}), "weights": weights}
    try:
        torchvision_builder(spec["name"]) if arch == "torchvision" else import_factory(spec["factory"])
        enum = weights_enum(spec)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    channels = 3 if arch == "torchvision" else model_cfg.get("in_channels", 3)
    preprocess = {}
    if enum is not None:
        t = enum.transforms()
        preprocess = dict(image_size=int(t.crop_size[0]), resize=int(t.resize_size[0]),
                          interpolation=t.interpolation.value, source=f"{spec['name']} {weights}.transforms()")
        spec["normalize"] = {"mean": list(t.mean), "std": list(t.std)}
    try:
        size = preprocess.get("image_size") or dataset_signature(dataset_cfg)[0][1]
    except ValueError as err:
        raise ConfigError(str(err)) from None
    spec["input_shape"] = [channels, size, size]
    spec["preprocess"] = preprocess
    if model_cfg.get("normalize"):
        spec["normalize"] = dict(model_cfg["normalize"])
    try:
        data_classes = dataset_num_classes(dataset_cfg)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    weight_classes = len(enum.meta["categories"]) if enum is not None and "categories" in enum.meta else None
    num_classes = model_cfg.get("num_classes") or weight_classes or data_classes
    if num_classes is None:
        raise ConfigError("config key 'model.num_classes': the number of classes is unknown until the dataset is "
                          "read; set model.num_classes")
    if weight_classes and num_classes != weight_classes:
        raise ConfigError(f"config key 'model.num_classes': {num_classes}, but weights {spec['name']} {weights} "
                          f"predict {weight_classes} classes; cwnnk never replaces a pretrained head")
    # Weights with other classes (ImageNet's 1000 on a folder of 8) are analysed on the dataset's images and not
    # evaluated (metrics.json's accuracy_skipped says why); a model trained here must predict the dataset's classes.
    if data_classes and num_classes != data_classes and not weights:
        raise ConfigError(
            f"model {spec.get('name') or spec.get('factory')} predicts {num_classes} classes but dataset "
            f"{dataset_cfg['name']!r} has {data_classes}: cwnnk never replaces a head silently. Use a "
            "dataset with the model's classes, or set model.num_classes to the dataset's")
    spec["num_classes"] = int(num_classes)
    # A factory's head width is checked where the model is first built, in a job (cwnnk.models.Wrapped):
    # validation imports a factory but never calls it (docs/reliability.md, "A config is code").
    return spec


def _named_layers(model, entry, requested):
    """A factory model's layers as the config names them: its node names are known only by calling the
    factory, which validation and dry runs never do, so `all` and patterns cannot be resolved here. The
    extract job checks the names and their depth order against the built network."""
    names = [requested] if isinstance(requested, str) else list(requested)
    patterns = [name for name in names if name == "all" or any(ch in name for ch in "*?[")]
    if patterns:
        raise ConfigError(f"config key 'extract.layers': {patterns} for model {model!r} "
                          f"({entry['spec']['factory']}): a factory model's layers must be named one by one, in "
                          "depth order, since 'all' and patterns need the network built, and only the jobs call a "
                          "factory (docs/reliability.md); `python -m cwnnk layers --configfile FILE` builds it and "
                          "lists its node names")
    return tuple(dict.fromkeys(names))


def model_spec(model_cfg, dataset_cfg, dropout=0.0, weights=None):
    """The architecture spec (see cwnnk.models) of a model entry on a dataset, without normalisation."""
    arch = model_cfg.get("arch", "convnet")
    if arch in ("torchvision", "factory"):
        return dict(_external_spec(model_cfg, dataset_cfg, weights or model_cfg.get("weights")), dropout=dropout)
    try:
        input_shape, num_classes = dataset_signature(dataset_cfg)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    spec = {"arch": arch, "input_shape": input_shape, "num_classes": num_classes, "dropout": dropout}
    if spec["arch"] == "convnet":
        spec["layers"] = [dict(padding="valid", pool=False) | layer for layer in model_cfg["layers"]]
    else:
        spec["cifar_stem"] = model_cfg.get("cifar_stem", True)
    return spec


def _arch_label(model_cfg):
    """The architecture part of a model name: convnet, resnet18, a torchvision name or the factory's function."""
    arch = model_cfg.get("arch", "convnet")
    if arch == "torchvision":
        return model_cfg["name"]
    if arch == "factory":
        return model_cfg["factory"].rsplit(":", 1)[-1].rsplit(".", 1)[-1]
    return arch


def _weights_label(weights):
    from cwnnk.models import is_weights_file

    return Path(weights).stem if is_weights_file(weights) else weights


def expand_models(config):
    """All models of the experiment, name -> entry, trained ones first (sweep order), then external.

    entry: name, kind ('trained', 'snapshot', 'external' or 'untrained'), spec, twin (the name of
    its untrained twin, or None), and the settings that tables and figures group by: dropout,
    weight_decay, augment, seed, label_noise, n_train, width, epochs (the run's length), run (the
    training run: itself, or the run a snapshot or twin belongs to), epoch (the epoch analysed)
    and label. A snapshot is epoch E of a run (training.save_epochs), analysed as a model of its
    own and written by the run's train job. With baseline.untrained, a run's twin <run>-e0 is its
    initial weights, also written by its train job, and an external model's twin
    <name>-untrained is its architecture re-initialised with seed baseline.seed (rule
    untrained_twin); twins follow the models they belong to.
    """
    models = OrderedDict()
    sweep = config["sweep"]
    arch = config["model"]["arch"]
    from cwnnk.models import is_weights_file

    dropouts = sweep["dropout"] if arch == "convnet" else [0.0]
    weights = config["model"].get("weights")
    if weights:  # a pretrained model: imported, evaluated and analysed, never trained
        name = f"{_arch_label(config['model'])}-{_weights_label(weights)}"
        models[name] = dict(
            name=name, kind="external", path=weights if is_weights_file(weights) else None,
            spec=model_spec(config["model"], config["dataset"]), dropout=0.0, weight_decay=None, augment=None,
            seed=None, label_noise=None, n_train=None, width=None, epochs=None, run=name, epoch=None,
            label="pretrained", download=bool(config["model"].get("download")),
        )
        dropouts = []
    arch = _arch_label(config["model"])
    save_epochs = config["training"]["save_epochs"]
    factors = itertools.product(dropouts, sweep["weight_decay"], sweep["augment"], sweep["label_noise"],
                                sweep["n_train"], sweep["width"], sweep["epochs"], sweep["seeds"])
    for dropout, wd, augment, noise, n_train, width, epochs, seed in factors:
        name = model_name(arch, dropout, wd, augment, seed, noise, n_train, width, epochs)
        run_epochs = epochs or config["training"]["epochs"]
        late = [e for e in save_epochs if e >= run_epochs]
        if late:
            raise ConfigError(f"config key 'training.save_epochs': {late} not below the {run_epochs} epochs of {name}")
        entry = dict(
            name=name, kind="trained", spec=_widen(model_spec(config["model"], config["dataset"], dropout), width),
            dropout=dropout, weight_decay=wd, augment=augment, seed=seed, label_noise=noise, n_train=n_train,
            width=width, epochs=run_epochs, run=name, epoch=run_epochs,
            label=_label(dropout, wd, augment, noise, n_train, width),
        )
        twin = f"{name}-e0" if config["baseline"]["untrained"] else None
        models[name] = dict(entry, twin=twin)
        for e in save_epochs:
            models[f"{name}-e{e}"] = dict(entry, name=f"{name}-e{e}", kind="snapshot", epoch=e, twin=twin)
        if twin:
            models[twin] = dict(entry, name=twin, kind="untrained", epoch=0, twin=None)
    for i, ext in enumerate(config["external"]):
        if ext["name"] in models:
            raise ConfigError(f"config key 'external.{i}.name': {ext['name']!r} is already a model name")
        _check_model(ext["model"], f"external.{i}.model")
        dropout = ext["dropout"]
        path = ext.get("path") or ext["model"].get("weights")
        if not path:
            raise ConfigError(f"config key 'external.{i}.path': {ext['name']!r} needs a checkpoint path "
                              "(or model.weights of a torchvision model)")
        tv = ext["model"].get("arch") in ("torchvision", "factory")
        models[ext["name"]] = dict(
            name=ext["name"], kind="external", path=path if is_weights_file(path) or not tv else None,
            spec=model_spec(ext["model"], config["dataset"], dropout, weights=path if tv else None),
            dropout=dropout, weight_decay=None, augment=None, seed=None, label_noise=None, n_train=None,
            width=None, epochs=None, run=ext["name"], epoch=None, label=ext.get("label", "external"),
            download=bool(ext["model"].get("download")),
        )
        if ext.get("layers") is not None:
            models[ext["name"]]["layers"] = ext["layers"]
    for name in [m for m, e in models.items() if e["kind"] == "external"]:
        models[name]["twin"] = None
        if config["baseline"]["untrained"]:
            twin = f"{name}-untrained"
            if twin in models or any(ext["name"] == twin for ext in config["external"]):
                raise ConfigError(f"config key 'external': a model is named {twin!r}, the name of {name!r}'s untrained "
                                  "twin; rename it or set baseline.untrained: false")
            models[name]["twin"] = twin
            models[twin] = dict(models[name], name=twin, kind="untrained", path=None, seed=config["baseline"]["seed"],
                                epoch=0, twin=None, download=False)
    return models


def _matches(name, patterns):
    """Whether a model name matches one of pruning.models' shell-style patterns."""
    from fnmatch import fnmatchcase

    return any(fnmatchcase(name, pattern) for pattern in patterns)


def _check_pruned(pruning, models):
    """Every pattern of pruning.models matches a final model (a typo would silently prune nothing)."""
    finals = [m for m, e in models.items() if e["kind"] in ("trained", "external")]
    unmatched = [p for p in pruning["models"] if not any(_matches(m, [p]) for m in finals)]
    if pruning["enabled"] and unmatched:
        listing = ", ".join(finals[:6]) + (f", ... ({len(finals)} in all)" if len(finals) > 6 else "")
        raise ConfigError(f"config key 'pruning.models': {unmatched} match no final model (trained here or imported; "
                          f"saved epochs and untrained twins are not pruned); final models: {listing}")


@dataclass(frozen=True)
class Experiment:
    """A validated config as the workflow runs it: the models and every stage's parameters.

    Built once (`Experiment.from_config`) by the Snakefile and the benchmarks alike; a rule's
    params are these objects, unchanged. layers: model -> its extracted layers, depth order.
    """

    config: dict
    models: OrderedDict
    layers: dict
    graphs: GraphParams
    overlap: OverlapParams
    manifolds: ManifoldParams
    figures: FigureParams

    @classmethod
    def from_config(cls, config, build=False):
        """config: as returned by `validate`. Raises ConfigError for an unknown layer name.

        build: whether a factory model may be built (its function called) to resolve `all` and patterns;
        the workflow never does (a factory runs in the jobs alone), `python -m cwnnk layers` does and says so.
        """
        from cwnnk.extract import UnknownLayerError, resolve_layers

        models = expand_models(config)
        try:
            layers = {m: _named_layers(m, e, e.get("layers", config["extract"]["layers"])) if
                      e["spec"]["arch"] == "factory" and not build else
                      tuple(resolve_layers(e["spec"], e.get("layers", config["extract"]["layers"]), m))
                      for m, e in models.items()}
        except UnknownLayerError as err:
            raise ConfigError(str(err)) from None
        _check_pruned(config["pruning"], models)
        graphs = GraphParams(**config["graphs"], seed=config["extract"]["seed"], device=config["device"])
        fig = config["figures"]
        first = next(iter(models))
        return cls(
            config=config, models=models, layers=layers, graphs=graphs, overlap=OverlapParams(),
            manifolds=ManifoldParams(dims=fig["manifold_dims"], n=fig["manifold_n"], graphs=graphs),
            figures=FigureParams(heatmap_model=fig["heatmap_model"] or first,
                                 solver_model=fig["solver_model"] or first),
        )

    @property
    def calibration(self):
        """Whether F5, F6 and the manifolds and solvers jobs run (figures.calibration; auto: every model is a
        built-in arch)."""
        setting = self.config["figures"]["calibration"]
        if setting != "auto":
            return bool(setting)
        return all(entry["spec"]["arch"] in ("convnet", "resnet18") for entry in self.models.values())

    @property
    def dataset(self):
        return DatasetParams(**self.config["dataset"])

    def dataset_of(self, model):
        """DatasetParams of a model: the `dataset` section as the model sees it (torchvision and
        factory models get their input channels and size, pretrained torchvision weights their own
        resize, crop and interpolation), with a trained run's training-set size, label noise and
        validation split (training.validation: train and extract hold out the same images)."""
        entry, dataset = self.models[model], self.dataset
        spec = entry["spec"]
        if spec["arch"] in ("torchvision", "factory"):
            pre = {key: value for key, value in spec.get("preprocess", {}).items() if key != "source"}
            dataset = dataset.replace(**{"channels": spec["input_shape"][0], "image_size": spec["input_shape"][1],
                                         **pre})
        if self.models[entry["run"]]["kind"] == "external":  # the model, or its twin
            return dataset
        size = {} if entry["n_train"] is None else {"n_train": entry["n_train"]}
        return dataset.replace(label_noise=entry["label_noise"], validation=self.config["training"]["validation"],
                               **size)

    def snapshots(self, model):
        """Names of the models a run's train job writes besides the run: its saved epochs, then its
        untrained twin (epoch 0)."""
        return [m for m, e in self.models.items() if e["kind"] in ("snapshot", "untrained") and e["run"] == model
                and self.models[model]["kind"] == "trained"]

    def train(self, model):
        """TrainParams of a trained model: the shared `training` settings and its sweep point."""
        entry = self.models[model]
        training = dict(self.config["training"], epochs=entry["epochs"], untrained_twin=entry["twin"] is not None)
        del training["validation"]  # part of the dataset (dataset_of), which extract sees as well
        return TrainParams(dataset=self.dataset_of(model), seed=entry["seed"], weight_decay=entry["weight_decay"],
                           augment=entry["augment"], device=self.config["device"], **training)

    def import_(self, model):
        """ImportParams of an external checkpoint or pretrained model."""
        return ImportParams(dataset=self.dataset_of(model), device=self.config["device"],
                            download=self.models[model].get("download", False))

    @property
    def pruned(self):
        """The models the pruning stage runs on (pruning.enabled): final models (trained here or imported, not
        saved epochs or untrained twins) with a test split, whose classes are the dataset's (accuracy is defined)."""
        if not self.config["pruning"]["enabled"] or not has_test_split(self.config["dataset"]):
            return []
        classes = dataset_num_classes(self.config["dataset"])
        patterns = self.config["pruning"]["models"]
        return [m for m, e in self.models.items() if e["kind"] in ("trained", "external") and self.layers[m]
                and (classes is None or e["spec"].get("num_classes") in (None, classes))
                and _matches(m, patterns)]

    def prune(self, model):
        """PruneParams of a model: the `pruning` settings, and the TrainParams its fine-tunes use (an imported
        model's: the `training` section's optimizer, batch size and learning rate, no augmentation)."""
        settings = {key: value for key, value in self.config["pruning"].items() if key not in ("enabled", "models")}
        if self.models[model]["kind"] == "trained":
            train = self.train(model).replace(save_epochs=(), untrained_twin=False)
        else:
            training = {key: value for key, value in self.config["training"].items()
                        if key not in ("validation", "save_epochs")}
            train = TrainParams(dataset=self.dataset_of(model), device=self.config["device"], **training)
        return PruneParams(train=train, **settings)

    def extract(self, model):
        """ExtractParams of a model: its resolved layers and the `extract` settings."""
        settings = {key: value for key, value in self.config["extract"].items() if key != "layers"}
        return ExtractParams(dataset=self.dataset_of(model), layers=self.layers[model], device=self.config["device"],
                             **settings)


def _rows(schema, defs, prefix=""):
    """(key, type, default, description) for every key of the schema, depth first."""
    for key, sub in schema.get("properties", {}).items():
        path = f"{prefix}{key}"
        node = defs[sub["$ref"].split("/")[-1]] if "$ref" in sub else sub
        kind = node.get("type") or ("enum" if "enum" in node else "one of" if "oneOf" in node else "object")
        kind = " or ".join(kind) if isinstance(kind, list) else kind
        if "enum" in node:
            kind = " \\| ".join(map(str, node["enum"]))
        default = sub.get("default", node.get("default", ""))
        yield path, kind, default, sub.get("description", node.get("description", ""))
        if "properties" in node:
            yield from _rows(node, defs, path + ".")
        items = node.get("items", {})
        if "properties" in items:
            yield from _rows(items, defs, path + "[].")


def configuration_markdown(schema=None):
    """The configuration reference (docs/configuration.md), generated from the schema."""
    schema = schema or load_schema()
    lines = [
        "# Configuration reference",
        "",
        "Generated from `workflow/schemas/config.schema.yaml` by `python -m cwnnk.config > docs/configuration.md`",
        "(a test checks that this file is up to date). Every key is optional: the default applies when it is",
        "left out. A bad value stops Snakemake before any job runs, naming the key, the value and what is allowed.",
        "",
        "| key | type | default | description |",
        "| --- | --- | --- | --- |",
    ]
    for key, kind, default, description in _rows(schema, schema.get("$defs", {})):
        shown = "" if default == "" else (
            f"`{yaml.safe_dump(default, default_flow_style=True, width=10**9).strip().removesuffix('...').strip()}`")
        text = " ".join(str(description).split()).replace("|", "\\|")
        lines.append(f"| `{key}` | {kind} | {shown} | {text} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(configuration_markdown(), end="")
