"""Attacks that plan across rounds from the global model every client receives: PoisonedFL and
MPAF (whose clients are fake ones the attacker adds).

PoisonedFL — Xie, Fang, Jia, Gong, "Model Poisoning Attacks to Federated Learning via
Multi-Round Consistency" (arXiv:2404.15611, 2024). Existing attacks craft each round on its own,
so their effects cancel across rounds; PoisonedFL pushes the global model the same way every
round, and needs nothing about the honest clients (``knowledge = "own"``; it watches only the
global model every client receives).

- Once, at its first round: a random sign vector s ∈ {−1, +1}^d, drawn from that round's
  generator (so it follows the run's seed).
- Round t ≥ 2, with Δ_{t−1} = θ_t − θ_{t−1} the global model's last move: every malicious client
  sends the same update

      g_t = λ_t · s ⊙ |Δ_{t−1}|,   λ_t = c_t · ‖Δ_{t−1}‖ / ‖ |Δ_{t−1}| ‖ = c_t,

  i.e. the magnitude of each coordinate follows the global model's own recent change (so
  the update looks like a plausible step), its sign is fixed, and c_t scales it.
- Round 1 (no move seen yet): the malicious clients send the mean of their own honest updates.
- Every ``check_every`` rounds, the attack measures whether the global model has moved along s:
  a = the share of coordinates where sign(θ_t − θ_{t−e}) = s. When a < ``alignment``, the
  defence is filtering the attack out, and the scale shrinks: c ← β·c (``beta``), so the update
  falls back inside what the rule accepts; c starts at ``scale``.

The paper's default e is 50 rounds of a 2,000-round run; runs here are shorter, so e = 5.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from fedshield.clients.attacks._linalg import mean
from fedshield.clients.attacks.base import (
    AttackError,
    ModelAttack,
    check_positive,
    register,
)


@register
class PoisonedFL(ModelAttack):
    """PoisonedFL (Xie et al. 2024): one fixed random sign direction, the same update from every
    malicious client every round, magnitude from the global model's recent change, scale
    shrinking when the global model stops moving along the direction."""

    name: ClassVar[str] = "poisonedfl"
    observes: ClassVar[str] = "the global models of past rounds (no honest update)"

    def __init__(self, *, scale: float = 8.0, beta: float = 0.7, check_every: int = 5,
                 alignment: float = 0.5) -> None:
        super().__init__()
        self.scale = check_positive(self.name, "scale", scale)
        self.beta = check_positive(self.name, "beta", beta)
        if not (isinstance(check_every, int) and check_every >= 1):
            raise AttackError(f"attack {self.name!r}: check_every must be an int >= 1, got "
                              f"{check_every!r}")
        self.check_every = check_every
        if not 0.0 <= float(alignment) <= 1.0:
            raise AttackError(f"attack {self.name!r}: alignment must be in [0, 1], got "
                              f"{alignment!r}")
        self.alignment = float(alignment)
        self._sign: torch.Tensor | None = None
        self._globals: list[torch.Tensor] = []  # θ of the last check_every + 1 rounds
        self._rounds = 0
        self._c = self.scale

    def begin_round(self, rnd: int, global_vec: torch.Tensor) -> None:
        vec = global_vec.detach().to(torch.float64).clone()
        self._globals.append(vec)
        del self._globals[:-(self.check_every + 1)]
        self._rounds += 1
        if self._sign is not None and (self._rounds - 1) % self.check_every == 0 and len(
                self._globals) == self.check_every + 1:
            moved = torch.sign(self._globals[-1] - self._globals[0])
            share = float((moved == self._sign).double().mean())
            if share < self.alignment:
                self._c *= self.beta
            self._last["alignment"] = share
        self._last["scale"] = self._c

    def craft(self, malicious: torch.Tensor, benign: Any, *, generator: torch.Generator,
              **_: Any) -> torch.Tensor:
        if self._sign is None:
            d = malicious.shape[1]
            self._sign = torch.randint(0, 2, (d,), generator=generator).to(torch.float64) * 2 - 1
        if len(self._globals) < 2:
            return mean(malicious).expand_as(malicious).clone()  # round 1: look honest
        move = (self._globals[-1] - self._globals[-2]).abs()
        if self._sign.shape != move.shape or move.shape[0] != malicious.shape[1]:
            raise AttackError(f"attack {self.name!r}: the global model has d = {move.shape[0]}, "
                              f"the updates d = {malicious.shape[1]}")
        update = (self._c * self._sign * move).to(malicious.dtype)
        top = torch.finfo(malicious.dtype).max
        return update.clamp(-top, top).expand_as(malicious).clone()


@register
class MPAF(ModelAttack):
    """MPAF (Cao & Gong, "MPAF: Model Poisoning Attacks to Federated Learning based on Fake
    Clients", CVPR Workshops 2022). The attacker does not compromise honest clients: it *adds*
    fake ones, which hold no data. Every fake client sends

        g_t = λ · (w' − θ_t),

    pulling the global model toward a low-accuracy base model w' chosen once (here: the first
    global model the attacker sees, θ_1, with its entries randomly permuted — a model with the
    initial weights' distribution and no learned structure). λ = ``lam`` scales the pull.

    ``fake = True``: the harness adds the run's malicious count as fake clients (ids after the
    real ones, no partition, no training) instead of choosing malicious clients among the real
    ones; the inline engine only.
    """

    name: ClassVar[str] = "mpaf"
    fake: ClassVar[bool] = True
    observes: ClassVar[str] = "the global model; its clients are fake (added, no data)"

    def __init__(self, *, lam: float = 10.0) -> None:
        super().__init__()
        self.lam = check_positive(self.name, "lam", lam)
        self._base: torch.Tensor | None = None
        self._theta: torch.Tensor | None = None

    def begin_round(self, rnd: int, global_vec: torch.Tensor) -> None:
        self._theta = global_vec.detach().to(torch.float64).clone()

    def craft(self, malicious: torch.Tensor, benign: Any, *, generator: torch.Generator,
              **_: Any) -> torch.Tensor:
        if self._theta is None or self._theta.shape[0] != malicious.shape[1]:
            raise AttackError(f"attack {self.name!r} needs the round's global model "
                              "(begin_round) of the updates' dimension")
        if self._base is None:
            perm = torch.randperm(self._theta.shape[0], generator=generator)
            self._base = self._theta[perm].clone()
        update = (self.lam * (self._base - self._theta)).to(malicious.dtype)
        return update.expand_as(malicious).clone()
