"""The attack contract shared by every data-poisoning and model-poisoning attack.

Two kinds (DESIGN.md, "Attacks"):

- :class:`DataAttack` (``kind = "data"``) runs inside a malicious client on its own data:
  ``poison(x, y, generator) -> (x, y)`` before honest local training, then the resulting delta is
  multiplied by ``boost`` (model replacement, Bagdasaryan et al. 2020). ``asr_inputs(test_x,
  test_y)`` returns the test inputs on which the attack success rate is measured and the label that
  counts as success, or ``None`` for untargeted attacks.
- :class:`ModelAttack` (``kind = "model"``) rewrites the malicious clients' honest deltas:
  ``attack(malicious (m, d), benign (b, d) | None, *, aggregator, num_clients, f, generator)``.
  ``knowledge`` is ``"own"`` (only the malicious clients' own honest deltas are known) or
  ``"omniscient"`` (every benign delta of the round is known as well).

Convention for the *reference set* an attack estimates benign statistics from: with
``knowledge="omniscient"`` it is every honest delta of the round the adversary knows — the benign
rows **and** the malicious clients' own honest deltas (as in the official code of Fang et al. 2020
and Shejwalkar & Houmansadr 2021, whose attackers also compute honest gradients); with
``knowledge="own"`` it is the malicious rows alone (Fang's "partial knowledge", Shejwalkar's
"unknown benign gradients").

Attacks use only torch, take every random choice from the caller's ``torch.Generator`` and never
return NaN/Inf.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, ClassVar

import torch

KNOWLEDGE = ("own", "omniscient")


class AttackError(ValueError):
    """Bad attack name, parameter or input; the message names what was wrong and what is allowed."""


class Attack:
    """Base of both kinds: the constructor stores (validated) parameters."""

    name: ClassVar[str] = ""
    kind: ClassVar[str] = ""
    #: the threat model beyond ``knowledge``: what the attacker observes across rounds
    observes: ClassVar[str] = "the current round only"

    def params(self) -> dict[str, Any]:
        """The attack's parameters after validation (for ledgers and reports)."""
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({args})"


