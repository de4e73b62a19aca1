"""Image classification datasets as in-memory tensors.

Every loader returns a `Dataset` with train and test splits of float32 images in
[0, 1], shape (N, C, H, W), int64 labels and the original sample indices. Input
normalisation is part of the model (see models.py), so the same tensors feed
training and extraction.

Besides the built-in digits, cifar10 and synthetic, `dataset.name` may be a torchvision
image-classification dataset class with a local root (those of `cwnnk.catalog.TORCHVISION_SPLITS`: CIFAR100,
MNIST, SVHN, STL10, Food101, ImageNet, ...) or `folder` (a torchvision ImageFolder tree). Their
images are decoded on demand (`LazyImages`), batch by batch, so a large folder is never held in
memory whole.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cwnnk.catalog import NATIVE_CHANNELS, split_arguments, validation_size

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


@dataclass
class Split:
    images: torch.Tensor  # (N, C, H, W) float32 in [0, 1]
    labels: torch.Tensor  # (N,) int64, 0 .. num_classes - 1
    indices: np.ndarray  # (N,) position of each sample in the source split

    def __len__(self):
        return len(self.labels)

    def subset(self, positions):
        positions = np.asarray(positions)
        images = self.images
        if isinstance(images, LazyImages):
            images = LazyImages(images.source, images.positions[positions], images.transform, images.shape[1:],
                                images.paths)
        else:
            images = images[positions]
        return Split(images, self.labels[positions], self.indices[positions])


@dataclass
class Dataset:
    name: str
    train: Split
    test: Split | None  # None: the dataset has no test split (accuracy and claim C4 are skipped)
    classes: tuple
    clean_train_labels: torch.Tensor | None = None  # the true training labels (under label noise)
    validation: Split | None = None  # held out of the training split (training.validation); None: none

    @property
    def num_classes(self):
        return len(self.classes)

    @property
    def input_shape(self):
        return tuple(self.train.images.shape[1:])

    def split(self, name):
        if name not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {name!r}")
        if getattr(self, name) is None:
            raise ValueError(f"dataset {self.name!r} has no {name} split (a folder without dataset.test_root, or a "
                             "torchvision class with one split only)")
        return getattr(self, name)

    def channel_stats(self):
        """Per-channel mean and std of the training images (the model's input normalisation)."""
        x = self.train.images
        if isinstance(x, LazyImages):
            return x.channel_stats()
        return x.mean(dim=(0, 2, 3)).tolist(), x.std(dim=(0, 2, 3)).clamp_min(1e-6).tolist()


class LazyImages:
    """(N, C, H, W) float32 images in [0, 1] decoded on demand from a torchvision dataset.

    Indexing (an int, a slice, or an array/tensor of positions) decodes those images only; a file
    that cannot be decoded raises ValueError naming it.
    """

    def __init__(self, source, positions, transform, shape, paths=None):
        self.source, self.positions, self.transform = source, np.asarray(positions), transform
        self.shape = (len(self.positions), *shape)
        self.paths = paths

    def __len__(self):
        return self.shape[0]

    def _one(self, position):
        try:
            image = self.source[int(position)][0]
            return self.transform(image)
        except Exception as err:  # noqa: BLE001 - a corrupt or unreadable file
            where = self.paths[int(position)] if self.paths is not None else f"sample {int(position)}"
            raise ValueError(f"cannot read image {where}: {type(err).__name__}: {err}") from None

    def __getitem__(self, index):
        if isinstance(index, torch.Tensor):
            index = index.numpy()
        chosen = self.positions[index]
        if np.ndim(chosen) == 0:
            return self._one(chosen)
        if len(chosen) == 0:
            return torch.empty((0, *self.shape[1:]))
        return torch.stack([self._one(p) for p in chosen])

    def channel_stats(self, batch=256):
        total, squares, count = 0.0, 0.0, 0
        for start in range(0, len(self), batch):
            x = self[start : start + batch].double()
            total = total + x.sum(dim=(0, 2, 3))
            squares = squares + (x**2).sum(dim=(0, 2, 3))
            count += x.shape[0] * x.shape[2] * x.shape[3]
        mean = total / count
        std = (squares / count - mean**2).clamp_min(0).sqrt().clamp_min(1e-6)
        return mean.float().tolist(), std.float().tolist()


def stratified_subset(labels, n, seed):
    """Sorted positions of a class-balanced random subset of size n (largest remainders first).

    Deterministic for a given seed. Classes too small for their share give what they have
    and the rest is spread over the other classes.
    """
    labels = np.asarray(labels)
    if n is None or n >= len(labels):
        return np.arange(len(labels))
    if n <= 0:
        raise ValueError(f"n_samples must be positive, got {n}")
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    exact = n * counts / counts.sum()
    quota = np.minimum(counts, np.floor(exact).astype(int))
    # Hand out what is left to the largest remainders first, skipping full classes.
    order = np.argsort(-(exact - np.floor(exact)), kind="stable")
    while quota.sum() < n:
        for c in order:
            if quota.sum() < n and quota[c] < counts[c]:
                quota[c] += 1
    picks = [rng.choice(np.flatnonzero(labels == c), size=q, replace=False) for c, q in zip(classes, quota)]
    return np.sort(np.concatenate(picks))


def _resize(images, size):
    if size is None or images.shape[-1] == size:
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)


