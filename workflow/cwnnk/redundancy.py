"""The headline redundancy of a layer, its 95% interval and the comparison with another model.

The headline `redundancy` is the mean pairwise overlap of the layer's live channels: the Jaccard
index J_ab(i) of two channels' NNK neighbourhoods of image i, averaged over images i and channel
pairs a != b (docs/overlap.md, "Headline redundancy"). A mean over pairs is a U-statistic of the
channels: over a random subset of channels its expectation is the full layer's value, so it means
the same at any width, where rho_hat's union saturates.

Its interval resamples both units the number averages over, images (nodes) and channels, as two
independent one-way bootstraps whose deviations add (docs/overlap.md, "Interval"). Arrays in,
numbers out: `PairOverlap` holds what one layer contributes, `interval` and `compare` give the
numbers that overlap.csv, cwnnk.overlap_summary and the twin comparison report.
"""

from dataclasses import dataclass

import numpy as np

LEVEL = 0.95
N_BOOT = 1000
SEED = 0
# Replicates resampled at once: bounds the (replicates, N) index array of the node bootstrap.
_CHUNK = 100
EFFECTS = ("raised", "lowered", "none beyond the interval")
# channel_overlap's columns (channels.csv)
CHANNEL_OVERLAP = ("overlap_mean", "overlap_mean_chance", "overlap_max", "overlap_max_chance")


@dataclass(frozen=True, eq=False)
class PairOverlap:
    """One layer's pairwise overlap over its L live channels and N nodes.

    pairwise: (L, L) mean over nodes of J_ab(i) (diagonal ignored); pairwise_chance: (L, L) its
    chance level, the mean over nodes of E[J] for random sets of sizes d_a(i), d_b(i); node: (N,)
    mean over the pairs a != b of J_ab(i); node_chance: (N,) its chance level. With L < 2 there is
    no pair and every number is NaN.
    """

    pairwise: np.ndarray
    pairwise_chance: np.ndarray
    node: np.ndarray
    node_chance: np.ndarray

    def __post_init__(self):
        L, N = np.shape(self.pairwise)[0], np.shape(self.node)[0]
        for name, shape in (("pairwise", (L, L)), ("pairwise_chance", (L, L)), ("node", (N,)),
                            ("node_chance", (N,))):
            if np.shape(getattr(self, name)) != shape:
                raise ValueError(f"PairOverlap.{name} must have shape {shape}, got {np.shape(getattr(self, name))}")

    @property
    def n_channels(self):
        return self.pairwise.shape[0]

    @property
    def value(self):
        """The headline: mean over nodes and live channel pairs of J_ab(i)."""
        return float(np.mean(self.node)) if self.n_channels >= 2 else np.nan

    @property
    def chance(self):
        return float(np.mean(self.node_chance)) if self.n_channels >= 2 else np.nan

    def to_dict(self):
        """JSON-ready lists (the overlap stage stores them; from_dict reads them back)."""
        return {name: np.asarray(getattr(self, name)).tolist()
                for name in ("pairwise", "pairwise_chance", "node", "node_chance")}

    @classmethod
    def from_dict(cls, d):
        L = len(d["pairwise"])  # JSON keeps no shape: a layer without two live channels stores [] (0 x 0)
        return cls(**{name: np.asarray(d[name], dtype=np.float64).reshape(L, L)
                      for name in ("pairwise", "pairwise_chance")},
                   **{name: np.asarray(d[name], dtype=np.float64) for name in ("node", "node_chance")})


def _pair_means(matrix, counts):
    """(B,) weighted means of the off-diagonal entries of matrix: channel a drawn counts[r, a] times,
    a pair (a, b), a != b, weighs counts[r, a] * counts[r, b]; NaN where a draw holds one channel."""
    off = np.array(matrix, dtype=np.float64)
    np.fill_diagonal(off, 0.0)
    counts = counts.astype(np.float64)
    total = counts.sum(axis=1)
    pairs = total**2 - (counts**2).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(pairs > 0, np.einsum("ra,ra->r", counts @ off, counts) / pairs, np.nan)


def _draws(rng, n_nodes, n_channels, n_boot):
    """(node indices (B, N), channel counts (B, L)) of B bootstrap replicates."""
    nodes = rng.integers(0, n_nodes, size=(n_boot, n_nodes))
    channels = rng.multinomial(n_channels, np.full(n_channels, 1.0 / n_channels), size=n_boot)
    return nodes, channels


