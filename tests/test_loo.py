"""The channel-wise NNK leave-one-out estimate (cwnnk.loo) on a hand-worked example."""

import numpy as np
import pytest

from cwnnk.loo import cw_loo, label_distribution, loo_columns, loo_errors

LABELS = np.array([0, 0, 1, 2])
# Per node: (neighbour, weight) candidates; weight 0 = off the support, -1 = padding.
CH0 = [[(1, 0.5), (2, 0.5), (-1, 0)],   # p = [.5, .5, 0]: tie 0/1, true 0 -> error 1/2
       [(0, 1.0), (3, 0.2), (-1, 0)],   # p = [5/6, 0, 1/6] -> 0, true 0 -> 0
       [(3, 0.3), (0, 0.0), (-1, 0)],   # p = [0, 0, 1] -> 2, true 1 -> 1
       [(0, 0.0), (1, 0.0), (2, 0.0)]]  # no neighbour: uniform -> 1 - 1/3
CH1 = [[(1, 2.0), (-1, 0), (-1, 0)],    # p = [1, 0, 0] -> 0
       [(0, 1.0), (2, 1.0), (-1, 0)],   # p = [.5, .5, 0]: tie, true 0 -> 1/2
       [(3, 0.1), (1, 0.3), (-1, 0)],   # p = [.75, 0, .25] -> 0, true 1 -> 1
       [(2, 1.0), (-1, 0), (-1, 0)]]    # p = [0, 1, 0] -> 1, true 2 -> 1
AGG = [[(1, 1.0), (-1, 0), (-1, 0)],    # -> 0
       [(3, 1.0), (-1, 0), (-1, 0)],    # -> 2, true 0 -> 1
       [(0, 1.0), (3, 1.0), (-1, 0)],   # tie 0/2, true 1 not among them -> 1
       [(-1, 0), (-1, 0), (-1, 0)]]     # empty -> 2/3


def arrays(rows):
    return np.array([[j for j, _ in r] for r in rows]), np.array([[w for _, w in r] for r in rows], dtype=float)


def layer():
    (i0, w0), (i1, w1), (ia, wa) = arrays(CH0), arrays(CH1), arrays(AGG)
    return np.stack([i0, i1]), np.stack([w0, w1]), ia, wa


def test_hand_worked_distributions_and_errors():
    idx, w = arrays(CH0)
    p, empty = label_distribution(idx, w, LABELS, 3)
    np.testing.assert_allclose(p, [[.5, .5, 0], [5 / 6, 0, 1 / 6], [0, 0, 1], [1 / 3, 1 / 3, 1 / 3]])
    assert empty.tolist() == [False, False, False, True]
    np.testing.assert_allclose(loo_errors(p, LABELS), [0.5, 0, 1, 2 / 3])


def test_hand_worked_layer():
    result = cw_loo(*layer(), LABELS)
    np.testing.assert_allclose(result["channel"], [(0.5 + 0 + 1 + 2 / 3) / 4, (0 + 0.5 + 1 + 1) / 4])
    # Soft vote: node 0 [.75, .25, 0] -> 0 right; node 1 [2/3, 1/4, 1/12] -> 0 right;
    # node 2 [3/8, 0, 5/8] -> 2 wrong; node 3 [1/6, 2/3, 1/6] -> 1 wrong.
    assert result["layer"] == pytest.approx(0.5)
    assert result["agg"] == pytest.approx((0 + 1 + 1 + 2 / 3) / 4)
    assert result["channel_empty"].tolist() == [1, 0] and result["agg_empty"] == 1
    columns = loo_columns(result)
    assert columns["loo_error_channel_mean"] == pytest.approx((13 / 24 + 15 / 24) / 2)
    assert columns["loo_error_channel_min"] == pytest.approx(13 / 24)


def test_perfect_and_channel_permutation():
    idx, w, ia, wa = layer()
    labels = np.zeros(4, dtype=int)  # one class: every non-empty node is right
    result = cw_loo(idx, w, ia, wa, labels, num_classes=2)
    assert result["channel"][1] == 0 and result["layer"] == 0
    swapped = cw_loo(idx[::-1], w[::-1], ia, wa, LABELS)
    assert swapped["layer"] == cw_loo(idx, w, ia, wa, LABELS)["layer"]


def test_bad_labels_are_refused():
    idx, w, ia, wa = layer()
    with pytest.raises(ValueError, match="shape"):
        cw_loo(idx, w, ia, wa, LABELS[:3])
    with pytest.raises(ValueError, match="num_classes"):
        cw_loo(idx, w, ia, wa, LABELS, num_classes=2)
