"""Each stage's settings as one frozen, validated object.

`cwnnk.config.Experiment` builds them once from the validated config; the Snakemake rules hand
them unchanged to the scripts, and the benchmarks and the library take the same objects. A
library user builds one directly, e.g. `GraphParams(k=10)`, and a bad value is refused there,
naming the config key it corresponds to.

Snakemake compares a job's params by their repr: fields have a fixed order and sequences are
tuples, so the same settings always give the same params, whatever the config's key order.
"""

import re
from dataclasses import asdict, dataclass, field, fields, replace

DEVICE = re.compile(r"^(auto|cpu|cuda(:[0-9]+)?)$")
DATASETS = ("digits", "cifar10", "synthetic", "folder")
INTERPOLATIONS = ("bilinear", "bicubic", "nearest")
KERNELS = ("gaussian", "cosine")
SIGMAS = ("local", "global")
SOLVERS = ("exact", "pynnk")
DUPLICATES = ("drop", "keep")
SYMMETRIZE = ("none", "max", "pynnk")
OPTIMIZERS = ("sgd", "adam")
LR_SCHEDULES = ("cosine", "constant")
AUGMENTS = ("none", "shift", "shift_flip")
COMPRESSORS = ("none", "zstd")
# Support threshold tau: theta_ij > tau counts as an edge (docs/method.md).
TOL = 1e-10


def _refuse(key, value, expected):
    raise ValueError(f"config key '{key}': {value!r} is not allowed; expected {expected}")


def nearest(name, valid, n=5):
    """Up to n of `valid` closest to name (case-insensitive), else the first n."""
    import difflib

    valid = list(valid)
    lower = {v.lower(): v for v in valid}
    close = difflib.get_close_matches(str(name).lower(), list(lower), n=n, cutoff=0.4)
    return [lower[c] for c in close] or valid[:n]


def _choice(key, value, allowed):
    if value not in allowed:
        _refuse(key, value, f"one of {list(allowed)}")


def _integer(key, value, minimum, allow_none=False):
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        _refuse(key, value, f"an integer >= {minimum}" + (" or null" if allow_none else ""))


def _number(key, value, low, high=None, *, open_low=False, open_high=False):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        _refuse(key, value, "a number")
    too_low = value <= low if open_low else value < low
    too_high = high is not None and (value >= high if open_high else value > high)
    if too_low or too_high:
        left, right = "(" if open_low else "[", ")" if open_high else "]"
        _refuse(key, value, f"a number in {left}{low}, {'inf' if high is None else high}{right}")


def _device(key, value):
    if not isinstance(value, str) or not DEVICE.match(value):
        _refuse(key, value, "'auto', 'cpu', 'cuda' or 'cuda:N'")


def _without_device(values):
    return {key: _without_device(value) if isinstance(value, dict) else value for key, value in values.items()
            if key != "device"}


def _with_device(cls, values, device):
    values = dict(values)
    for f in fields(cls):
        if f.name == "device":
            values["device"] = device
        elif isinstance(f.type, type) and issubclass(f.type, _Params) and isinstance(values.get(f.name), dict):
            values[f.name] = _with_device(f.type, values[f.name], device)
    return values


class _Params:
    """Shared behaviour: a plain dict for JSON provenance, and `replace` for one changed value."""

    def to_dict(self):
        return asdict(self)

    def tracked(self):
        """to_dict() without `device` at any depth: what a rule's params hold. The device is an execution
        setting: the workflow passes it as a job resource, so that changing it reruns nothing (results on
        either device are valid, as on either CPU code path), and from_dict(..., device=) puts it back."""
        return _without_device(asdict(self))

    def replace(self, **changes):
        return replace(self, **changes)

    @classmethod
    def from_dict(cls, values, device=None):
        """Build from a mapping (e.g. a config section); unknown keys are refused by name. device: set it
        wherever these settings (or the settings nested in them) have one (the workflow's tracked() dicts)."""
        if isinstance(values, cls):
            return values
        if device is not None:
            values = _with_device(cls, values, device)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"{cls.__name__}: unknown key(s) {unknown}; allowed: {sorted(known)}")
        return cls(**values)


