"""Small tensor helpers shared by the model-poisoning attacks (distances via Gram expansions)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from fedshield.clients.attacks.base import AttackError

#: columns per float64 chunk: statistics are exact in float64 while the extra memory stays at
#: n · CHUNK · 8 bytes whatever d is (a CNN's d = 10⁶ would need gigabytes in one piece).
CHUNK = 1 << 16


def _chunks(d: int) -> list[slice]:
    return [slice(s, min(s + CHUNK, d)) for s in range(0, d, CHUNK)]


def gram(a: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """⟨a_i, b_j⟩ in float64, accumulated over column chunks."""
    b = a if b is None else b
    out = torch.zeros((a.shape[0], b.shape[0]), dtype=torch.float64)
    for c in _chunks(a.shape[1]):
        out += a[:, c].double() @ b[:, c].double().T
    return out


def sq_dists(a: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """Pairwise squared Euclidean distances ‖a_i − b_j‖² in float64 by the Gram expansion
    ‖a_i‖² + ‖b_j‖² − 2⟨a_i, b_j⟩ (GEMMs, no loop over clients), clamped at 0."""
    if b is None:
        g = gram(a)
        an = bn = g.diagonal()
    else:
        g = gram(a, b)
        an, bn = row_sq_norms(a), row_sq_norms(b)
    d = (an[:, None] + bn[None, :] - 2.0 * g).clamp_min_(0.0)
    if b is None:
        d.fill_diagonal_(0.0)
    return d


def row_sq_norms(a: torch.Tensor) -> torch.Tensor:
    out = torch.zeros(a.shape[0], dtype=torch.float64)
    for c in _chunks(a.shape[1]):
        out += a[:, c].double().square().sum(1)
    return out


def mean(ref: torch.Tensor) -> torch.Tensor:
    """(d,) float64 per-coordinate mean."""
    return ref.mean(0, dtype=torch.float64)


def std(attack: str, ref: torch.Tensor, correction: int = 1) -> torch.Tensor:
    """(d,) float64 per-coordinate standard deviation of the reference rows; unbiased (n − 1
    denominator) by default, ``correction=0`` for the population std."""
    if ref.shape[0] < 1 + correction:
        raise AttackError(
            f"attack {attack!r} needs at least 2 reference updates to estimate a standard "
            f"deviation, got {ref.shape[0]} (with knowledge='own': >= 2 malicious clients)"
        )
    out = torch.empty(ref.shape[1], dtype=torch.float64)
    for c in _chunks(ref.shape[1]):
        out[c] = ref[:, c].double().std(0, correction=correction)
    return out


def offsets_from(ref: torch.Tensor, mu: torch.Tensor, p: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """a_i = ‖μ − x_i‖² and b_i = ⟨μ − x_i, p⟩ (float64, chunked), for the expansion
    ‖μ + γp − x_i‖² = a_i + 2γ·b_i + γ²‖p‖²."""
    a = torch.zeros(ref.shape[0], dtype=torch.float64)
    b = torch.zeros(ref.shape[0], dtype=torch.float64)
    for c in _chunks(ref.shape[1]):
        diff = mu[c] - ref[:, c].double()
        a += diff.square().sum(1)
        b += diff @ p[c]
    return a, b


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


def can_call(aggregator: Any) -> bool:
    """Whether an attack can evaluate ``aggregator`` on a hypothetical round: not when it is None
    or needs context the adversary does not have (FLTrust's server ``reference``, flagged by the
    rule's ``needs_reference``; a wrapper that binds the context is callable)."""
    return aggregator is not None and not getattr(aggregator, "needs_reference", False)


def call_rule(aggregator: Callable[[torch.Tensor], Any], updates: torch.Tensor) -> Any:
    """Evaluate the real aggregator inside a search without touching its state.

    Stateful rules (``stateful`` class attribute, e.g. FoolsGold) are evaluated on a copy so the
    search does not add phantom rounds to their history.
    """
    if getattr(aggregator, "stateful", False):
        import copy

        aggregator = copy.deepcopy(aggregator)
    return aggregator(updates)
