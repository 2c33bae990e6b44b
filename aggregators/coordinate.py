"""Coordinate-wise rules: median and trimmed mean (Yin, Chen, Ramchandran, Bartlett, ICML 2018,
"Byzantine-Robust Distributed Learning: Towards Optimal Statistical Rates")."""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np
import torch

from fedshield.aggregators.base import Aggregation, AggregatorError, Rule, register
from fedshield.aggregators.kernels import coordinatewise
from fedshield.aggregators.validation import check_context, check_f, check_updates


def median_of_sorted(block: np.ndarray) -> np.ndarray:
    """Row medians of a row-sorted (c, n) block; even n: mean of the two middle values."""
    n = block.shape[1]
    if n % 2:
        return block[:, n // 2]
    # 0.5·a + 0.5·b never overflows (a + b could, for values near the float32 maximum).
    return 0.5 * block[:, n // 2 - 1] + 0.5 * block[:, n // 2]


def coordinate_median(updates: torch.Tensor, rule: str = "median") -> torch.Tensor:
    """(d,) coordinate-wise median of a validated (n, d) matrix."""
    return coordinatewise(updates, median_of_sorted, rule=rule)


@register
class Median(Rule):
    """Coordinate-wise median (Yin et al. 2018, "median-based gradient descent").

        update_j = median_i x_ij;   even n: (x_(n/2)j + x_(n/2+1)j) / 2   (order statistics)

    Averaging the two middle values for even n is Yin et al.'s and numpy's convention
    (``torch.median`` returns the lower middle; research/ANCHORS.md §2.3). Unweighted.
    Breakdown point 1/2: any f < n/2 outliers, however large, move each coordinate at most to
    the range of the honest values.
    """

    name: ClassVar[str] = "median"

    def __call__(self, updates: torch.Tensor, **context: Any) -> Aggregation:
        x = check_updates(self, updates, check_finite=False)  # checked while sorting
        check_context(self, x, context)
        return Aggregation(update=coordinate_median(x))


@register
class TrimmedMean(Rule):
    """Coordinate-wise trimmed mean (Yin et al. 2018, "trimmed-mean-based gradient descent").

        update_j = 1/(n − 2f) · Σ_{k = f+1}^{n−f} x_(k)j     (x_(k)j: k-th smallest of coordinate j)

    drops the f largest and the f smallest values of every coordinate; requires n > 2f.
    Give either ``f`` (an int, trimmed per side) or ``beta`` (a fraction per side in [0, 0.5),
    then f = ⌊β·n⌋ for the n of each call, as in Yin et al. and scipy's ``trim_mean``) — giving
    both is an error, so there is never a doubt which one is applied. With β > 0 and so few
    clients that ⌊β·n⌋ = 0 (n < 1/β) the call raises instead of silently trimming nothing
    (β = 0.2, n = 4: Flower's ``FedTrimmedAvg`` then averages an outlier in, research/FLOWER.md
    §2.3 item 3); ``min_clients()`` reports that bound.
    The kept values are summed in the input dtype (redone in float64 on overflow). Unweighted.
    """

    name: ClassVar[str] = "trimmedmean"

    def __init__(self, *, f: int | None = None, beta: float | None = None) -> None:
        if (f is None) == (beta is None):
            raise AggregatorError(
                "trimmedmean: give exactly one of f (values trimmed per side) or beta "
                f"(fraction trimmed per side), got f={f!r}, beta={beta!r}"
            )
        if f is not None:
            check_f(self.name, f)
        else:
            if isinstance(beta, bool) or not isinstance(beta, int | float) \
                    or not 0.0 <= beta < 0.5:
                raise AggregatorError(f"trimmedmean: beta must be in [0, 0.5), got {beta!r}")
            beta = float(beta)
        self.f = f
        self.beta = beta

    @property
    def requirement(self) -> str:
        return "n > 2f" if self.f is not None else "floor(beta * n) >= 1, so that beta trims"

    def min_clients(self) -> int:
        if self.f is not None:
            return 2 * self.f + 1
        return math.ceil(1.0 / self.beta - 1e-9) if self.beta else 1

    def trim_count(self, n: int) -> int:
        """f for n clients: ``f`` itself, or ⌊β·n⌋ (with a 1e-9 guard against 0.29·100 = 28.99…)."""
        if self.f is not None:
            return self.f
        assert self.beta is not None
        return math.floor(self.beta * n + 1e-9)

    def __call__(self, updates: torch.Tensor, **context: Any) -> Aggregation:
        x = check_updates(self, updates, check_finite=False)  # checked while sorting
        check_context(self, x, context)
        n = x.shape[0]
        f = self.trim_count(n)
        kept = n - 2 * f

        keep = np.zeros(n, dtype=x.numpy().dtype)
        keep[f : n - f] = 1.0

        def middle_mean(block: np.ndarray) -> np.ndarray:
            total = block @ keep  # one BLAS GEMV: 6x faster than a strided row-slice sum
            if not np.isfinite(total).all():  # finite values whose float32 sum overflowed
                total = block[:, f : n - f].sum(axis=1, dtype=np.float64)
            return total / kept

        return Aggregation(update=coordinatewise(x, middle_mean, rule=self.name),
                           diagnostics={"trimmed_per_side": f})
