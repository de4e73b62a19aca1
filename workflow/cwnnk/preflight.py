"""Checks made from the config and the declared inputs before any job runs (docs/reliability.md).

Snakemake deletes a job's old outputs before it runs the job, so a check that only a job can
make (k against the number of samples, a missing checkpoint) costs the valid results of the
last run. Every such check that the config alone decides is made here, at parse time
(workflow/rules/common.smk), and reported as one ConfigError listing every problem by key.
"""

import math
from pathlib import Path

from cwnnk.catalog import validation_size
from cwnnk.config import ConfigError, Experiment

# Training images of the fixed datasets (digits: sklearn's 1,797 with a stratified 20 % test split).
DIGITS_TRAIN = 1797 - math.ceil(0.2 * 1797)
CIFAR10_TRAIN_PER_CLASS = 5000


def _folder_images(root):
    """Images of an image-folder tree (one sub-folder per class), counted by file name as torchvision's
    ImageFolder finds them, no image opened; None where the folder cannot be read."""
    from torchvision.datasets.folder import IMG_EXTENSIONS

    try:
        classes = [d for d in Path(root).iterdir() if d.is_dir()]
    except OSError:
        return None
    return sum(1 for d in classes for f in d.rglob("*") if f.suffix.lower() in IMG_EXTENSIONS) or None


def available(dataset, read=False):
    """Images of the training split that n_train draws from, known without loading the dataset
    (None: unknown, or unbounded as for synthetic, which generates n_train images). read: also read a
    torchvision class's labels (its files, no image decoded), too slow for every parse of the Snakefile."""
    name = dataset.get("name")
    if name == "digits":
        return DIGITS_TRAIN
    if name == "cifar10":
        return CIFAR10_TRAIN_PER_CLASS * len(dataset.get("classes") or range(10))
    if name == "folder" and dataset.get("root"):
        return _folder_images(dataset["root"])
    if read and name not in ("synthetic", "folder"):
        from cwnnk.datasets import labelled_train_images

        return labelled_train_images(dataset)
    return None


def train_size(dataset, read=False):
    """Training images of a `dataset` config section (or DatasetParams dict) after its n_train and
    before any validation split, known without loading it (None: unknown; read: as `available`)."""
    if dataset.get("name") == "synthetic":
        return dataset.get("n_train") or 512
    full = available(dataset, read)
    if full is None:
        return None
    return min(full, dataset["n_train"]) if dataset.get("n_train") else full


def graph_samples(config, dataset=None, read=False):
    """N of a graphs job: the training images of `dataset` (a model's DatasetParams dict; default
    the config's `dataset` section) less its validation split, then extract.n_samples and
    graphs.n_samples. None when the dataset's size is not known from the config (read: as `available`)."""
    dataset = config["dataset"] if dataset is None else dataset
    n = train_size(dataset, read)
    if n is None:
        return None
    n -= validation_size(n, dataset.get("validation") or 0)
    for cap in (config["extract"].get("n_samples"), config["graphs"].get("n_samples")):
        if cap is not None:
            n = min(n, cap)
    return n


def _smallest_level(k, fraction):
    """The smallest training-set size that keeps more than k images after a validation split of
    `fraction` (N(L) = L - validation_size(L) never decreases with L)."""
    # N(L) <= L (1 - fraction) + 1/2, so no level below (k - 1/2) / (1 - fraction) keeps more than k.
    level = max(k + 1, int((k - 0.5) / (1 - fraction)))
    while level - validation_size(level, fraction) <= k:
        level += 1
    return level


def _size_problems(exp, k):
    """Problems of the training-set sizes the models see: a dataset.n_train or sweep.n_train level
    above the dataset's training images, a validation split that leaves none, and graphs of
    N <= graphs.k. One check per distinct (key, size, validation) of the models."""
    config, found, seen = exp.config, [], set()
    caps = [config["extract"].get("n_samples"), config["graphs"].get("n_samples")]
    cap = min((c for c in caps if c is not None), default=None)
    for model, entry in exp.models.items():
        dataset = exp.dataset_of(model).to_dict()
        level, fraction = dataset.get("n_train"), dataset.get("validation") or 0
        swept = entry["kind"] != "external" and entry["n_train"] is not None
        key = "sweep.n_train" if swept else "dataset.n_train" if level is not None else None
        if (key, level, fraction) in seen:
            continue
        seen.add((key, level, fraction))
        name, full = dataset["name"], available(dataset)
        what = f"level {level}" if swept else f"{level}"
        if key and full is not None and level > full:
            per_class = (f" ({CIFAR10_TRAIN_PER_CLASS} per class of dataset.classes = {dataset.get('classes')})"
                         if name == "cifar10" else "")
            found.append(("config", f"config key '{key}': {what} exceeds the {full} training images of dataset "
                          f"'{name}'{per_class}; expected {'levels' if swept else 'a value'} of at most {full}"))
            continue
        size = train_size(dataset)
        if size is None:
            continue
        held = validation_size(size, fraction)
        if held >= size:
            found.append(("config", f"config key 'training.validation': {fraction!r} holds out {held} of the {size} "
                          f"training images{f' ({key} {what})' if key else ''} and leaves none to train on; "
                          "expected a smaller fraction"))
            continue
        n = graph_samples(config, dataset)
        if k < n:
            continue
        detail = (f"dataset '{name}' training split{f', {key} = {level}' if key else ''}"
                  f"{f', training.validation = {fraction!r} holds out {held}' if held else ''}, "
                  f"extract.n_samples = {caps[0]}, graphs.n_samples = {caps[1]}")
        smallest = _smallest_level(k, fraction) if swept and (cap is None or cap > k) else None
        if smallest is not None and (full is None or smallest <= full):
            found.append(("config", f"config key 'sweep.n_train': level {level} leaves graphs of N = {n} samples "
                          f"({detail}), not more than graphs.k = {k}; use levels of at least {smallest} or lower "
                          f"graphs.k below {n}"))
        else:
            found.append(("config", f"config key 'graphs.k': {k} needs more than k samples per graph, but the graphs "
                          f"have N = {n} ({detail}); lower graphs.k below {n} or store more samples"))
    return found


