import hashlib
import pickle

import numpy as np
import pytest
import torch

from cwnnk.catalog import dataset_signature
from cwnnk.datasets import load_cifar10, load_dataset, load_digits, load_synthetic, stratified_subset


def test_digits_split_is_stratified_scaled_and_fixed():
    ds = load_digits(image_size=16)
    assert ds.train.images.shape == (1437, 1, 16, 16) and ds.test.images.shape == (360, 1, 16, 16)
    assert 0.0 <= ds.train.images.min() and ds.train.images.max() <= 1.0 and ds.train.images.max() > 0.9
    train_frac = np.bincount(ds.train.labels.numpy()) / len(ds.train)
    test_frac = np.bincount(ds.test.labels.numpy()) / len(ds.test)
    assert np.abs(train_frac - test_frac).max() < 0.01
    assert not set(ds.train.indices) & set(ds.test.indices)
    again = load_digits(image_size=16)
    assert np.array_equal(again.train.indices, ds.train.indices)
    assert list(ds.input_shape) == dataset_signature({"name": "digits", "image_size": 16})[0]


def test_digits_native_size_matches_sklearn():
    from sklearn.datasets import load_digits as sk

    ds = load_digits(image_size=None)
    raw = sk().images
    i = ds.train.indices[5]
    assert torch.allclose(ds.train.images[5, 0], torch.tensor(raw[i] / 16.0, dtype=torch.float32))


def test_synthetic_is_deterministic_and_learnable():
    a, b = load_synthetic(seed=3), load_synthetic(seed=3)
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.train.labels, b.train.labels)
    assert not torch.equal(a.train.images, load_synthetic(seed=4).train.images)
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(max_iter=2000).fit(a.train.images.flatten(1).numpy(), a.train.labels.numpy())
    accuracy = clf.score(a.test.images.flatten(1).numpy(), a.test.labels.numpy())
    assert accuracy > 0.8  # chance is 0.25 with 4 classes


def test_stratified_subset_keeps_class_balance():
    labels = np.repeat(np.arange(4), [100, 200, 300, 400])
    picks = stratified_subset(labels, 100, seed=0)
    assert len(picks) == 100 and len(set(picks)) == 100
    assert np.bincount(labels[picks]).tolist() == [10, 20, 30, 40]
    assert np.array_equal(picks, stratified_subset(labels, 100, seed=0))
    assert not np.array_equal(picks, stratified_subset(labels, 100, seed=1))


def test_stratified_subset_with_a_small_class():
    labels = np.array([0] * 2 + [1] * 50 + [2] * 50)
    counts = np.bincount(labels[stratified_subset(labels, 60, seed=0)])
    assert counts.sum() == 60 and counts[0] <= 2


