"""The manifolds stage (figure F5, claim C1): NNK degree and TwoNN on synthetic manifolds of
known intrinsic dimension.

Samplers: each returns an (n, D) float64 array; the same arguments give the same points, and
for a given (n, d, D, seed) both kinds share their intrinsic coordinates u in [0, 1]^d.

The experiment (`run_manifold_experiment`): for each embedding (linear, curved) and each
intrinsic dimension d, n points are sampled in R^D; the NNK graph is built with both solvers
(exact and pynnk) and the same kernel settings as the real layers, and TwoNN is estimated from
the same exact kNN distances. One row per (embedding, dim, solver) goes to manifolds.csv.
"""

import time

import numpy as np

from cwnnk.intrinsic_dim import twonn
from cwnnk.overlap import summarize
from cwnnk.params import SOLVERS, ManifoldParams
from cwnnk.tables import write_table

MAX_DIM = 16


def _check(n, d, D, min_D):
    if not 1 <= d <= MAX_DIM:
        raise ValueError(f"d must be in [1, {MAX_DIM}], got d={d}")
    if n < 2:
        raise ValueError(f"n must be at least 2, got n={n}")
    if D < min_D:
        raise ValueError(f"D must be at least {min_D} for d={d}, got D={D}")


def _orthonormal(rng, D, m):
    """A random D x m matrix with orthonormal columns (an isometric embedding R^m -> R^D)."""
    q, r = np.linalg.qr(rng.standard_normal((D, m)))
    # Sign fix makes q Haar-distributed and independent of the QR implementation.
    return q * np.sign(np.diag(r))


def linear(n, d, D=64, seed=0):
    """n points uniform in the unit cube [0, 1]^d, embedded in R^D by a random isometry."""
    _check(n, d, D, d)
    rng = np.random.default_rng([seed, d, D])
    u = rng.random((n, d))
    return u @ _orthonormal(rng, D, d).T


def curved(n, d, D=64, seed=0):
    """The unit cube [0, 1]^d with every axis curled into three quarters of a circle.

    Intrinsic coordinate u_l maps to (cos a u_l, sin a u_l) / a with a = 3 pi / 2: an arc of
    length 1, so the embedding is smooth, nonlinear and locally isometric to the cube
    (uniform density, intrinsic dimension exactly d) and lives in R^(2d); a random
    isometry then places it in R^D (needs D >= 2d). Three quarters rather than a full
    circle: on a closed torus the chords of the two nearest neighbours shrink unequally
    at high d and TwoNN over-estimates (about 12 for d = 10 at n = 4000, see docs).
    """
    _check(n, d, D, 2 * d)
    rng = np.random.default_rng([seed, d, D])
    a = 1.5 * np.pi
    angle = a * rng.random((n, d))
    arcs = np.concatenate([np.cos(angle), np.sin(angle)], axis=1) / a
    return arcs @ _orthonormal(rng, D, 2 * d).T


SAMPLERS = {"linear": linear, "curved": curved}


def sample(kind, n, d, D=64, seed=0):
    """Dispatch by name: kind is one of SAMPLERS ('linear', 'curved')."""
    if kind not in SAMPLERS:
        raise ValueError(f"kind must be one of {sorted(SAMPLERS)}, got {kind!r}")
    return SAMPLERS[kind](n, d, D=D, seed=seed)


EMBEDDINGS = ("linear", "curved")
COLUMNS = ("embedding", "dim", "n", "D", "k", "solver", "degree_mean", "degree_std", "twonn_id")


def run_manifold_experiment(params=ManifoldParams(), *, embeddings=EMBEDDINGS, log=None):
    """Rows of manifolds.csv: for each embedding, each d in params.dims and each solver, the NNK
    degree statistics over the params.n nodes and the TwoNN estimate of the point cloud.

    params: ManifoldParams (its graphs: the kernel, sigma, k and duplicates of the real layers).
    Columns: those of COLUMNS, then degree_q25, degree_median, degree_q75, twonn_n (points in
    the TwoNN fit), kernel, sigma, seed, and the solver's degenerate-case counts not_pd and
    kkt_failed. The TwoNN estimate depends only on the kNN distances, so it is the same in the
    rows of both solvers. log: optional callable taking one progress message.
    """
    from cwnnk.engine import nnk  # torch: imported only when the experiment runs

    for e in embeddings:
        if e not in SAMPLERS:
            raise ValueError(f"embedding {e!r} is not allowed; choose from {sorted(SAMPLERS)}")
    g, n, D, seed = params.graphs, params.n, params.D, params.seed
    rows = []
    for embedding in embeddings:
        for d in params.dims:
            X = sample(embedding, n, d, D=D, seed=seed)
            twonn_id = None
            for solver in SOLVERS:
                start = time.perf_counter()
                res = nnk(X, **g.replace(solver=solver).engine())
                if twonn_id is None:
                    twonn_id, twonn_n = twonn(res.distances)
                degree = summarize(res.degree)
                rows.append(dict(
                    embedding=embedding, dim=d, n=n, D=D, k=g.k, solver=solver,
                    degree_mean=degree["mean"], degree_std=degree["std"], twonn_id=float(twonn_id),
                    degree_q25=degree["q25"], degree_median=degree["median"], degree_q75=degree["q75"],
                    twonn_n=int(twonn_n), kernel=g.kernel, sigma=g.sigma, seed=seed,
                    not_pd=int(np.sum(res.counts["not_pd"])), kkt_failed=int(np.sum(res.counts["kkt_failed"])),
                ))
                if log:
                    log(f"{embedding} d={d} {solver}: mean degree {degree['mean']:.2f}, "
                        f"TwoNN {float(twonn_id):.2f} ({time.perf_counter() - start:.1f}s)")
    return rows


def write_manifold_table(path, params=ManifoldParams(), **kwargs):
    """The `manifolds` job: run_manifold_experiment, its rows written to `path` atomically."""
    return write_table(path, run_manifold_experiment(params, **kwargs), columns=COLUMNS)