def _split(images, labels, indices=None):
    images = torch.as_tensor(images, dtype=torch.float32).contiguous()
    labels = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
    indices = np.arange(len(labels)) if indices is None else np.asarray(indices)
    return Split(images, labels, indices)


def load_digits(image_size=None, test_fraction=0.2, seed=0):
    """scikit-learn's bundled 8x8 handwritten digits (1,797 images), upsampled to image_size (None: the native
    8 x 8, as dataset.image_size: null says; load_dataset drops a None, so this default is what null means).

    The train/test split is stratified and fixed by seed. Source indices are the
    positions in sklearn's array.
    """
    from sklearn.datasets import load_digits as sk_digits
    from sklearn.model_selection import train_test_split

    data = sk_digits()
    images = torch.as_tensor(data.images / 16.0, dtype=torch.float32)[:, None]
    images = _resize(images, image_size)
    positions = np.arange(len(data.target))
    tr, te = train_test_split(positions, test_size=test_fraction, stratify=data.target, random_state=seed)
    tr, te = np.sort(tr), np.sort(te)
    return Dataset(
        "digits",
        _split(images[tr], data.target[tr], tr),
        _split(images[te], data.target[te], te),
        tuple(str(d) for d in range(10)),
    )


def load_cifar10(root="data/cifar10", download=False, classes=None, n_train=None, n_test=None, seed=0, image_size=None):
    """torchvision's CIFAR-10, optionally restricted to a class subset and stratified sizes.

    Labels are renumbered 0..len(classes)-1 in the order given (e.g. [0, 8] = airplane vs ship).
    """
    from torchvision.datasets import CIFAR10

    root = Path(root)
    splits = {}
    for train in (True, False):
        try:
            ds = CIFAR10(root=str(root), train=train, download=download)
        except RuntimeError as err:
            raise FileNotFoundError(
                f"CIFAR-10 not found under {root.resolve()} (looked for {root.resolve() / 'cifar-10-batches-py'}). "
                "Set dataset.download: true to fetch it, or put the extracted 'cifar-10-batches-py' folder "
                f"from https://www.cs.toronto.edu/~kriz/cifar.html there. ({err})"
            ) from None
        splits[train] = (np.asarray(ds.data), np.asarray(ds.targets))

    chosen = list(range(10)) if classes is None else list(classes)
    bad = [c for c in chosen if not 0 <= c < 10]
    if bad or len(set(chosen)) != len(chosen) or len(chosen) < 2:
        raise ValueError(f"dataset.classes must be at least 2 distinct CIFAR-10 labels in 0..9, got {classes}")
    relabel = {c: i for i, c in enumerate(chosen)}

    def build(data, targets, n, seed_offset):
        positions = np.flatnonzero(np.isin(targets, chosen))
        labels = np.array([relabel[t] for t in targets[positions]])
        keep = stratified_subset(labels, n, seed + seed_offset)
        positions, labels = positions[keep], labels[keep]
        images = torch.as_tensor(data[positions], dtype=torch.float32).permute(0, 3, 1, 2) / 255.0
        return _split(_resize(images, image_size), labels, positions)

    return Dataset(
        "cifar10",
        build(*splits[True], n_train, 0),
        build(*splits[False], n_test, 1),
        tuple(CIFAR10_CLASSES[c] for c in chosen),
    )


