"""Krum and Multi-Krum (Blanchard, El Mhamdi, Guerraoui, Stainer, NeurIPS 2017, "Machine Learning
with Adversaries: Byzantine Tolerant Gradient Descent")."""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from fedshield.aggregators.base import Aggregation, AggregatorError, Rule, register
from fedshield.aggregators.distances import resolve_distances
from fedshield.aggregators.kernels import weighted_sum
from fedshield.aggregators.validation import check_context, check_f, check_positive, check_updates


def krum_scores(dist: torch.Tensor, f: int, members: torch.Tensor | None = None) -> torch.Tensor:
    """Krum scores on a float64 distance matrix, optionally restricted to ``members`` (bool (n,)).

        score(i) = Σ_{j ∈ N_i} ‖x_i − x_j‖²,  N_i = the k = max(1, r − f − 2) nearest other members

    with r the number of members (r = n without ``members``). Non-members get score +inf.
    The clamp k >= 1 only matters inside Bulyan's recursion, where the shrinking set may hold
    fewer than f + 3 members (it is also what Flower's legacy Bulyan does).
    """
    n = dist.shape[0]
    if members is None:
        members = torch.ones(n, dtype=torch.bool)
    r = int(members.sum())
    if r == 1:
        return torch.where(members, 0.0, torch.inf).double()
    k = max(1, r - f - 2)
    masked = dist.clone()
    masked[:, ~members] = torch.inf
    masked.fill_diagonal_(torch.inf)
    nearest = torch.topk(masked, k, dim=1, largest=False, sorted=False).values
    scores = nearest.sum(dim=1)
    return torch.where(members, scores, torch.inf)


def lowest(scores: torch.Tensor, m: int) -> torch.Tensor:
    """Indices of the m lowest scores; ties go to the lower index (stable)."""
    return torch.sort(scores, stable=True).indices[:m]


@register
class Krum(Rule):
    """Krum: the single update with the least sum of squared distances to its neighbours.

        score(i) = Σ_{j ∈ N_i} ‖x_i − x_j‖²,  N_i = the n − f − 2 nearest other updates
        update   = x_{i*},  i* = argmin_i score(i)   (ties: lowest index)

    Blanchard et al. 2017, Alg. "Krum"; requires n > 2f + 2. The sum over the n − f − 2 smallest
    *squared* distances is the paper's (ByzFL averages n − f − 1, FLPoison sums unsquared
    distances; research/ANCHORS.md §2.3). Distances come from the shared kernel
    (:func:`aggregators.distances.pairwise_sq_distances`) or the ``gram`` context.
    """

    name: ClassVar[str] = "krum"
    requirement: ClassVar[str] = "n > 2f + 2"

    def __init__(self, *, f: int) -> None:
        self.f = check_f(self.name, f)

    def min_clients(self) -> int:
        return 2 * self.f + 3

    def __call__(self, updates: torch.Tensor, **context: Any) -> Aggregation:
        x = check_updates(self, updates, check_finite="gram" in context)
        ctx = check_context(self, x, context)
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
    m = n − f. The selected updates are averaged *uniformly* as in the paper (Flower's built-in
    weights them by the client-reported num-examples, research/FLOWER.md §2.1).
    """

    name: ClassVar[str] = "multikrum"
    requirement: ClassVar[str] = "n > 2f + 2"

    def __init__(self, *, f: int, m: int | None = None) -> None:
        self.f = check_f(self.name, f)
        if m is not None:
            check_positive(self.name, "m", m, integer=True)
        self.m = m

    def min_clients(self) -> int:
        return max(2 * self.f + 3, self.m or 1)

    def __call__(self, updates: torch.Tensor, **context: Any) -> Aggregation:
        x = check_updates(self, updates, check_finite="gram" in context)
        ctx = check_context(self, x, context)
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
