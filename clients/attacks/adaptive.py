"""Adaptive attacks: the attacker knows the deployed rule and searches its attack against it.

Both search a one-parameter family of crafted updates with the real aggregation rule of the run
(the adversary stage passes it) and keep the member that moves the aggregate furthest from the
aggregate of the same round without the attack:

    damage(γ) = ‖A(X_γ) − A(X_0)‖,

X_γ the round's matrix with the malicious rows replaced by the family member γ, X_0 with the
malicious clients' own honest rows. Both are omniscient (they see the benign rows). Stateful
rules are evaluated on a copy (no phantom rounds in their history); a rule that needs the
server's root update (FLTrust) gets the attacker's estimate of it, the benign mean.

- ``adaptive`` wraps any model attack (the tailored Min-Max idea of Shejwalkar & Houmansadr,
  NDSS'21, for every rule): with μ the benign mean and C the base attack's crafted rows,
  X_γ's malicious rows are μ + γ·(C − μ) for γ on a geometric grid 2^k, k = −4 … 8; a rule that
  reports ``accepted`` also needs at least one crafted row accepted (otherwise the damage is the
  rule's rejection, not the attack's effect, and γ is cut back).
- ``fltrust-adaptive`` — the adaptive attack on FLTrust (Cao, Fang, Liu, Gong, NDSS'21, §adaptive
  attacks): FLTrust scales every update to the norm of the server's root update g₀ and weighs it
  by ReLU(cos(g_i, g₀)), so an update opposite to g₀ weighs nothing. The attacker estimates g₀ by
  the benign mean ĝ₀ and sends the update at angle α from it towards a harmful direction h
  (−sign of the benign mean, made orthogonal to ĝ₀):

      g(α) = ‖ĝ₀‖ · (cos α · e₀ + sin α · e⊥),   e₀ = ĝ₀/‖ĝ₀‖,  e⊥ = unit(h − ⟨h, e₀⟩e₀),

  keeping a positive cosine (α < 90°) so it keeps its trust weight cos α, and choosing α
  (5° … 85° in steps of 5°) to maximise the damage of the rule run with ĝ₀ as FLTrust's
  reference.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any, ClassVar

import torch

from fedshield.clients.attacks._linalg import mean
from fedshield.clients.attacks.base import AttackError, ModelAttack, create_attack, register

GAMMAS = tuple(2.0 ** k for k in range(-4, 9))
ANGLES = tuple(range(5, 90, 5))  # degrees: 17 evaluations of the rule per round


def _rule_output(aggregator: Callable[..., Any], updates: torch.Tensor,
                 **context: Any) -> Any | None:
    """The rule's aggregation of a hypothetical round (a stateful rule on a copy), or None when
    the rule refuses it."""
    rule = copy.deepcopy(aggregator) if getattr(aggregator, "stateful", False) else aggregator
    try:
        return rule(updates, **context)
    except Exception:  # the rule refuses this round (too few rows...): no damage measured
        return None


def search(aggregator: Callable[..., Any], updates: torch.Tensor, mask: torch.Tensor,
           members: list[torch.Tensor], context: dict[str, Any] | None = None
           ) -> tuple[int, float]:
    """(index of the member with the largest damage, that damage); (−1, 0) when none moves
    the aggregate. ``updates`` (n, d) holds the malicious clients' honest rows at ``mask``."""
    context = context or {}
    reference = _rule_output(aggregator, updates, **context)
    if reference is None:
        return -1, 0.0
    best, damage = -1, 0.0
    trial = updates.clone()
    for k, member in enumerate(members):
        trial[mask] = member.to(trial.dtype)
        out = _rule_output(aggregator, trial, **context)
        if out is None:
            continue
        accepted = getattr(out, "accepted", None)
        if accepted is not None and not bool(accepted[mask].any()):
            continue
        moved = float(torch.linalg.vector_norm((out.update - reference.update).double()))
        if math.isfinite(moved) and moved > damage:
            best, damage = k, moved
    return best, damage


