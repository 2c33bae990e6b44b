"""robust_step: θ_{t+1} = θ_t + η · A(Δ), hand-computed; its refusals."""

from __future__ import annotations

import pytest
import torch

from fedshield.aggregators import AggregatorError, create
from fedshield.server.aggregation import robust_step


def test_server_lr_times_median_hand_computed():
    g = torch.tensor([1.0, 2.0])
    updates = torch.tensor([[0.0, 1.0], [2.0, -1.0], [10.0, 4.0]])
    step = robust_step(g, updates, create("median"), server_lr=0.5)
    torch.testing.assert_close(step.new_vec, torch.tensor([1.0 + 0.5 * 2.0, 2.0 + 0.5 * 1.0]))
    assert step.seconds >= 0 and step.aggregation.update.shape == (2,)


def test_refusals_name_the_problem():
    g = torch.zeros(3)
    with pytest.raises(AggregatorError, match=r"shape \(n, 3\)"):
        robust_step(g, torch.zeros(4, 2), create("median"))
    with pytest.raises(AggregatorError, match="at least 5 clients"):
        robust_step(g, torch.zeros(4, 3), create("krum", f=1))
    with pytest.raises(AggregatorError, match="server_lr"):
        robust_step(g, torch.zeros(4, 3), create("median"), server_lr=0)
    with pytest.raises(AggregatorError, match="reference"):
        robust_step(g, torch.zeros(4, 3), create("fltrust"))


def test_gram_is_passed_through_to_the_rule():
    g = torch.zeros(2)
    updates = torch.tensor([[0.0, 0.0], [0.1, 0.0], [0.0, 0.1], [0.1, 0.1], [5.0, 5.0]])
    gram = torch.cdist(updates.double(), updates.double()) ** 2
    gram[4, :] = gram[:, 4] = 0.0  # a (wrong) gram that makes the outlier look central
    with_gram = robust_step(g, updates, create("krum", f=1), gram=gram)
    without = robust_step(g, updates, create("krum", f=1))
    torch.testing.assert_close(without.new_vec, updates[0])
    torch.testing.assert_close(with_gram.new_vec, updates[4])  # the rule used the given gram
