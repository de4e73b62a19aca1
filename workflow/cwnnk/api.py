"""The three-call library API: a model and images -> activations -> CW-NNK graphs -> overlap.

    acts = cwnnk.activations_of(model, images, ["layer4.1.relu_1"])        # {layer: (N, C, H, W)}
    graphs = cwnnk.cw_nnk_graphs(acts["layer4.1.relu_1"], k=25)           # every channel + aggregate
    summary = cwnnk.overlap_summary(graphs)             # redundancy, its 95% interval, chance level...
    cwnnk.redundancy_vs_untrained(model, images, ["layer4.1.relu_1"])      # beside the untrained twin

The same code as the workflow's stages (cwnnk.extract, cwnnk.graphs, cwnnk.overlap), without
Snakemake. Layer names are the model's own FX node names
(torchvision.models.feature_extraction.get_graph_node_names), or glob patterns of them.
"""

from __future__ import annotations

import os
import re
from collections import OrderedDict
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from cwnnk.params import TOL

if TYPE_CHECKING:  # torch, scipy and zarr are imported when a call needs them
    import scipy.sparse
    import torch

    from cwnnk.activations import ActivationStore


def _as_split(images, labels=None):
    """(Split, batch size or None, classes) of a tensor, a torch Dataset or a DataLoader."""
    import torch

    from cwnnk.datasets import LazyImages, Split, _labels_of

    batch_size = None
    if isinstance(images, torch.utils.data.DataLoader):
        images, batch_size = images.dataset, images.batch_size
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(images)
    if isinstance(images, torch.Tensor):
        if images.ndim != 4:
            raise ValueError(f"images must be a (N, C, H, W) tensor, got shape {tuple(images.shape)}")
        x = images.float()
        y = torch.zeros(len(x), dtype=torch.int64) if labels is None else torch.as_tensor(labels, dtype=torch.int64)
        return Split(x, y, np.arange(len(x))), batch_size, None
    if not hasattr(images, "__getitem__") or not hasattr(images, "__len__"):
        raise TypeError(f"images must be a (N, C, H, W) tensor, a torch Dataset or a DataLoader, not "
                        f"{type(images).__name__}")
    first = images[0]
    tuples = isinstance(first, (tuple, list))

    class _Items:  # dataset[i] -> (image, label) as LazyImages reads it
        def __getitem__(self, i):
            item = images[i]
            return item if tuples else (item, 0)

    if labels is None and tuples:
        labels = _labels_of(images)  # None where an image has no label (e.g. STL10's unlabeled split)
    if labels is None:
        labels = np.zeros(len(images), dtype=np.int64)
    image = first[0] if tuples else first
    if not isinstance(image, torch.Tensor) or image.ndim != 3:
        raise TypeError(f"the dataset's images must be (C, H, W) tensors (give it a transform such as "
                        f"weights.transforms()), got {type(image).__name__}")
    paths = [p for p, _ in images.samples] if hasattr(images, "samples") else None
    positions = np.arange(len(images))
    split = Split(LazyImages(_Items(), positions, lambda im: im.float(), tuple(image.shape), paths),
                  torch.as_tensor(np.asarray(labels), dtype=torch.int64), positions)
    return split, batch_size, getattr(images, "classes", None)


def model_layers(model: torch.nn.Module, input_shape: Sequence[int]) -> OrderedDict[str, dict[str, Any]]:
    """Every analysable node of an nn.Module: name -> {shape (C, H, W) or other, spatial, all}.

    input_shape: (C, H, W) of one image. `spatial`: the node's output is (N, C, H, W) (it can be
    analysed); `all`: it is an activation (what layers="all" keeps).
    """
    from cwnnk.models import trace_nodes

    return trace_nodes(model, tuple(input_shape))


@contextmanager
def _arguments(function):
    """The stages check their parameters under the config's key names (config key 'graphs.k'); a library call
    names its own argument instead (cw_nnk_graphs() argument 'k')."""
    try:
        yield
    except ValueError as err:
        text = re.sub(r"config key '(?:graphs|extract)\.(\w+)'", rf"{function}() argument '\1'", str(err))
        if text == str(err):
            raise
        raise type(err)(text) from None


def _progress_log(log, progress):
    """The `log` a stage gets from the library: the user's callable (progress lines), else a progress bar on
    stderr (cwnnk.logs.ProgressBar), silent with progress=False."""
    from cwnnk.logs import ProgressBar

    return log if log is not None else ProgressBar(enabled=progress)


