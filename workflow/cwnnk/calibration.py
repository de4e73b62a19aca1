"""The F5 experiment: NNK degree and TwoNN on synthetic manifolds of known dimension (claim C1).

For each embedding (linear, curved; cwnnk.manifolds) and each intrinsic dimension d, n points
are sampled in R^D; the NNK graph is built with both solvers (exact and pynnk) and the
same kernel settings as the real layers, and TwoNN is estimated from the same exact kNN
distances. One row per (embedding, dim, solver) goes to results/tables/manifolds.csv.
"""

import time

import numpy as np

from cwnnk.intrinsic_dim import twonn
from cwnnk.manifolds import SAMPLERS, sample
from cwnnk.overlap import summarize
from cwnnk.tables import write_table

EMBEDDINGS = ("linear", "curved")
SOLVERS = ("exact", "pynnk")
COLUMNS = ("embedding", "dim", "n", "D", "k", "solver", "degree_mean", "degree_std", "twonn_id")


def run_manifold_experiment(dims, n=2000, D=64, k=25, seed=0, kernel="gaussian", sigma="local",
                            *, embeddings=EMBEDDINGS, duplicates="drop", device="auto", log=None):
    """Rows of manifolds.csv: for each embedding, each d in dims and each solver, the NNK degree
    statistics over the n nodes and the TwoNN estimate of the point cloud.

    Columns: those of COLUMNS, then degree_q25, degree_median, degree_q75, twonn_n (points in
    the TwoNN fit), kernel, sigma, seed, and the solver's degenerate-case counts not_pd and
    kkt_failed. The TwoNN estimate depends only on the kNN distances, so it is the same in the
    rows of both solvers. log: optional callable taking one progress message.
    """
    from cwnnk.engine import nnk  # torch: imported only when the experiment runs

    dims = [int(d) for d in dims]
    if not dims:
        raise ValueError("dims must hold at least one intrinsic dimension")
    for e in embeddings:
        if e not in SAMPLERS:
            raise ValueError(f"embedding {e!r} is not allowed; choose from {sorted(SAMPLERS)}")
    rows = []
    for embedding in embeddings:
        for d in dims:
            X = sample(embedding, n, d, D=D, seed=seed)
            twonn_id = None
            for solver in SOLVERS:
                start = time.perf_counter()
                res = nnk(X, k, kernel=kernel, sigma=sigma, solver=solver, duplicates=duplicates,
                          device=device)
                if twonn_id is None:
                    twonn_id, twonn_n = twonn(res.distances)
                degree = summarize(res.degree)
                rows.append(dict(
                    embedding=embedding, dim=d, n=n, D=D, k=k, solver=solver,
                    degree_mean=degree["mean"], degree_std=degree["std"], twonn_id=float(twonn_id),
                    degree_q25=degree["q25"], degree_median=degree["median"], degree_q75=degree["q75"],
                    twonn_n=int(twonn_n), kernel=kernel, sigma=sigma, seed=seed,
                    not_pd=int(np.sum(res.counts["not_pd"])), kkt_failed=int(np.sum(res.counts["kkt_failed"])),
                ))
                if log:
                    log(f"{embedding} d={d} {solver}: mean degree {degree['mean']:.2f}, "
                        f"TwoNN {float(twonn_id):.2f} ({time.perf_counter() - start:.1f}s)")
    return rows


def write_manifold_table(path, dims, n=2000, D=64, k=25, seed=0, kernel="gaussian", sigma="local", **kwargs):
    """Run run_manifold_experiment and write its rows to `path` (manifolds.csv), atomically."""
    rows = run_manifold_experiment(dims, n=n, D=D, k=k, seed=seed, kernel=kernel, sigma=sigma, **kwargs)
    return write_table(path, rows, columns=COLUMNS)
