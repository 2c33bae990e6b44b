"""Divide-and-Conquer (DnC) — Shejwalkar & Houmansadr, "Manipulating the Byzantine: Optimizing
Model Poisoning Attacks and Defenses for Federated Learning", NDSS 2021 (Algorithm 2).

For each of ``niters`` iterations:

    r ⊂ [d] uniformly at random, |r| = b              (all coordinates when b ≥ d)
    x̄_i = Δ_i[r] − mean_j Δ_j[r]                       (centred subsample)
    v = top right singular vector of X̄ = [x̄_1; …; x̄_n]
    s_i = ⟨x̄_i, v⟩²                                    (outlier score)
    good_t = the n − ⌊c·f⌋ clients with the smallest s_i

and return the mean of the deltas in ∩_t good_t.

The top singular pair comes from the small n × n Gram X̄X̄ᵀ = U Λ Uᵀ (float64 ``eigh``):
⟨x̄_i, v⟩ = σ u_i, so s_i = λ_max · u_i² — no d-sized SVD. Ties in s_i (equal to 10⁻⁹ relative
to the largest) keep the lower index. If the intersection is empty (possible only when the
iterations disagree completely), the clients kept in the most iterations form the good set.
Coordinates are drawn from a ``torch.Generator`` seeded with ``seed`` at construction (a new
subsample per call; ``reset()`` re-seeds).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch

from fedshield.aggregators.base import Aggregation, Context, Param, Rule, register
from fedshield.aggregators.detection import Detection, Detector, register_detector
from fedshield.aggregators.kernels import random_columns, weighted_sum
from fedshield.aggregators.validation import non_negative_int, positive, positive_int


def outlier_scores(sub: torch.Tensor) -> torch.Tensor:
    """(n,) float64 s_i = ⟨x̄_i, v⟩² for the centred rows x̄_i of ``sub`` (top singular vector v).

    The (n, b) centring runs in float64 (a float32 mean of rows near float32's maximum would
    overflow), then the centred rows are divided by their largest |entry| (no overflow whatever
    the scale); the n × n ``eigh`` and the rescaling run in float64.
    """
    sub = sub.double()
    centred = sub - sub.mean(dim=0, keepdim=True)
    peak = float(centred.abs().max())
    if peak == 0:
        return torch.zeros(sub.shape[0], dtype=torch.float64)
    centred = centred / peak
    try:
        eigvals, eigvecs = torch.linalg.eigh(centred @ centred.T)
        top_value, top_vector = eigvals[-1], eigvecs[:, -1]
    except torch.linalg.LinAlgError:
        # LAPACK's eigh can fail to converge on near-degenerate Grams (seen with subnormal
        # entries); the SVD of the centred rows gives the same top pair: λ = σ², u = U[:, 0].
        u, sigma, _ = torch.linalg.svd(centred, full_matrices=False)
        top_value, top_vector = sigma[0] ** 2, u[:, 0]
    return top_value.clamp_min(0.0) * peak**2 * top_vector**2




def keep_lowest(scores: torch.Tensor, keep: int) -> torch.Tensor:
    """(n,) bool mask of the ``keep`` smallest scores; ties keep the lower index.

    Scores within 10⁻⁹ of each other relative to the largest are ties, so that a tie is broken the
    same way whatever the rounding of the spectral decomposition (and whatever the updates' scale).
    """
    top = float(scores.max())
    if top > 0:
        scores = torch.round(scores / top, decimals=9)
    order = torch.sort(scores, stable=True).indices
    mask = torch.zeros(scores.shape[0], dtype=torch.bool)
    mask[order[:keep]] = True
    return mask


_PARAMETERS: dict[str, Param] = {
    "f": Param(1, non_negative_int),
    "c": Param(1.0, positive),
    "niters": Param(5, positive_int),
    "b": Param(10_000, positive_int),
    "seed": Param(0, non_negative_int),
}


@register_detector
class DnCFilter(Detector):
    """DnC's filter as a detector: flagged = outside ∩_t good_t (the fallback above included);
    score = the fraction of iterations that dropped the client. Parameters as :class:`DnC`."""

    name: ClassVar[str] = "dnc"
    parameters: ClassVar[dict[str, Param]] = _PARAMETERS
    examples: ClassVar[tuple[dict[str, Any], ...]] = ({"f": 1}, {"f": 2, "b": 3, "niters": 2})

    @property
    def removed(self) -> int:
        """Clients dropped per iteration, ⌊c·f⌋."""
        return math.floor(self.c * self.f)

    def min_clients(self) -> int:
        return self.removed + 1

    def reset(self) -> None:
        self._generator = torch.Generator().manual_seed(self.seed)

    def detect(self, updates: torch.Tensor, ctx: Context) -> Detection:
        n, d = updates.shape
        keep = n - self.removed
        b = min(self.b, d)
        votes = torch.zeros(n, dtype=torch.int64)
        for _ in range(self.niters):
            sub = random_columns(updates, b, self._generator)
            votes += keep_lowest(outlier_scores(sub), keep)
        good = votes == self.niters
        fallback = not bool(good.any())
        if fallback:
            good = votes == votes.max()
        return Detection(flags=~good, scores=1.0 - votes.double() / self.niters, diagnostics={
            "votes": votes.tolist(), "subsample": b, "empty_intersection": fallback})


@register
class DnC(Rule):
    """DnC (Shejwalkar & Houmansadr, NDSS 2021): spectral filtering on random coordinate subsets,
    then the mean of the kept deltas.

    Parameters
    ----------
    f : int ≥ 0
        Number of malicious clients assumed (the paper's m).
    c : float > 0
        Filtering fraction: ⌊c·f⌋ clients are dropped per iteration (c·f < n required).
    niters : int ≥ 1
        Number of random subsamples.
    b : int ≥ 1
        Subsample dimension (coordinates per iteration); capped at d.
    seed : int
        Seed of the coordinate sampler.
    """

    name: ClassVar[str] = "dnc"
    parameters: ClassVar[dict[str, Param]] = _PARAMETERS
    examples: ClassVar[tuple[dict[str, Any], ...]] = DnCFilter.examples

    def setup(self) -> None:
        self._filter = DnCFilter(**self.params())

    def min_clients(self) -> int:
        return self._filter.min_clients()

    def reset(self) -> None:
        self._filter.reset()

    def aggregate(self, updates: torch.Tensor, ctx: Context) -> Aggregation:
        found = self._filter.detect(updates, ctx)
        good = ~found.flags
        weights = good.to(torch.float64) / int(good.sum())
        return Aggregation(update=weighted_sum(weights, updates), accepted=good, weights=weights,
                           diagnostics=found.diagnostics)
