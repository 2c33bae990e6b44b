"""Plain averaging: the non-robust baseline."""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from fedshield.aggregators.base import Aggregation, Rule, register
from fedshield.aggregators.kernels import weighted_sum
from fedshield.aggregators.validation import (
    check_bool,
    check_context,
    check_ratio,
    check_updates,
    client_shares,
)


@register
class FedAvg(Rule):
    """Federated averaging (McMahan et al., AISTATS 2017, "Communication-Efficient Learning of
    Deep Networks from Decentralized Data").

        update = Σ_i a_i x_i,   a_i = 1/n                                  (default)
        a_i = min(c_i, r·median(c)) / Σ_j min(c_j, r·median(c))            (weighted=True)

    with c_i the client-reported sample counts (context ``weights``) and r = ``max_weight_ratio``.
    McMahan et al. weight by c_i; the counts are unverified, so one client claiming 10⁶ examples
    would own the round (research/FLOWER.md §2.3 item 4): the default is the uniform mean, and the
    weighted mode caps every count at r times the median count (``r = inf`` is the paper's
    uncapped weighting). Not robust: a single outlier moves the result arbitrarily far.
    ``weights`` in the result are the shares a_i.
    """

    name: ClassVar[str] = "fedavg"

    def __init__(self, *, weighted: bool = False, max_weight_ratio: float = 10.0) -> None:
        self.weighted = check_bool(self.name, "weighted", weighted)
        self.max_weight_ratio = check_ratio(self.name, "max_weight_ratio", max_weight_ratio)

    def __call__(self, updates: torch.Tensor, **context: Any) -> Aggregation:
        x = check_updates(self, updates, check_finite=False)  # the sum itself detects NaN/Inf
        ctx = check_context(self, x, context)
        shares, diag = client_shares(self.name, x.shape[0], ctx.weights, weighted=self.weighted,
                                     max_weight_ratio=self.max_weight_ratio)
        return Aggregation(update=weighted_sum(shares, x, rule=self.name),
                           weights=shares.to(x.dtype), diagnostics=diag)