class DataAttack(Attack):
    """Poisons a malicious client's own data; the trained delta is then scaled by ``boost``."""

    kind: ClassVar[str] = "data"
    _boost: float | None = 1.0
    _boost_spec: Any = 1.0

    @property
    def boost(self) -> float:
        """λ, the factor on the trained delta. A symbolic ``"auto"`` / ``"n"`` given without the
        round's counts stays pending until :meth:`bind` (``clients.client`` binds it from the run
        config); reading it before is an error."""
        if self._boost is None:
            raise AttackError(
                f"attack {self.name!r}: boost={self._boost_spec!r} is not resolved; pass "
                "num_clients/num_malicious to create_attack or call attack.bind(n, m)"
            )
        return self._boost

    @property
    def boost_pending(self) -> bool:
        return self._boost is None

    def bind(self, num_clients: int, num_malicious: int) -> None:
        """Resolve a pending symbolic boost with the round's client / malicious counts."""
        if self._boost is None:
            self._boost = resolve_boost(self.name, self._boost_spec, num_clients, num_malicious)

    def params(self) -> dict[str, Any]:
        out = super().params()
        out["boost"] = self._boost_spec if self._boost is None else self._boost
        return out

    def poison(
        self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def finish(self, delta: torch.Tensor, global_vec: torch.Tensor) -> torch.Tensor:
        """The delta the malicious client sends, from the one it trained on its poisoned data
        from ``global_vec``: × ``boost`` (model replacement); may work in place."""
        boost = self.boost
        return delta if boost == 1.0 else delta.mul_(boost)

    def prepare(self, task: Any, global_vec: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                generator: torch.Generator) -> None:
        """Before poisoning, with the global model the client received (``task`` builds models
        from vectors): attacks that adapt to the model (A3FL's trigger) do their work here."""

    def gradient_mask(self, global_vec: torch.Tensor) -> torch.Tensor | None:
        """A (d,) mask that multiplies every gradient step of the malicious client's training
        from ``global_vec`` (Neurotoxin's masked descent), or None."""
        return None

    def memory(self) -> dict[str, torch.Tensor]:
        """What the attacker must remember between rounds (tensors), for a client process that
        is rebuilt every round (the Flower ClientApp keeps it in the node's state)."""
        return {}

    def restore(self, memory: dict[str, torch.Tensor]) -> None:
        """Take back what :meth:`memory` returned in an earlier round."""

    def for_client(self, malicious_index: int) -> DataAttack:
        """The attack as the ``malicious_index``-th malicious client runs it (the same attack
        for every client, except for distributed attacks such as DBA)."""
        return self

    def asr_inputs(
        self, test_x: torch.Tensor, test_y: torch.Tensor
    ) -> tuple[torch.Tensor, int] | None:
        """Inputs on which the attack success rate is measured and the label counting as success."""
        return None


class ModelAttack(Attack):
    """Rewrites the malicious clients' honest deltas (m, d) into crafted deltas (m, d)."""

    kind: ClassVar[str] = "model"
    #: True: the attacker's clients are fake ones it adds to the federation (no data, no
    #: training), not compromised honest clients (MPAF)
    fake: ClassVar[bool] = False
    #: knowledge settings the attack supports; the first is the default.
    supports: ClassVar[tuple[str, ...]] = ("own",)
    knowledge: str = "own"

    def __init__(self) -> None:
        #: diagnostics of the last call (search results: gamma, lambda, iterations...).
        self._last: dict[str, Any] = {}

    @property
    def last_diagnostics(self) -> dict[str, Any]:
        return dict(self._last)

    def begin_round(self, rnd: int, global_vec: torch.Tensor) -> None:
        """The global model θ_t of round ``rnd``, which every client receives (before
        :meth:`craft`); attacks that plan across rounds keep what they need, the others ignore
        it."""

    def _set_knowledge(self, knowledge: str) -> None:
        if knowledge not in self.supports:
            raise AttackError(
                f"attack {self.name!r}: knowledge={knowledge!r} is not supported; "
                f"allowed: {', '.join(self.supports)}"
            )
        self.knowledge = knowledge

    def reference(self, malicious: torch.Tensor, benign: torch.Tensor | None) -> torch.Tensor:
        """The honest deltas this attack may estimate benign statistics from (see module doc)."""
        if self.knowledge == "own":
            return malicious
        self._require_benign(benign)
        return torch.cat([benign, malicious], dim=0)

    def _require_benign(self, benign: torch.Tensor | None) -> None:
        if benign is None or benign.shape[0] == 0:
            raise AttackError(
                f"attack {self.name!r} with knowledge='omniscient' needs the benign updates of the "
                "round, but none were given (no benign client in the round?)"
            )

    def __call__(
        self,
        malicious: torch.Tensor,
        benign: torch.Tensor | None,
        *,
        aggregator: Callable[[torch.Tensor], Any] | None = None,
        num_clients: int,
        f: int,
        generator: torch.Generator,
    ) -> torch.Tensor:
        _check_matrix("malicious", malicious)
        if malicious.shape[0] == 0:
            return malicious.clone()
        if benign is not None:
            _check_matrix("benign", benign)
            if benign.shape[1] != malicious.shape[1]:
                raise AttackError(
                    f"benign updates have d={benign.shape[1]}, malicious d={malicious.shape[1]}"
                )
        if self.knowledge == "omniscient":
            self._require_benign(benign)
        crafted = self.craft(
            malicious, benign, aggregator=aggregator, num_clients=num_clients, f=f,
            generator=generator,
        )
        if crafted.shape != malicious.shape:
            raise AttackError(
                f"attack {self.name!r} produced shape {tuple(crafted.shape)}, "
                f"expected {tuple(malicious.shape)}"
            )
        if not torch.isfinite(crafted).all():
            raise AttackError(f"attack {self.name!r} produced non-finite values")
        return crafted.to(malicious.dtype).contiguous()

    def craft(
        self,
        malicious: torch.Tensor,
        benign: torch.Tensor | None,
        *,
        aggregator: Callable[[torch.Tensor], Any] | None,
        num_clients: int,
        f: int,
        generator: torch.Generator,
    ) -> torch.Tensor:
        raise NotImplementedError


# --- registry -------------------------------------------------------------------------------

_REGISTRY: dict[str, type[Attack]] = {}


def register(cls: type[Attack]) -> type[Attack]:
    """Class decorator: make ``cls`` available to ``create_attack`` under ``cls.name``."""
    if not cls.name:
        raise TypeError(f"{cls.__name__} has no name")
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise TypeError(f"attack name {cls.name!r} registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def registry() -> dict[str, type[Attack]]:
    return dict(_REGISTRY)


def constructor_params(cls: type[Attack]) -> dict[str, Any]:
    """Public constructor parameters of ``cls`` with their defaults (context args excluded)."""
    sig = inspect.signature(cls.__init__)
    out: dict[str, Any] = {}
    for pname, p in sig.parameters.items():
        if pname in ("self", *CONTEXT_ARGS) or p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
            continue
        out[pname] = None if p.default is inspect.Parameter.empty else p.default
    return out


#: arguments ``create_attack`` passes to constructors that accept them (not user parameters).
CONTEXT_ARGS = ("num_classes", "low", "high", "num_clients", "num_malicious")


# --- validation helpers (one place; messages name the parameter and the allowed values) ----


def _check_matrix(label: str, t: torch.Tensor) -> None:
    if not isinstance(t, torch.Tensor) or t.dim() != 2:
        shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
        raise AttackError(f"{label} updates must be a 2-D tensor (n, d), got {shape}")
    if not t.is_floating_point():
        raise AttackError(f"{label} updates must be floating point, got {t.dtype}")


def check_fraction(attack: str, pname: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 < value <= 1.0:
        raise AttackError(f"attack {attack!r}: {pname} must be in (0, 1], got {value!r}")
    return float(value)


def check_positive(attack: str, pname: str, value: Any, *, allow_zero: bool = False) -> float:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if ok:
        ok = value >= 0 if allow_zero else value > 0
        ok = ok and float(value) != float("inf")
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise AttackError(
            f"attack {attack!r}: {pname} must be a finite number {bound}, got {value!r}"
        )
    return float(value)


def check_choice(attack: str, pname: str, value: Any, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise AttackError(
            f"attack {attack!r}: {pname}={value!r} is not allowed; allowed: {', '.join(allowed)}"
        )
    return value


def check_label(attack: str, pname: str, value: Any, num_classes: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < num_classes:
        raise AttackError(
            f"attack {attack!r}: {pname} must be a class label in [0, {num_classes - 1}] "
            f"(num_classes={num_classes}), got {value!r}"
        )
    return int(value)


def resolve_boost(
    attack: str,
    value: Any,
    num_clients: int | None,
    num_malicious: int | None,
) -> float | None:
    """``boost``: a number λ > 0, ``"auto"`` = n / (number of malicious clients) (Bagdasaryan's
    model replacement γ = n/η with η = 1, shared by the colluders), or ``"n"`` = n (FLTrust's
    Scaling attack). None (pending) for a symbolic value when ``num_clients`` is not known yet."""
    if value in ("auto", "n"):
        if num_clients is None:
            return None
        if value == "auto" and not num_malicious:
            raise AttackError(
                f"attack {attack!r}: boost='auto' (n / m) needs num_malicious >= 1, "
                f"got {num_malicious!r}"
            )
        if value == "n":
            return float(num_clients)
        assert num_malicious is not None
        return float(num_clients) / float(num_malicious)
    if isinstance(value, str):
        raise AttackError(
            f"attack {attack!r}: boost must be a number > 0, 'auto' or 'n', got {value!r}"
        )
    return check_positive(attack, "boost", value)


def create_attack(
    name: str,
    *,
    num_classes: int,
    low: float,
    high: float,
    num_clients: int | None = None,
    num_malicious: int | None = None,
    **params: Any,
) -> DataAttack | ModelAttack:
    """Build the attack ``name`` with ``params``.

    ``num_classes``, ``low``, ``high`` (the normalised black / white pixel values) describe the
    task; ``num_clients`` / ``num_malicious`` resolve ``boost="auto"`` / ``"n"`` (without them the
    boost stays pending until ``attack.bind(n, m)``, which ``clients.client`` does from the run
    config). Unknown
    names or parameters raise :class:`AttackError` listing the valid ones.
    """
    reg = registry()
    if name not in reg:
        raise AttackError(
            f"unknown attack {name!r}; available: {', '.join(sorted(reg))} "
            "('none' means no attack and is handled by the caller)"
        )
    cls = reg[name]
    allowed = constructor_params(cls)
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise AttackError(
            f"attack {name!r}: unknown parameter(s) {', '.join(unknown)}; "
            f"valid: {', '.join(sorted(allowed)) or '(none)'}"
        )
    context = {"num_classes": num_classes, "low": low, "high": high,
               "num_clients": num_clients, "num_malicious": num_malicious}
    accepted = constructor_params_with_context(cls)
    return cls(**{k: v for k, v in context.items() if k in accepted}, **params)


def constructor_params_with_context(cls: type) -> set[str]:
    return set(inspect.signature(cls.__init__).parameters) & set(CONTEXT_ARGS)
