"""Uncertainty over seeds: Student's t confidence intervals and Welch's test between two rules.

With k seeds x_1..x_k of one cell (mean x̄, sample standard deviation s), the 95 % confidence
interval of the mean is x̄ ± t_{0.975, k−1} · s / √k (Student 1908; t_{0.975, 2} = 4.303 for 3
seeds, so the half-width is 2.48 s). Two rules are *statistically indistinguishable* when
Welch's unequal-variance t-test (Welch 1947) on their per-seed values gives p ≥ 0.05.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

LEVEL = 0.95
ALPHA = 1.0 - LEVEL


@dataclass(frozen=True)
class Estimate:
    """The mean of ``n`` values and the half-width of its confidence interval (0 for n = 1)."""

    mean: float
    half_width: float
    n: int

    @property
    def low(self) -> float:
        return self.mean - self.half_width

    @property
    def high(self) -> float:
        return self.mean + self.half_width


def t_quantile(p: float, dof: int) -> float:
    from scipy.stats import t

    return float(t.ppf(p, dof))


def mean_ci(values: Sequence[float], level: float = LEVEL) -> Estimate | None:
    """Mean ± Student's t half-width at ``level``; None without values."""
    n = len(values)
    if n == 0:
        return None
    mean = math.fsum(values) / n
    if n == 1:
        return Estimate(mean, 0.0, 1)
    sd = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
    return Estimate(mean, t_quantile(0.5 + level / 2, n - 1) * sd / math.sqrt(n), n)


def welch_p(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Two-sided p-value of Welch's t-test of equal means; None when either side has fewer than
    two values (no variance to test with). Equal constant samples give p = 1, different constant
    samples p = 0."""
    if len(a) < 2 or len(b) < 2:
        return None
    ea, eb = mean_ci(a), mean_ci(b)
    assert ea is not None and eb is not None
    va = math.fsum((v - ea.mean) ** 2 for v in a) / (len(a) - 1) / len(a)
    vb = math.fsum((v - eb.mean) ** 2 for v in b) / (len(b) - 1) / len(b)
    if va + vb == 0.0:
        return 1.0 if ea.mean == eb.mean else 0.0
    from scipy.stats import ttest_ind

    return float(ttest_ind(a, b, equal_var=False).pvalue)


def indistinguishable(a: Sequence[float], b: Sequence[float]) -> bool | None:
    """Welch's p ≥ 0.05 (None: too few seeds to say)."""
    p = welch_p(a, b)
    return None if p is None else p >= ALPHA
