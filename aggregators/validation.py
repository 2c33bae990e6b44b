"""Input validation shared by every rule (the one place where bad input is turned into errors).

Every rule calls :func:`check_updates` on its input and :func:`check_context` on its keyword
context before doing any arithmetic, so that a bad call fails with an :class:`AggregatorError`
naming the rule, the argument and what was expected, never with a NaN or a bare traceback.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from fedshield.aggregators.base import AggregatorError, Rule

CONTEXT_KEYS = ("reference", "weights", "client_ids", "gram")


def check_f(rule: str, f: Any, *, name: str = "f") -> int:
    """``f`` must be a non-negative int (bool is refused): the number of Byzantine clients."""
    if isinstance(f, bool) or not isinstance(f, int):
        raise AggregatorError(f"{rule}: {name} must be a non-negative int, got {f!r}")
    if f < 0:
        raise AggregatorError(f"{rule}: {name} must be >= 0, got {f}")
    return f


def check_positive(rule: str, name: str, value: Any, *, integer: bool = False,
                   allow_zero: bool = False, allow_inf: bool = False) -> float | int:
    """A positive (or non-negative) finite number; ``integer`` requires an int."""
    ok_type = (isinstance(value, int) if integer else isinstance(value, int | float))
    if isinstance(value, bool) or not ok_type:
        kind = "an int" if integer else "a number"
        raise AggregatorError(f"{rule}: {name} must be {kind}, got {value!r}")
    if math.isnan(value) or (math.isinf(value) and not allow_inf):
        raise AggregatorError(f"{rule}: {name} must be finite, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise AggregatorError(f"{rule}: {name} must be {bound}, got {value!r}")
    return value


def check_bool(rule: str, name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise AggregatorError(f"{rule}: {name} must be True or False, got {value!r}")
    return value


def check_ratio(rule: str, name: str, value: Any) -> float:
    """A cap ratio: a number >= 1, or ``math.inf`` for no cap."""
    check_positive(rule, name, value, allow_inf=True)
    if value < 1:
        raise AggregatorError(f"{rule}: {name} must be >= 1 (or inf for no cap), got {value!r}")
    return float(value)


def _rows_not_finite(x: torch.Tensor) -> list[int]:
    bad = ~torch.isfinite(x)
    if x.ndim > 1:
        bad = bad.reshape(x.shape[0], -1).any(dim=1)
    return torch.nonzero(bad).flatten().tolist()


def require_finite(rule: str, name: str, x: torch.Tensor) -> None:
    """Raise unless every entry of ``x`` is finite.

    Fast path: one reduction (``x.sum()`` propagates NaN/Inf); only when the sum is not finite
    (bad input, or an overflow of finite values) are the offending rows located exactly.
    """
    if bool(torch.isfinite(x.sum())):
        return
    rows = _rows_not_finite(x)
    if rows:
        shown = rows[:10]
        more = f" (+{len(rows) - 10} more)" if len(rows) > 10 else ""
        what = "rows" if x.ndim > 1 else "entries"
        raise AggregatorError(
            f"{rule}: {name} contains NaN/Inf in {what} {shown}{more}; reject such updates "
            "before aggregating"
        )


def check_updates(rule: Rule, updates: Any, *, check_finite: bool = True) -> torch.Tensor:
    """Validate the (n, d) matrix of client deltas; return it contiguous, on CPU.

    Checks: a torch.Tensor, 2-D, float32 or float64, n >= 1, d >= 1, n >= ``rule.min_clients()``,
    every value finite. ``check_finite=False`` is for callers whose next step is
    :func:`aggregators.distances.pairwise_sq_distances`, which detects NaN/Inf for free.
    """
    name = rule.name or type(rule).__name__
    if not isinstance(updates, torch.Tensor):
        raise AggregatorError(
            f"{name}: updates must be a torch.Tensor of shape (n, d), got {type(updates).__name__}"
        )
    if updates.ndim != 2:
        raise AggregatorError(
            f"{name}: updates must be 2-D (n clients, d parameters), got shape "
            f"{tuple(updates.shape)}"
        )
    if updates.dtype not in (torch.float32, torch.float64):
        raise AggregatorError(f"{name}: updates must be float32 or float64, got {updates.dtype}")
    n, d = updates.shape
    if n == 0:
        raise AggregatorError(f"{name}: no updates to aggregate (n = 0)")
    if d == 0:
        raise AggregatorError(f"{name}: updates have no parameters (d = 0)")
    need = rule.min_clients()
    if n < need:
        why = getattr(rule, "requirement", "")
        why = f" ({why})" if why else ""
        raise AggregatorError(
            f"{name} with {rule.params()} needs at least {need} clients{why}, got n = {n}"
        )
    updates = updates.detach()
    if updates.device.type != "cpu":
        updates = updates.cpu()
    if not updates.is_contiguous():
        updates = updates.contiguous()
    if check_finite:
        require_finite(name, "updates", updates)
    return updates


@dataclass(frozen=True)
class Context:
    """The validated keyword context of one call (see ``aggregators.base``)."""

    reference: torch.Tensor | None = None
    weights: torch.Tensor | None = None
    client_ids: Sequence[Any] | None = None
    gram: torch.Tensor | None = None


def _as_tensor(rule: str, key: str, value: Any, shape: tuple[int, ...]) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        try:
            value = torch.as_tensor(value)
        except (TypeError, ValueError, RuntimeError):
            raise AggregatorError(
                f"{rule}: context {key!r} must be a tensor of shape {shape}, got "
                f"{type(value).__name__}"
            ) from None
    if tuple(value.shape) != shape:
        raise AggregatorError(
            f"{rule}: context {key!r} must have shape {shape}, got {tuple(value.shape)}"
        )
    if not (value.is_floating_point() or value.dtype in (torch.int32, torch.int64)):
        raise AggregatorError(f"{rule}: context {key!r} must be numeric, got {value.dtype}")
    value = value.detach().cpu()
    require_finite(rule, f"context {key!r}", value.double() if not value.is_floating_point()
                   else value)
    return value


def check_context(rule: Rule, updates: torch.Tensor, context: dict[str, Any]) -> Context:
    """Validate the context keys against ``updates`` (n, d); unknown keys are an error."""
    name = rule.name or type(rule).__name__
    unknown = sorted(set(context) - set(CONTEXT_KEYS))
    if unknown:
        raise AggregatorError(
            f"{name}: unknown context keys {unknown}; allowed: {', '.join(CONTEXT_KEYS)}"
        )
    n, d = updates.shape
    reference = weights = gram = None
    if context.get("reference") is not None:
        reference = _as_tensor(name, "reference", context["reference"], (d,))
        reference = reference.to(updates.dtype).contiguous()
    if context.get("weights") is not None:
        weights = _as_tensor(name, "weights", context["weights"], (n,)).double()
        if bool((weights < 0).any()):
            raise AggregatorError(f"{name}: context 'weights' must be >= 0 (sample counts)")
    if context.get("gram") is not None:
        gram = _as_tensor(name, "gram", context["gram"], (n, n)).double()
    client_ids = context.get("client_ids")
    if client_ids is not None:
        try:
            count = len(client_ids)
        except TypeError:
            raise AggregatorError(
                f"{name}: context 'client_ids' must be a sequence of n ids"
            ) from None
        if count != n:
            raise AggregatorError(
                f"{name}: context 'client_ids' has {count} ids for n = {n} updates"
            )
    return Context(reference=reference, weights=weights, client_ids=client_ids, gram=gram)


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
    if not total > 0:
        diag["fallback"] = "weights sum to zero; uniform shares"
        return uniform, diag
    return capped / total, diag
