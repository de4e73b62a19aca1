"""The theory of docs/method.md section 3 (channel-wise NNK), checked on the engine's kernels and graphs.

Two statements are NOT true in general and are deliberately not tested: N^agg subset of the
union of the N^c, and |N^agg| <= sum_c |N^c|.
"""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cwnnk import kernels
from cwnnk.engine import nnk


def layer(seed, c=4, n=120, d=6):
    """C channels of N points each and their aggregate (N, C * D), the channels' concatenation."""
    X = np.random.default_rng(seed).normal(size=(c, n, d))
    return X, np.concatenate(list(X), axis=1)


def sqdist(P):
    return torch.from_numpy(((P[:, None] - P[None]) ** 2).sum(-1))


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), sigma=st.floats(0.5, 5))
def test_gaussian_with_one_sigma_is_a_product_of_channel_kernels(seed, sigma):
    X, agg = layer(seed, n=30)
    product = torch.stack([kernels.gaussian(sqdist(Xc), sigma) for Xc in X]).prod(0)
    torch.testing.assert_close(kernels.gaussian(sqdist(agg), sigma), product, rtol=1e-12, atol=1e-300)


def kri(K, i, j, k):
    """The pairwise KRI condition for candidates j, k of query i: both of its inequalities."""
    return (K[j, k] < K[i, j] / K[i, k]) & (K[j, k] < K[i, k] / K[i, j])


N_TRIPLE = 25
TRIPLES = np.array([t for t in np.ndindex(N_TRIPLE, N_TRIPLE, N_TRIPLE) if len(set(t)) == 3]).T


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), sigma=st.floats(0.5, 3))
def test_kri_in_every_channel_carries_to_the_aggregate(seed, sigma):
    X, agg = layer(seed, c=3, n=N_TRIPLE, d=2)
    channel = [kernels.gaussian(sqdist(Xc), sigma).numpy() for Xc in X]
    K_agg = kernels.gaussian(sqdist(agg), sigma).numpy()
    i, j, k = TRIPLES
    # each inequality K_jk < K_ij / K_ik multiplies over channels: holding (or failing) in every
    # channel, it holds (fails) in the aggregate
    for a, c in ((j, k), (k, j)):
        per_channel = np.stack([K[j, k] < K[i, a] / K[i, c] for K in channel])
        aggregate = K_agg[j, k] < K_agg[i, a] / K_agg[i, c]
        assert per_channel.all(0).any() and (~per_channel).all(0).any()  # both cases occur
        assert aggregate[per_channel.all(0)].all() and not aggregate[(~per_channel).all(0)].any()
    # so KRI itself, holding in every channel, holds in the aggregate
    per_channel = np.stack([kri(K, i, j, k) for K in channel])
    assert kri(K_agg, i, j, k)[per_channel.all(0)].all()


def test_two_candidates_are_both_neighbours_exactly_when_kri_holds():
    # ties the condition to the solver: with k = 2 the NNK support is {j, k} iff KRI holds
    X = np.random.default_rng(0).normal(size=(300, 3))
    result = nnk(X, 2)
    for i in range(len(X)):
        j, k = result.indices[i]
        P = X[[i, j, k]]
        K = kernels.gaussian(sqdist(P), result.sigma[i]).numpy()
        assert (result.degree[i] == 2) == kri(K, 0, 1, 2)


@pytest.mark.parametrize("kernel", ["cosine", "gaussian"])
def test_identical_channels_give_the_channel_graph_as_aggregate(kernel):
    rng = np.random.default_rng(1)
    one = np.maximum(0, rng.normal(size=(200, 5)) + 0.3)
    X = np.stack([one] * 4)
    channels = nnk(X, 12, kernel=kernel)
    aggregate = nnk(np.concatenate(list(X), axis=1), 12, kernel=kernel)
    for c in range(4):
        np.testing.assert_array_equal(channels.indices[c], aggregate.indices)
        np.testing.assert_array_equal(channels.weights[c] > 0, aggregate.weights > 0)