@dataclass(frozen=True)
class DatasetParams(_Params):
    """The image dataset (config section `dataset`); each loader reads the keys it knows.

    name: digits, cifar10, synthetic, folder (an ImageFolder tree at root, test split at test_root)
    or any torchvision dataset class name (e.g. CIFAR100, MNIST, SVHN). channels: the model's input
    channels the images are converted to (None: the dataset's own).
    """

    name: str = "digits"
    image_size: int | None = None
    root: str = "data/cifar10"
    download: bool = False
    classes: tuple | None = None
    n_train: int | None = None
    n_test: int | None = None
    num_classes: int = 4
    channels: int | None = None
    noise: float = 0.3
    seed: int = 0
    test_root: str | None = None
    resize: int | None = None
    interpolation: str = "bilinear"
    # The model's sweep point (sweep.label_noise): share of training labels flipped, drawn by seed.
    label_noise: float = 0.0
    # Config key training.validation (here so that train and extract see the same split): share
    # of the training images, after n_train and label noise, held out as a stratified validation
    # split (seeded by seed); the model trains on the rest, and only the rest is extracted.
    validation: float = 0.0

    def __post_init__(self):
        if self.name not in DATASETS:
            from cwnnk.catalog import dataset_classes

            _choice("dataset.name", self.name, (*DATASETS, *dataset_classes()))
        _integer("dataset.resize", self.resize, 4, allow_none=True)
        _choice("dataset.interpolation", self.interpolation, INTERPOLATIONS)
        _integer("dataset.image_size", self.image_size, 4, allow_none=True)
        if self.classes is not None:
            object.__setattr__(self, "classes", tuple(self.classes))
        _integer("dataset.n_train", self.n_train, 1, allow_none=True)
        _integer("dataset.n_test", self.n_test, 1, allow_none=True)
        _integer("dataset.num_classes", self.num_classes, 2)
        _integer("dataset.channels", self.channels, 1, allow_none=True)
        _number("dataset.noise", self.noise, 0)
        _number("sweep.label_noise[]", self.label_noise, 0, 1, open_high=True)
        _number("training.validation", self.validation, 0, 1, open_high=True)


@dataclass(frozen=True)
class TrainParams(_Params):
    """Training of one model (config `training`, the model's sweep point, `dataset`, `device`)."""

    dataset: DatasetParams = field(default_factory=DatasetParams)
    seed: int = 1
    weight_decay: float = 0.0
    augment: str = "none"
    optimizer: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    lr_schedule: str = "cosine"
    epochs: int = 15
    batch_size: int = 64
    save_epochs: tuple = ()
    untrained_twin: bool = False  # also save the initial weights (epoch 0): the run's untrained twin
    device: str = "auto"

    def __post_init__(self):
        object.__setattr__(self, "dataset", DatasetParams.from_dict(self.dataset))
        if not isinstance(self.untrained_twin, bool):
            _refuse("baseline.untrained", self.untrained_twin, "true or false")
        object.__setattr__(self, "save_epochs", tuple(self.save_epochs))
        _integer("sweep.seeds[]", self.seed, 0)
        _number("sweep.weight_decay[]", self.weight_decay, 0)
        _choice("sweep.augment[]", self.augment, AUGMENTS)
        _choice("training.optimizer", self.optimizer, OPTIMIZERS)
        _number("training.lr", self.lr, 0, open_low=True)
        _number("training.momentum", self.momentum, 0, 1)
        _choice("training.lr_schedule", self.lr_schedule, LR_SCHEDULES)
        _integer("training.epochs", self.epochs, 1)
        _integer("training.batch_size", self.batch_size, 1)
        for epoch in self.save_epochs:
            _integer("training.save_epochs[]", epoch, 1)
            if epoch >= self.epochs:
                _refuse("training.save_epochs[]", epoch, f"an epoch below the run's {self.epochs} epochs")
        _device("device", self.device)


@dataclass(frozen=True)
class ImportParams(_Params):
    """Evaluation of an external checkpoint on the dataset (rule import_checkpoint)."""

    dataset: DatasetParams = field(default_factory=DatasetParams)
    device: str = "auto"
    download: bool = False  # torchvision weights absent from the torch hub cache may be downloaded

    def __post_init__(self):
        object.__setattr__(self, "dataset", DatasetParams.from_dict(self.dataset))
        _device("device", self.device)


@dataclass(frozen=True)
class ExtractParams(_Params):
    """Which activations of one model are stored (config `extract`, `dataset`, `device`).

    layers: the stable layer names, or "all" (the workflow resolves them per model, so that its
    params name the layers).
    """

    dataset: DatasetParams = field(default_factory=DatasetParams)
    layers: tuple | str = "all"
    n_samples: int | None = 1000
    test_split: bool = False
    batch_size: int = 256
    seed: int = 0
    compressor: str = "zstd"
    device: str = "auto"

    def __post_init__(self):
        object.__setattr__(self, "dataset", DatasetParams.from_dict(self.dataset))
        if self.layers != "all":
            layers = (self.layers,) if isinstance(self.layers, str) else tuple(self.layers)
            if not layers or not all(isinstance(name, str) for name in layers):
                _refuse("extract.layers", self.layers, "'all' or at least one layer name")
            object.__setattr__(self, "layers", layers)
        _integer("extract.n_samples", self.n_samples, 2, allow_none=True)
        _integer("extract.batch_size", self.batch_size, 1)
        _choice("extract.compressor", self.compressor, COMPRESSORS)
        _device("device", self.device)

    @property
    def splits(self):
        return ("train", "test") if self.test_split else ("train",)


