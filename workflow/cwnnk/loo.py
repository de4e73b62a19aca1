"""The channel-wise NNK leave-one-out (LOO) estimate of generalization, from built graphs.

After Bonet, Ortega, Ruiz-Hidalgo and Shekkizhar, "Channel-wise early stopping without a
validation set via NNK polytope interpolation" (APSIPA 2021, arXiv 2107.12972), in our own
reconstruction (docs/method.md section 6). Nothing here searches or solves: the NNK weights
of a node are already a leave-one-out interpolation, since a node is never its own candidate.

For one point set (a channel, or the aggregate) and node i with neighbours N_i (weights
theta_ij > tol, indices >= 0) and labels y, the interpolated label distribution is

    p_i = sum_{j in N_i} theta_ij e_{y_j} / sum_{j in N_i} theta_ij      (L classes)

and its LOO error is the expected 0/1 error of predicting argmax p_i, ties broken uniformly
at random: e_i = 1 - [y_i in T_i] / |T_i|, with T_i the classes within 1e-12 of max p_i. A
node without neighbours gets the uniform distribution (so e_i = 1 - 1/L, chance) and is
counted. The layer estimate combines channels by soft vote: P_i = mean_c p_i^c (uniform for a
channel where i has no neighbour, which leaves the argmax of the others unchanged), then the
same error rule.
"""

import numpy as np

from cwnnk.params import TOL

TIE = 1e-12


def label_distribution(indices, weights, labels, num_classes, tol=TOL):
    """(N, L) NNK-interpolated label distribution of each node of one point set, and the
    (N,) boolean mask of nodes without neighbours (given the uniform distribution).

    indices (N, k) int (-1 padding), weights (N, k), labels (N,) int in [0, L).
    """
    indices, weights = np.asarray(indices), np.asarray(weights, dtype=np.float64)
    labels = np.asarray(labels)
    N = indices.shape[0]
    valid = (weights > tol) & (indices >= 0)
    node, slot = np.nonzero(valid)
    flat = node * num_classes + labels[indices[node, slot]]
    mass = np.bincount(flat, weights=weights[node, slot], minlength=N * num_classes).reshape(N, num_classes)
    total = mass.sum(axis=1, keepdims=True)
    empty = ~valid.any(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = np.where(empty[:, None], 1.0 / num_classes, mass / total)
    return p, empty


def loo_errors(p, labels):
    """(N,) expected LOO 0/1 error per node of distributions p (N, L): ties split uniformly."""
    p = np.asarray(p, dtype=np.float64)
    top = p >= p.max(axis=1, keepdims=True) - TIE
    hit = top[np.arange(len(p)), np.asarray(labels)]
    return 1.0 - hit / top.sum(axis=1)


def _num_classes(labels, num_classes):
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer) or (labels.size and labels.min() < 0):
        raise ValueError(f"labels must be a 1-d array of non-negative integers, got {labels.dtype} {labels.shape}")
    found = int(labels.max()) + 1 if labels.size else 0
    if num_classes is None:
        return max(found, 2)
    if num_classes < found:
        raise ValueError(f"num_classes = {num_classes} but labels reach {found - 1}")
    return num_classes


def cw_loo(ch_indices, ch_weights, agg_indices, agg_weights, labels, num_classes=None, tol=TOL):
    """The LOO estimate of one layer. Returns a dict:

    channel (C,) each channel's LOO error; layer: the soft-vote error over channels; agg: the
    aggregate graph's error; channel_empty (C,) and agg_empty: nodes without neighbours.
    num_classes: L (default: max label + 1, at least 2).
    """
    ch_indices = np.asarray(ch_indices)
    C, N, _ = ch_indices.shape
    labels = np.asarray(labels)
    if labels.shape != (N,):
        raise ValueError(f"labels must have shape (N,) = ({N},), got {labels.shape}")
    L = _num_classes(labels, num_classes)
    vote = np.zeros((N, L))
    channel, channel_empty = np.empty(C), np.empty(C, dtype=np.int64)
    for c in range(C):
        p, empty = label_distribution(ch_indices[c], ch_weights[c], labels, L, tol)
        channel[c] = loo_errors(p, labels).mean()
        channel_empty[c] = empty.sum()
        vote += p
    p_agg, agg_empty = label_distribution(agg_indices, agg_weights, labels, L, tol)
    return dict(channel=channel, layer=float(loo_errors(vote / C, labels).mean()),
                agg=float(loo_errors(p_agg, labels).mean()), channel_empty=channel_empty,
                agg_empty=int(agg_empty.sum()))


def loo_columns(result):
    """The layer-level `loo_*` columns of the overlap table from a cw_loo result."""
    ch = result["channel"]
    return {"loo_error_layer": result["layer"], "loo_error_agg": result["agg"],
            "loo_error_channel_mean": float(ch.mean()), "loo_error_channel_min": float(ch.min()),
            "loo_error_channel_max": float(ch.max()),
            "loo_empty_channel_mean": float(result["channel_empty"].mean()),
            "loo_empty_agg": result["agg_empty"]}
