"""SignGuard — Xu, Huang, Li, Cai, "SignGuard: Byzantine-robust Federated Learning through
Collaborative Malicious Gradient Filtering", ICDCS 2022 (arXiv:2109.05872).

Two filters, then a clipped mean:

1. **Norm filter.** M = median_i ‖Δ_i‖ (even n: mean of the two middle norms);
   S₁ = {i : L·M ≤ ‖Δ_i‖ ≤ R·M}  (paper: L = 0.1, R = 3.0).
2. **Sign clustering.** On a random subset r of ⌈p·d⌉ coordinates, each client's features are the
   fractions of positive, zero and negative signs of Δ_i[r], each feature divided by its maximum
   over clients (as the authors' code does). The features are clustered — MeanShift with the
   bandwidth ``estimate_bandwidth(quantile=0.5)``, bin seeding, orphans unassigned (the authors'
   settings; default), or K-means with 2 clusters, or DBSCAN(eps, min_samples) — and
   S₂ = the largest cluster.
3. **Aggregate.** S = S₁ ∩ S₂ (S₁ alone if the intersection is empty, everyone if S₁ is too);
   update = mean_{i∈S} Δ_i · min(1, M / ‖Δ_i‖).

If every client has the same sign features (no spread to cluster), S₂ is everyone. The coordinate
subset comes from a ``torch.Generator`` seeded with ``seed`` at construction (a new subset per call;
``reset()`` re-seeds). scikit-learn's clusterers get ``random_state=seed``. Cost: MeanShift has a
fixed overhead of tens of ms per call in scikit-learn (independent of d; K-means about half).
"""

from __future__ import annotations

import math
import warnings
from typing import Any, ClassVar

import numpy as np
import torch

from fedshield.aggregators.base import Aggregation, Context, Param, Rule, register
from fedshield.aggregators.detection import Detection, Detector, register_detector
from fedshield.aggregators.kernels import (
    clipped_mean,
    median_norm,
    random_column_indices,
    row_norms,
)
from fedshield.aggregators.validation import (
    choice,
    interval,
    non_negative_int,
    positive,
    positive_int,
)

CLUSTERINGS = ("meanshift", "kmeans", "dbscan")
_SIGN_BLOCK_VALUES = 1 << 20  # values per column block of the sign counts (4 MiB of float32)