@dataclass(frozen=True)
class GraphParams(_Params):
    """CW-NNK graph construction of one layer (config `graphs`, `extract.seed`, `device`).

    seed: of the stratified subsample of n_samples stored samples (null: every stored sample).
    """

    k: int = 25
    kernel: str = "gaussian"
    sigma: str = "local"
    solver: str = "exact"
    duplicates: str = "drop"
    n_samples: int | None = None
    seed: int = 0
    symmetrize: str = "none"
    device: str = "auto"

    def __post_init__(self):
        _integer("graphs.k", self.k, 2)
        _choice("graphs.kernel", self.kernel, KERNELS)
        _choice("graphs.sigma", self.sigma, SIGMAS)
        _choice("graphs.solver", self.solver, SOLVERS)
        _choice("graphs.duplicates", self.duplicates, DUPLICATES)
        _integer("graphs.n_samples", self.n_samples, 3, allow_none=True)
        _choice("graphs.symmetrize", self.symmetrize, SYMMETRIZE)
        _device("device", self.device)

    def engine(self):
        """The keyword arguments of cwnnk.engine.nnk / nnk_stream these settings fix."""
        return dict(k=self.k, kernel=self.kernel, sigma=self.sigma, solver=self.solver, duplicates=self.duplicates,
                    device=self.device)


@dataclass(frozen=True)
class OverlapParams(_Params):
    """Layer metrics from a graphs folder (rule overlap): tol is the support threshold tau."""

    tol: float = TOL

    def __post_init__(self):
        _number("overlap.tol", self.tol, 0, 1e-3, open_low=True, open_high=True)


@dataclass(frozen=True)
class ManifoldParams(_Params):
    """The F5 experiment (config `figures.manifold_*`), with the real layers' kernel settings."""

    dims: tuple = (1, 2, 4, 8, 16)
    n: int = 2000
    D: int = 64
    seed: int = 0
    graphs: GraphParams = field(default_factory=GraphParams)

    def __post_init__(self):
        object.__setattr__(self, "dims", tuple(self.dims))
        object.__setattr__(self, "graphs", GraphParams.from_dict(self.graphs))
        if not self.dims:
            _refuse("figures.manifold_dims", self.dims, "at least one intrinsic dimension")
        for d in self.dims:
            _integer("figures.manifold_dims[]", d, 1)
        _integer("figures.manifold_n", self.n, 3)


@dataclass(frozen=True)
class FigureParams(_Params):
    """Figures F1-F6 (config `figures`): the models drawn by F4 and F6 (None: the first)."""

    heatmap_model: str | None = None
    solver_model: str | None = None


@dataclass(frozen=True)
class PruneParams(_Params):
    """The pruning experiment of one model (config `pruning`; cwnnk.pruning).

    train: the model's TrainParams (its dataset, and the optimizer, batch size, augmentation and seed its
    fine-tunes use); fractions: the shares of each layer's channels removed (0 is the unpruned model);
    random_draws: seeded random orders; finetune_epochs: epochs of each fine-tune (0: none);
    finetune_lr_factor: the fine-tune's constant learning rate as a share of training.lr;
    finetune_each_layer: also fine-tune the rows that prune one layer alone (else only `all`).
    """

    train: TrainParams = field(default_factory=TrainParams)
    fractions: tuple = (0.0, 0.1, 0.25, 0.5, 0.75)
    random_draws: int = 3
    finetune_epochs: int = 1
    finetune_lr_factor: float = 0.1
    finetune_each_layer: bool = False
    seed: int = 0

    def __post_init__(self):
        object.__setattr__(self, "train", TrainParams.from_dict(self.train))
        if isinstance(self.fractions, (str, bytes)) or not hasattr(self.fractions, "__iter__"):
            _refuse("pruning.fractions", self.fractions, "a list of numbers in [0, 1)")
        object.__setattr__(self, "fractions", tuple(self.fractions))
        for fraction in self.fractions:
            _number("pruning.fractions[]", fraction, 0, 1, open_high=True)
        if len(set(self.fractions)) != len(self.fractions) or list(self.fractions) != sorted(self.fractions):
            _refuse("pruning.fractions", list(self.fractions), "distinct fractions in increasing order")
        if not self.fractions or self.fractions[0] != 0:
            _refuse("pruning.fractions", list(self.fractions), "a list that starts at 0 (the unpruned model)")
        if len(self.fractions) < 2:
            _refuse("pruning.fractions", list(self.fractions), "0 and at least one fraction above it")
        _integer("pruning.random_draws", self.random_draws, 1)
        _integer("pruning.finetune_epochs", self.finetune_epochs, 0)
        _number("pruning.finetune_lr_factor", self.finetune_lr_factor, 0, open_low=True)
        if not isinstance(self.finetune_each_layer, bool):
            _refuse("pruning.finetune_each_layer", self.finetune_each_layer, "true or false")
        _integer("pruning.seed", self.seed, 0)

    @property
    def finetune_lr(self):
        return self.finetune_lr_factor * self.train.lr
