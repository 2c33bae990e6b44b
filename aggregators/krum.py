"""Krum and Multi-Krum (Blanchard, El Mhamdi, Guerraoui, Stainer, NeurIPS 2017, "Machine Learning
with Adversaries: Byzantine Tolerant Gradient Descent")."""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from fedshield.aggregators.base import (
    REQUIRED,
    Aggregation,
    AggregatorError,
    Context,
    Param,
    Rule,
    register,
)
from fedshield.aggregators.kernels import krum_scores, lowest, resolve_distances, weighted_sum
from fedshield.aggregators.validation import non_negative_int, positive_int


@register
class Krum(Rule):
    """Krum: the single update with the least sum of squared distances to its neighbours.

        score(i) = Σ_{j ∈ N_i} ‖x_i − x_j‖²,  N_i = the n − f − 2 nearest other updates
        update   = x_{i*},  i* = argmin_i score(i)   (ties: lowest index)

    Blanchard et al. 2017, Alg. "Krum"; requires n > 2f + 2. The sum over the n − f − 2 smallest
    *squared* distances is the paper's (ByzFL averages n − f − 1, FLPoison sums unsquared
    distances). Distances come from the shared kernel
    (:func:`fedshield.aggregators.kernels.pairwise_sq_distances`) or the ``gram`` context.
    """

    name: ClassVar[str] = "krum"
    requirement: ClassVar[str] = "n > 2f + 2"
    parameters: ClassVar[dict[str, Param]] = {"f": Param(REQUIRED, non_negative_int)}
    examples: ClassVar[tuple[dict[str, Any], ...]] = ({"f": 1}, {"f": 0})

    def min_clients(self) -> int:
        return 2 * self.f + 3

    def aggregate(self, x: torch.Tensor, ctx: Context) -> Aggregation:
        dist = resolve_distances(self.name, x, ctx.gram)
        scores = krum_scores(dist, self.f)
        best = int(lowest(scores, 1)[0])
        n = x.shape[0]
        accepted = torch.zeros(n, dtype=torch.bool)
        accepted[best] = True
        return Aggregation(update=x[best].clone(), accepted=accepted,
                           weights=accepted.to(x.dtype),
                           diagnostics={"selected": [best], "scores": scores.tolist()})


@register
class MultiKrum(Rule):
    """Multi-Krum: the uniform mean of the m updates with the lowest Krum scores.

        update = (1/m) Σ_{i ∈ S} x_i,  S = the m lowest score(i)   (Krum's score, ties: lower index)

    Blanchard et al. 2017 ("Multi-Krum", §5); requires n > 2f + 2 and 1 <= m <= n; default
    m = n − f. The selected updates are averaged *uniformly* as in the paper (Flower 1.42's
    built-in weights them by the client-reported num-examples, which one client can inflate).
    """

    name: ClassVar[str] = "multikrum"
    requirement: ClassVar[str] = "n > 2f + 2"
    parameters: ClassVar[dict[str, Param]] = {"f": Param(REQUIRED, non_negative_int),
                                              "m": Param(None, positive_int)}
    examples: ClassVar[tuple[dict[str, Any], ...]] = ({"f": 1}, {"f": 1, "m": 2})

    def min_clients(self) -> int:
        return max(2 * self.f + 3, self.m or 1)

    def aggregate(self, x: torch.Tensor, ctx: Context) -> Aggregation:
        n = x.shape[0]
        m = self.m if self.m is not None else n - self.f
        if m > n:
            raise AggregatorError(f"multikrum: m = {m} exceeds the number of updates n = {n}")
        dist = resolve_distances(self.name, x, ctx.gram)
        scores = krum_scores(dist, self.f)
        chosen = lowest(scores, m)
        accepted = torch.zeros(n, dtype=torch.bool)
        accepted[chosen] = True
        shares = accepted.double() / m
        return Aggregation(update=weighted_sum(shares, x, rule=self.name), accepted=accepted,
                           weights=shares.to(x.dtype),
                           diagnostics={"selected": sorted(chosen.tolist()), "m": m,
                                        "scores": scores.tolist()})
