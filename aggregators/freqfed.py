"""FreqFed — Fereidooni, Pegoraro, Rieger, Dmitrienko, Sadeghi, "FreqFed: A Frequency Analysis-
Based Approach for Mitigating Poisoning Attacks in Federated Learning", NDSS 2024
(arXiv:2312.04432).

Poisoned and benign updates differ most in their low-frequency content, where the energy of a
trained network's update lies:

1. **DCT.** Each flattened update Δ_i ∈ ℝ^d goes through the orthonormal DCT-II,

       X_k = √(2/d) · c_k · Σ_{m=0}^{d−1} Δ_m cos(π k (2m + 1) / (2d)),   c_0 = 1/√2, c_k = 1,

   and the low-frequency part F_i = (X_0, …, X_{⌈ρ·d⌉−1}) is kept (ρ = ``fraction``, ½ in the
   paper: the first half of the coefficients of the flattened vector).
2. **Clustering.** Cosine distances 1 − cos(F_i, F_j); HDBSCAN with ``min_cluster_size`` =
   ⌊n/2⌋ + 1 — FLAME's filter (:class:`~fedshield.aggregators.flame.FlameFilter`), run on the
   low-frequency vectors; the largest cluster is kept, every other client is flagged.
3. **Aggregation.** The paper averages the kept updates: ``detect`` with ``inner = "fedavg"``
   is FreqFed; any other inner rule may follow instead.

The paper takes the DCT of each layer's weights (a 2-D low-frequency block for convolutions);
this implementation transforms the flattened update as the paper's summary algorithm does. The
transform runs in float64, a few rows at a time (memory: n·⌈ρd⌉ float64 for the result).
Score = the client's median cosine distance to the others in the low-frequency space.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np
import torch

from fedshield.aggregators.base import Context, Param
from fedshield.aggregators.detection import Detection, Detector, register_detector
from fedshield.aggregators.flame import FlameFilter
from fedshield.aggregators.validation import interval

_ROWS_PER_BLOCK = 8


def low_frequency(updates: torch.Tensor, fraction: float) -> torch.Tensor:
    """(n, ⌈fraction·d⌉) float64: the first coefficients of each row's orthonormal DCT-II."""
    from scipy.fft import dct  # lazy: scipy is scikit-learn's dependency

    n, d = updates.shape
    keep = max(1, math.ceil(fraction * d))
    out = np.empty((n, keep), dtype=np.float64)
    for start in range(0, n, _ROWS_PER_BLOCK):
        block = updates[start:start + _ROWS_PER_BLOCK].double().numpy()
        out[start:start + block.shape[0]] = dct(block, type=2, norm="ortho", axis=1)[:, :keep]
    return torch.from_numpy(out)


@register_detector
class FreqFed(Detector):
    """FreqFed (Fereidooni et al., NDSS 2024): HDBSCAN on the cosine distances of the updates'
    low-frequency DCT coefficients; clients outside the largest cluster are flagged.

    Parameters
    ----------
    fraction : float in (0, 1]
        ρ, the share of DCT coefficients kept (lowest frequencies first); paper: 0.5.
    min_cluster_size : int ≥ 2 or None
        HDBSCAN's minimum cluster size; None means ⌊n/2⌋ + 1 (the paper's majority).
    """

    name: ClassVar[str] = "freqfed"
    parameters: ClassVar[dict[str, Param]] = {
        "fraction": Param(0.5, interval(0.0, 1.0, closed_lo=False)),
        "min_cluster_size": FlameFilter.parameters["min_cluster_size"],
    }
    examples: ClassVar[tuple[dict[str, Any], ...]] = ({}, {"fraction": 0.1, "min_cluster_size": 2})

    def setup(self) -> None:
        self._filter = FlameFilter(min_cluster_size=self.min_cluster_size)

    def detect(self, x: torch.Tensor, ctx: Context) -> Detection:
        # FLAME's clustering, on the low-frequency coefficients instead of the whole updates
        found = self._filter.detect(low_frequency(x, self.fraction), ctx)
        found.diagnostics["coefficients"] = math.ceil(self.fraction * x.shape[1])
        return found
