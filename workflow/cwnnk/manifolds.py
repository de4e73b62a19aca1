"""Synthetic point clouds of known intrinsic dimension, for TwoNN checks and figure F5.

Each sampler returns an (n, D) float64 array; the same arguments give the same points, and
for a given (n, d, D, seed) both kinds share their intrinsic coordinates u in [0, 1]^d.
"""

import numpy as np

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
