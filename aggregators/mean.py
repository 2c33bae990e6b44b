"""Plain averaging: the non-robust baseline."""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from fedshield.aggregators.base import Aggregation, Context, Param, Rule, register
from fedshield.aggregators.kernels import weighted_sum
from fedshield.aggregators.validation import boolean, client_shares, ratio


@register
class FedAvg(Rule):
    """Federated averaging (McMahan et al., AISTATS 2017, "Communication-Efficient Learning of
    Deep Networks from Decentralized Data").

        update = Σ_i a_i x_i,   a_i = 1/n                                  (default)
        a_i = min(c_i, r·median(c)) / Σ_j min(c_j, r·median(c))            (weighted=True)

    with c_i the client-reported sample counts (context ``weights``) and r = ``max_weight_ratio``.
    McMahan et al. weight by c_i; the counts are unverified, so one client claiming 10⁶ examples
    would own the round: the default is the uniform mean, and the
    weighted mode caps every count at r times the median count (``r = inf`` is the paper's
    uncapped weighting). Not robust: a single outlier moves the result arbitrarily far
    (``robust = False``).
    ``weights`` in the result are the shares a_i.
    """

    name: ClassVar[str] = "fedavg"
    robust: ClassVar[bool] = False
    coordinatewise: ClassVar[bool] = True
    parameters: ClassVar[dict[str, Param]] = {
        "weighted": Param(False, boolean),
        "max_weight_ratio": Param(10.0, ratio),
    }
    examples: ClassVar[tuple[dict[str, Any], ...]] = ({}, {"weighted": True})

    def aggregate(self, x: torch.Tensor, ctx: Context) -> Aggregation:
        shares, diag = client_shares(self.name, x.shape[0], ctx.weights, weighted=self.weighted,
                                     max_weight_ratio=self.max_weight_ratio)
        return Aggregation(update=weighted_sum(shares, x, rule=self.name),
                           weights=shares.to(x.dtype), diagnostics=diag)
