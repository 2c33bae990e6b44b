"""The colluding adversary stage (simulation only, never part of a deployed server).

It sits between the clients' replies and the aggregator, in both engines and in the simulation
ServerApp: the malicious clients trained honestly, and the adversary rewrites their rows of the
round's (n, d) update matrix with a :class:`~clients.attacks.base.ModelAttack`, knowing the benign
rows only when the attack is omniscient.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from fedshield.clients.attacks.base import AttackError, ModelAttack


def apply_model_attack(
    updates: torch.Tensor,
    malicious_mask: torch.Tensor,
    attack: ModelAttack,
    *,
    aggregator: Callable[[torch.Tensor], Any] | None = None,
    generator: torch.Generator,
) -> torch.Tensor:
    """Return a copy of ``updates`` (n, d) whose malicious rows are replaced by the attack's output
    (:func:`craft_malicious_rows`)."""
    out = updates.clone()
    mask = _check_mask(updates, malicious_mask)
    if bool(mask.any()):
        out[mask] = craft_malicious_rows(updates, mask, attack, aggregator=aggregator,
                                         generator=generator)
    return out


def craft_malicious_rows(
    updates: torch.Tensor,
    malicious_mask: torch.Tensor,
    attack: ModelAttack,
    *,
    aggregator: Callable[[torch.Tensor], Any] | None = None,
    generator: torch.Generator,
) -> torch.Tensor:
    """The attack's (f, d) rows for the malicious rows of ``updates`` (n, d), in row order.

    ``malicious_mask`` (n,) bool marks the malicious rows; n and f = mask.sum() are passed to the
    attack as ``num_clients`` and ``f``. The benign rows are passed only if
    ``attack.knowledge == "omniscient"`` (an omniscient attack in a round without benign clients is
    an :class:`AttackError`). ``aggregator`` (a callable ``rule(updates) -> Aggregation``) lets
    adaptive attacks evaluate the real rule inside their search.
    """
    if not isinstance(attack, ModelAttack):
        raise AttackError(f"apply_model_attack needs a model attack, got {type(attack).__name__}")
    mask = _check_mask(updates, malicious_mask)
    f = int(mask.sum())
    if f == 0:
        return updates[mask].clone()
    benign = updates[~mask] if attack.knowledge == "omniscient" else None
    if benign is not None and benign.shape[0] == 0:
        raise AttackError(
            f"attack {attack.name!r} is omniscient but the round has no benign update "
            f"(all {f} clients are malicious)"
        )
    return attack(updates[mask], benign, aggregator=aggregator, num_clients=updates.shape[0],
                  f=f, generator=generator)


def _check_mask(updates: torch.Tensor, malicious_mask: torch.Tensor) -> torch.Tensor:
    if not isinstance(updates, torch.Tensor) or updates.dim() != 2:
        raise AttackError("updates must be a 2-D tensor (n, d)")
    mask = torch.as_tensor(malicious_mask)
    if mask.dtype != torch.bool or mask.shape != (updates.shape[0],):
        raise AttackError(
            f"malicious_mask must be a bool tensor of shape ({updates.shape[0]},), "
            f"got {mask.dtype} {tuple(mask.shape)}"
        )
    return mask


def adversary_stage(attack: Any, rule: Any, seed: int) -> Callable[
        [int, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None:
    """The round core's ``adversary`` for a run (None unless ``attack`` is a model attack): round
    ``t`` tells the attack the round's global model (:meth:`ModelAttack.begin_round`: every
    client receives it; multi-round attacks track it), then returns :func:`craft_malicious_rows`
    with the real ``rule`` (for adaptive attacks) and the generator ``(seed, "attack", t)``; the
    core writes them into its matrix in place (no second (n, d) matrix). The inline engine and
    the simulation ServerApp use it."""
    if not isinstance(attack, ModelAttack):
        return None
    from fedshield.tasks.seeding import torch_generator

    def stage(rnd: int, updates: torch.Tensor, mask: torch.Tensor,
              global_vec: torch.Tensor) -> torch.Tensor:
        attack.begin_round(rnd, global_vec)
        return craft_malicious_rows(updates, mask, attack, aggregator=rule,
                                    generator=torch_generator(seed, "attack", rnd))

    return stage
