"""What malicious clients do: data poisoning (in the client) and model poisoning (the colluding
adversary stage). ``create_attack(name, ...)`` builds one, ``available_attacks()`` lists them;
``"none"`` is not an attack (callers skip it). See ``base`` for the contract.
"""

from __future__ import annotations

from typing import Any

from clients.attacks import data, fang, minmax, model  # noqa: F401  (register the attacks)
from clients.attacks.adversary import apply_model_attack
from clients.attacks.base import (
    CONTEXT_ARGS,
    AttackError,
    DataAttack,
    ModelAttack,
    constructor_params,
    registry,
    round_counts,
)


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


def attack_from_config(cfg: Any, dataset: Any, *,
                       at_least_one: bool = False) -> DataAttack | ModelAttack | None:
    """The attack of a :class:`tasks.config.RunConfig` on a :class:`tasks.datasets.Dataset`, or
    None (``attack="none"`` or no malicious client). Passes the context ``boost="auto"`` / ``"n"``
    need: num_clients = clients aggregated per round (``clients_per_round`` or ``num_clients``) and
    num_malicious = the malicious share of them (``malicious_count`` scaled to a round, ≥ 1), so
    "auto" = n / m and "n" = n of the round.

    ``at_least_one``: when the run config names no malicious client (in a deployment a node's
    ``--node-config malicious=true`` decides), build the attack as if one client were malicious.
    """
    if cfg.attack == "none":
        return None
    if cfg.malicious_count == 0:
        if not at_least_one:
            return None
        cfg = cfg.with_updates(num_malicious=1)
    per_round, num_malicious = round_counts(cfg)
    return create_attack(
        cfg.attack, num_classes=dataset.num_classes, low=dataset.low, high=dataset.high,
        num_clients=per_round, num_malicious=num_malicious, **cfg.attack_params,
    )


def constructor_params_with_context(cls: type) -> set[str]:
    import inspect

    return set(inspect.signature(cls.__init__).parameters) & set(CONTEXT_ARGS)


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
