"""FLAME — Nguyen et al., "FLAME: Taming Backdoors in Federated Learning", USENIX Security 2022.

Three steps on the round's deltas Δ_i (client − global):

1. **Filter.** Cosine distances c_ij = 1 − cos(Δ_i, Δ_j); HDBSCAN (scikit-learn) on the precomputed
   matrix with ``min_cluster_size = ⌊n/2⌋ + 1``, ``min_samples = 1``, ``allow_single_cluster``;
   the largest cluster is admitted, every other cluster and every noise point is rejected.
2. **Adaptive clipping.** S = median_i ‖Δ_i‖ over *all* n clients (even n: mean of the two middle
   norms); admitted Δ_i ← Δ_i · min(1, S / ‖Δ_i‖).
3. **Mean and adaptive noise.** G = mean of the clipped admitted deltas + N(0, σ² I), σ = λ · S.
   The paper derives λ = (1/ε)·√(2 ln(1.25/δ)) and reports λ ≈ 0.001 for image classification.

Conventions pinned here: FLAME's paper clusters the local *models*; fedshield clusters deltas (the
contract's updates; the cosine between deltas is what separates a backdoor's direction). A zero
delta has cosine 0 with everything (distance 1). If HDBSCAN labels every client noise, nothing is
admitted and the update is the noise alone. The noise comes from a ``torch.Generator`` seeded
with ``seed`` at construction (a fresh draw per call; ``reset()`` re-seeds it).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from fedshield.aggregators.base import Aggregation, AggregatorError, Context, Param, Rule, register
from fedshield.aggregators.detection import Detection, Detector, register_detector
from fedshield.aggregators.kernels import (
    clipped_mean,
    cosine_distances,
    majority_cluster,
    median_norm,
    row_norms,
)
from fedshield.aggregators.validation import non_negative, non_negative_int


def _cluster_size(rule: str, name: str, value: Any) -> int:
    if non_negative_int(rule, name, value) < 2:
        raise AggregatorError(f"{rule}: {name} must be None (⌊n/2⌋+1) or an int >= 2, "
                              f"got {value!r}")
    return value


@register_detector
class FlameFilter(Detector):
    """FLAME's filter (step 1 above) as a detector: every client outside HDBSCAN's largest
    cluster of cosine distances is flagged; score = the client's median cosine distance to the
    others."""

    name: ClassVar[str] = "flame"
    parameters: ClassVar[dict[str, Param]] = {"min_cluster_size": Param(None, _cluster_size)}
    examples: ClassVar[tuple[dict[str, Any], ...]] = ({}, {"min_cluster_size": 2})

    def detect(self, x: torch.Tensor, ctx: Context, norms: torch.Tensor | None = None
               ) -> Detection:
        n = x.shape[0]
        distances = cosine_distances(x, norms)
        size = self.min_cluster_size if self.min_cluster_size is not None else n // 2 + 1
        admitted = torch.from_numpy(majority_cluster(distances.numpy(), size))
        scores = distances.double().median(dim=1).values if n > 1 else torch.zeros(n)
        return Detection(flags=~admitted, scores=scores.double())


@register
class Flame(Rule):
    """FLAME (Nguyen et al., USENIX Security 2022): HDBSCAN on cosine distances, clip, noise.

    Parameters
    ----------
    lam : float ≥ 0
        Noise factor λ: σ = λ·S with S the median delta norm (0 disables the noise).
    min_cluster_size : int ≥ 2 or None
        HDBSCAN's minimum cluster size; None means the paper's ⌊n/2⌋ + 1.
    seed : int
        Seed of the noise generator.
    """

    name: ClassVar[str] = "flame"
    parameters: ClassVar[dict[str, Param]] = {
        "lam": Param(0.001, non_negative),
        "min_cluster_size": Param(None, _cluster_size),
        "seed": Param(0, non_negative_int),
    }
    examples: ClassVar[tuple[dict[str, Any], ...]] = ({}, {"lam": 0.0, "min_cluster_size": 2})

    def setup(self) -> None:
        self._filter = FlameFilter(min_cluster_size=self.min_cluster_size)

    def reset(self) -> None:
        self._generator = torch.Generator().manual_seed(self.seed)

    def aggregate(self, updates: torch.Tensor, ctx: Context) -> Aggregation:
        norms = row_norms(updates)
        accepted = ~self._filter.detect(updates, ctx, norms).flags
        bound = median_norm(norms)
        kept = int(accepted.sum())
        mean = clipped_mean(updates, norms, accepted, bound)
        sigma = self.lam * bound
        if sigma > 0:
            noise = torch.randn(mean.shape, generator=self._generator, dtype=torch.float64)
            top = torch.finfo(updates.dtype).max  # σ ∝ the median *norm*: saturate, never inf
            mean = (mean.double() + sigma * noise).clamp(-top, top).to(updates.dtype)
        weights = accepted.to(torch.float64) / max(kept, 1)
        return Aggregation(
            update=mean,
            accepted=accepted,
            weights=weights,
            diagnostics={
                "clip_norm": bound,
                "noise_std": sigma,
                "admitted": kept,
                "clipped": int((norms[accepted] > bound).sum()),
            },
        )
