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

import warnings
from typing import Any, ClassVar

import numpy as np
import torch

from fedshield.aggregators.base import Aggregation, AggregatorError, Rule, register
from fedshield.aggregators.distances import pairwise_sq_distances
from fedshield.aggregators.kernels import weighted_sum
from fedshield.aggregators.validation import check_context, check_f, check_positive, check_updates

# |cos| above 1 − PARALLEL_TOL is float32 rounding of parallel rows (unit rows in float32, GEMM in
# float32: errors of a few 1e-7); FoolsGold's α / max α would otherwise blow that noise up.
PARALLEL_TOL = 1e-6


def _scaled_norms(rows: torch.Tensor) -> torch.Tensor:
    """(k,) float64 norms of rows whose plain sum of squares over- or underflows: rows / peak."""
    peak = rows.abs().amax(dim=1)
    scaled = rows / torch.where(peak > 0, peak, 1.0)[:, None]
    return peak.double() * torch.linalg.vector_norm(scaled, dim=1).double()


def row_norms(updates: torch.Tensor) -> torch.Tensor:
    """(n,) float64 Euclidean norms of the rows.

    One fast pass in the updates' dtype; the rare rows whose sum of squares overflowed (entries
    above ~1e19 in float32) or underflowed (all entries below ~1e-19) are redone scaled by their
    largest |entry|.
    """
    norms = torch.linalg.vector_norm(updates, dim=1)
    peak = torch.maximum(updates.amax(dim=1), -updates.amin(dim=1))
    bad = ~torch.isfinite(norms) | (norms < peak * (1 - 1e-6))
    norms = norms.double()
    if bool(bad.any()):
        norms[bad] = _scaled_norms(updates[bad])
    return norms


def unit_rows(updates: torch.Tensor, norms: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows / ‖row‖, nonzero mask) in the updates' dtype; zero rows stay zero.

    A division by the norm (never a multiplication by its reciprocal, so a row with one non-zero
    entry becomes exactly ±e_k); rows whose norm is outside the dtype's normal range are first
    divided by their largest |entry|.
    """
    info = torch.finfo(updates.dtype)
    nonzero = norms > 0
    divisor = torch.where(nonzero, norms, 1.0)
    extreme = (divisor > info.max / 4) | (divisor < info.tiny)
    unit = updates / divisor.to(updates.dtype)[:, None]
    if bool(extreme.any()):
        rows = updates[extreme]
        rows = rows / rows.abs().amax(dim=1, keepdim=True)
        unit[extreme] = rows / torch.linalg.vector_norm(rows, dim=1, keepdim=True)
    return unit, nonzero


def cosine_similarity(updates: torch.Tensor, norms: torch.Tensor | None = None) -> torch.Tensor:
    """(n, n) float64 cos(Δ_i, Δ_j), through the shared kernel: cos = 1 − ‖u_i − u_j‖² / 2.

    u_i = Δ_i / ‖Δ_i‖ are unit rows (``norms`` = :func:`row_norms` if already computed). Any pair
    involving a zero row has cosine 0 (diagonal included, as scikit-learn's ``cosine_similarity``
    does); the result is clamped to [−1, 1], and values within ``PARALLEL_TOL`` of ±1 are set to
    ±1: parallel rows are exactly parallel whatever the float32 rounding of the kernel's GEMM
    (and whatever their scale).
    """
    unit, nonzero = unit_rows(updates, row_norms(updates) if norms is None else norms)
    cos = (1.0 - pairwise_sq_distances(unit).to(torch.float64) / 2.0).clamp(-1.0, 1.0)
    cos = torch.where(cos.abs() > 1.0 - PARALLEL_TOL, cos.sign(), cos)
    both = nonzero[:, None] & nonzero[None, :]
    return torch.where(both, cos, torch.zeros_like(cos))


def median_norm(norms: torch.Tensor) -> float:
    """Median of the norms; an even count averages the two middle values (ANCHORS §2.3)."""
    return float(np.median(norms.cpu().numpy()))


def clipped_mean(updates: torch.Tensor, norms: torch.Tensor, keep: torch.Tensor,
                 bound: float) -> torch.Tensor:
    """(d,) mean over the rows in ``keep`` of Δ_i · min(1, bound / ‖Δ_i‖) (zero if none kept).

    One weighted sum (``kernels.weighted_sum``) in the updates' dtype: no copy of the (n, d) matrix.
    """
    count = int(keep.sum())
    scale = torch.where(norms > bound, bound / norms.clamp_min(1e-300), 1.0)
    coef = torch.where(keep, scale / max(count, 1), 0.0)
    return weighted_sum(coef, updates)


def majority_cluster(distances: np.ndarray, min_cluster_size: int) -> np.ndarray:
    """(n,) bool: members of HDBSCAN's largest cluster on a precomputed distance matrix."""
    from sklearn.cluster import HDBSCAN  # lazy: scikit-learn costs ~1 s to import

    n = distances.shape[0]
    if n < 2:
        return np.ones(n, dtype=bool)
    size = min(min_cluster_size, n)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        labels = HDBSCAN(
            min_cluster_size=max(size, 2),
            min_samples=1,
            allow_single_cluster=True,
            metric="precomputed",
            copy=True,
        ).fit_predict(distances)
    clustered = labels[labels >= 0]
    if clustered.size == 0:
        return np.zeros(n, dtype=bool)
    return labels == np.bincount(clustered).argmax()


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

    def __init__(self, lam: float = 0.001, min_cluster_size: int | None = None, seed: int = 0):
        check_positive("flame", "lam", lam, allow_zero=True)
        if min_cluster_size is not None and check_f("flame", min_cluster_size,
                                                    name="min_cluster_size") < 2:
            raise AggregatorError(
                f"flame: min_cluster_size must be None (⌊n/2⌋+1) or an int >= 2, "
                f"got {min_cluster_size!r}"
            )
        check_f("flame", seed, name="seed")
        self.lam = float(lam)
        self.min_cluster_size = min_cluster_size
        self.seed = seed
        self._generator = torch.Generator().manual_seed(seed)

    def reset(self) -> None:
        self._generator = torch.Generator().manual_seed(self.seed)

    def __call__(self, updates: torch.Tensor, **context: Any) -> Aggregation:
        updates = check_updates(self, updates)
        check_context(self, updates, context)
        n = updates.shape[0]
        norms = row_norms(updates)
        distances = (1.0 - cosine_similarity(updates, norms)).clamp(0.0, 2.0)
        distances = torch.round(distances, decimals=6)  # float32 rounding must not split ties
        distances.fill_diagonal_(0.0)
        size = self.min_cluster_size if self.min_cluster_size is not None else n // 2 + 1
        accepted = torch.from_numpy(majority_cluster(distances.numpy(), size))
        bound = median_norm(norms)
        kept = int(accepted.sum())
        mean = clipped_mean(updates, norms, accepted, bound)
        sigma = self.lam * bound
        if sigma > 0:
            noise = torch.randn(mean.shape, generator=self._generator, dtype=torch.float64)
            mean = (mean.double() + sigma * noise).to(updates.dtype)
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
