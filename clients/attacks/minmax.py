"""Min-Max and Min-Sum (Shejwalkar & Houmansadr, "Manipulating the Byzantine: Optimizing Model
Poisoning Attacks and Defenses for Federated Learning", NDSS 2021).

All malicious clients send ∇m = ∇ᵇ + γ·∇ᵖ, ∇ᵇ the mean of the reference set {∇_i} (base module
doc) and ∇ᵖ a perturbation: ``"unit"`` −∇ᵇ/‖∇ᵇ‖, ``"std"`` −std(∇_i) (default), ``"sign"``
−sign(∇ᵇ). γ is the largest value found by the paper's halving search (γ_init = 10, tolerance
1e-5; :func:`clients.attacks._linalg.gamma_search`) that satisfies

- Min-Max:  max_i ‖∇m − ∇_i‖  ≤ max_{i,j} ‖∇_i − ∇_j‖;
- Min-Sum:  Σ_i ‖∇m − ∇_i‖²  ≤ max_i Σ_j ‖∇_i − ∇_j‖²  (``bound="max"``, the paper's text and
  FLPoison) — the official notebooks use **min_i** (stricter); ``bound="min"`` reproduces them.

Distances come from the expansion ‖∇ᵇ + γ∇ᵖ − ∇_i‖² = ‖∇ᵇ − ∇_i‖² + 2γ⟨∇ᵇ − ∇_i, ∇ᵖ⟩ + γ²‖∇ᵖ‖²,
so each step of the search is O(n) after one O(nd) pass; the benign pairwise distances come from
one Gram matrix.

``objective="tailored"`` is the paper's AGR-tailored attack: the search calls the real aggregator
on the round (m copies of ∇m + the benign rows; with knowledge "own" the attackers' honest rows
stand for them): for a rule that
reports ``accepted`` (Krum, Multi-Krum, Bulyan...) γ succeeds while a crafted row is accepted;
otherwise γ succeeds while the deviation ‖f_agr(...) − ∇ᵇ‖ keeps growing (the official
trimmed-mean/median search). A rule the adversary cannot evaluate (FLTrust needs the server's
reference update) falls back to the agnostic constraint (diagnostics ``fallback``).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from fedshield.clients.attacks._linalg import (
    call_rule,
    can_call,
    gamma_search,
    mean,
    offsets_from,
    sq_dists,
    std,
)
from fedshield.clients.attacks.base import (
    AttackError,
    ModelAttack,
    check_choice,
    check_positive,
    register,
)

PERTURBATIONS = ("unit", "std", "sign")


def perturbation(attack: str, ref: torch.Tensor, kind: str) -> torch.Tensor:
    """∇ᵖ (float64) of the reference rows: −unit(mean), −std or −sign(mean)."""
    mu = mean(ref)
    if kind == "unit":
        norm = mu.norm()
        return -mu / norm if norm > 0 else torch.zeros_like(mu)
    if kind == "std":
        return -std(attack, ref)
    return -torch.sign(mu)


class _Optimised(ModelAttack):
    supports: ClassVar[tuple[str, ...]] = ("omniscient", "own")

    def __init__(
        self,
        *,
        perturbation: str = "std",
        knowledge: str = "omniscient",
        objective: str = "agnostic",
        gamma_init: float = 10.0,
        tol: float = 1e-5,
    ) -> None:
        super().__init__()
        self._set_knowledge(knowledge)
        self.perturbation = check_choice(self.name, "perturbation", perturbation, PERTURBATIONS)
        self.objective = check_choice(self.name, "objective", objective, ("agnostic", "tailored"))
        self.gamma_init = check_positive(self.name, "gamma_init", gamma_init)
        self.tol = check_positive(self.name, "tol", tol)

    # the agnostic constraint, given a_i = ‖μ − x_i‖², b_i = ⟨μ − x_i, p⟩, c = ‖p‖², D (pairwise²)
    def constraint(
        self, a: torch.Tensor, b: torch.Tensor, c: float, dists: torch.Tensor
    ) -> tuple[Any, float]:
        raise NotImplementedError

    def craft(self, malicious, benign, *, aggregator, generator, **_: Any):
        ref = self.reference(malicious, benign)
        mu = mean(ref)
        p = perturbation(self.name, ref, self.perturbation)
        if self.objective == "tailored" and aggregator is None:
            raise AttackError(
                f"attack {self.name!r}: objective='tailored' needs the aggregator under attack"
            )
        if self.objective == "tailored" and can_call(aggregator):
            rest = malicious if self.knowledge == "own" else benign
            gamma, extra = self._tailored(malicious.shape[0], rest, mu, p, aggregator)
        else:
            a, b = offsets_from(ref, mu, p)
            c = float(p @ p)
            ok, bound = self.constraint(a, b, c, sq_dists(ref))
            gamma = gamma_search(ok, init=self.gamma_init, tol=self.tol)
            extra = {"bound": bound}
            if self.objective == "tailored":  # the rule needs context the adversary lacks
                extra["fallback"] = "agnostic"
        self._last = {"gamma": gamma, **extra}
        crafted = (mu + gamma * p).to(malicious.dtype)
        return crafted.expand_as(malicious).clone()

    def _tailored(self, m, rest, mu, p, aggregator):
        """γ search on the hypothetical round: m copies of ∇m + ``rest`` (the benign rows, or the
        attackers' own honest rows standing for them with knowledge='own')."""
        state = {"prev": -1.0, "calls": 0}

        def ok(gamma: float) -> bool:
            crafted = (mu + gamma * p).to(rest.dtype)
            agg = call_rule(aggregator, torch.cat([crafted.expand(m, -1), rest], dim=0))
            state["calls"] += 1
            if agg.accepted is not None:
                return bool(agg.accepted[:m].any())
            loss = float((agg.update.double() - mu).norm())
            better = loss > state["prev"]
            state["prev"] = loss
            return better

        gamma = gamma_search(ok, init=self.gamma_init, tol=self.tol)
        return gamma, {"aggregator_calls": state["calls"]}


@register
class MinMax(_Optimised):
    """Min-Max (AGR-agnostic): the largest γ with max_i ‖∇m − ∇_i‖ ≤ max_{i,j} ‖∇_i − ∇_j‖
    (Shejwalkar & Houmansadr, NDSS 2021; module doc for the search and the perturbations)."""

    name: ClassVar[str] = "minmax"

    def constraint(self, a, b, c, dists):
        bound = float(dists.max())

        def ok(gamma: float) -> bool:
            return float((a + 2 * gamma * b + gamma * gamma * c).max()) <= bound

        return ok, bound


@register
class MinSum(_Optimised):
    """Min-Sum (AGR-agnostic): the largest γ with Σ_i ‖∇m − ∇_i‖² ≤ max_i Σ_j ‖∇_i − ∇_j‖²
    (``bound="max"``, the paper) or ≤ min_i Σ_j ‖∇_i − ∇_j‖² (``bound="min"``, the official
    notebooks) — Shejwalkar & Houmansadr, NDSS 2021."""

    name: ClassVar[str] = "minsum"

    def __init__(
        self,
        *,
        perturbation: str = "std",
        bound: str = "max",
        knowledge: str = "omniscient",
        objective: str = "agnostic",
        gamma_init: float = 10.0,
        tol: float = 1e-5,
    ) -> None:
        super().__init__(
            perturbation=perturbation, knowledge=knowledge, objective=objective,
            gamma_init=gamma_init, tol=tol,
        )
        self.bound = check_choice(self.name, "bound", bound, ("max", "min"))

    def constraint(self, a, b, c, dists):
        sums = dists.sum(1)
        limit = float(sums.max() if self.bound == "max" else sums.min())
        sa, sb, n = float(a.sum()), float(b.sum()), a.numel()

        def ok(gamma: float) -> bool:
            return sa + 2 * gamma * sb + n * gamma * gamma * c <= limit

        return ok, limit
