"""Training and evaluation of one model: seeded, deterministic on CPU, CUDA when present."""

import copy
import time

import torch
import torch.nn.functional as F

from cwnnk.datasets import Split
from cwnnk.device import resolve_device
from cwnnk.models import build_model


def augment_batch(x, kind, gen):
    """Random translations of up to 2 pixels (zero fill), and horizontal flips for 'shift_flip'."""
    if kind == "none":
        return x
    n, _, h, w = x.shape
    padded = F.pad(x, (2, 2, 2, 2))
    dy, dx = torch.randint(0, 5, (2, n), generator=gen)
    x = torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(n)])
    if kind == "shift_flip":
        flip = torch.rand(n, generator=gen) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    return x


@torch.inference_mode()
def evaluate(model, split, device, batch_size=512):
    """Mean cross-entropy loss and accuracy of model on a Split (eval mode); (None, None) without a split."""
    if split is None:
        return None, None
    model.eval()
    loss, correct = 0.0, 0
    for start in range(0, len(split), batch_size):
        x = split.images[start : start + batch_size].to(device)
        y = split.labels[start : start + batch_size].to(device)
        logits = model(x)
        loss += F.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
    return loss / len(split), correct / len(split)


def _optimizer(model, params):
    if params.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=params.lr, momentum=params.momentum,
                               weight_decay=params.weight_decay)
    return torch.optim.Adam(model.parameters(), lr=params.lr, weight_decay=params.weight_decay)


def train_model(spec, dataset, params, log=print, on_epoch=None):
    """Train a fresh model of `spec` on `dataset` with TrainParams `params`; return (model, history).

    history: one dict per epoch with train/test loss and accuracy and the epoch's seconds; under
    label noise also train_acc_clean, the accuracy on the true training labels (train_acc is
    on the labels trained on); with a validation split (dataset.validation, never trained on)
    also val_loss and val_acc, on its labels (noisy ones included). on_epoch(epoch, model,
    history), if given, runs after each epoch.
    """
    device = resolve_device(params.device)
    torch.manual_seed(params.seed)
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True)
    gen = torch.Generator().manual_seed(params.seed)
    model = build_model(spec).to(device)
    opt = _optimizer(model, params)
    epochs = params.epochs
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs) if params.lr_schedule == "cosine" else None
    train = dataset.train
    clean = dataset.clean_train_labels
    clean = None if clean is None or torch.equal(clean, train.labels) else Split(train.images, clean, train.indices)
    history = []
    if params.untrained_twin and on_epoch is not None:  # the initial weights: the run's untrained twin
        on_epoch(0, model, [_epoch_row(model, dataset, clean, device, 0, time.perf_counter())])
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        _train_epoch(model, train, opt, params, gen, device, epoch,
                     spec.get("name") or spec.get("factory") or spec["arch"])
        if sched:
            sched.step()
        row = _epoch_row(model, dataset, clean, device, epoch, start)
        train_loss, train_acc = row["train_loss"], row["train_acc"]
        test_loss, test_acc = row["test_loss"], row["test_acc"]
        history.append(row)
        left = (epochs - epoch) * sum(r["seconds"] for r in history) / epoch
        val = "" if dataset.validation is None else f"  val loss {_fmt(row['val_loss'])} acc {_fmt(row['val_acc'])}"
        log(f"epoch {epoch}/{epochs}  train loss {_fmt(train_loss)} acc {_fmt(train_acc)}{val}  "
            f"test loss {_fmt(test_loss)} acc {_fmt(test_acc)}  ({row['seconds']:.1f}s, "
            f"{len(train) / row['seconds']:.0f} images/s, about {left:.0f}s left)")
        if on_epoch is not None:
            on_epoch(epoch, model, history)
    return model.eval(), history