def activations_of(model: torch.nn.Module,
                   images: torch.Tensor | np.ndarray | torch.utils.data.Dataset | torch.utils.data.DataLoader,
                   layers: str | Sequence[str] = "all", *, n_samples: int | None = None, seed: int = 0,
                   labels: np.ndarray | torch.Tensor | Sequence[int] | None = None, batch_size: int = 64,
                   device: str | torch.device = "cpu", store: str | os.PathLike | None = None,
                   compressor: str = "zstd", log: Callable[[str], None] | None = None,
                   progress: bool = True) -> OrderedDict[str, np.ndarray] | ActivationStore:
    """The activations of `layers` of `model` on `images`, in memory or streamed to a Zarr store.

    model: a torch nn.Module (its input normalisation included; used in eval mode). images: a
    (N, C, H, W) float tensor, a torch Dataset of (image (C, H, W), label) or of images, or a
    DataLoader (its dataset and batch size). layers: FX node names of the model
    (torchvision.models.feature_extraction.get_graph_node_names) or glob patterns of them
    ("layer*.*.relu"); "all" keeps every activation node with a (N, C, H, W) output.
    n_samples: a stratified (by labels, seeded) subset of that many images; None keeps all.
    Returns {layer: (N, C, H, W) float32 numpy array} in depth order, or with store=path writes
    the activation store there batch by batch (peak memory set by batch_size) and returns
    cwnnk.open_activations(store). A call that runs over 2 s shows a progress bar on stderr; progress=False
    (or TQDM_DISABLE=1 in the environment) silences it, and log=print prints progress lines instead.
    """
    import torch

    from cwnnk.datasets import Dataset, stratified_subset
    from cwnnk.extract import LayerExtractor, extract_to_store, full_float32, match_layers
    from cwnnk.logs import Progress

    log = _progress_log(log, progress)
    split, loader_batch, classes = _as_split(images, labels)
    batch_size = loader_batch or batch_size
    model = model.to(device).eval()
    nodes = model_layers(model, split.images[:1].shape[1:])
    spatial = [name for name, info in nodes.items() if info["spatial"]]
    with _arguments("activations_of"):
        chosen = ([name for name in spatial if nodes[name]["all"]] if layers == "all" else
                  match_layers(spatial, layers, nodes, f"{type(model).__name__}"))
    if not chosen:
        raise ValueError(f"{type(model).__name__} has no activation node with a (N, C, H, W) output; "
                         f"name its layers (any of: {', '.join(spatial[:20])})")
    positions = stratified_subset(split.labels.numpy(), n_samples, seed)
    split = split.subset(positions) if len(positions) < len(split) else split
    names = OrderedDict((name, name) for name in chosen)
    if store is not None:
        from cwnnk.activations import open_activations

        classes = tuple(classes or sorted({str(v) for v in split.labels.tolist()}))
        data = Dataset("library", split, None, classes)
        extract_to_store(model, names, data, store, batch_size=batch_size, compressor=compressor, device=device,
                         attrs={"model": type(model).__name__, "n_samples": n_samples, "seed": seed}, log=log)
        return open_activations(store)
    extractor = LayerExtractor(model, names)
    parts = {name: [] for name in chosen}
    bar = Progress(-(-len(split) // batch_size), "batch", log, desc="activations")
    with full_float32(), torch.inference_mode():
        for start in range(0, len(split), batch_size):
            out = extractor(split.images[start : start + batch_size].to(device))
            for name, values in out.items():
                parts[name].append(values.float().cpu().numpy())
            bar.step()
    return OrderedDict((name, np.concatenate(parts[name])) for name in chosen)


@dataclass(frozen=True, eq=False)
class LayerGraphs:
    """The CW-NNK graphs of one layer: one NNK graph per channel and one of the aggregate.

    channels: NNKResult of the C channels, arrays (C, N, k); aggregate: NNKResult, arrays (N, k);
    zero_map_fraction: (C,) fraction of all-zero maps per channel (1: a dead channel); constant_map: (C,)
    bool, the channel's map is the same on every sample (dead too: it carries nothing; None: not known);
    channel_twonn (C, N, 2) and agg_twonn (N, 2): TwoNN's input under the duplicate policy, as the
    graphs stage stores it in knn.npz (None: overlap_summary falls back to the kNN distances);
    labels: (N,) int labels of the samples, or None (then overlap_summary has no loo_* columns).
    """

    channels: object
    aggregate: object
    zero_map_fraction: np.ndarray
    channel_twonn: np.ndarray | None = None
    agg_twonn: np.ndarray | None = None
    labels: np.ndarray | None = None
    constant_map: np.ndarray | None = None

    def channel_graph(self, c: int, symmetrize: str = "none") -> scipy.sparse.csr_matrix:
        """Channel c's graph as a scipy CSR N x N matrix (row i holds theta_i)."""
        from cwnnk.sparse import to_sparse

        return to_sparse(self.channels.channel(c), symmetrize)

    def aggregate_graph(self, symmetrize: str = "none") -> scipy.sparse.csr_matrix:
        """The aggregate's graph as a scipy CSR N x N matrix."""
        from cwnnk.sparse import to_sparse

        return to_sparse(self.aggregate, symmetrize)


LAYOUTS = ("NCHW", "NCD", "CND")


def cw_nnk_graphs(acts: np.ndarray | torch.Tensor, k: int = 25, *, layout: str | None = None,
                  labels: np.ndarray | torch.Tensor | Sequence[int] | None = None,
                  log: Callable[[str], None] | None = None, progress: bool = True, **options: Any) -> LayerGraphs:
    """CW-NNK graphs of one layer from its activations: every channel's NNK graph plus the aggregate's.

    acts: (N, C, H, W) array or tensor (one layer of N images). A 3-D array is ambiguous ((N, C, D)
    or the engine's (C, N, D)) and is refused unless layout="NCD" or layout="CND" says which.
    k and options: the settings of cwnnk.params.GraphParams (kernel, sigma, solver, duplicates,
    device). labels: optional (N,) non-negative int labels of the images (a store's `labels`;
    activations_of's arrays carry none), for overlap_summary's LOO columns. Returns LayerGraphs,
    with TwoNN's input computed as the graphs stage does (cwnnk.graphs.twonn_inputs). Progress: as
    activations_of (a bar over the channels after 2 s; progress=False silences it).
    """
    from cwnnk.graphs import cw_nnk, twonn_inputs
    from cwnnk.params import GraphParams

    if hasattr(acts, "detach"):
        acts = acts.detach().cpu().numpy()
    acts = np.asarray(acts)
    if layout is not None and layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if acts.ndim == 4 and layout in (None, "NCHW"):
        acts = acts.reshape(acts.shape[0], acts.shape[1], -1)
    elif acts.ndim == 3 and layout == "NCD":
        pass
    elif acts.ndim == 3 and layout == "CND":
        acts = acts.transpose(1, 0, 2)
    elif acts.ndim == 3:
        raise ValueError(f"cw_nnk_graphs expects one layer's activations as (N, C, H, W); got a 3-D array "
                         f"{acts.shape}, which could be (N, C, D) or the engine's (C, N, D): pass layout='NCD' or "
                         "layout='CND' to say which")
    else:
        raise ValueError(f"cw_nnk_graphs expects (N, C, H, W) activations (layout {layout or 'NCHW'}), got shape "
                         f"{acts.shape}")
    N, C, _ = acts.shape
    with _arguments("cw_nnk_graphs"):
        params = GraphParams(k=k, **options)
    if N <= k:
        raise ValueError(f"k = {k} needs more than k samples; the activations hold N = {N} (shape (N, C, ...) = "
                         f"{acts.shape})")
    if C < 2:
        raise ValueError(f"CW-NNK compares channels: the activations hold C = {C} channel(s)")
    if labels is not None:
        if hasattr(labels, "detach"):
            labels = labels.detach().cpu().numpy()
        labels = np.asarray(labels)
        if labels.shape != (N,) or not np.issubdtype(labels.dtype, np.integer) or (labels < 0).any():
            raise ValueError(f"labels must be (N,) = ({N},) non-negative integers, one per image of acts "
                             f"{acts.shape}; got {labels.dtype} {labels.shape}")
    acts = np.ascontiguousarray(acts, dtype=np.float32)
    channels, maps, aggregate, points = cw_nnk(acts, params, _progress_log(log, progress))
    channel_twonn, _, agg_twonn, _ = twonn_inputs(acts, channels, aggregate, points)
    return LayerGraphs(channels, aggregate, maps["zero_map_fraction"], channel_twonn, agg_twonn, labels,
                       maps["constant_map"])


def overlap_summary(graphs: LayerGraphs, tol: float = TOL) -> dict[str, Any]:
    """The overlap summary of one layer's CW-NNK graphs (LayerGraphs from cw_nnk_graphs).

    The overlap stage's own code (cwnnk.overlap.graphs_summary), so the numbers are its `row`'s
    on the same activations: dead channels (zero_map_fraction 1) are counted (n_dead_channels) and
    left out of the channel metrics, TwoNN follows the duplicate policy (docs/overlap.md).
    Returns a dict of the layer-level columns of docs/overlap.md, headed by the width-robust
    `redundancy` (mean pairwise Jaccard overlap of the live channels) with `redundancy_ci` (its 95%
    interval, (low, high)), `redundancy_chance`, `redundancy_excess` and `redundancy_excess_ci`;
    then rho_hat_* (union-based, saturates with width: see union_saturation), pairwise_overlap_*,
    kappa_* (coverage of the aggregate), the *_chance levels, degree_channel_*, degree_agg_*,
    id_layer and id_channel_* (TwoNN), zero_map_fraction_*, kkt_failed, not_pd, ...; plus
    "pairwise": the (C, C) mean Jaccard overlap matrix, "pairs": the PairOverlap that
    cwnnk.redundancy.compare takes, and per channel, as (C,) arrays, overlap_mean, overlap_max, their
    chance levels, prune_order and prune_score (the greedy CW-NNK pruning order, which cwnnk.prune_plan
    takes). The loo_* columns (LOO error) come only where the graphs hold labels
    (cw_nnk_graphs(..., labels=...)).
    """
    from cwnnk.overlap import graphs_summary

    ch, agg = graphs.channels, graphs.aggregate
    arrays = dict(channel_indices=ch.indices, channel_weights=ch.weights, channel_distances=ch.distances,
                  agg_indices=agg.indices, agg_weights=agg.weights, agg_distances=agg.distances,
                  channel_twonn=graphs.channel_twonn, agg_twonn=graphs.agg_twonn, labels=graphs.labels)
    result = graphs_summary(arrays, graphs.zero_map_fraction, ch.counts, agg.counts, tol=tol,
                            constant_map=graphs.constant_map)
    row = result.row
    return {**row, "redundancy_ci": (row["redundancy_ci_lo"], row["redundancy_ci_hi"]),
            "redundancy_excess_ci": (row["redundancy_excess_ci_lo"], row["redundancy_excess_ci_hi"]),
            "pairwise": result.pairwise, "pairs": result.pairs, **result.channels}


@dataclass(frozen=True, eq=False)
class TwinComparison:
    """One layer's headline redundancy beside its untrained twin's (redundancy_vs_untrained).

    Intervals are 95% (low, high). difference = redundancy - untrained; effect: 'raised', 'lowered' or
    'none beyond the interval'. trained and twin: the two overlap_summary dicts. str() reads it out.
    """

    layer: str
    redundancy: float
    redundancy_ci: tuple
    redundancy_chance: float
    untrained: float
    untrained_ci: tuple
    difference: float
    difference_ci: tuple
    effect: str
    trained: dict
    twin: dict

    def __str__(self):
        lo, hi = self.difference_ci
        verdict = {"raised": "training raised it", "lowered": "training lowered it"}.get(
            self.effect, "training changed nothing beyond the interval: this redundancy is what architecture and data "
                         "give")
        return (f"{self.layer}: redundancy {self.redundancy:.3f} [{self.redundancy_ci[0]:.3f}, "
                f"{self.redundancy_ci[1]:.3f}] (chance {self.redundancy_chance:.3f}); untrained twin "
                f"{self.untrained:.3f} [{self.untrained_ci[0]:.3f}, {self.untrained_ci[1]:.3f}]; trained - twin "
                f"{self.difference:+.3f} [{lo:+.3f}, {hi:+.3f}]: {verdict}")


def redundancy_vs_untrained(model: torch.nn.Module,
                            images: torch.Tensor | np.ndarray | torch.utils.data.Dataset | torch.utils.data.DataLoader,
                            layers: str | Sequence[str] = "all", *, k: int = 25, twin_seed: int = 0,
                            n_samples: int | None = None, seed: int = 0,
                            labels: np.ndarray | torch.Tensor | Sequence[int] | None = None, batch_size: int = 64,
                            device: str | torch.device = "cpu", log: Callable[[str], None] | None = None,
                            progress: bool = True, **options: Any) -> OrderedDict[str, TwinComparison]:
    """Each layer's headline redundancy beside its untrained twin's, in one call.

    The twin is cwnnk.models.untrained_twin(model, twin_seed): the same architecture with seeded random
    weights (for a cwnnk model, exactly the workflow's twin). Both models see the same images (the same
    stratified subset: n_samples, seed) and the same layers; k and options go to cw_nnk_graphs.
    Returns {layer: TwinComparison} in depth order: redundancy with its 95% interval and chance level,
    the twin's (untrained), the difference (model minus twin) with its 95% interval (images resampled
    paired, each model's channels apart) and effect ('raised', 'lowered' or 'none beyond the interval':
    what training did beyond architecture and data); print one to read it. Progress: a bar per model and
    layer on stderr after 2 s; progress=False silences it, log=print prints lines instead.
    """
    from cwnnk.models import untrained_twin
    from cwnnk.redundancy import compare

    twin = untrained_twin(model, twin_seed)
    runs = {}
    for name, net in (("trained", model), ("twin", twin)):
        acts = activations_of(net, images, layers, n_samples=n_samples, seed=seed, labels=labels,
                              batch_size=batch_size, device=device, log=log, progress=progress)
        runs[name] = {layer: overlap_summary(cw_nnk_graphs(values, k, log=log, progress=progress, **options))
                      for layer, values in acts.items()}
    out = OrderedDict()
    for layer, trained in runs["trained"].items():
        other = runs["twin"][layer]
        diff = compare(trained["pairs"], other["pairs"])
        out[layer] = TwinComparison(
            layer=layer, redundancy=trained["redundancy"], redundancy_ci=trained["redundancy_ci"],
            redundancy_chance=trained["redundancy_chance"], untrained=other["redundancy"],
            untrained_ci=other["redundancy_ci"], difference=diff["difference"],
            difference_ci=(diff["difference_ci_lo"], diff["difference_ci_hi"]), effect=diff["effect"],
            trained=trained, twin=other)
    return out


def width_sweep(graphs: LayerGraphs | str | os.PathLike, sizes: Sequence[int] | None = None, n_draws: int = 10,
                seed: int = 0, tol: float = TOL) -> list[dict[str, Any]]:
    """The saturation curve of one layer: the headline redundancy and rho_hat of random channel subsets.

    graphs: LayerGraphs (cw_nnk_graphs) or a graphs folder of the workflow (results/graphs/MODEL/LAYER).
    Subsets are drawn from the live channels (dead ones never count, as in the summaries); sizes:
    channel counts, default 2, 4, 8, ... up to the number of live channels, which is always included.
    Returns cwnnk.overlap.width_sweep's rows (n_channels, draw, redundancy, redundancy_chance,
    rho_hat, rho_hat_chance, union_saturation), n_draws seeded subsets per size.
    """
    from cwnnk.overlap import dead_channels
    from cwnnk.overlap import width_sweep as subsets

    if isinstance(graphs, LayerGraphs):
        source = "the layer"
        ci, cw = graphs.channels.indices, graphs.channels.weights
        ai, aw = graphs.aggregate.indices, graphs.aggregate.weights
        zero_maps, constant = graphs.zero_map_fraction, graphs.constant_map
    else:
        source = str(graphs)
        from cwnnk.graphs import load_layer_graphs

        arrays, summary = load_layer_graphs(graphs)
        ci, cw, ai, aw = (arrays[name] for name in ("channel_indices", "channel_weights", "agg_indices", "agg_weights"))
        zero_maps, constant = summary["zero_map_fraction"], summary.get("constant_map")
    live = ~dead_channels(zero_maps, constant)
    if live.sum() < 2:
        raise ValueError(f"width_sweep needs two live channels; {source} has {int(live.sum())} of {len(live)} "
                         "(the others' maps are all zero, or the same on every image)")
    n_live = int(live.sum())
    if sizes is None:
        sizes = [*(2**p for p in range(1, n_live.bit_length()) if 2**p < n_live), n_live]
    return subsets(np.asarray(ci)[live], np.asarray(cw)[live], ai, aw, sizes, n_draws=n_draws, seed=seed, tol=tol)
