"""The authors' channel-wise LOO error beside cwnnk's, with each difference switched on alone.

    python tools/authors_loo.py RESULTS [--models M ...] [--layer LAST] [--k 25]

The CW-DeepNNK code (github.com/STAC-USC/CW-DeepNNK_Early_Stopping, utils/graph_utils.py,
`nnk_loo`) and cwnnk.loo agree on the NNK interpolation and differ in four conventions, each
a switch here (cwnnk's first):
- duplicates: zero-distance candidates dropped and the set refilled to k (`refill`), or
  dropped from the k found without refilling, all kept if all are duplicates (`no-refill`);
- kernel: gaussian with sigma = d(last candidate) / 3, or cosine 1/2 + 1/2 cos (their default);
- ties: the expected error with ties split evenly (`split`), or argmax's first class (`first`);
- empty neighbourhood: the uniform distribution, error 1 - 1/L (`uniform`), or class 0, what
  argmax of their 0/0 row gives (`first`).
Every variant is computed here by one brute-force float64 implementation with an exact NNK
solve (scipy's nnls on the Cholesky factor), so that only the switched convention differs.
The `cwnnk` row is checked against the channels.csv loo_error the workflow wrote (to 0.005: a
node whose solve sits on a threshold may settle differently in this brute force). It prints,
per variant, the channels whose error equals cwnnk's, those within 0.01, the mean absolute
difference and the mean error.
"""

import argparse
import sys
from pathlib import Path

import numpy as np
from scipy.optimize import nnls

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "workflow"))

OURS = dict(duplicates="refill", kernel="gaussian", ties="split", empty="uniform")
AUTHORS = dict(duplicates="no-refill", kernel="cosine", ties="first", empty="first")
TOL = 1e-10


def candidates(d2, i, k, duplicates):
    """Node i's candidate indices by distance (ties by lower index), self excluded."""
    order = np.argsort(d2[i], kind="stable")
    order = order[order != i]
    if duplicates == "refill":
        return order[d2[i, order] > 0][:k]
    found = order[:k]
    distinct = found[d2[i, found] > 0]
    return distinct if distinct.size else found


def nnk_weights(X, i, cand, kernel, sq):
    """theta >= 0 minimising 1/2 t'K_SS t - K_Si't, exactly (nnls on the Cholesky factor)."""
    if cand.size == 0:
        return np.zeros(0)
    P = X[np.r_[i, cand]]
    if kernel == "cosine":
        norms = np.sqrt(sq[np.r_[i, cand]])
        if (norms == 0).any():
            return np.full(cand.size, np.nan) if norms[0] == 0 else np.zeros(cand.size)
        U = P / norms[:, None]
        G = 0.5 + 0.5 * U @ U.T
    else:
        d2 = np.maximum(sq[np.r_[i, cand]][:, None] + sq[np.r_[i, cand]][None, :] - 2 * P @ P.T, 0)
        d2[np.diag_indices_from(d2)] = 0
        sigma = np.sqrt(d2[0, -1]) / 3
        if sigma == 0:
            return np.zeros(cand.size)
        G = np.exp(-d2 / (2 * sigma**2))
    K, g = G[1:, 1:], G[1:, 0]
    L = np.linalg.cholesky(K + 1e-10 * np.eye(len(K)))
    theta, _ = nnls(L.T, np.linalg.solve(L, g))
    return theta


def channel_error(X, labels, k, num_classes, duplicates, kernel, ties, empty):
    """The mean LOO 0/1 error of one point set X (N, D) under the given conventions."""
    X = np.asarray(X, dtype=np.float64)
    sq = (X * X).sum(1)
    d2 = np.stack([((X - x) ** 2).sum(1) for x in X])  # differences, not the expansion: exact ties stay ties
    errors = np.empty(len(X))
    for i in range(len(X)):
        cand = candidates(d2, i, k, duplicates)
        theta = nnk_weights(X, i, cand, kernel, sq)
        keep = np.isfinite(theta) & (theta > TOL)
        p = np.bincount(labels[cand[keep]], weights=theta[keep], minlength=num_classes)
        if p.sum() == 0:  # no neighbour: chance, or class 0 (argmax of their 0/0 row)
            errors[i] = float(labels[i] != 0) if empty == "first" else 1 - 1 / num_classes
            continue
        p = p / p.sum()
        if ties == "first":
            errors[i] = float(np.argmax(p) != labels[i])
        else:
            top = p >= p.max() - 1e-12
            errors[i] = 1 - top[labels[i]] / top.sum()
    return float(errors.mean())


def variants():
    """cwnnk's conventions, each of the authors' alone, then all of theirs."""
    yield "cwnnk", OURS
    for key, value in AUTHORS.items():
        yield f"{key} = {value}", dict(OURS, **{key: value})
    yield "authors, gaussian kernel", dict(AUTHORS, kernel="gaussian")
    yield "authors (all four)", AUTHORS


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", type=Path, help="a finished run's results folder")
    parser.add_argument("--models", nargs="*", help="models (default: every final trained model)")
    parser.add_argument("--k", type=int, default=None, help="candidates (default: the run's graphs.k)")
    args = parser.parse_args(argv)

    from cwnnk.activations import open_activations
    from cwnnk.graphs import load_layer_graphs, read_layer
    from cwnnk.tables import read_table, text_column

    channels = read_table(args.results / "tables" / "channels.csv")
    kind, model_col = text_column(channels["kind"]), text_column(channels["model"])
    models = args.models or list(dict.fromkeys(model_col[kind == "trained"].tolist()))
    rows = {name: [] for name, _ in variants()}
    reference = []
    for model in models:
        mine = model_col == model
        last = mine & (channels["depth"] == channels["depth"][mine].max())
        layer = text_column(channels["layer"])[last][0]
        arrays, summary = load_layer_graphs(args.results / "graphs" / model / layer)
        k = args.k or summary["params"]["k"]
        acts = read_layer(open_activations(args.results / "activations" / f"{model}.zarr"), layer, arrays["positions"])
        labels = np.asarray(arrays["labels"], dtype=np.int64)
        L = int(labels.max()) + 1
        for c in range(acts.shape[1]):
            reference.append(float(channels["loo_error"][last][channels["channel"][last] == c][0]))
            for name, conventions in variants():
                rows[name].append(channel_error(acts[:, c], labels, k, L, **conventions))
        off = np.abs(np.array(rows["cwnnk"][-acts.shape[1]:]) - reference[-acts.shape[1]:]).max()
        print(f"{model} {layer}: {acts.shape[1]} channels, N = {acts.shape[0]}, k = {k}; max |diff| from "
              f"channels.csv {off:.2g}", file=sys.stderr)
    ours = np.array(rows["cwnnk"])
    check = np.abs(ours - np.array(reference)).max()
    print(f"{len(ours)} channels of {len(models)} models' last layers; cwnnk here vs channels.csv: max |diff| "
          f"{check:.2g}")
    print(f"{'variant':<26} {'equal':>6} {'<= 0.01':>8} {'mean |diff|':>12} {'mean error':>11}")
    for name, values in rows.items():
        diff = np.abs(np.array(values) - ours)
        print(f"{name:<26} {np.mean(diff < 1e-12):6.0%} {np.mean(diff <= 0.01):8.0%} {diff.mean():12.4f} "
              f"{np.mean(values):11.4f}")
    return check <= 0.005  # the brute-force solve may settle one node's tie differently from the engine


if __name__ == "__main__":
    raise SystemExit(0 if main() else 1)
