"""The flat configuration of one federated run, shared by the ServerApp, the ClientApp and the
inline engine.

It is the single translation point between a harness scenario cell and Flower's ``run_config``
(flat, scalar values, kebab-case keys: ``--run-config "aggregator='krum' rounds=3"``).
Dict-valued fields (``aggregator_params``, ``attack_params``) travel as JSON strings.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import numpy as np

from fedshield.tasks.device import DeviceError, check_device_spec

#: the certification schemes of the harness (``simulations.certify``)
CERTIFICATIONS = ("none", "flcert", "crfl")

#: ``num-clients`` of a Flower app that follows the federation (as many clients as SuperNodes)
FOLLOW_FEDERATION = 0


class ConfigError(ValueError):
    """A run configuration key or value is invalid; the message names the key."""


@dataclass(frozen=True)
class RunConfig:
    # data and task
    dataset: str = "digits"
    data_root: str = ""
    partition: str = "dirichlet"
    alpha: float = 0.5  # Dirichlet concentration
    q: float = 0.5  # Fang/FLTrust bias probability
    shards_per_client: int = 2
    min_partition_size: int = 2
    model: str = "mlp"
    # federation
    num_clients: int = 20
    clients_per_round: int = 0  # 0 = every client, every round
    rounds: int = 5
    # local training (local_steps > 0 wins over local_epochs)
    local_steps: int = 0
    local_epochs: int = 1
    batch_size: int = 32
    lr: float = 0.05
    momentum: float = 0.0
    weight_decay: float = 0.0
    # server
    server_lr: float = 1.0
    aggregator: str = "fedavg"
    aggregator_params: dict[str, Any] = field(default_factory=dict)
    root_size: int = 100  # FLTrust root dataset |D0|; used only by rules that need a reference
    root_bias_class: int = -1  # >= 0: the root set over-samples this class (FLTrust's bias p)
    root_p: float = 0.0  # probability that a root sample is of root_bias_class
    # adversary
    attack: str = "none"
    attack_params: dict[str, Any] = field(default_factory=dict)
    malicious_fraction: float = 0.0
    num_malicious: int = -1  # >= 0 overrides malicious_fraction
    attack_stop: int = 0  # > 0: the attackers behave honestly after this round (durability)
    # the defender's assumed malicious fraction: < 0 = the actual one (f = "auto" follows the
    # attack), in [0, 1) = fixed, whatever the attack (a breakdown sweep's second question)
    defender_fraction: float = -1.0
    # certification (simulations.certify): "none" | "flcert" | "crfl", and its parameters
    certify: str = "none"
    certify_params: dict[str, Any] = field(default_factory=dict)
    # where models train and evaluate and the rules sort and take Gram products: "auto" (CUDA when
    # available, else CPU) | "cpu" | "cuda[:N]" | "mps"
    device: str = "auto"
    # bookkeeping
    seed: int = 0
    eval_every: int = 1
    output_dir: str = ""  # ledger, checkpoints and per-round metrics go here when set

    def __post_init__(self) -> None:
        positive = ("num_clients", "rounds", "batch_size", "eval_every")
        for key in positive:
            if getattr(self, key) < 1:
                raise ConfigError(f"{key} must be >= 1, got {getattr(self, key)!r}")
        for key in ("local_steps", "local_epochs", "clients_per_round", "root_size",
                    "attack_stop"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{key} must be >= 0, got {getattr(self, key)!r}")
        if self.local_steps == 0 and self.local_epochs == 0:
            raise ConfigError("one of local_steps or local_epochs must be > 0")
        if self.clients_per_round > self.num_clients:
            raise ConfigError(
                f"clients_per_round={self.clients_per_round} exceeds num_clients={self.num_clients}"
            )
        if not 0.0 <= self.malicious_fraction < 1.0:
            raise ConfigError(
                f"malicious_fraction must be in [0, 1), got {self.malicious_fraction}"
            )
        if not (self.defender_fraction == -1.0 or 0.0 <= self.defender_fraction < 1.0):
            raise ConfigError("defender_fraction must be -1 (follow the malicious fraction) or "
                              f"in [0, 1), got {self.defender_fraction!r}")
        try:
            check_device_spec(self.device)
        except DeviceError as exc:
            raise ConfigError(str(exc)) from None
        if self.num_malicious >= self.num_clients:
            raise ConfigError(
                f"num_malicious={self.num_malicious} must be < num_clients={self.num_clients}"
            )
        for key in ("lr", "server_lr"):
            if not getattr(self, key) > 0 or math.isinf(getattr(self, key)):
                raise ConfigError(f"{key} must be a finite number > 0, got {getattr(self, key)!r}")
        if self.root_bias_class >= 0 and not 0.0 < self.root_p <= 1.0:
            raise ConfigError(f"root_p must be in (0, 1] with root_bias_class, got {self.root_p}")
        # checked here, when a scenario is loaded, not when each cell runs
        if not 0.0 <= self.momentum < 1.0:
            raise ConfigError(f"momentum must be in [0, 1), got {self.momentum!r}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ConfigError(f"weight_decay must be a finite number >= 0, got "
                              f"{self.weight_decay!r}")
        if not (math.isfinite(self.alpha) and self.alpha > 0):
            raise ConfigError(f"alpha must be a finite number > 0, got {self.alpha!r}")
        if not 0.0 <= self.q <= 1.0:
            raise ConfigError(f"q must be in [0, 1], got {self.q!r}")
        for key in ("shards_per_client", "min_partition_size"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key} must be >= 1, got {getattr(self, key)!r}")
        if self.certify not in CERTIFICATIONS:
            raise ConfigError(f"certify must be one of {CERTIFICATIONS}, got {self.certify!r}")

    # --- derived: the adversary's size (the one definition) ------------------------------------
    @property
    def per_round(self) -> int:
        """Clients sampled (and aggregated) per round: ``clients_per_round``, or every client."""
        return self.clients_per_round or self.num_clients

    @property
    def nominal_malicious(self) -> int:
        """The scenario's malicious count whatever the attack: ``num_malicious``, or
        ``malicious_fraction · num_clients`` rounded half up (0.25 · 10 → 3; 0.5 · 5 → 3)."""
        if self.num_malicious >= 0:
            return self.num_malicious
        return math.floor(self.malicious_fraction * self.num_clients + 0.5)

    @property
    def malicious_count(self) -> int:
        """Malicious clients in the federation: the nominal count, 0 without an attack."""
        return 0 if self.attack == "none" else self.nominal_malicious

    @property
    def malicious_per_round(self) -> int:
        """Malicious clients the defender and the attack plan for in one round: the nominal
        count under full participation, else its expected share of the sample rounded up,
        ⌈nominal · per_round / num_clients⌉. It is the rule's ``f = "auto"`` unless
        ``defender_fraction`` fixes it (the same for an attack-free cell, so it runs the same
        rule as the attacked ones) and the attack's m
        (``boost = "auto"`` = n / m)."""
        if self.per_round == self.num_clients:
            return self.nominal_malicious
        return math.ceil(self.nominal_malicious * self.per_round / self.num_clients - 1e-9)

    @property
    def defender_f(self) -> int:
        """The rule's ``f = "auto"``: :attr:`malicious_per_round` when ``defender_fraction`` is
        -1, else ``defender_fraction · per_round`` rounded half up (a defender configured for a
        fixed fraction, whatever the actual attack)."""
        if self.defender_fraction < 0:
            return self.malicious_per_round
        return math.floor(self.defender_fraction * self.per_round + 0.5)

    def malicious_ids(self) -> list[int]:
        """Partition ids of the malicious clients: fixed for the run, chosen by the seed."""
        rng = np.random.default_rng([self.seed, 0x6D616C])  # "mal"
        chosen = rng.choice(self.num_clients, size=self.malicious_count, replace=False)
        return sorted(int(i) for i in chosen)

    def with_updates(self, **changes: Any) -> RunConfig:
        return replace(self, **changes)

    # --- Flower run_config ---------------------------------------------------------------
    def to_flower(self) -> dict[str, bool | int | float | str]:
        """Flat kebab-case dict of scalars, as Flower's ``run_config`` holds it."""
        out: dict[str, bool | int | float | str] = {}
        for key, value in asdict(self).items():
            out[key.replace("_", "-")] = json.dumps(value) if isinstance(value, dict) else value
        return out

    @classmethod
    def from_flower(cls, run_config: dict[str, Any], *,
                    federation_size: int | None = None) -> RunConfig:
        """Parse a Flower ``run_config``; keys that are not fields are ignored (an app may add its
        own), bad values raise :class:`ConfigError` naming the key.

        ``num-clients = 0`` (the Flower app's default) follows the federation: the number of
        clients is then ``federation_size`` (the ServerApp's connected nodes, a ClientApp's
        ``num-partitions``)."""
        if run_config.get("num-clients", run_config.get("num_clients")) == FOLLOW_FEDERATION:
            if not federation_size:
                raise ConfigError("num-clients = 0 follows the federation, whose size is unknown "
                                  "here; set num-clients")
            run_config = {**run_config, "num-clients": federation_size}
            run_config.pop("num_clients", None)
        known = {f.name: f for f in fields(cls)}
        values: dict[str, Any] = {}
        for raw_key, value in run_config.items():
            key = raw_key.replace("-", "_")
            if key not in known:
                continue
            values[key] = _coerce(key, value, cls.__dataclass_fields__[key].default)
        return cls(**values)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        """Strict construction from snake_case keys: unknown keys are errors."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"unknown run config key(s) {unknown}; valid keys: {sorted(names)}")
        defaults = cls.__dataclass_fields__
        return cls(**{k: _coerce(k, v, defaults[k].default) for k, v in data.items()})


def _coerce(key: str, value: Any, default: Any) -> Any:
    if key in ("aggregator_params", "attack_params", "certify_params"):
        if isinstance(value, dict):
            return dict(value)
        try:
            parsed = json.loads(value) if value not in ("", None) else {}
        except (TypeError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{key} must be a JSON object, got {value!r}: {exc}") from None
        if not isinstance(parsed, dict):
            raise ConfigError(f"{key} must be a JSON object, got {value!r}")
        return parsed
    kind = type(default)
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key} must be a boolean, got {value!r}")
    if isinstance(value, bool):  # `rounds = true` is not 1
        raise ConfigError(f"{key} must be of type {kind.__name__}, got {value!r}")
    try:
        if kind in (int, float) and isinstance(value, str):
            raise ValueError("a string")
        if kind is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError("not an integer")
            return int(value)
        if kind is float:
            return float(value)
        return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key} must be of type {kind.__name__}, got {value!r}") from None
