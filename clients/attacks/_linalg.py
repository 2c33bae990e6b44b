"""Small tensor helpers shared by the model-poisoning attacks (distances via Gram expansions)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from clients.attacks.base import AttackError


def sq_dists(a: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """Pairwise squared Euclidean distances ‖a_i − b_j‖² in float64 by the Gram expansion
    ‖a_i‖² + ‖b_j‖² − 2⟨a_i, b_j⟩ (one GEMM, no loop over clients), clamped at 0."""
    a64 = a.double()
    b64 = a64 if b is None else b.double()
    an = (a64 * a64).sum(1)
    bn = an if b is None else (b64 * b64).sum(1)
    d = an[:, None] + bn[None, :] - 2.0 * (a64 @ b64.T)
    d = d.clamp_min_(0.0)
    if b is None:
        d.fill_diagonal_(0.0)
    return d


def std(attack: str, ref: torch.Tensor) -> torch.Tensor:
    """Unbiased per-coordinate standard deviation (n − 1 denominator) of the reference rows."""
    if ref.shape[0] < 2:
        raise AttackError(
            f"attack {attack!r} needs at least 2 reference updates to estimate a standard "
            f"deviation, got {ref.shape[0]} (with knowledge='own': >= 2 malicious clients)"
        )
    return ref.double().std(dim=0, correction=1)


def gamma_search(ok: Callable[[float], bool], *, init: float = 10.0, tol: float = 1e-5) -> float:
    """Shejwalkar & Houmansadr (NDSS 2021) halving search for the largest γ with ``ok(γ)``.

    γ = init, step = init; γ_succ = 0; while |γ_succ − γ| > tol: if ok(γ): γ_succ = γ, γ += step/2
    else γ −= step/2; step /= 2. Returns γ_succ (0 when no γ > tol satisfies the constraint).
    Assumes ``ok`` monotone (true up to some γ*, false beyond); then γ_succ ∈ (γ* − 2·tol, γ*]
    for γ* < 2·init.
    """
    gamma, step, succ = float(init), float(init), 0.0
    while abs(succ - gamma) > tol:
        if ok(gamma):
            succ = gamma
            gamma += step / 2
        else:
            gamma -= step / 2
        step /= 2
    return succ


def call_rule(aggregator: Callable[[torch.Tensor], Any], updates: torch.Tensor) -> Any:
    """Evaluate the real aggregator inside a search without touching its state.

    Stateful rules (``stateful`` class attribute, e.g. FoolsGold) are evaluated on a copy so the
    search does not add phantom rounds to their history.
    """
    if getattr(aggregator, "stateful", False):
        import copy

        aggregator = copy.deepcopy(aggregator)
    return aggregator(updates)
