"""Robust rules that respect sample sizes: weighted median, weighted trimmed mean, weighted geomed,
on hand-computed cases, and equal to the unweighted rules when every client reports the same
count."""

from __future__ import annotations

import pytest
import torch

from fedshield.aggregators import AggregatorError, create


def col(*values: float) -> torch.Tensor:
    return torch.tensor([[float(v)] for v in values])


def test_weighted_median_hand_computed():
    rule = create("median", weighted=True)
    # shares 0.1 0.2 0.3 0.4: the cumulative share reaches 1/2 at the third value
    assert rule(col(1, 2, 3, 4), weights=[1, 2, 3, 4]).update.item() == 3.0
    # exactly half the mass below: the mean of the two values around it (as the plain median)
    assert rule(col(1, 2, 3, 4), weights=[1, 1, 1, 1]).update.item() == 2.5
    # a client with zero count never decides: the half falls between 1 and 3
    assert rule(col(1, 2, 3), weights=[5, 0, 5]).update.item() == 2.0


def test_weighted_trimmed_mean_hand_computed():
    rule = create("trimmedmean", f=1, weighted=True)
    # equal counts: drop one value per side exactly as the unweighted rule: (2 + 3) / 2
    assert rule(col(1, 2, 3, 100), weights=[10, 10, 10, 10]).update.item() == pytest.approx(2.5)
    # counts 1, 1, 1, 5 (shares 1/8 ×3, 5/8): trimming 1/4 of the mass per side keeps 1/8 of the
    # value 3's share... : (2·0 + 3·(3/8 − 1/4) + 10·(3/4 − 3/8)) / (1/2) = (0.375 + 3.75) / 0.5
    got = rule(col(1, 2, 3, 10), weights=[1, 1, 1, 5]).update.item()
    assert got == pytest.approx((3 * (3 / 8 - 2 / 8) + 10 * (6 / 8 - 3 / 8)) / 0.5)


@pytest.mark.parametrize(("name", "params"), [("median", {}), ("trimmedmean", {"f": 2}),
                                              ("trimmedmean", {"beta": 0.2}), ("geomed", {})])
def test_equal_counts_give_the_unweighted_rule(name, params):
    x = torch.randn(11, 300, generator=torch.Generator().manual_seed(0))
    plain = create(name, **params)(x).update
    weighted = create(name, **params, weighted=True)(x, weights=torch.full((11,), 42.0)).update
    torch.testing.assert_close(weighted, plain, rtol=1e-5, atol=1e-5)


def test_the_cap_is_the_trust_boundary():
    """A client claiming 10⁶ examples is capped at 10 × the median count: with 19 honest
    clients at 10 examples its share is 100/290 < 1/2, so it cannot move the weighted median
    beyond the honest values (with 9 honest clients, 100/190 > 1/2 would: the cap bounds a
    client's share, and the rule holds while the attackers' capped share stays below 1/2)."""
    honest = torch.linspace(-1, 1, 19)[:, None]
    x = torch.cat([torch.tensor([[1e6]]), honest])
    counts = torch.tensor([1e6] + [10.0] * 19)
    out = create("median", weighted=True)(x, weights=counts).update.item()
    assert out <= 1.0
    uncapped = create("median", weighted=True, max_weight_ratio=float("inf"))
    assert uncapped(x, weights=counts).update.item() == 1e6  # without the cap it would own it


def test_weighted_needs_the_counts():
    with pytest.raises(AggregatorError, match="weighted=True needs context 'weights'"):
        create("median", weighted=True)(col(1, 2, 3))
