"""Small-sample tests and intervals (cwnnk.exact) against closed forms and scipy."""

import math

import numpy as np
import pytest
from scipy import stats

from cwnnk.exact import (
    bca_pearson,
    blocked_kruskal,
    holm,
    partial_correlation,
    permutation_correlation,
    signed_rank,
    smallest_signed_rank_p,
)


def test_holm_hand_worked():
    # sorted 0.01, 0.03, 0.04: 3 x 0.01, max(0.03, 2 x 0.03), max(0.06, 1 x 0.04); NaN left out of the family.
    assert holm([0.04, 0.01, np.nan, 0.03]).tolist()[:2] == pytest.approx([0.06, 0.03])
    assert holm([0.04, 0.01, np.nan, 0.03])[3] == pytest.approx(0.06) and np.isnan(holm([np.nan])[0])
    assert holm([0.5, 0.9]).tolist() == pytest.approx([1.0, 1.0])


@pytest.mark.parametrize("alternative", ["two-sided", "greater", "less"])
def test_signed_rank_equals_scipys_exact_test_without_ties(alternative):
    d = np.random.default_rng(1).normal(0.3, 1, 12)
    assert signed_rank(d, alternative)[1] == pytest.approx(stats.wilcoxon(d, alternative=alternative,
                                                                          method="exact").pvalue)


def test_signed_rank_closed_forms_with_zeros_and_ties():
    assert signed_rank([0.01, 0.02, 0.03]) == (6.0, 0.25, 3)  # all 3 positive: 2 x 1/8
    assert signed_rank([0, 0, 0.01, 0.02, 0.03], "greater")[1:] == (1 / 8, 3)  # zeros dropped
    # |d| = 1, 1, 2 (midranks 1.5, 1.5, 3), signs +, -, +: W+ = 4.5. Of the 8 sign patterns, W+ >= 4.5 in
    # {1.5+3, 1.5+3, 1.5+1.5+3}: p = 3/8.
    assert signed_rank([1.0, -1.0, 2.0], "greater")[:2] == (4.5, 3 / 8)
    assert signed_rank([]) == (0.0, 1.0, 0)
    assert smallest_signed_rank_p(5, "greater") == 1 / 32 and smallest_signed_rank_p(5) == 1 / 16


def test_permutation_correlation_exact_and_sampled():
    x = np.arange(5.0)
    r, p, method = permutation_correlation(x, x, alternative="greater")
    assert r == pytest.approx(1) and p == pytest.approx(1 / 120) and "exact" in method  # one ordering of 5!
    assert permutation_correlation(x, x)[1] == pytest.approx(2 / 120)  # two-sided: the reverse too
    rng = np.random.default_rng(0)
    x = rng.normal(size=30)
    y = 0.4 * x + rng.normal(size=30)
    r, p, method = permutation_correlation(x, y)
    assert r == pytest.approx(stats.pearsonr(x, y).statistic) and "9999 seeded" in method
    assert p == pytest.approx(stats.pearsonr(x, y).pvalue, abs=0.01)  # the t test is right at n = 30
    assert np.isnan(permutation_correlation([1.0, 2.0], [1.0, 3.0])[0])
    assert np.isnan(permutation_correlation([1.0, 1, 1], [1.0, 2, 3])[1])


def test_partial_correlation_of_exact_linear_parts():
    z = np.array([0.0, 1, 2, 3, 4])
    e = np.array([1.0, -1, 0, -1, 1])  # orthogonal to 1 and z
    r, p, method = partial_correlation(z + e, 2 * z + e, z)
    assert r == pytest.approx(1.0) and method.startswith("partial Pearson")
    assert np.isnan(partial_correlation([1.0, 2, 3], [1.0, 2, 4], [0.0, 1, 2])[0])  # n < 4


def test_bca_interval_agrees_with_scipy():
    rng = np.random.default_rng(1)
    x = rng.normal(size=16)
    y = 0.5 * x + rng.normal(size=16)
    lo, hi = bca_pearson(x, y, n_boot=20000)
    ref = stats.bootstrap((x, y), lambda a, b, axis=-1: stats.pearsonr(a, b, axis=axis).statistic, paired=True,
                          method="BCa", n_resamples=20000, random_state=0).confidence_interval
    assert lo == pytest.approx(ref.low, abs=0.03) and hi == pytest.approx(ref.high, abs=0.03)
    assert bca_pearson(x, y) == bca_pearson(x, y)  # seeded
    assert all(math.isnan(v) for v in bca_pearson(x[:9], y[:9]))  # below the minimum n


def test_blocked_kruskal_one_block_is_the_exact_kruskal_wallis_permutation_test():
    # 2 groups of 2, fully separated: H = 2.4, attained by 2 of the 6 arrangements: p = 1/3.
    r = blocked_kruskal([0.1, 0.2, 0.7, 0.8], ["a", "a", "b", "b"], [0, 0, 0, 0])
    assert r["statistic"] == pytest.approx(2.4) and r["p"] == pytest.approx(1 / 3) and r["blocks"] == 1
    assert r["statistic"] == pytest.approx(stats.kruskal([0.1, 0.2], [0.7, 0.8]).statistic)
    assert r["smallest_p"] == pytest.approx(1 / 3)


def test_blocked_kruskal_sampled_when_a_block_is_large():
    # One block of 9 (4 a, 5 b) fully separated: 2 of the C(9, 4) = 126 arrangements reach that H.
    values = np.arange(9.0)
    r = blocked_kruskal(values, ["a"] * 4 + ["b"] * 5, np.zeros(9))
    assert "9999 seeded" in r["method"] and r["p"] == pytest.approx(2 / 126, abs=0.004)


def test_blocked_kruskal_ignores_blocks_with_one_level():
    r = blocked_kruskal([0.1, 0.2, 0.7, 0.8, 5, 6], ["a", "a", "b", "b", "a", "a"], [0, 0, 0, 0, 1, 1])
    assert r["blocks"] == 1 and r["n"] == 4
    assert np.isnan(blocked_kruskal([1.0, 2.0], ["a", "b"], [0, 1])["p"])
