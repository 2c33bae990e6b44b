"""Model-poisoning attacks with closed forms: sign flip, Gaussian, scaling, ALIE, IPM, Mimic.

Notation: X_m (m, d) the malicious clients' honest deltas; R the reference set (base module doc:
benign ∪ own honest deltas when omniscient, X_m when ``knowledge="own"``); μ, σ its per-coordinate
mean and unbiased standard deviation; n = clients in the round; f = malicious clients in the round.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from fedshield.clients.attacks._linalg import gram, mean, std
from fedshield.clients.attacks.base import (
    AttackError,
    ModelAttack,
    check_choice,
    check_positive,
    register,
)


@register
class SignFlip(ModelAttack):
    """Sign flipping: each malicious client sends −λ·x_i, its own honest delta reversed (λ =
    ``factor`` = 1: the classic sign-flip / "reverse gradient" attack of ByzFL, Blades and
    Karimireddy et al.; λ = 4 is the sign-flipping attack of Li et al.'s RSA, AAAI 2019). With f of
    n attackers the mean keeps (n − f − λf)/n of the honest direction: plain −x only slows FedAvg
    down below f = n/2, while λ = 4 reverses it from f > n/5."""

    name: ClassVar[str] = "signflip"

    def __init__(self, *, factor: float = 1.0) -> None:
        super().__init__()
        self.factor = check_positive(self.name, "factor", factor)

    def craft(self, malicious, benign, **_: Any):
        return -self.factor * malicious


@register
class Gaussian(ModelAttack):
    """Gaussian noise (Fang et al. 2020's / Blades' noise attack).

    ``mode="replace"``: each malicious client sends x̃_i ~ N(mean, σ² I) (independent per client);
    ``mode="add"``: x̃_i = x_i + N(0, σ² I). Noise drawn from the caller's generator.
    """

    name: ClassVar[str] = "gaussian"

    def __init__(self, *, sigma: float = 1.0, mean: float = 0.0, mode: str = "replace") -> None:
        super().__init__()
        self.sigma = check_positive(self.name, "sigma", sigma)
        if not isinstance(mean, int | float) or isinstance(mean, bool):
            raise AttackError(f"attack {self.name!r}: mean must be a number, got {mean!r}")
        self.mean = float(mean)
        self.mode = check_choice(self.name, "mode", mode, ("replace", "add"))

    def craft(self, malicious, benign, *, generator, **_: Any):
        noise = torch.randn(malicious.shape, generator=generator, dtype=torch.float32)
        noise = self.mean + self.sigma * noise.to(malicious.dtype)
        return malicious + noise if self.mode == "add" else noise


@register
class Scale(ModelAttack):
    """Scaling / boosting: x̃_i = λ·x_i. ``lam="auto"`` is λ = n / f, the model-replacement factor
    of Bagdasaryan et al. (AISTATS 2020) split over the f colluders; ‖x̃_i‖ = λ‖x_i‖."""

    name: ClassVar[str] = "scale"

    def __init__(self, *, lam: Any = "auto") -> None:
        super().__init__()
        self.lam = lam if lam == "auto" else check_positive(self.name, "lam", lam)

    def factor(self, num_clients: int, f: int) -> float:
        return num_clients / max(f, 1) if self.lam == "auto" else float(self.lam)

    def craft(self, malicious, benign, *, num_clients, f, **_: Any):
        return self.factor(num_clients, f) * malicious


def alie_z(n: int, f: int, rule: str = "paper") -> float:
    """ALIE's z_max (Baruch, Baruch, Goldberg, "A Little Is Enough", NeurIPS 2019).

    s = ⌊n/2 + 1⌋ − f supporters are needed; ``rule="paper"``: z_max = Φ⁻¹((n − s)/n), the
    paper's formula; ``rule="common"``: z_max = Φ⁻¹((n − f − s)/(n − f)), the variant of epfml /
    Blades / FLPoison / Flower's baseline (smaller z). n=50, f=10: 0.468 (paper) vs 0.253 (common).
    """
    s = (n // 2 + 1) - f
    num, den = (n - s, n) if rule == "paper" else (n - f - s, n - f)
    if s <= 0 or den <= 0 or not 0 < num < den:
        raise AttackError(
            f"attack 'alie': z_max undefined for n={n}, f={f} (s = floor(n/2+1) - f = {s}, "
            f"quantile {num}/{den}); pass an explicit z"
        )
    return float(torch.special.ndtri(torch.tensor(num / den, dtype=torch.float64)))


@register
class ALIE(ModelAttack):
    """A Little Is Enough (Baruch, Baruch, Goldberg, NeurIPS 2019).

    Every malicious client sends μ_j − z·σ_j per coordinate j, μ and σ (unbiased) over the
    reference set. z: an explicit ``z``, else z_max from :func:`alie_z` with ``z_rule``
    ("paper", the default — the paper's Φ⁻¹((n − s)/n) — or "common", Φ⁻¹((n−f−s)/(n−f))) and
    n, f of the round. Knowledge: omniscient (default, as in most implementations) or own (the
    paper's setting, statistics from the attackers' own honest deltas).
    """

    name: ClassVar[str] = "alie"
    supports: ClassVar[tuple[str, ...]] = ("omniscient", "own")

    def __init__(
        self, *, z: float | None = None, z_rule: str = "paper", knowledge: str = "omniscient"
    ) -> None:
        super().__init__()
        self._set_knowledge(knowledge)
        self.z = None if z is None else check_positive(self.name, "z", z)
        self.z_rule = check_choice(self.name, "z_rule", z_rule, ("paper", "common"))

    def z_for(self, num_clients: int, f: int) -> float:
        return self.z if self.z is not None else alie_z(num_clients, f, self.z_rule)

    def craft(self, malicious, benign, *, num_clients, f, **_: Any):
        ref = self.reference(malicious, benign)
        z = self.z_for(num_clients, f)
        crafted = mean(ref) - z * std(self.name, ref)
        self._last = {"z": z}
        return crafted.to(malicious.dtype).expand_as(malicious).clone()


@register
class IPM(ModelAttack):
    """Inner-product manipulation (Xie, Koyejo, Gupta, "Fall of Empires", UAI 2019): every malicious
    client sends −ε·μ, μ the mean of the reference set. ε = 0.1 (epfml, Karimireddy et al.) keeps
    the malicious rows close to the honest cloud; large ε (e.g. 100) overwhelms a plain mean."""

    name: ClassVar[str] = "ipm"
    supports: ClassVar[tuple[str, ...]] = ("omniscient", "own")

    def __init__(self, *, epsilon: float = 0.1, knowledge: str = "omniscient") -> None:
        super().__init__()
        self._set_knowledge(knowledge)
        self.epsilon = check_positive(self.name, "epsilon", epsilon)

    def craft(self, malicious, benign, **_: Any):
        mu = mean(self.reference(malicious, benign))
        return (-self.epsilon * mu).to(malicious.dtype).expand_as(malicious).clone()


@register
class Mimic(ModelAttack):
    """Mimic (Karimireddy, He, Jaggi, "Byzantine-Robust Learning on Heterogeneous Datasets via
    Bucketing", ICLR 2022): every malicious client copies one benign client's delta, over-weighting
    that client's data. ``target`` ≥ 0 picks benign row ``target mod b``; ``target=-1`` (default)
    picks the paper's heuristic per round: the benign client with the largest |⟨x_i − μ, v⟩|, v the
    top principal direction of the benign deltas (the most heterogeneous client)."""

    name: ClassVar[str] = "mimic"
    supports: ClassVar[tuple[str, ...]] = ("omniscient",)

    def __init__(self, *, target: int = -1) -> None:
        super().__init__()
        self.knowledge = "omniscient"
        if isinstance(target, bool) or not isinstance(target, int) or target < -1:
            raise AttackError(f"attack {self.name!r}: target must be an int >= -1, got {target!r}")
        self.target = target

    def choose(self, benign: torch.Tensor) -> int:
        if self.target >= 0:
            return self.target % benign.shape[0]
        b = benign.shape[0]
        if b < 2:
            return 0
        # top principal direction v of the centred rows X_c = J·X (J = I − 11ᵀ/b): with u the top
        # eigenvector of X_c X_cᵀ = J G J, the projections are X_c v ∝ (J G J) u = λu, so the
        # client farthest along v is argmax |u_i| (no d-dimensional SVD)
        j = torch.eye(b, dtype=torch.float64) - 1.0 / b
        vals, vecs = torch.linalg.eigh(j @ gram(benign) @ j)
        if not vals[-1] > 0:
            return 0
        return int(vecs[:, -1].abs().argmax())

    def craft(self, malicious, benign, **_: Any):
        i = self.choose(benign)
        self._last = {"mimicked": i}
        return benign[i].expand_as(malicious).clone()