class _Omniscient(ModelAttack):
    supports: ClassVar[tuple[str, ...]] = ("omniscient",)

    def _matrix(self, malicious: torch.Tensor, benign: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """The round as the rule sees it, malicious rows last: (updates, mask)."""
        updates = torch.cat([benign, malicious])
        mask = torch.zeros(updates.shape[0], dtype=torch.bool)
        mask[benign.shape[0]:] = True
        return updates, mask

    def _need_rule(self, aggregator: Any) -> None:
        if aggregator is None:
            raise AttackError(f"attack {self.name!r} searches against the real rule, which the "
                              "adversary stage passes; none was given")

    @staticmethod
    def _context(aggregator: Any, benign: torch.Tensor) -> dict[str, Any]:
        """What the rule needs beyond the updates, as the attacker estimates it: FLTrust's root
        update by the benign mean."""
        if getattr(aggregator, "needs_reference", False):
            return {"reference": mean(benign).to(benign.dtype)}
        return {}


@register
class Adaptive(_Omniscient):
    """Adaptive wrapper: any model attack with its strength tuned against the real rule (module
    docstring). ``base`` names the attack, ``base_params`` its parameters."""

    name: ClassVar[str] = "adaptive"
    observes: ClassVar[str] = "the deployed rule (white box), searched every round"

    def __init__(self, *, base: str = "alie", base_params: dict[str, Any] | None = None,
                 knowledge: str = "omniscient") -> None:
        super().__init__()
        self._set_knowledge(knowledge)
        if base in ("adaptive", "fltrust-adaptive"):
            raise AttackError(f"attack {self.name!r}: base must be another model attack")
        self.base = base
        self.base_params = dict(base_params or {})
        attack = create_attack(base, num_classes=2, low=0.0, high=1.0, **self.base_params)
        if not isinstance(attack, ModelAttack) or getattr(attack, "fake", False):
            raise AttackError(f"attack {self.name!r}: base {base!r} must be a model attack on "
                              "compromised clients")
        if "omniscient" in attack.supports and "knowledge" not in self.base_params:
            attack._set_knowledge("omniscient")
        self._base = attack

    def begin_round(self, rnd: int, global_vec: torch.Tensor) -> None:
        self._base.begin_round(rnd, global_vec)

    def craft(self, malicious, benign, *, aggregator, num_clients, f, generator, **_: Any):
        self._need_rule(aggregator)
        crafted = self._base(malicious, benign, aggregator=aggregator, num_clients=num_clients,
                             f=f, generator=generator).double()
        mu = mean(benign)
        members = [mu + g * (crafted - mu) for g in GAMMAS]
        updates, mask = self._matrix(malicious, benign)
        best, damage = search(aggregator, updates, mask, members,
                              self._context(aggregator, benign))
        self._last = {"gamma": GAMMAS[best] if best >= 0 else None, "damage": damage}
        return members[best] if best >= 0 else crafted


@register
class FLTrustAdaptive(_Omniscient):
    """FLTrust's adaptive attack (Cao et al. NDSS'21): the update at the angle from the
    estimated root update that does the most damage while keeping a positive cosine."""

    name: ClassVar[str] = "fltrust-adaptive"
    observes: ClassVar[str] = "the deployed rule; estimates the server's root update"

    def __init__(self, *, knowledge: str = "omniscient") -> None:
        super().__init__()
        self._set_knowledge(knowledge)

    def craft(self, malicious, benign, *, aggregator, generator, **_: Any):
        self._need_rule(aggregator)
        g0 = mean(benign)
        norm = float(torch.linalg.vector_norm(g0))
        if norm == 0:
            return malicious.clone()
        e0 = g0 / norm
        harm = -torch.sign(g0)
        ortho = harm - (harm @ e0) * e0
        if float(torch.linalg.vector_norm(ortho)) == 0:
            ortho = torch.randn(g0.shape, generator=generator, dtype=torch.float64)
            ortho = ortho - (ortho @ e0) * e0
        e_perp = ortho / torch.linalg.vector_norm(ortho)
        angles = [math.radians(a) for a in ANGLES]
        members = [(norm * (math.cos(a) * e0 + math.sin(a) * e_perp)).expand_as(malicious)
                   for a in angles]
        updates, mask = self._matrix(malicious, benign)
        best, damage = search(aggregator, updates, mask, members,
                              self._context(aggregator, benign))
        self._last = {"angle_degrees": math.degrees(angles[best]) if best >= 0 else None,
                      "damage": damage}
        return (members[best] if best >= 0 else members[len(members) // 2]).clone()