def synthetic_templates(num_classes, channels, image_size, gen):
    """(num_classes, channels, image_size, image_size): each class's fixed random smooth pattern."""
    coarse = torch.rand(num_classes, channels, 4, 4, generator=gen)
    return F.interpolate(coarse, size=(image_size, image_size), mode="bicubic", align_corners=False)


def load_synthetic(n_train=512, n_test=256, num_classes=4, image_size=12, channels=1, noise=0.3, seed=0):
    """A generated image task with real, learnable class structure.

    Each class is a fixed random smooth template (low-frequency pattern); a sample is its
    class template, randomly shifted by up to 2 pixels and scaled, plus pixel noise.
    Deterministic by seed.
    """
    gen = torch.Generator().manual_seed(seed)
    templates = synthetic_templates(num_classes, channels, image_size, gen)

    def sample(n):
        labels = torch.arange(n) % num_classes
        labels = labels[torch.randperm(n, generator=gen)]
        x = templates[labels]
        shifts = torch.randint(-2, 3, (n, 2), generator=gen)
        x = torch.stack([torch.roll(img, (int(s[0]), int(s[1])), dims=(1, 2)) for img, s in zip(x, shifts)])
        x = x * (0.7 + 0.6 * torch.rand(n, 1, 1, 1, generator=gen)) + noise * torch.randn(x.shape, generator=gen)
        return _split(x.clamp(0, 1), labels.numpy())

    train, test = sample(n_train), sample(n_test)
    return Dataset("synthetic", train, test, tuple(f"class{c}" for c in range(num_classes)))


def validation_positions(labels, fraction, seed):
    """Sorted positions of the validation split of training labels `labels`: a stratified
    (class-balanced) draw of round(fraction * N) of them, at least 1 when fraction > 0, seeded
    by `seed` (a stream of its own, apart from the label-noise draw). Empty for fraction 0.

    Raises ValueError naming training.validation when no training image would be left.
    """
    labels = np.asarray(labels)
    if fraction == 0:
        return np.arange(0)
    n = validation_size(len(labels), fraction)
    if n >= len(labels):
        raise ValueError(f"config key 'training.validation': {fraction!r} holds out {n} of the {len(labels)} "
                         "training images and leaves none to train on; expected a smaller fraction")
    return stratified_subset(labels, n, np.random.SeedSequence([seed, 0x7a11d]))


def noisy_labels(labels, rate, num_classes, seed):
    """Labels with round(rate * N) of them, drawn by seed, replaced by a uniformly drawn other class."""
    labels = np.asarray(labels).copy()
    if rate == 0:
        return labels
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x1abe1]))
    flip = rng.choice(len(labels), size=int(round(rate * len(labels))), replace=False)
    labels[flip] = (labels[flip] + rng.integers(1, num_classes, size=len(flip))) % num_classes
    return labels


def image_transform(image_size=None, resize=None, channels=3, interpolation="bilinear"):
    """PIL image -> (channels, S, S) float32 in [0, 1]: resize the shorter side to `resize` (default
    image_size), centre-crop to image_size (the preprocessing of torchvision's ImageClassification
    weights), and convert to the model's channels (grayscale <-> RGB)."""
    from torchvision import transforms as T

    steps = [T.Lambda(lambda im: im.convert("L" if channels == 1 else "RGB"))]
    mode = T.InterpolationMode(interpolation)
    if resize or image_size:
        steps.append(T.Resize(resize or image_size, interpolation=mode, antialias=True))
    if image_size:
        steps.append(T.CenterCrop(image_size))
    steps.append(T.ToTensor())
    if channels not in (1, 3):
        steps.append(T.Lambda(lambda x: x[:1].expand(channels, *x.shape[1:]).contiguous()))
    return T.Compose(steps)


def _labels_of(ds):
    for attr in ("targets", "labels", "_labels", "y"):
        values = getattr(ds, attr, None)
        if values is not None and len(values) == len(ds):
            break
    else:
        values = [ds[i][1] for i in range(len(ds))]
    if any(v is None for v in values):
        return None
    return np.asarray(values, dtype=np.int64)


