"""Fang, Cao, Jia, Gong, "Local Model Poisoning Attacks to Byzantine-Robust Federated Learning"
(USENIX Security 2020): the attacks tailored to Krum and to trimmed mean / median.

Both are *directed deviation* attacks: s_j = sign of the benign mean delta on coordinate j (the
direction the global model would move without attack); the crafted deltas push against it.
In delta space the global model before the attack, w_Re, is the origin, so ‖w_i − w_Re‖ = ‖x_i‖.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch

from fedshield.clients.attacks._linalg import call_rule, can_call, mean, sq_dists, std
from fedshield.clients.attacks.base import (
    AttackError,
    ModelAttack,
    check_positive,
    register,
)


def krum_select(updates: torch.Tensor, f: int) -> int:
    """Index Krum selects (Blanchard et al. 2017; the project's pinned convention): the row whose
    sum of squared distances to its k = n − f − 2 nearest other rows is smallest (k clamped to
    [1, n − 1] so a partial-knowledge round smaller than the real one can still be scored)."""
    n = updates.shape[0]
    k = min(max(n - f - 2, 1), n - 1)
    d = sq_dists(updates)
    d.fill_diagonal_(float("inf"))
    scores = d.topk(k, dim=1, largest=False).values.sum(1)
    return int(scores.argmin())


@register
class FangKrum(ModelAttack):
    """Fang et al.'s Krum attack. w'_1 = −λ·s; the c − 1 other attackers send w'_1 + u_i with
    u_i uniform in [−ε/√d, ε/√d]^d (‖u_i‖ ≤ ε). λ starts at the paper's upper bound

        λ_up = 1/((n − 2c − 1)√d) · min_{i∈B} Σ_{l∈Γ(i, n−c−2)} ‖x_l − x_i‖ + 1/√d · max_{i∈B} ‖x_i‖

    (B the benign deltas, Γ(i, k) the k benign nearest to x_i; n − 2c − 1 clamped to ≥ 1 and k to
    |B| − 1) and is halved until w'_1 is selected, stopping when λ < ``tol`` = 1e-5 — then the
    attack fails and, like the official code, the attackers send their honest deltas.

    Selection is decided by the real aggregator when one is given, can be evaluated (not a rule
    needing FLTrust's server reference) and reports ``accepted`` (a crafted row accepted);
    otherwise by a local Krum with f = c (the attack is tailored to Krum
    but applies to any rule, as in Fang's and FLTrust's tables). ``knowledge="omniscient"`` (full
    knowledge): s and B from the benign deltas of the round; ``"own"`` (partial knowledge): from the
    attackers' own honest deltas, which stand for the benign ones in the search.
    """

    name: ClassVar[str] = "fang-krum"
    supports: ClassVar[tuple[str, ...]] = ("omniscient", "own")

    def __init__(
        self, *, knowledge: str = "omniscient", epsilon: float = 1e-5, tol: float = 1e-5
    ) -> None:
        super().__init__()
        self._set_knowledge(knowledge)
        self.epsilon = check_positive(self.name, "epsilon", epsilon, allow_zero=True)
        self.tol = check_positive(self.name, "tol", tol)

    @staticmethod
    def lambda_upper(rest: torch.Tensor, n: int, c: int) -> float:
        d = rest.shape[1]
        k = min(max(n - c - 2, 1), rest.shape[0] - 1)
        near = 0.0
        if k >= 1:
            dist = sq_dists(rest).sqrt_()
            dist.fill_diagonal_(float("inf"))
            near = float(dist.topk(k, dim=1, largest=False).values.sum(1).min())
        far = float(rest.norm(dim=1).max())
        return near / (max(n - 2 * c - 1, 1) * math.sqrt(d)) + far / math.sqrt(d)

    def craft(self, malicious, benign, *, aggregator, num_clients, f, generator, **_: Any):
        m, d = malicious.shape
        rest = malicious if self.knowledge == "own" else benign
        s = torch.sign(mean(self.reference(malicious, benign)))
        noise = (torch.rand((m - 1, d), generator=generator, dtype=torch.float64) * 2 - 1)
        noise *= self.epsilon / math.sqrt(d)
        lam = self.lambda_upper(rest, num_clients, f)
        lam_up, steps = lam, 0
        while lam >= self.tol:
            first = -lam * s
            crafted = torch.cat([first[None], first + noise], dim=0).to(malicious.dtype)
            steps += 1
            if self._selected(crafted, rest, aggregator, f):
                self._last = {"lambda": lam, "lambda_upper": lam_up, "steps": steps,
                              "selected": True}
                return crafted
            lam /= 2
        self._last = {"lambda": 0.0, "lambda_upper": lam_up, "steps": steps, "selected": False}
        return malicious.clone()

    @staticmethod
    def _selected(crafted: torch.Tensor, rest: torch.Tensor, aggregator: Any, f: int) -> bool:
        round_ = torch.cat([crafted, rest.to(crafted.dtype)], dim=0)
        if can_call(aggregator):
            agg = call_rule(aggregator, round_)
            if agg.accepted is not None:
                return bool(agg.accepted[: crafted.shape[0]].any())
        return krum_select(round_, f) < crafted.shape[0]


@register
class FangTrim(ModelAttack):
    """Fang et al.'s attack on trimmed mean and median.

    Full knowledge (``knowledge="omniscient"``): with w_max,j / w_min,j the max / min of the
    reference deltas on coordinate j and b > 1 (default 2, as in the official MXNet code):
    if s_j = 1 each attacker sends a value in [w_min,j / b, w_min,j] (w_min,j > 0) or
    [b·w_min,j, w_min,j] (w_min,j ≤ 0); if s_j = −1 one in [w_max,j, b·w_max,j] (w_max,j > 0) or
    [w_max,j / b, w_max,j] (w_max,j ≤ 0). ``randomize=False`` takes the far end (factor b, the
    official code); ``True`` draws the factor uniformly in [1, b] per coordinate and attacker.

    Partial knowledge (``"own"``): μ, σ (population std) of the attackers' own honest deltas;
    each sends μ_j − k_j·σ_j·s_j, k_j ~ U[3, 4] per coordinate (``k=None``, the paper) or a fixed
    ``k`` (3.5 in one copy of the official code).
    """

    name: ClassVar[str] = "fang-trim"
    supports: ClassVar[tuple[str, ...]] = ("omniscient", "own")

    def __init__(
        self,
        *,
        knowledge: str = "omniscient",
        b: float = 2.0,
        randomize: bool = False,
        k: float | None = None,
    ) -> None:
        super().__init__()
        self._set_knowledge(knowledge)
        self.b = check_positive(self.name, "b", b)
        if self.b <= 1:
            raise AttackError(f"attack {self.name!r}: b must be > 1, got {b!r}")
        if not isinstance(randomize, bool):
            raise AttackError(f"attack {self.name!r}: randomize must be a boolean")
        self.randomize = randomize
        self.k = None if k is None else check_positive(self.name, "k", k)

    def craft(self, malicious, benign, *, generator, **_: Any):
        ref = self.reference(malicious, benign)
        m, d = malicious.shape
        mu = mean(ref)
        s = torch.sign(mu)
        if self.knowledge == "own":
            sigma = std(self.name, ref, correction=0)
            k = self.k
            if k is None:
                k = 3.0 + torch.rand((m, d), generator=generator, dtype=torch.float64)
            return (mu - k * sigma * s).expand(m, d).to(malicious.dtype)
        directed = torch.where(s > 0, ref.min(0).values, ref.max(0).values).double() * s.abs()
        if self.randomize:
            factor = 1 + (self.b - 1) * torch.rand((m, d), generator=generator, dtype=torch.float64)
        else:
            factor = torch.full((m, d), self.b, dtype=torch.float64)
        crafted = torch.where(s * directed > 0, directed / factor, directed * factor)
        return crafted.to(malicious.dtype)