def sign_features(updates: torch.Tensor, cols: torch.Tensor | None = None) -> np.ndarray:
    """(n, 3) fractions of positive / zero / negative entries per row over the columns ``cols``
    (None: all), each column / its max. Counted block by block (no (n, |cols|) copy)."""
    n, d = updates.shape
    total = d if cols is None else cols.numel()
    positive = torch.zeros(n, dtype=torch.int64)
    negative = torch.zeros(n, dtype=torch.int64)
    step = max(1, _SIGN_BLOCK_VALUES // n)
    for start in range(0, total, step):
        block = (updates[:, start:start + step] if cols is None
                 else updates.index_select(1, cols[start:start + step]))
        positive += (block > 0).sum(dim=1)
        negative += (block < 0).sum(dim=1)
    counts = torch.stack([positive, total - positive - negative, negative], dim=1)
    feats = counts.to(torch.float64) / total
    top = feats.max(dim=0).values
    return (feats / torch.where(top > 0, top, 1.0)).numpy()


def largest_cluster(labels: np.ndarray) -> np.ndarray:
    """(n,) bool members of the most populous non-negative label (lowest label on ties)."""
    clustered = labels[labels >= 0]
    if clustered.size == 0:
        return np.zeros(labels.shape[0], dtype=bool)
    return labels == np.bincount(clustered).argmax()


@register_detector
class SignGuardFilter(Detector):
    """SignGuard's filters (steps 1–2 above) as a detector: flagged = outside S (with the
    fallbacks above); score = the norm's distance outside the band, in units of M, plus 1 for
    a client outside the sign cluster.

    Parameters
    ----------
    lower, upper : float
        Norm band [lower·M, upper·M] around the median norm M (0 ≤ lower ≤ 1 ≤ upper).
    fraction : float in (0, 1]
        Share p of coordinates sampled for the sign features.
    clustering : "meanshift" | "kmeans" | "dbscan"
    eps, min_samples : DBSCAN's parameters (used only with ``clustering="dbscan"``).
    seed : int
    """

    name: ClassVar[str] = "signguard"
    parameters: ClassVar[dict[str, Param]] = {
        "lower": Param(0.1, interval(0.0, 1.0)),
        "upper": Param(3.0, interval(1.0, math.inf, closed_hi=False)),
        "fraction": Param(0.1, interval(0.0, 1.0, closed_lo=False)),
        "clustering": Param("meanshift", choice(*CLUSTERINGS)),
        "eps": Param(0.05, positive),
        "min_samples": Param(2, positive_int),
        "seed": Param(0, non_negative_int),
    }
    examples: ClassVar[tuple[dict[str, Any], ...]] = ({}, {"clustering": "kmeans"},
                                                       {"clustering": "dbscan", "fraction": 1.0})

    def reset(self) -> None:
        self._generator = torch.Generator().manual_seed(self.seed)

    def _cluster(self, feats: np.ndarray) -> np.ndarray:
        """(n,) bool: the largest cluster of the sign features."""
        from sklearn.cluster import DBSCAN, KMeans, MeanShift, estimate_bandwidth  # lazy, ~1 s

        n = feats.shape[0]
        if n < 2 or np.ptp(feats, axis=0).max() <= 1e-12:
            return np.ones(n, dtype=bool)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if self.clustering == "kmeans":
                labels = KMeans(n_clusters=2, n_init=10, random_state=self.seed).fit_predict(feats)
            elif self.clustering == "dbscan":
                labels = DBSCAN(eps=self.eps, min_samples=self.min_samples).fit_predict(feats)
            else:
                bandwidth = estimate_bandwidth(feats, quantile=0.5, random_state=self.seed)
                if bandwidth <= 1e-12:
                    return np.ones(n, dtype=bool)
                labels = MeanShift(
                    bandwidth=bandwidth, bin_seeding=True, cluster_all=False
                ).fit_predict(feats)
        return largest_cluster(labels)

    def detect(self, updates: torch.Tensor, ctx: Context,
               norms: torch.Tensor | None = None) -> Detection:
        n, d = updates.shape
        norms = row_norms(updates) if norms is None else norms
        bound = median_norm(norms)
        in_band = (norms >= self.lower * bound) & (norms <= self.upper * bound)
        size = min(d, max(1, math.ceil(self.fraction * d)))
        cols = random_column_indices(d, size, self._generator)
        in_cluster = torch.from_numpy(self._cluster(sign_features(updates, cols)))
        good = in_band & in_cluster
        fallback = not bool(good.any())
        if fallback:
            good = in_band if bool(in_band.any()) else torch.ones(n, dtype=torch.bool)
        scale = max(bound, 1e-300)
        outside = (self.lower * bound - norms).clamp(min=0) + (norms - self.upper * bound).clamp(
            min=0)
        scores = outside / scale + (~in_cluster).double()
        return Detection(flags=~good, scores=scores, diagnostics={
            "clip_norm": bound,
            "norm_rejected": int((~in_band).sum()),
            "sign_rejected": int((~in_cluster).sum()),
            "empty_intersection": fallback,
        })


@register
class SignGuard(Rule):
    """SignGuard (Xu et al., ICDCS 2022): norm band, sign-statistics clustering, clipped mean
    (parameters: :class:`SignGuardFilter`)."""

    name: ClassVar[str] = "signguard"
    parameters: ClassVar[dict[str, Param]] = SignGuardFilter.parameters
    examples: ClassVar[tuple[dict[str, Any], ...]] = SignGuardFilter.examples

    def setup(self) -> None:
        self._filter = SignGuardFilter(**self.params())

    def reset(self) -> None:
        self._filter.reset()

    def aggregate(self, updates: torch.Tensor, ctx: Context) -> Aggregation:
        norms = row_norms(updates)
        found = self._filter.detect(updates, ctx, norms)
        good = ~found.flags
        bound = found.diagnostics["clip_norm"]
        return Aggregation(
            update=clipped_mean(updates, norms, good, bound),
            accepted=good,
            weights=good.to(torch.float64) / int(good.sum()),
            diagnostics=found.diagnostics,
        )