def _class_name(c):
    # ImageNet names a class by a tuple of synonyms.
    return ", ".join(map(str, c)) if isinstance(c, (tuple, list)) else str(c)


def _check_distinct_files(samples, root):
    """Refuse an image folder in which two samples are one file: torchvision follows links while it walks
    the tree, so a link back up the tree reads its images again (under the class folder the link sits in)
    and a linked file reads one image twice, maybe under another label."""
    import os

    seen = {}
    for path, _ in samples:
        real = os.path.realpath(path)
        if real in seen:
            raise ValueError(f"image folder {Path(root).resolve()}: {seen[real]} and {path} are the same file "
                             f"({real}), reached twice through a symlink loop or a linked duplicate: each image must "
                             "be in the tree once; remove the link")
        seen[real] = path


def _open(params, train):
    """The torchvision dataset of one split, or None (a folder without test_root, a class without
    a test split)."""
    import inspect

    import torchvision.datasets as tvd

    if params.name == "folder":
        root = params.root if train else params.test_root
        if root is None:
            return None
        try:
            ds = tvd.ImageFolder(root)
        except (FileNotFoundError, RuntimeError) as err:
            key = "dataset.root" if train else "dataset.test_root"
            raise FileNotFoundError(f"config key '{key}': {Path(root).resolve()} is not an image folder tree "
                                    f"(one sub-folder of images per class): {err}") from None
        if len(ds.classes) < 2:
            raise ValueError(f"image folder {Path(root).resolve()} has {len(ds.classes)} class folder(s) "
                             f"({ds.classes}); cwnnk needs at least 2 classes (one sub-folder each)")
        _check_distinct_files(ds.samples, root)
        return ds
    train_kwargs, test_kwargs = split_arguments(params.name)
    kwargs = train_kwargs if train else test_kwargs
    if kwargs is None:
        return None
    cls = getattr(tvd, params.name)
    if "download" in inspect.signature(cls).parameters:
        kwargs = dict(kwargs, download=params.download)
    try:
        return cls(root=params.root, **kwargs)
    except (RuntimeError, OSError) as err:  # missing files (USPS: a FileNotFoundError)
        which = "".join(f" ({k}={v!r})" for k, v in kwargs.items() if k != "download")
        raise FileNotFoundError(f"torchvision {params.name}{which} not found under {Path(params.root).resolve()} "
                                f"(config key 'dataset.root'): {str(err).rstrip('.')}. Set dataset.download: true "
                                "to fetch it (online), or put its files there in torchvision's layout.") from None


def load_torchvision(params, channels=3):
    """A torchvision dataset class or an ImageFolder tree (`params.name == 'folder'`) as a Dataset.

    n_train / n_test pick stratified subsets (seeded); images are decoded lazily. A class without
    a test split, or a folder without test_root, gives `test=None`.
    """
    transform = image_transform(params.image_size, params.resize, channels, params.interpolation)
    splits, classes = {}, None
    for train in (True, False):
        ds = _open(params, train)
        if ds is None:
            splits[train] = None
            continue
        labels = _labels_of(ds)
        if labels is None:
            raise ValueError(f"config key 'dataset.name': the {'training' if train else 'test'} split of torchvision's "
                             f"{params.name} under {Path(params.root).resolve()} has samples without labels; cwnnk "
                             "needs a label for every image")
        if len(labels) == 0:
            raise ValueError(f"dataset {params.name} under {params.root}: no images")
        names = tuple(_class_name(c) for c in getattr(ds, "classes", None) or sorted(set(labels.tolist())))
        if labels.min() < 0 or labels.max() >= len(names):
            raise ValueError(f"config key 'dataset.name': torchvision's {params.name} under "
                             f"{Path(params.root).resolve()} labels its {'training' if train else 'test'} images "
                             f"{labels.min()} .. {labels.max()}, not 0 .. {len(names) - 1} for its {len(names)} "
                             "classes; cwnnk needs labels that index the classes")
        keep = stratified_subset(labels, params.n_train if train else params.n_test, params.seed + (0 if train else 1))
        paths = [p for p, _ in ds.samples] if hasattr(ds, "samples") else None
        probe = LazyImages(ds, keep[:1], transform, ())._one(keep[0])
        images = LazyImages(ds, keep, transform, tuple(probe.shape), paths)
        splits[train] = Split(images, torch.as_tensor(labels[keep]), keep)
        if classes is None:
            classes = names
        elif names != classes:
            raise ValueError(f"the test split's classes {list(names)} differ from the training split's {list(classes)}")
    name = "folder" if params.name == "folder" else params.name
    return Dataset(name, splits[True], splits[False], classes)


