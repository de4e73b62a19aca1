"""Image classification datasets as in-memory tensors.

Every loader returns a `Dataset` with train and test splits of float32 images in
[0, 1], shape (N, C, H, W), int64 labels and the original sample indices. Input
normalisation is part of the model (see models.py), so the same tensors feed
training and extraction.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


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
        return Split(self.images[positions], self.labels[positions], self.indices[positions])


@dataclass
class Dataset:
    name: str
    train: Split
    test: Split
    classes: tuple
    clean_train_labels: torch.Tensor | None = None  # the true training labels (under label noise)

    @property
    def num_classes(self):
        return len(self.classes)

    @property
    def input_shape(self):
        return tuple(self.train.images.shape[1:])

    def split(self, name):
        if name not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {name!r}")
        return getattr(self, name)

    def channel_stats(self):
        """Per-channel mean and std of the training images (the model's input normalisation)."""
        x = self.train.images
        return x.mean(dim=(0, 2, 3)).tolist(), x.std(dim=(0, 2, 3)).clamp_min(1e-6).tolist()


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


def load_digits(image_size=16, test_fraction=0.2, seed=0):
    """scikit-learn's bundled 8x8 handwritten digits (1,797 images), upsampled to image_size.

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


def load_synthetic(n_train=512, n_test=256, num_classes=4, image_size=12, channels=1, noise=0.3, seed=0):
    """A generated image task with real, learnable class structure.

    Each class is a fixed random smooth template (low-frequency pattern); a sample is its
    class template, randomly shifted by up to 2 pixels and scaled, plus pixel noise.
    Deterministic by seed.
    """
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand(num_classes, channels, 4, 4, generator=gen)
    templates = F.interpolate(coarse, size=(image_size, image_size), mode="bicubic", align_corners=False)

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


def noisy_labels(labels, rate, num_classes, seed):
    """Labels with round(rate * N) of them, drawn by seed, replaced by a uniformly drawn other class."""
    labels = np.asarray(labels).copy()
    if rate == 0:
        return labels
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x1abe1]))
    flip = rng.choice(len(labels), size=int(round(rate * len(labels))), replace=False)
    labels[flip] = (labels[flip] + rng.integers(1, num_classes, size=len(flip))) % num_classes
    return labels


def load_dataset(params):
    """Build a Dataset from DatasetParams (or a `dataset` config mapping, checked the same way).

    A digits n_train keeps a stratified subset of the training split (seed); label_noise then
    replaces that share of the training labels (never the test labels) by another class, the
    same draw for every model with the same dataset seed. The true labels stay in
    `Dataset.clean_train_labels`.
    """
    from cwnnk.params import DatasetParams

    params = DatasetParams.from_dict(params)
    loaders = {"digits": load_digits, "cifar10": load_cifar10, "synthetic": load_synthetic}
    values = params.to_dict()
    kwargs = {k: v for k, v in values.items() if k in _PARAMS[params.name] and v is not None}
    dataset = loaders[params.name](**kwargs)
    if params.n_train is not None and params.name == "digits":
        if params.n_train > len(dataset.train):
            raise ValueError(f"n_train = {params.n_train} exceeds the {len(dataset.train)} training images of digits")
        dataset.train = dataset.train.subset(stratified_subset(dataset.train.labels.numpy(), params.n_train,
                                                               params.seed))
    dataset.clean_train_labels = dataset.train.labels
    if params.label_noise:
        noisy = noisy_labels(dataset.train.labels.numpy(), params.label_noise, dataset.num_classes, params.seed)
        dataset.train = Split(dataset.train.images, torch.as_tensor(noisy), dataset.train.indices)
    return dataset


# The config keys each loader takes (the schema holds the keys of every dataset).
_PARAMS = {
    "digits": {"image_size", "seed"},
    "cifar10": {"root", "download", "classes", "n_train", "n_test", "seed", "image_size"},
    "synthetic": {"n_train", "n_test", "num_classes", "image_size", "channels", "noise", "seed"},
}


NATIVE_SIZE = {"digits": 8, "cifar10": 32, "synthetic": 12}


def dataset_signature(cfg):
    """(input_shape, num_classes) of a dataset config, known without loading any data."""
    name = cfg["name"]
    size = cfg.get("image_size") or NATIVE_SIZE[name]
    if name == "digits":
        return [1, size, size], 10
    if name == "cifar10":
        return [3, size, size], len(cfg.get("classes") or range(10))
    return [cfg.get("channels", 1), size, size], cfg.get("num_classes", 4)
