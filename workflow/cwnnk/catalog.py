"""What cwnnk knows about a dataset without loading it: its image shape, classes and splits.

Torch-free, so that the config layer (cwnnk.config, cwnnk.preflight) validates a config and plans a
run without importing torch; cwnnk.datasets loads the images. Only a torchvision dataset class
(dataset.name: MNIST, SVHN, ...) imports torchvision, to read the class's signature.
"""

from pathlib import Path

NATIVE_SIZE = {"digits": 8, "cifar10": 32, "synthetic": 12, "CIFAR10": 32, "CIFAR100": 32, "SVHN": 32, "MNIST": 28,
               "FashionMNIST": 28, "KMNIST": 28, "QMNIST": 28, "STL10": 96, "USPS": 16, "SEMEION": 16, "FER2013": 48,
               "PCAM": 96, "Omniglot": 105}
NATIVE_CHANNELS = {"digits": 1, "MNIST": 1, "FashionMNIST": 1, "KMNIST": 1, "QMNIST": 1, "USPS": 1, "SEMEION": 1,
                   "FER2013": 1, "Omniglot": 1}
# Classes of each supported torchvision class as torchvision labels them (FGVCAircraft: its
# default annotation_level 'variant'; Omniglot: the background set's characters).
NATIVE_CLASSES = {"digits": 10, "CIFAR10": 10, "CIFAR100": 100, "SVHN": 10, "MNIST": 10, "FashionMNIST": 10,
                  "KMNIST": 10, "QMNIST": 10, "STL10": 10, "USPS": 10, "Food101": 101, "Flowers102": 102, "DTD": 47,
                  "GTSRB": 43, "FER2013": 7, "StanfordCars": 196, "Country211": 211, "RenderedSST2": 2, "PCAM": 2,
                  "OxfordIIITPet": 37, "FGVCAircraft": 100, "ImageNet": 1000, "Imagenette": 10, "Places365": 365,
                  "Caltech101": 101, "Caltech256": 257, "EuroSAT": 10, "SUN397": 397, "SEMEION": 10, "Omniglot": 964}


def dataset_classes():
    """Names of torchvision's dataset classes (candidates for dataset.name)."""
    import torchvision.datasets

    return sorted(n for n in torchvision.datasets.__all__ if n[0].isupper())


# The torchvision classes dataset.name may name: the keyword argument that picks a split, and
# its values for the training split and for the labelled held-out split used as the test split
# (None: the class has one split only, so there is no test split and accuracy is skipped).
# A `train` bool where the class has one; else the class's own `split` names (never 'test'
# blindly: ImageNet has train/val, SVHN's 'extra' and STL10's 'unlabeled' are no test sets).
TORCHVISION_SPLITS = {
    **{name: ("train", True, False) for name in ("CIFAR10", "CIFAR100", "MNIST", "FashionMNIST", "KMNIST", "QMNIST",
                                                 "USPS")},
    **{name: ("split", "train", "test") for name in ("SVHN", "STL10", "Food101", "Flowers102", "DTD", "GTSRB",
                                                     "FER2013", "StanfordCars", "Country211", "RenderedSST2", "PCAM")},
    "OxfordIIITPet": ("split", "trainval", "test"),
    "FGVCAircraft": ("split", "trainval", "test"),
    "ImageNet": ("split", "train", "val"),  # test labels never published: val is the held-out set
    "Imagenette": ("split", "train", "val"),
    "Places365": ("split", "train-standard", "val"),  # its test split has no labels
    **{name: (None, None, None) for name in ("Caltech101", "Caltech256", "EuroSAT", "SUN397", "SEMEION", "Omniglot")},
}


def split_arguments(name):
    """(training split kwargs, test split kwargs or None) of torchvision dataset class `name`.

    Raises ValueError naming dataset.name for a class that is not a torchvision dataset class,
    that needs a required argument no config key sets (e.g. EMNIST's split), or whose splits
    cwnnk does not know (detection, segmentation, video, ...).
    """
    import inspect

    import torchvision.datasets as tvd

    if name not in dataset_classes():
        raise ValueError(f"config key 'dataset.name': {name!r} is not a torchvision dataset class; expected digits, "
                         "cifar10, synthetic, folder or one of " + ", ".join(sorted(TORCHVISION_SPLITS)))
    instead = ("or convert the images to an ImageFolder tree (one sub-folder per class) and set dataset.name: folder "
               "with dataset.root (and dataset.test_root)")
    params = inspect.signature(getattr(tvd, name)).parameters.values()
    required = [p.name for p in params if p.name != "root" and p.default is inspect.Parameter.empty
                and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)]
    if required:
        raise ValueError(f"config key 'dataset.name': {name!r} (a torchvision class) needs the argument(s) "
                         f"{required}, which no config key sets; use another class "
                         f"({', '.join(sorted(TORCHVISION_SPLITS))}) {instead}")
    if name not in TORCHVISION_SPLITS:
        raise ValueError(f"config key 'dataset.name': {name!r} (a torchvision class) is not a dataset cwnnk can "
                         f"read as image classification with known training and test splits; expected one of "
                         f"{', '.join(sorted(TORCHVISION_SPLITS))}, {instead}")
    key, train, test = TORCHVISION_SPLITS[name]
    if key is None:
        return {}, None
    return {key: train}, ({key: test} if test is not None else None)


def validation_size(n, fraction):
    """How many of n training images training.validation = fraction holds out (preflight counts with it)."""
    return max(1, int(round(fraction * n))) if fraction else 0


def dataset_num_classes(cfg):
    """Number of classes of a dataset config without loading it (None where only the files tell)."""
    name = cfg["name"]
    if name == "cifar10":
        return len(cfg.get("classes") or range(10))
    if name == "synthetic":
        return cfg.get("num_classes", 4)
    if name == "folder":
        root = Path(cfg.get("root", ""))
        classes = [d for d in root.iterdir() if d.is_dir()] if root.is_dir() else None
        return len(classes) if classes else None
    if name != "digits":
        split_arguments(name)  # a class cwnnk cannot open: say why when the config is read, not in a job
    return NATIVE_CLASSES.get(name)


def dataset_signature(cfg):
    """(input_shape, num_classes) of a dataset config, known without loading any data.

    num_classes is None where it is only known from the files (a folder, an unlisted class).
    """
    name = cfg["name"]
    size = cfg.get("image_size") or NATIVE_SIZE.get(name)
    if size is None:
        raise ValueError(f"config key 'dataset.image_size': dataset {name!r} has no fixed image size; "
                         "set dataset.image_size (the side of the centre crop the model sees)")
    channels = cfg.get("channels") or NATIVE_CHANNELS.get(name, 1 if name == "synthetic" else 3)
    return [channels, size, size], dataset_num_classes(cfg)