def convert_channels(dataset, channels):
    """The dataset with its (in-memory) images converted to `channels` (1 <-> 3), if they differ."""
    if channels is None or dataset.input_shape[0] == channels:
        return dataset

    def convert(split):
        if split is None:
            return None
        x = split.images
        if x.shape[1] == 1:
            x = x.expand(-1, channels, -1, -1).contiguous()
        elif channels == 1:
            x = x.mean(dim=1, keepdim=True)
        else:
            raise ValueError(f"cannot convert {x.shape[1]}-channel images to {channels} channels")
        return Split(x, split.labels, split.indices)

    return Dataset(dataset.name, convert(dataset.train), convert(dataset.test), dataset.classes)


def load_dataset(params):
    """Build a Dataset from DatasetParams (or a `dataset` config mapping, checked the same way).

    A digits n_train keeps a stratified subset of the training split (seed); label_noise then
    replaces that share of the training labels (never the test labels) by another class, the
    same draw for every model with the same dataset seed. The true labels stay in
    `Dataset.clean_train_labels`. validation (config key training.validation) last holds that
    share of those training images out as `Dataset.validation` (stratified by the labels
    trained on, noisy ones included; seeded by the dataset seed): `Dataset.train` is the rest.
    """
    from cwnnk.params import DatasetParams

    params = DatasetParams.from_dict(params)
    if params.name not in _PARAMS:
        dataset = load_torchvision(params, params.channels or NATIVE_CHANNELS.get(params.name, 3))
    else:
        loaders = {"digits": load_digits, "cifar10": load_cifar10, "synthetic": load_synthetic}
        values = params.to_dict()
        kwargs = {k: v for k, v in values.items() if k in _PARAMS[params.name] and v is not None}
        dataset = loaders[params.name](**kwargs)
        if params.name != "synthetic":
            dataset = convert_channels(dataset, params.channels)
        if params.n_train is not None and params.name == "digits":
            if params.n_train > len(dataset.train):
                # The job sees the merged value: either key may have set it.
                raise ValueError(f"config key 'sweep.n_train' (a level) or 'dataset.n_train': {params.n_train} exceeds "
                                 f"the {len(dataset.train)} training images of dataset 'digits'; expected at most "
                                 f"{len(dataset.train)}")
            dataset.train = dataset.train.subset(stratified_subset(dataset.train.labels.numpy(), params.n_train,
                                                                   params.seed))
    dataset.clean_train_labels = dataset.train.labels
    if params.label_noise:
        noisy = noisy_labels(dataset.train.labels.numpy(), params.label_noise, dataset.num_classes, params.seed)
        dataset.train = Split(dataset.train.images, torch.as_tensor(noisy), dataset.train.indices)
    if params.validation:
        # A split of the labelled data the user has: drawn from, and stratified by, the labels
        # trained on (noisy under label noise, like a real validation set cut from noisy data).
        held = validation_positions(dataset.train.labels.numpy(), params.validation, params.seed)
        kept = np.setdiff1d(np.arange(len(dataset.train)), held)
        clean = dataset.clean_train_labels
        dataset.validation = dataset.train.subset(held)
        dataset.train = dataset.train.subset(kept)
        dataset.clean_train_labels = clean[torch.as_tensor(kept)]
    return dataset


def labelled_train_images(params):
    """How many training images a torchvision class or an image folder holds, from its labels alone (no image
    decoded; `python -m cwnnk layers` counts N with it, through cwnnk.preflight.train_size)."""
    from cwnnk.params import DatasetParams

    return len(_labels_of(_open(DatasetParams.from_dict(params), True)))


# The config keys each loader takes (the schema holds the keys of every dataset).
_PARAMS = {
    "digits": {"image_size", "seed"},
    "cifar10": {"root", "download", "classes", "n_train", "n_test", "seed", "image_size"},
    "synthetic": {"n_train", "n_test", "num_classes", "image_size", "channels", "noise", "seed"},
}
