"""What malicious clients do: data poisoning (in the client) and model poisoning (the colluding
adversary stage). ``create_attack(name, ...)`` builds one, ``available_attacks()`` lists them;
``"none"`` is not an attack (callers skip it). See ``base`` for the contract.
"""

from __future__ import annotations

from typing import Any

from fedshield.clients.attacks import (  # noqa: F401  (register the attacks)
    a3fl,
    adaptive,
    data,
    edge,
    fang,
    minmax,
    model,
    multiround,
)
from fedshield.clients.attacks.adversary import apply_model_attack
from fedshield.clients.attacks.base import (
    AttackError,
    DataAttack,
    ModelAttack,
    constructor_params,
    create_attack,
    registry,
)


def attack_from_config(cfg: Any, dataset: Any) -> DataAttack | ModelAttack | None:
    """The attack of a :class:`fedshield.tasks.config.RunConfig` on a dataset, or None for
    ``attack = "none"``: the one builder the inline engine, the ServerApp (adversary stage, ASR
    inputs) and the ClientApp (data poisoning) share.

    The size it is built for is the run config's (``per_round``, ``malicious_per_round``): n =
    the clients aggregated per round, m = the malicious ones among them, so ``boost = "auto"`` is
    n / m and ``"n"`` is n. When the run config names no malicious client (a deployment's
    red-team node is chosen by its node config), m = 1.
    """
    if cfg.attack == "none":
        return None
    return create_attack(
        cfg.attack, num_classes=dataset.num_classes, low=dataset.low, high=dataset.high,
        num_clients=cfg.per_round, num_malicious=max(1, cfg.malicious_per_round),
        **cfg.attack_params,
    )


def available_attacks() -> dict[str, dict[str, Any]]:
    """Every attack: its kind, supported knowledge (first = default), parameters with defaults
    and the first line of its docstring (for ``fedshield list``)."""
    out: dict[str, dict[str, Any]] = {}
    for name, cls in sorted(registry().items()):
        knowledge = list(getattr(cls, "supports", ("own",))) if cls.kind == "model" else ["own"]
        doc = (cls.__doc__ or "").strip().splitlines()
        out[name] = {
            "kind": cls.kind,
            "knowledge": knowledge,
            "observes": cls.observes,
            "params": constructor_params(cls),
            "summary": doc[0] if doc else "",
        }
    return out


__all__ = [
    "AttackError",
    "DataAttack",
    "ModelAttack",
    "apply_model_attack",
    "attack_from_config",
    "available_attacks",
    "create_attack",
]
