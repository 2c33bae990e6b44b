"""What one client does in a round: local training from the global model, on its own partition
(honest) or on poisoned data (a data-poisoning attack), returning the delta local − global.

Used by the Flower ClientApp and by the inline engine, so both engines compute the same update:

    x, y   = task.client_data(pid)                     (poisoned: attack.poison(x, y, g_p))
    w      = global_vec;  train(w, x, y, task.train_config, generator=g)
    delta  = (w − global_vec) · boost                            (boost = attack.boost, else 1)

with g = ``torch_generator(cfg.seed, "client", pid, round)`` (the project's seeding convention) and
g_p = ``torch_generator(cfg.seed, "client", pid, round, "poison")`` — a separate stream, so a
poisoned client draws exactly the batches it would have drawn honestly. A symbolic boost
("auto" = n/m, "n") created without the round's counts is bound here from ``cfg``
(``cfg.per_round``, ``cfg.malicious_per_round``: the run config's one definition). A
model-poisoning attack passed here is ignored: those clients train honestly and the adversary stage
(:func:`clients.attacks.apply_model_attack`) rewrites their updates afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from fedshield.clients.attacks.base import AttackError, DataAttack, ModelAttack
from fedshield.tasks.params import flatten, load_vector
from fedshield.tasks.seeding import torch_generator
from fedshield.tasks.training import train

__all__ = ["ClientError", "ClientUpdate", "client_update", "local_data"]


class ClientError(ValueError):
    """Bad input to a client's update (the message names it)."""


@dataclass(frozen=True)
class ClientUpdate:
    """``delta`` (d,) float32 = local − global (boosted for a data attack with boost ≠ 1);
    ``num_examples`` the partition size (FedAvg's weight); ``loss`` the mean training loss."""

    delta: torch.Tensor
    num_examples: int
    loss: float


def _data_attack(attack: Any, cfg: Any) -> DataAttack | None:
    """The data attack to apply (None for honest / model-attack clients), its symbolic boost
    bound to the run's round counts if still pending."""
    if attack is None or isinstance(attack, ModelAttack):
        return None
    if not isinstance(attack, DataAttack):
        raise AttackError(
            f"attack must be a DataAttack, a ModelAttack or None, got {type(attack).__name__}"
        )
    if attack.boost_pending:
        attack.bind(cfg.per_round, max(1, cfg.malicious_per_round))
    return attack


def local_data(
    task: Any, pid: int, round: int, *, attack: DataAttack | ModelAttack | None, cfg: Any,
    global_vec: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The (x, y) client ``pid`` trains on in ``round``: its partition, poisoned by a data attack
    with the generator ``(cfg.seed, "client", pid, round, "poison")``; the attack is seen from
    the client's position among the run's malicious clients (DBA gives each its piece)."""
    x, y = task.client_data(pid)
    view = attack_view(attack, cfg, pid)
    if view is None:
        return x, y
    if global_vec is not None:
        view.prepare(task, global_vec, x, y, torch_generator(cfg.seed, "attack", round, "prepare"))
    return view.poison(x, y, torch_generator(cfg.seed, "client", pid, round, "poison"))


def attack_view(attack: DataAttack | ModelAttack | None, cfg: Any,
                pid: int) -> DataAttack | None:
    """The data attack as client ``pid`` runs it (its position among the run's malicious
    clients: DBA gives each its piece); None for honest clients and model attacks."""
    data_attack = _data_attack(attack, cfg)
    if data_attack is None:
        return None
    malicious = cfg.malicious_ids()
    return data_attack.for_client(malicious.index(pid) if pid in malicious else 0)


def gradient_mask(attack: DataAttack | ModelAttack | None, cfg: Any, pid: int,
                  global_vec: torch.Tensor) -> torch.Tensor | None:
    """The mask client ``pid``'s every gradient step is multiplied by (Neurotoxin), or None."""
    view = attack_view(attack, cfg, pid)
    return None if view is None else view.gradient_mask(global_vec)


def finish_delta(attack: DataAttack | ModelAttack | None, cfg: Any, delta: torch.Tensor,
                 global_vec: torch.Tensor) -> torch.Tensor:
    """A data attacker's trained delta as it sends it (``DataAttack.finish``: the boost of model
    replacement, Neurotoxin's mask and norm ball); honest clients' and model attackers' deltas
    unchanged (a model attack acts in the adversary stage). May work in place."""
    data_attack = _data_attack(attack, cfg)
    return delta if data_attack is None else data_attack.finish(delta, global_vec)


def client_update(
    task: Any,
    pid: int,
    global_vec: torch.Tensor,
    round: int,
    *,
    attack: DataAttack | ModelAttack | None,
    cfg: Any,
) -> ClientUpdate:
    """Train the task's model from ``global_vec`` on client ``pid``'s data (see the module
    docstring) and return its delta; ``global_vec`` is not modified. The model is the process's
    scratch copy, loaded with ``global_vec`` in full (parameters and buffers): no
    initialisation per client."""
    if not isinstance(global_vec, torch.Tensor) or global_vec.dim() != 1:
        shape = tuple(global_vec.shape) if isinstance(global_vec, torch.Tensor) else global_vec
        raise ClientError(f"global_vec must be a 1-D tensor (d,), got {shape!r}")
    x, y = local_data(task, pid, round, attack=attack, cfg=cfg, global_vec=global_vec)
    model = task.scratch_model("client")  # reused: every parameter and buffer is overwritten
    load_vector(model, global_vec.to(torch.float32))
    stats = train(
        model, x, y, task.train_config, generator=torch_generator(cfg.seed, "client", pid, round),
        grad_mask=gradient_mask(attack, cfg, pid, global_vec),
    )
    delta = finish_delta(attack, cfg, flatten(model) - global_vec.to(torch.float32), global_vec)
    return ClientUpdate(delta=delta, num_examples=stats.num_examples, loss=stats.loss)