def problems(exp):
    """Every problem of a validated Experiment that would make a job fail, as (kind, message):
    kind 'config' (the settings alone decide it) or 'file' (a path the config names); [] if none."""
    config = exp.config
    k = config["graphs"]["k"]
    found = _size_problems(exp, k)
    manifold_n = config["figures"]["manifold_n"]
    if k >= manifold_n:
        found.append(("config", f"config key 'graphs.k': {k} needs more than k samples, but figures.manifold_n = "
                      f"{manifold_n}; raise figures.manifold_n above {k} or lower graphs.k"))
    from cwnnk.models import is_weights_file

    weights = [(f"external.{i}.path", ext["name"], ext.get("path")) for i, ext in enumerate(config.get("external", []))]
    weights += [(f"external.{i}.model.weights", ext["name"], ext["model"].get("weights"))
                for i, ext in enumerate(config.get("external", [])) if not ext.get("path")]
    weights.append(("model.weights", "the pretrained model", config["model"].get("weights")))
    for key, name, path in weights:  # files here; a torchvision weights name below
        if path is None or not is_weights_file(path):
            continue
        path = Path(path)
        if not path.is_file():
            what = "is a folder, not a checkpoint file" if path.is_dir() else "does not exist"
            found.append(("file", f"config key '{key}': {str(path)!r} (model {name!r}) {what} "
                          f"(relative to {Path.cwd()}); fix the path or remove the entry"))
    found += _hub_problems(exp)
    dataset = config["dataset"]
    if dataset.get("name") == "cifar10" and not dataset.get("download"):
        folder = Path(dataset["root"]) / "cifar-10-batches-py"
        if not folder.is_dir():
            found.append(("file", f"config key 'dataset.root': no CIFAR-10 at {str(folder)!r} (relative to "
                          f"{Path.cwd()}); put the extracted 'cifar-10-batches-py' folder there or set "
                          "dataset.download: true"))
    return found


def _hub_problems(exp):
    """Torchvision weights named by the config (IMAGENET1K_V1) but not in the torch hub cache, where the run may not
    download them: the import job would fail after the others had run."""
    from cwnnk.models import hub_file, missing_hub_weights, weights_enum

    found, seen = [], set()
    for model, entry in exp.models.items():
        spec = entry["spec"]
        if spec.get("arch") != "torchvision" or not spec.get("weights") or entry.get("download"):
            continue
        try:
            enum = weights_enum(spec)
        except ValueError:
            continue
        if enum is None or enum in seen:
            continue
        seen.add(enum)
        if not hub_file(enum).is_file():
            found.append(("file", f"config key 'model.weights' (model {model!r}): {missing_hub_weights(spec, enum)}"))
    return found


def check(exp):
    """Raise ConfigError listing every problem of `problems(exp)`, one line each."""
    errors = [message for _, message in problems(exp)]
    if errors:
        raise ConfigError("the configuration cannot run:\n  " + "\n  ".join(errors))


def canonical(obj):
    """obj with every mapping's keys sorted (recursively) and tuples as lists: equal settings give an
    equal repr, which is what Snakemake compares to decide whether a job's params changed."""
    if isinstance(obj, dict):
        return {key: canonical(obj[key]) for key in sorted(obj, key=str)}
    if isinstance(obj, (list, tuple)):
        return [canonical(value) for value in obj]
    return obj


def load_yaml(path):
    """A config file's contents; ConfigError naming the file, line and column of a YAML syntax error."""
    import yaml

    try:
        text = Path(path).read_text()
    except OSError as err:
        raise ConfigError(f"{path}: cannot read the config file ({err.strerror})") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = " ".join(filter(None, [getattr(err, "context", None), getattr(err, "problem", None)])) or str(err)
        raise ConfigError(f"{path}{where}: YAML syntax error: {problem}; fix that line (indent with spaces, close "
                          "every bracket and quote)") from None


def main(argv=None):
    """`python -m cwnnk.preflight CONFIG...`: what Snakemake would refuse, one line per problem."""
    import sys

    from cwnnk.config import validate

    paths = (sys.argv[1:] if argv is None else argv) or ["config.yaml"]
    failed = False
    for path in paths:
        try:
            check(Experiment.from_config(validate(load_yaml(path) or {})))
            print(f"{path}: ok")
        except ConfigError as err:
            failed = True
            print(f"{path}: {err}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
