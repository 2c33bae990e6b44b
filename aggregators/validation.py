"""Parameter constraints (the ``check`` of a :class:`~fedshield.aggregators.base.Param`) and the
capped client shares. Every check has the signature ``check(rule, name, value) -> value`` and
raises an :class:`AggregatorError` naming the rule, the parameter and what is allowed.

The validation of a call (updates, context, result) is the base class's
(:mod:`fedshield.aggregators.base`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from fedshield.aggregators.base import (  # noqa: F401  (re-exported for the rules)
    AggregatorError,
    Context,
    require_finite,
)

Check = Callable[[str, str, Any], Any]


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def non_negative_int(rule: str, name: str, value: Any) -> int:
    """An int >= 0 (bool refused): ``f``, the number of Byzantine clients, seeds."""
    return _int(rule, name, value, 0)


def positive_int(rule: str, name: str, value: Any) -> int:
    return _int(rule, name, value, 1)


def _int(rule: str, name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        kind = "a non-negative int" if minimum == 0 else "an int"
        raise AggregatorError(f"{rule}: {name} must be {kind}, got {value!r}")
    if value < minimum:
        raise AggregatorError(f"{rule}: {name} must be {'>= 0' if minimum == 0 else '> 0'}, "
                              f"got {value!r}")
    return value


def positive(rule: str, name: str, value: Any) -> float:
    """A finite number > 0."""
    return _number(rule, name, value, allow_zero=False)


def non_negative(rule: str, name: str, value: Any) -> float:
    """A finite number >= 0."""
    return _number(rule, name, value, allow_zero=True)


def _number(rule: str, name: str, value: Any, *, allow_zero: bool) -> float:
    if not _is_number(value):
        raise AggregatorError(f"{rule}: {name} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise AggregatorError(f"{rule}: {name} must be finite, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        raise AggregatorError(f"{rule}: {name} must be {'>= 0' if allow_zero else '> 0'}, "
                              f"got {value!r}")
    return float(value)


def boolean(rule: str, name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise AggregatorError(f"{rule}: {name} must be True or False, got {value!r}")
    return value


def ratio(rule: str, name: str, value: Any) -> float:
    """A cap ratio: a number >= 1, or ``math.inf`` for no cap."""
    if not _is_number(value) or math.isnan(value) or value < 1:
        raise AggregatorError(f"{rule}: {name} must be >= 1 (or inf for no cap), got {value!r}")
    return float(value)


def choice(*allowed: str) -> Check:
    """One of ``allowed``."""
    def check(rule: str, name: str, value: Any) -> str:
        if value not in allowed:
            raise AggregatorError(
                f"{rule}: {name}={value!r} is not allowed; allowed: {', '.join(allowed)}")
        return value
    return check


def interval(lo: float, hi: float, *, closed_lo: bool = True, closed_hi: bool = True) -> Check:
    """A number in [lo, hi] (either end open as asked)."""
    def check(rule: str, name: str, value: Any) -> float:
        ok = _is_number(value) and math.isfinite(value)
        ok = ok and (value >= lo if closed_lo else value > lo)
        ok = ok and (value <= hi if closed_hi else value < hi)
        if not ok:
            left, right = "[" if closed_lo else "(", "]" if closed_hi else ")"
            raise AggregatorError(f"{rule}: {name} must be in {left}{lo}, {hi}{right}, "
                                  f"got {value!r}")
        return float(value)
    return check


def client_shares(rule: str, n: int, weights: torch.Tensor | None, *, weighted: bool,
                  max_weight_ratio: float) -> tuple[torch.Tensor, dict[str, Any]]:
    """Per-client shares (n,) float64 summing to 1: uniform, or capped sample counts.

    weighted: a_i = min(c_i, r · median(c)) / Σ_j min(c_j, r · median(c)) with r =
    ``max_weight_ratio`` (``inf`` = plain sample-count weighting). The counts are client-reported
    and unverified, hence the cap. If every capped count is 0 the shares fall back to uniform
    (reported in the diagnostics), never a division by zero.
    """
    uniform = torch.full((n,), 1.0 / n, dtype=torch.float64)
    if not weighted:
        return uniform, {}
    if weights is None:
        raise AggregatorError(f"{rule}: weighted=True needs context 'weights' (sample counts)")
    counts = weights.double()
    cap = max_weight_ratio * float(counts.median()) if math.isfinite(max_weight_ratio) else math.inf
    capped = counts.clamp(max=cap) if math.isfinite(cap) else counts
    total = float(capped.sum())
    diag: dict[str, Any] = {"weight_cap": cap if math.isfinite(cap) else None,
                            "capped_clients": int((counts > cap).sum())}
    if not total > 0 or not math.isfinite(total):
        diag["fallback"] = "weights sum to zero; uniform shares"
        return uniform, diag
    return capped / total, diag