def _train_epoch(model, train, opt, params, gen, device, epoch, name, lr_key="training.lr"):
    """One pass over the training Split in a random order drawn from gen (augmented as params say); name
    (the model) and lr_key (the config key of the learning rate) are for the messages."""
    model.train()
    order = torch.randperm(len(train), generator=gen)
    for i in range(0, len(order), params.batch_size):
        batch = order[i : i + params.batch_size]
        x = augment_batch(train.images[batch], params.augment, gen).to(device)
        logits = model(x)
        if not isinstance(logits, torch.Tensor):  # e.g. a factory's (logits, aux logits) in training mode
            raise TypeError(f"model {name} returns a {type(logits).__name__} in training mode, not a (N, classes) "
                            "tensor of logits: make its forward return the logits alone")
        loss = F.cross_entropy(logits, train.labels[batch].to(device))
        if not torch.isfinite(loss):
            raise FloatingPointError(f"training loss became {loss.item()} at epoch {epoch}: lower {lr_key}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def finetune(model, train, params, epochs, lr):
    """Train `model` further, in place, for `epochs` epochs on the Split `train` at the constant learning rate
    `lr`, with TrainParams params' optimizer, momentum, weight decay, batch size, augmentation and seed (the
    same seed gives the same batches and dropout, whatever was trained before). Returns the model in eval mode."""
    device = next(model.parameters()).device
    torch.manual_seed(params.seed)
    gen = torch.Generator().manual_seed(params.seed)
    opt = _optimizer(model, params.replace(lr=lr))
    for epoch in range(1, epochs + 1):
        _train_epoch(model, train, opt, params, gen, device, epoch, type(model).__name__, "pruning.finetune_lr_factor")
    return model.eval()


def _epoch_row(model, dataset, clean, device, epoch, start):
    """One epoch's row of the history: losses and accuracies of every split the dataset has."""
    train_loss, train_acc = evaluate(model, dataset.train, device)
    test_loss, test_acc = evaluate(model, dataset.test, device)
    row = dict(epoch=epoch, train_loss=train_loss, train_acc=train_acc, test_loss=test_loss, test_acc=test_acc,
               seconds=time.perf_counter() - start)
    if clean is not None:
        row["train_acc_clean"] = evaluate(model, clean, device)[1]
    if dataset.validation is not None:
        row["val_loss"], row["val_acc"] = evaluate(model, dataset.validation, device)
    return row


def summarize_history(history):
    """Final metrics of a run: last epoch's numbers and the generalization gap (None where a split
    is missing); val_loss and val_acc too where the run has a validation split."""
    last = history[-1]

    def gap(a, b):
        return None if a is None or b is None else a - b

    final = dict(
        train_loss=last["train_loss"], train_acc=last["train_acc"],
        test_loss=last["test_loss"], test_acc=last["test_acc"],
        gap_acc=gap(last["train_acc"], last["test_acc"]), gap_loss=gap(last["test_loss"], last["train_loss"]),
        epochs=len(history), train_acc_clean=last.get("train_acc_clean", last["train_acc"]),
    )
    final.update({key: last[key] for key in ("val_loss", "val_acc") if key in last})
    return final


def _fmt(value):
    return "n/a" if value is None else f"{value:.4f}"


NO_TEST = ("no test split (a folder without dataset.test_root, or a torchvision class with one split): test "
           "accuracy, the gap and claim C4 are skipped")



def _metrics(entry, spec, dataset, history, wall, device, **extra):
    from cwnnk.provenance import now, versions

    if dataset.test is None:
        extra.setdefault("accuracy_skipped", NO_TEST)
    if dataset.validation is not None:
        extra.setdefault("n_validation", len(dataset.validation))
    return dict(
        model=entry["name"], kind=entry["kind"], spec=spec, entry=entry, dataset=dataset.name,
        n_train=len(dataset.train), n_test=0 if dataset.test is None else len(dataset.test), history=history,
        final=summarize_history(history), wall_time_s=wall, device=str(device), versions=versions(),
        created=now(), **extra,
    )


def run_train(entry, params, checkpoint_path, metrics_path, log=print, snapshots=()):
    """The `train` stage: train one sweep entry with TrainParams `params`; write its checkpoint
    and metrics.json. snapshots: (entry, checkpoint_path, metrics_path) of each saved epoch
    (entry["epoch"] in params.save_epochs), written when training passes that epoch, with the
    history up to it; with params.untrained_twin also of epoch 0, the initial weights (evaluated,
    never trained)."""
    from cwnnk.atomic import write_json
    from cwnnk.datasets import load_dataset
    from cwnnk.models import save_checkpoint

    start = time.perf_counter()
    dataset = load_dataset(params.dataset)
    mean, std = dataset.channel_stats()
    spec = dict(entry["spec"], normalize={"mean": mean, "std": std})
    device = resolve_device(params.device)
    held = "" if dataset.validation is None else f", {len(dataset.validation)} validation held out"
    log(f"training {entry['name']} on {dataset.name} ({len(dataset.train)} train{held}, "
        f"{0 if dataset.test is None else len(dataset.test)} test), seed {params.seed}, device {device}")
    training = {key: value for key, value in params.to_dict().items() if key not in ("dataset", "device", "seed")}
    if params.dataset.validation:  # the config key training.validation (it lives in DatasetParams)
        training["validation"] = params.dataset.validation
    saved = {snap["epoch"]: (snap, ckpt, metrics) for snap, ckpt, metrics in snapshots}
    expected = sorted({*params.save_epochs, *((0,) if params.untrained_twin else ())})
    if sorted(saved) != expected:
        raise ValueError(f"snapshots for epochs {sorted(saved)} but training.save_epochs and the untrained twin "
                         f"(epoch 0) give {expected}")

    def on_epoch(epoch, model, history):
        if epoch in saved:
            snap, ckpt, metrics = saved[epoch]
            digest = save_checkpoint(ckpt, copy.deepcopy(model).cpu().eval(), spec)
            write_json(metrics, _metrics(snap, spec, dataset, list(history), time.perf_counter() - start, device,
                                         training=training, checkpoint_sha256=digest))
            log(f"saved epoch {epoch} as {snap['name']}")

    model, history = train_model(spec, dataset, params, log, on_epoch)
    digest = save_checkpoint(checkpoint_path, model.cpu(), spec)
    write_json(metrics_path, _metrics(entry, spec, dataset, history, time.perf_counter() - start, device,
                                      training=training, checkpoint_sha256=digest))


def run_twin(entry, params, source_checkpoint, checkpoint_path, metrics_path, log=print):
    """The `untrained_twin` stage: the untrained twin of an imported model (cwnnk.models.untrained_twin
    with seed entry["seed"]): its architecture and input normalisation from source_checkpoint, seeded
    random weights, evaluated on the dataset like the model and written in this project's format."""
    from cwnnk.models import load_checkpoint, untrained_twin
    from cwnnk.provenance import sha256_file

    start = time.perf_counter()
    model, spec = load_checkpoint(source_checkpoint)
    twin = untrained_twin(model, entry["seed"])
    log(f"untrained twin of {entry['run']}: {spec.get('name') or spec.get('factory') or spec['arch']} "
        f"re-initialised with seed {entry['seed']}")
    _evaluate_and_save(entry, twin, spec, params, checkpoint_path, metrics_path, start, log,
                       source=str(source_checkpoint), source_sha256=sha256_file(source_checkpoint),
                       init_seed=entry["seed"])


def run_import(entry, params, checkpoint_path, metrics_path, log=print):
    """The `import_checkpoint` stage: validate an external checkpoint against its declared
    architecture, evaluate it on the dataset and write it in this project's format."""
    from cwnnk.models import load_checkpoint
    from cwnnk.provenance import sha256_file

    start = time.perf_counter()
    spec = entry["spec"]
    if spec["arch"] in ("torchvision", "factory"):
        from cwnnk.models import hub_file, pretrained_model, weights_enum

        model = pretrained_model(spec, params.download)
        enum = weights_enum(spec)
        source = hub_file(enum) if enum is not None else spec["weights"]
        label = f"{spec.get('name') or spec['factory']} weights {spec['weights']}"
    else:
        model, spec = load_checkpoint(entry["path"], spec)
        source = label = entry["path"]
    log(f"imported {label}")
    _evaluate_and_save(entry, model, spec, params, checkpoint_path, metrics_path, start, log, source=str(source),
                       source_sha256=sha256_file(source))


def _evaluate_and_save(entry, model, spec, params, checkpoint_path, metrics_path, start, log, **extra):
    """Evaluate a model that is not trained here on the dataset; write its checkpoint and metrics.json."""
    from cwnnk.atomic import write_json
    from cwnnk.datasets import load_dataset
    from cwnnk.models import save_checkpoint

    dataset = load_dataset(params.dataset)
    device = resolve_device(params.device)
    model.to(device)
    if dataset.num_classes == spec["num_classes"]:
        train_loss, train_acc = evaluate(model, dataset.train, device)
        test_loss, test_acc = evaluate(model, dataset.test, device)
    else:  # pretrained weights with other classes: analysed, not evaluated; the labels just stratify the samples
        train_loss = train_acc = test_loss = test_acc = None
        extra["accuracy_skipped"] = (f"the model predicts {spec['num_classes']} classes (its weights' own), the "
                                     f"dataset has {dataset.num_classes}: accuracy is not defined, so test accuracy, "
                                     "the gap and claim C4 are skipped; the dataset's images are analysed"
                                     + ("" if dataset.test is not None else f"; there is also {NO_TEST}"))
    history = [dict(epoch=0, train_loss=train_loss, train_acc=train_acc, test_loss=test_loss, test_acc=test_acc,
                    seconds=time.perf_counter() - start)]
    log(f"{entry['name']}: train acc {_fmt(train_acc)}, test acc {_fmt(test_acc)}")
    digest = save_checkpoint(checkpoint_path, model.cpu(), spec)
    write_json(metrics_path, _metrics(entry, spec, dataset, history, time.perf_counter() - start, device,
                                      checkpoint_sha256=digest, **extra))