def _write_cifar(root, n_per_batch, rng):
    """A miniature CIFAR-10 in its own on-disk format: pickled dicts with str keys (as Python 2
    wrote them), data as uint8 rows of 3072 (R, G, B planes of 32x32) and labels."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    files = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labels = rng.integers(0, 10, n_per_batch).tolist()
        data = rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8)
        (folder / name).write_bytes(pickle.dumps({"data": data, "labels": labels, "batch_label": name}, protocol=2))
        files[name] = (data, labels)
    names = "airplane automobile bird cat deer dog frog horse ship truck".split()
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": names}, protocol=2))
    return folder, files


@pytest.fixture
def mini_cifar(tmp_path, monkeypatch):
    from torchvision.datasets import CIFAR10

    folder, files = _write_cifar(tmp_path, 40, np.random.default_rng(0))

    def md5(name):
        return hashlib.md5((folder / name).read_bytes()).hexdigest()

    # torchvision checks each batch against CIFAR-10's published md5 sums: register ours.
    monkeypatch.setattr(CIFAR10, "train_list", [[f"data_batch_{i}", md5(f"data_batch_{i}")] for i in range(1, 6)])
    monkeypatch.setattr(CIFAR10, "test_list", [["test_batch", md5("test_batch")]])
    monkeypatch.setattr(CIFAR10, "meta", {"filename": "batches.meta", "key": "label_names", "md5": md5("batches.meta")})
    return tmp_path, files


def test_cifar10_reads_the_batch_format(mini_cifar):
    root, files = mini_cifar
    ds = load_cifar10(root=root)
    assert ds.train.images.shape == (200, 3, 32, 32) and ds.test.images.shape == (40, 3, 32, 32)
    data, labels = files["data_batch_1"]
    first = torch.tensor(data[0].reshape(3, 32, 32), dtype=torch.float32) / 255
    assert torch.allclose(ds.train.images[0], first) and ds.train.labels[0] == labels[0]


def test_cifar10_class_subset_and_stratified_size(mini_cifar):
    root, files = mini_cifar
    ds = load_cifar10(root=root, classes=[0, 8], n_train=10, seed=1)
    all_labels = np.concatenate([np.array(files[f"data_batch_{i}"][1]) for i in range(1, 6)])
    assert ds.classes == ("airplane", "ship") and set(ds.train.labels.tolist()) <= {0, 1}
    assert len(ds.train) == 10
    # relabelled 0 -> airplane (0), 1 -> ship (8), and indices point at the source rows
    assert np.array_equal(np.where(ds.train.labels.numpy() == 0, 0, 8), all_labels[ds.train.indices])
    expected = np.bincount(np.isin(all_labels, [8])[np.isin(all_labels, [0, 8])])
    assert abs(int(ds.train.labels.sum()) - 10 * expected[1] / expected.sum()) < 1


def test_cifar10_missing_says_where_and_how(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        load_cifar10(root=tmp_path / "nowhere", download=False)
    assert str(tmp_path / "nowhere") in str(err.value) and "download: true" in str(err.value)


def test_load_dataset_dispatches_and_rejects_unknown():
    ds = load_dataset({"name": "synthetic", "n_train": 20, "n_test": 10, "image_size": 8, "root": "ignored"})
    assert ds.train.images.shape == (20, 1, 8, 8)
    with pytest.raises(ValueError, match="mnist"):
        load_dataset({"name": "mnist"})


def test_label_noise_is_reproducible_and_touches_training_labels_only():
    from cwnnk.datasets import load_dataset, noisy_labels

    clean = load_dataset({"name": "digits"})
    noisy = load_dataset({"name": "digits", "label_noise": 0.2})
    again = load_dataset({"name": "digits", "label_noise": 0.2})
    assert torch.equal(noisy.train.labels, again.train.labels)
    assert torch.equal(noisy.test.labels, clean.test.labels) and torch.equal(noisy.test.images, clean.test.images)
    flipped = noisy.train.labels != clean.train.labels
    assert flipped.sum().item() == round(0.2 * len(clean.train))  # every chosen label changes class
    assert torch.equal(noisy.clean_train_labels, clean.train.labels)
    assert noisy_labels([0, 1, 2], 0.0, 3, 0).tolist() == [0, 1, 2]


def test_label_noise_of_another_seed_flips_other_images(mini_cifar):
    # cifar10 without n_train keeps every training image whatever the seed (digits' split moves
    # with dataset.seed), so the two draws are compared on the same images.
    root, _ = mini_cifar
    base = {"name": "cifar10", "root": str(root), "label_noise": 0.2}
    a, b = load_dataset(dict(base, seed=0)), load_dataset(dict(base, seed=1))
    assert np.array_equal(a.train.indices, b.train.indices) and torch.equal(a.clean_train_labels, b.clean_train_labels)
    flipped_a, flipped_b = a.train.labels != a.clean_train_labels, b.train.labels != b.clean_train_labels
    assert flipped_a.sum() == flipped_b.sum() == 40  # 0.2 of the 200 training images each
    assert not torch.equal(flipped_a, flipped_b)


def test_digits_training_set_size_is_a_stratified_subset():
    from cwnnk.datasets import load_dataset

    small = load_dataset({"name": "digits", "n_train": 200})
    assert len(small.train) == 200 and len(small.test) == 360
    assert np.bincount(small.train.labels.numpy()).min() >= 19
    with pytest.raises(ValueError, match=r"config key 'sweep.n_train' \(a level\) or 'dataset.n_train': 5000 exceeds "
                                          r"the 1437 training images of dataset 'digits'"):
        load_dataset({"name": "digits", "n_train": 5000})


def test_validation_split_is_stratified_seeded_and_held_out_of_training():
    from cwnnk.datasets import load_dataset

    base = {"name": "digits", "n_train": 400, "label_noise": 0.2}
    whole = load_dataset(base)  # the labelled training data the user has (n_train, then noise)
    ds = load_dataset(dict(base, validation=0.1))
    val, train = ds.validation, ds.train
    assert len(val) == 40 and len(train) == 360 and len(ds.test) == len(whole.test)
    # Disjoint, and together exactly the training data of the run without a validation split.
    assert not set(val.indices.tolist()) & set(train.indices.tolist())
    assert sorted([*val.indices.tolist(), *train.indices.tolist()]) == sorted(whole.train.indices.tolist())
    # Each image keeps its (noisy) label and its pixels; the true labels follow the kept images.
    label_of = dict(zip(whole.train.indices.tolist(), whole.train.labels.tolist()))
    clean_of = dict(zip(whole.train.indices.tolist(), whole.clean_train_labels.tolist()))
    image_of = {int(i): whole.train.images[n] for n, i in enumerate(whole.train.indices)}
    for split in (val, train):
        assert split.labels.tolist() == [label_of[i] for i in split.indices.tolist()]
        assert all(torch.equal(split.images[n], image_of[int(i)]) for n, i in enumerate(split.indices))
    assert ds.clean_train_labels.tolist() == [clean_of[i] for i in train.indices.tolist()]
    assert (val.labels != torch.as_tensor([clean_of[i] for i in val.indices.tolist()])).any()  # noise kept
    # Stratified by the labels trained on: 4 of each of the 10 classes (400 has 40 per class +- 1).
    counts = np.bincount(whole.train.labels.numpy(), minlength=10)
    assert np.abs(np.bincount(val.labels.numpy(), minlength=10) - 0.1 * counts).max() < 1
    # Seeded: the same config gives the same split; another dataset seed another one.
    again = load_dataset(dict(base, validation=0.1))
    assert np.array_equal(again.validation.indices, val.indices) and torch.equal(again.train.labels, train.labels)
    other = load_dataset(dict(base, validation=0.1, seed=1))
    assert not np.array_equal(other.validation.indices, val.indices)


def test_no_validation_split_leaves_the_dataset_as_before():
    from cwnnk.datasets import load_dataset

    for base in ({"name": "digits", "n_train": 200, "label_noise": 0.2},
                 {"name": "synthetic", "n_train": 40, "n_test": 20, "image_size": 8}):
        old, zero = load_dataset(base), load_dataset(dict(base, validation=0.0))
        assert zero.validation is None and old.validation is None
        for a, b in ((old.train, zero.train), (old.test, zero.test)):
            assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
            assert np.array_equal(a.indices, b.indices)
        assert torch.equal(old.clean_train_labels, zero.clean_train_labels)


def test_validation_split_that_leaves_nothing_to_train_on_is_refused():
    from cwnnk.datasets import load_dataset, validation_positions

    assert validation_positions([0, 1, 0, 1], 0.01, 0).tolist() in ([0], [1], [2], [3])  # at least one image
    with pytest.raises(ValueError, match="config key 'training.validation': 0.95 .* 10 of the 10"):
        load_dataset({"name": "synthetic", "n_train": 10, "n_test": 5, "image_size": 8, "validation": 0.95})


# --- torchvision classes: which split is the training split and which the test split ---------

def _jpeg(path, colour, size=(12, 10)):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path, quality=95)


def _colour_of(image):
    """The mean (R, G, B) of a (3, H, W) image in [0, 1], as 0..255."""
    return (image.mean(dim=(1, 2)) * 255).tolist()


def _close(image, colour, tolerance=6):  # JPEG shifts a flat colour by a few levels
    return all(abs(a - b) <= tolerance for a, b in zip(_colour_of(image), colour))


# A flat colour per (split, class): a loaded image tells which file it came from.
FOOD = {"train": {"waffles": (200, 40, 40), "apple_pie": (40, 200, 40), "sushi": (40, 40, 200)},
        "test": {"waffles": (120, 20, 20), "apple_pie": (20, 120, 20), "sushi": (20, 20, 120)}}


def _write_food101(root, per_class):
    """A miniature Food-101 in its own layout: food-101/meta/{train,test}.json map each class to
    'class/id' names, the images are food-101/images/<class>/<id>.jpg. Returns, per split, the
    (class, colour) of each sample in torchvision's order (the json's class order)."""
    import json

    base, samples = root / "food-101", {}
    for split, n in per_class.items():
        meta, samples[split] = {}, []
        for cls, colour in FOOD[split].items():
            meta[cls] = [f"{cls}/{split}{i}" for i in range(n)]
            for name in meta[cls]:
                _jpeg(base / "images" / f"{name}.jpg", colour)
                samples[split].append((cls, colour))
        (base / "meta").mkdir(parents=True, exist_ok=True)
        (base / "meta" / f"{split}.json").write_text(json.dumps(meta))
    return samples


def test_food101_reads_its_train_and_test_splits_through_load_dataset(tmp_path):
    samples = _write_food101(tmp_path, {"train": 4, "test": 2})
    ds = load_dataset({"name": "Food101", "root": str(tmp_path), "image_size": 8})
    classes = ("apple_pie", "sushi", "waffles")  # torchvision sorts Food-101's class names
    assert ds.classes == classes and ds.input_shape == (3, 8, 8)
    assert len(ds.train) == 12 and len(ds.test) == 6
    for split in ("train", "test"):
        part = ds.split(split)
        for n, i in enumerate(part.indices):
            cls, colour = samples[split][i]
            assert part.labels[n] == classes.index(cls)
            assert _close(part.images[n], colour), (split, cls, _colour_of(part.images[n]))
    # n_train / n_test draw stratified subsets of those splits.
    small = load_dataset({"name": "Food101", "root": str(tmp_path), "image_size": 8, "n_train": 6, "n_test": 3})
    assert np.bincount(small.train.labels.numpy()).tolist() == [2, 2, 2]
    assert np.bincount(small.test.labels.numpy()).tolist() == [1, 1, 1]


def test_imagenet_uses_its_val_split_as_the_test_split(tmp_path):
    """ImageNet has train and val only (its test labels were never published): val is the test
    split. Its own layout: meta.bin (wnid -> class names, the val images' wnids) and one folder
    per wnid under train/ and val/ (what torchvision leaves after parsing the archives)."""
    colours = {("train", "n01440764"): (200, 40, 40), ("train", "n01443537"): (40, 200, 40),
               ("val", "n01440764"): (120, 20, 20), ("val", "n01443537"): (20, 120, 20)}
    for (split, wnid), colour in colours.items():
        for i in range(3 if split == "train" else 2):
            _jpeg(tmp_path / split / wnid / f"{split}_{i}.JPEG", colour)
    torch.save(({"n01440764": ("tench", "Tinca tinca"), "n01443537": ("goldfish", "Carassius auratus")},
                ["n01440764"] * 2 + ["n01443537"] * 2), tmp_path / "meta.bin")
    ds = load_dataset({"name": "ImageNet", "root": str(tmp_path), "image_size": 8})
    assert ds.classes == ("tench, Tinca tinca", "goldfish, Carassius auratus")
    assert len(ds.train) == 6 and len(ds.test) == 4
    wnids = ("n01440764", "n01443537")
    for split, part in (("train", ds.train), ("val", ds.test)):
        for image, label in zip(part.images[:], part.labels):
            assert _close(image, colours[(split, wnids[label])])


def test_a_class_with_one_split_has_no_test_split(tmp_path):
    """EuroSAT has no split argument: one ImageFolder tree at eurosat/2750, no test split."""
    for cls, colour in (("Forest", (40, 160, 40)), ("River", (40, 40, 160))):
        for i in range(3):
            _jpeg(tmp_path / "eurosat" / "2750" / cls / f"{cls}_{i}.jpg", colour)
    ds = load_dataset({"name": "EuroSAT", "root": str(tmp_path), "image_size": 8})
    assert ds.test is None and len(ds.train) == 6 and ds.classes == ("Forest", "River")
    with pytest.raises(ValueError, match="has no test split"):
        ds.split("test")


def test_split_arguments_follow_each_class_signature(tmp_path):
    """Every supported class gets a `train` bool when it has one, else split names its own
    argument check accepts (an empty root then fails as 'not found', never as a bad split)."""
    import inspect

    import torchvision.datasets as tvd

    from cwnnk.catalog import TORCHVISION_SPLITS, split_arguments

    for name in TORCHVISION_SPLITS:
        cls = getattr(tvd, name)
        accepted = inspect.signature(cls).parameters
        train, test = split_arguments(name)
        if "train" in accepted:
            assert (train, test) == ({"train": True}, {"train": False}), name
        elif "split" in accepted:
            assert set(train) == {"split"} and set(test or {}) <= {"split"} and train != test, name
        else:
            assert (train, test) == ({}, None), name
        for kwargs in filter(None, (train, test)):
            extra = {"download": False} if "download" in accepted else {}
            with pytest.raises((RuntimeError, OSError)):  # a split name it rejects: ValueError
                cls(root=str(tmp_path / "empty"), **kwargs, **extra)
    # The cases the audit found, against torchvision's documented split names.
    assert split_arguments("ImageNet") == ({"split": "train"}, {"split": "val"})
    assert split_arguments("SVHN") == ({"split": "train"}, {"split": "test"})  # not 'extra'
    assert split_arguments("STL10") == ({"split": "train"}, {"split": "test"})  # not 'unlabeled'
    assert split_arguments("OxfordIIITPet") == ({"split": "trainval"}, {"split": "test"})
    assert split_arguments("Flowers102")[1] == {"split": "test"}


def test_unsupported_torchvision_classes_are_refused_naming_the_key():
    from cwnnk.catalog import split_arguments
    from cwnnk.config import ConfigError, model_spec, validate

    # EMNIST's required `split` is its label set (byclass, digits, ...), which no key sets.
    with pytest.raises(ValueError, match=r"'dataset.name': 'EMNIST' .*needs the argument\(s\) \['split'\].*folder"):
        split_arguments("EMNIST")
    with pytest.raises(ValueError, match=r"'dataset.name': 'VOCDetection' .*not a dataset cwnnk can read.*Food101"):
        split_arguments("VOCDetection")
    # Refused when the config is read (a ConfigError), before any job.
    with pytest.raises(ConfigError, match="'EMNIST'"):
        validate({"dataset": {"name": "EMNIST", "image_size": 28}})
    with pytest.raises(ConfigError, match="'EMNIST'"):  # also where a model's spec reads the dataset's shape
        model_spec({"arch": "convnet", "layers": [{"channels": 2}]}, {"name": "EMNIST", "image_size": 28})


def test_digits_image_size_null_is_the_native_size_end_to_end():
    """dataset.image_size: null keeps digits at 8 x 8: the loader, the signature the model is built from and a
    training step agree (before, the loader upsampled to 16 and the train job died on a shape mismatch)."""
    from cwnnk.config import Experiment, validate
    from cwnnk.datasets import load_dataset
    from cwnnk.models import build_model

    config = validate({"dataset": {"name": "digits", "image_size": None},
                       "sweep": {"dropout": [0.0], "seeds": [1], "label_noise": [0.0], "n_train": [None]}})
    exp = Experiment.from_config(config)
    model = next(iter(exp.models))
    data = load_dataset(exp.train(model).dataset)
    spec = exp.models[model]["spec"]
    assert list(data.input_shape) == spec["input_shape"] == [1, 8, 8]
    logits = build_model(spec)(data.train.images[:4])
    assert logits.shape == (4, 10)
