"""Clipping rules: centred clipping (stateful), norm bounding, adaptive robust clipping."""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch

from fedshield.aggregators.base import (
    Aggregation,
    AggregatorError,
    Context,
    Param,
    PreAggregator,
    Rule,
    register,
)
from fedshield.aggregators.kernels import inner_on_columns, row_norms, weighted_sum
from fedshield.aggregators.validation import non_negative_int, positive, positive_int

# Column block for the exact residual norms ‖x_i − v‖ (n·c float32 ≈ 4 MiB, stays in cache).
_BLOCK_VALUES = 1 << 20


def clip_factors(norms: torch.Tensor, tau: float) -> torch.Tensor:
    """min(1, τ/‖z‖) per row, with 1 for ‖z‖ <= τ (so a zero norm never divides)."""
    return torch.where(norms > tau, tau / norms.clamp(min=1e-300), 1.0)


def residual_norms(x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """(n,) float64 ‖x_i − v‖, computed on explicit differences (no ‖x‖² − 2x·v + ‖v‖²
    cancellation), block by block in cache."""
    n, d = x.shape
    c = min(d, max(1024, _BLOCK_VALUES // n))
    buf = torch.empty((n, c), dtype=x.dtype)
    sq = torch.zeros(n, dtype=torch.float64)
    for s in range(0, d, c):
        e = min(d, s + c)
        block = buf[:, : e - s]
        torch.sub(x[:, s:e], v[s:e], out=block)
        sq += torch.linalg.vector_norm(block, dim=1).double().square()
    return sq.sqrt()


@register
class CenteredClip(Rule):
    """Centred clipping (Karimireddy, He, Jaggi, ICML 2021, "Learning from History for Byzantine
    Robust Optimization").

        v_0 = the previous round's aggregate (0 in the first round)
        v_{l+1} = v_l + (1/n) Σ_i (x_i − v_l) · min(1, τ / ‖x_i − v_l‖),   l = 0 … L−1

    with L = ``iterations`` (3, as in the authors' code; ByzFL/FLPoison use 1) and τ = ``tau``.
    τ has the units of an update norm and must be tuned to the model (the paper tunes it; its
    analysis sets it from the honest variance); the default 10 is only a starting point. The rule
    keeps v between rounds (``stateful``; ``reset()`` forgets it). The clients' momentum of the
    paper is a client-side choice, not part of this rule. The norms ‖x_i − v‖ are computed on
    explicit differences. ``diagnostics["clip_factors"]`` are the last iteration's factors.
    """

    name: ClassVar[str] = "centeredclip"
    stateful: ClassVar[bool] = True
    parameters: ClassVar[dict[str, Param]] = {"tau": Param(10.0, positive),
                                              "iterations": Param(3, positive_int)}
    examples: ClassVar[tuple[dict[str, Any], ...]] = ({}, {"tau": 0.5, "iterations": 3})

    def reset(self) -> None:
        self._previous: torch.Tensor | None = None

    def aggregate(self, x: torch.Tensor, ctx: Context) -> Aggregation:
        n, d = x.shape
        if self._previous is not None and self._previous.shape[0] != d:
            raise AggregatorError(
                f"centeredclip: updates have d = {d} but the kept aggregate has d = "
                f"{self._previous.shape[0]}; call reset() when the model changes"
            )
        v = (torch.zeros(d, dtype=x.dtype) if self._previous is None
             else self._previous.to(x.dtype))
        factors = torch.ones(n, dtype=torch.float64)
        for _ in range(self.iterations):
            norms = residual_norms(x, v)
            if not bool(torch.isfinite(norms).all()):
                norms = residual_norms(x.double(), v.double())  # float32 overflow
            factors = clip_factors(norms, self.tau)
            # v + (1/n) Σ s_i (x_i − v) = (1 − mean s) · v + Σ (s_i / n) x_i
            v = (1.0 - float(factors.mean())) * v + weighted_sum(factors / n, x, rule=self.name)
        self._previous = v.clone()
        return Aggregation(update=v, diagnostics={
            "clip_factors": factors.tolist(), "clipped": int((factors < 1).sum())})


def _bound(rule: str, name: str, value: Any) -> float | str:
    if value == "median":
        return value
    if isinstance(value, str):
        raise AggregatorError(f"{rule}: {name} must be a positive number or 'median', got "
                              f"{value!r}")
    return positive(rule, name, value)


@register
class NormClip(Rule):
    """Norm bounding ("Can You Really Backdoor Federated Learning?", Sun, Kairouz, Suresh,
    McMahan, 2019): clip every update to norm B, then average.

        update = (1/n) Σ_i x_i · min(1, B / ‖x_i‖)

    B = ``bound`` (a positive number), or ``"median"``: B = the median of the round's update norms
    (the adaptive bound of FLAME, Nguyen et al. 2022, without its clustering and noise). A zero
    update is left as is; with ``"median"`` a zero median bound clips every non-zero update to 0.
    ``diagnostics`` carries B and the clip factors.
    """

    name: ClassVar[str] = "normclip"
    parameters: ClassVar[dict[str, Param]] = {"bound": Param("median", _bound)}
    examples: ClassVar[tuple[dict[str, Any], ...]] = ({}, {"bound": 1.0})

    def aggregate(self, x: torch.Tensor, ctx: Context) -> Aggregation:
        n = x.shape[0]
        norms = row_norms(x)
        # quantile(0.5) is the mean of the two middle norms for even n
        bound = (float(torch.quantile(norms, 0.5)) if self.bound == "median"
                 else float(self.bound))
        factors = torch.where(norms > bound, bound / norms.clamp(min=1e-300), 1.0)
        return Aggregation(update=weighted_sum(factors / n, x, rule=self.name), diagnostics={
            "bound": bound, "clip_factors": factors.tolist(), "clipped": int((factors < 1).sum())})


def arc_clipped(n: int, f: int) -> int:
    """ARC's number of clipped updates, k = ⌊2 (f/n) (n − f)⌋."""
    return math.floor(2 * f * (n - f) / n)


@register
class ARC(PreAggregator):
    """Adaptive Robust Clipping (Allouah, Guerraoui, Gupta, Pinot, Rizk, "Adaptive Gradient
    Clipping for Robust Federated Learning", ICLR 2025, arXiv:2405.14432).

    Sort the updates by norm; the k = ⌊2(f/n)(n − f)⌋ largest are clipped to the norm of the
    largest one left unclipped (the (k+1)-th largest),

        Δ_i ← Δ_i · min(1, C / ‖Δ_i‖),   C = ‖Δ_(k+1)‖ (norms in decreasing order),

    then ``inner`` aggregates the clipped updates. One pass, O(nd). The clip level adapts to the
    round (no τ to tune); since k ≥ f when n ≥ 2f, f updates of any scale are clipped to an honest
    norm before the inner rule sees them. Ties in norm clip the lower index first. The clipped
    rows are still the clients' own (scaled), so the whole context — sample counts, ids, the
    reference — reaches the inner rule, and the inner rule's ``accepted`` / ``weights`` are the
    clients'; a stateful inner rule is allowed. Memory: a coordinate-wise inner rule (median,
    trimmed mean, mean) runs on one clipped column block at a time, so nothing of the size of the
    updates is copied; any other inner rule needs the whole clipped matrix, a copy of the updates.

    Parameters
    ----------
    f : int ≥ 0
        Number of Byzantine clients tolerated (n > 2f required).
    inner : str or Rule
        The rule applied to the clipped updates (any registered rule).
    inner_params : dict, optional
    """

    name: ClassVar[str] = "arc"
    parameters: ClassVar[dict[str, Param]] = {"f": Param(1, non_negative_int),
                                              **PreAggregator.INNER}
    examples: ClassVar[tuple[dict[str, Any], ...]] = (
        {"f": 1}, {"f": 2, "inner": "krum", "inner_params": {"f": 2}},
        {"f": 1, "inner": "fedavg"})
    requirement: ClassVar[str] = "n > 2f"
    KEEPS_ROWS: ClassVar[bool] = True

    def min_clients(self) -> int:
        return max(2 * self.f + 1, self._inner.min_clients())

    def aggregate(self, x: torch.Tensor, ctx: Context) -> Aggregation:
        n = x.shape[0]
        norms = row_norms(x)
        k = arc_clipped(n, self.f)
        level, rows, scales = None, torch.empty(0, dtype=torch.long), None
        if k > 0:
            order = torch.sort(norms, descending=True, stable=True).indices
            level = float(norms[order[k]])
            factors = clip_factors(norms[order[:k]], level)
            rows, scales = order[:k][factors < 1], factors[factors < 1].to(x.dtype)[:, None]
        context = {key: getattr(ctx, key) for key in ("reference", "weights", "client_ids")
                   if getattr(ctx, key) is not None}

        def clip(block: torch.Tensor) -> torch.Tensor:  # a copy; the input is not changed
            block = block.clone()
            block[rows] *= scales
            return block

        result = inner_on_columns(self._inner, x, clip if rows.numel() else None, context)
        return Aggregation(update=result.update, accepted=result.accepted, weights=result.weights,
                           diagnostics={"clipped": k, "clip_level": level,
                                        "inner": result.diagnostics})