def _replicates(node_values, terms, nodes):
    """(B,) replicates of mean(node_values) + the sum of the channel deviations `terms` (B,) each:
    the node bootstrap's deviation plus each channel bootstrap's, around the value."""
    value = float(np.mean(node_values))
    node_part = np.concatenate([node_values[nodes[i:i + _CHUNK]].mean(axis=1)
                                for i in range(0, len(nodes), _CHUNK)]) - value
    return value + node_part + sum(terms)


def _channel_terms(overlap, counts, chance):
    """(B,) deviation of a channel bootstrap of overlap's off-diagonal mean (minus its chance level
    when chance is true) from the value."""
    # Draws go to channels in a canonical order (by their pairwise row sums), so that the interval does
    # not depend on how the layer numbers its channels.
    order = np.lexsort((overlap.pairwise_chance.sum(axis=1), overlap.pairwise.sum(axis=1)))
    matrix = overlap.pairwise - overlap.pairwise_chance if chance else overlap.pairwise
    matrix = matrix[np.ix_(order, order)]
    full = np.ones((1, overlap.n_channels))
    return _pair_means(matrix, counts) - _pair_means(matrix, full)[0]


def _bounds(replicates, level):
    r = replicates[np.isfinite(replicates)]
    if r.size == 0:
        return np.nan, np.nan
    lo, hi = np.quantile(r, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def interval(overlap, level=LEVEL, n_boot=N_BOOT, seed=SEED):
    """The headline of one layer with its chance level and percentile intervals.

    Returns {redundancy, redundancy_ci_lo, redundancy_ci_hi, redundancy_chance, redundancy_excess,
    redundancy_excess_ci_lo, redundancy_excess_ci_hi}; the excess is redundancy - chance and its
    interval resamples the per-pair and per-node differences with the same draws. Seeded: the same
    arrays give the same interval. All NaN with fewer than two live channels.
    """
    keys = ("redundancy", "redundancy_ci_lo", "redundancy_ci_hi", "redundancy_chance", "redundancy_excess",
            "redundancy_excess_ci_lo", "redundancy_excess_ci_hi")
    if overlap.n_channels < 2:
        return dict.fromkeys(keys, np.nan)
    nodes, counts = _draws(np.random.default_rng(seed), len(overlap.node), overlap.n_channels, n_boot)
    value = _replicates(overlap.node, [_channel_terms(overlap, counts, False)], nodes)
    excess = _replicates(overlap.node - overlap.node_chance, [_channel_terms(overlap, counts, True)], nodes)
    return dict(zip(keys, (overlap.value, *_bounds(value, level), overlap.chance, overlap.value - overlap.chance,
                           *_bounds(excess, level))))


def effect(lo, hi):
    """How a difference's interval reads: 'raised' (above 0), 'lowered' (below 0), or 'none beyond
    the interval' (it holds 0); '' when undefined."""
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return ""
    return EFFECTS[0] if lo > 0 else EFFECTS[1] if hi < 0 else EFFECTS[2]


def compare(overlap, other, level=LEVEL, n_boot=N_BOOT, seed=SEED):
    """overlap's headline minus other's on the same images (a model and its untrained twin).

    The nodes are the same images in the same order, so they are resampled together (paired); the
    two layers' channels are different units and are resampled independently. Returns {difference,
    difference_ci_lo, difference_ci_hi, effect} (effect as `effect` reads the interval).
    """
    if len(overlap.node) != len(other.node):
        raise ValueError(f"compare needs the same images in both layers: {len(overlap.node)} nodes against "
                         f"{len(other.node)}")
    if min(overlap.n_channels, other.n_channels) < 2:
        return dict(difference=np.nan, difference_ci_lo=np.nan, difference_ci_hi=np.nan, effect="")
    rng = np.random.default_rng(seed)
    nodes, counts = _draws(rng, len(overlap.node), overlap.n_channels, n_boot)
    other_counts = rng.multinomial(other.n_channels, np.full(other.n_channels, 1.0 / other.n_channels), size=n_boot)
    replicates = _replicates(overlap.node - other.node, [_channel_terms(overlap, counts, False),
                                                        -_channel_terms(other, other_counts, False)], nodes)
    lo, hi = _bounds(replicates, level)
    return dict(difference=overlap.value - other.value, difference_ci_lo=lo, difference_ci_hi=hi,
                effect=effect(lo, hi))


# ---------------------------------------------------------------------------- per channel

def _live_full(values, live, fill):
    out = np.full(live.size, fill, dtype=np.float64)
    out[live] = values
    return out


def channel_overlap(pairwise, pairwise_chance, dead=None):
    """Each channel's overlap with the rest of its layer, against chance.

    pairwise, pairwise_chance: (L, L) over the layer's live channels (PairOverlap's matrices);
    dead: optional (C,) bool with L false entries, to give the C channels' values (NaN for a dead
    channel). Returns {overlap_mean, overlap_mean_chance, overlap_max, overlap_max_chance}: the
    mean J of a channel with the other live channels and that mean's chance level, and its
    largest J with one other channel with the chance level of that same pair. NaN with fewer than
    two live channels.
    """
    J, chance = np.asarray(pairwise, dtype=np.float64), np.asarray(pairwise_chance, dtype=np.float64)
    L = J.shape[0]
    live = np.ones(L, dtype=bool) if dead is None else ~np.asarray(dead, dtype=bool)
    if live.sum() != L:
        raise ValueError(f"dead marks {live.sum()} live channels, the matrices hold {L}")
    if L < 2:
        return {name: np.full(live.size, np.nan) for name in CHANNEL_OVERLAP}
    off = ~np.eye(L, dtype=bool)
    best = np.argmax(np.where(off, J, -np.inf), axis=1)
    rows = np.arange(L)
    values = dict(overlap_mean=(J * off).sum(1) / (L - 1), overlap_mean_chance=(chance * off).sum(1) / (L - 1),
                  overlap_max=J[rows, best], overlap_max_chance=chance[rows, best])
    return {name: _live_full(v, live, np.nan) for name, v in values.items()}


def keep_order(pairwise, pairwise_chance, dead=None):
    """The greedy CW-NNK pruning order of a layer's channels: the most redundant first.

    A channel's redundancy score within the set S of channels still kept is its largest overlap
    beyond chance with one other kept channel, max over b in S, b != c, of J_cb - E[J_cb]: how
    much of its NNK neighbourhoods some single other channel already carries. Dead channels go
    first (they carry nothing); then, one at a time, the live channel with the highest score is
    removed (ties: the higher mean excess over S, then the lower index) and the others' scores are
    updated, so that of two duplicates only one goes before the rest of the layer is touched.

    pairwise, pairwise_chance: (L, L) over the live channels; dead: optional (C,) bool. Returns
    (order, score), both over the C channels: order[c] is the position at which channel c is
    removed (0 first, C - 1 last: the channel kept longest), score[c] its score when removed (NaN
    for a dead channel and for the last live one, which has no other channel left).
    """
    excess = np.asarray(pairwise, dtype=np.float64) - np.asarray(pairwise_chance, dtype=np.float64)
    L = excess.shape[0]
    live = np.ones(L, dtype=bool) if dead is None else ~np.asarray(dead, dtype=bool)
    if live.sum() != L:
        raise ValueError(f"dead marks {live.sum()} live channels, the matrices hold {L}")
    C = live.size
    order, score = np.empty(C, dtype=np.int64), np.full(C, np.nan)
    dead_ids = np.flatnonzero(~live)
    order[dead_ids] = np.arange(dead_ids.size)
    live_ids = np.flatnonzero(live)
    np.fill_diagonal(excess, -np.inf)
    kept = np.ones(L, dtype=bool)
    for position in range(dead_ids.size, C):
        left = np.flatnonzero(kept)
        if left.size == 1:
            order[live_ids[left[0]]] = position
            break
        sub = excess[np.ix_(left, left)]
        best = sub.max(axis=1)
        mean = np.where(np.isfinite(sub), sub, 0.0).sum(axis=1) / (left.size - 1)
        # lexsort: last key first; the most redundant is the last of an ascending sort on (best, mean, -index)
        pick = np.lexsort((-left, mean, best))[-1]
        order[live_ids[left[pick]]] = position
        score[live_ids[left[pick]]] = best[pick]
        kept[left[pick]] = False
    return order, score
