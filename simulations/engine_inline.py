"""The inline engine: a whole federated run in one process, with the same client, attack,
aggregator and round-core code as the Flower ServerApp/ClientApp.

One round ``t`` (1-based, as Flower's ``server_round``) is "train, then the round core":

1. sample the round's clients — all of them when ``clients_per_round = 0``, else
   ``tasks.seeding.seeded_sample(range(num_clients), k, seed, "sample", t)`` (sorted);
2. every sampled client runs :func:`fedshield.clients.client.client_update` (honest training,
   or training on its poisoned data for a data attack), seeded by ``(seed, "client", pid, t)``,
   batched with ``torch.func.vmap`` where the model allows;
3. :class:`fedshield.server.round.RoundCore` does everything after: non-finite rows, the
   colluding adversary stage (``(seed, "attack", t)``), the too-few-clients skip, FLTrust's
   reference, the rule, the step, divergence (the last finite model is kept and the run goes on,
   as on the server), shares, detection, norms and losses;
4. every ``eval_every`` rounds and at the last round: clean test accuracy and loss, and the
   attack success rate (``server.evaluation.GlobalEvaluator``, the evaluator of the ServerApp).

Each round's row is the core's :meth:`~fedshield.server.round.RoundRecord.row` plus the
evaluation and wall-clock keys, the same row the ServerApp writes to ``rounds.jsonl``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from fedshield.server.round import ClientRow, Hooks
from fedshield.tasks.config import RunConfig
from fedshield.tasks.seeding import seeded_sample


@dataclass
class RunResult:
    """What an engine returns: per-round metric rows and the final global parameter vector."""

    rounds: list[dict[str, Any]]
    final_vector: torch.Tensor
    malicious_ids: list[int] = field(default_factory=list)
    seconds: float = 0.0


def sample_clients(cfg: RunConfig, server_round: int) -> list[int]:
    """Partition ids taking part in ``server_round`` (sorted): all of them when
    ``clients_per_round = 0``, else ``tasks.seeding.seeded_sample`` with parts
    ``(seed, "sample", round)`` — the draw ``RobustStrategy.configure_train`` makes over node ids.

    Under partial participation the two engines therefore sample the same *positions* but not
    the same partitions (Flower's node ids are random, not partition ids): engine parity holds
    for full participation, and statistically otherwise."""
    if cfg.clients_per_round in (0, cfg.num_clients):
        return list(range(cfg.num_clients))
    return seeded_sample(range(cfg.num_clients), cfg.clients_per_round, cfg.seed, "sample",
                         server_round)


def server_reference(task: Any, global_vec: torch.Tensor, server_round: int,
                     cfg: RunConfig) -> torch.Tensor:
    """FLTrust's server update on the root set (the one implementation lives in server/)."""
    from fedshield.server.reference import reference_update

    return reference_update(task, global_vec, server_round, cfg)


@dataclass
class RoundUpdates:
    """What a round's clients return: ``updates`` (K, d) float32 — row k is the delta of client
    ``pids[k]``, the matrix the server aggregates (one allocation, no stacked copy) — and the
    per-client :class:`clients.client.ClientUpdate` whose ``delta`` is a view of that row."""

    updates: torch.Tensor
    replies: list[Any]


def train_round(task: Any, pids: list[int], global_vec: torch.Tensor, rnd: int, cfg: RunConfig,
                attacks: dict[int, Any]) -> RoundUpdates:
    """Every sampled client's update for the round, as one (K, d) matrix.

    Models that ``tasks.training.train_many`` vmaps (MLP, logreg: a several-fold speed-up on CPU)
    train all clients at once on the data ``clients.client.local_data`` gives each (poisoned
    for a data attacker), with the same per-client generators as ``client_update``; the
    delta is then scaled by the attack's boost exactly as ``client_update`` does. The template
    model and the honest clients' data are the Task's per-process caches; the update matrix is
    ``train_many``'s (K, d) result itself, turned into deltas in place (bit-identical to
    ``params − start``). Other models call ``client_update`` per client, each delta written
    into its row of a preallocated (K, d) matrix.
    """
    from fedshield.clients.client import (
        ClientUpdate,
        client_update,
        finish_delta,
        gradient_mask,
        local_data,
    )

    if not task.batched or len(pids) < 2:
        updates = torch.empty(len(pids), task.layout.numel, dtype=torch.float32)
        replies = []
        for row, pid in zip(updates, pids, strict=True):
            reply = client_update(task, pid, global_vec, rnd, cfg=cfg, attack=attacks.get(pid))
            row.copy_(reply.delta)
            replies.append(ClientUpdate(delta=row, num_examples=reply.num_examples,
                                        loss=reply.loss))
        return RoundUpdates(updates=updates, replies=replies)
    from fedshield.tasks.seeding import torch_generator
    from fedshield.tasks.training import train_many

    data = [local_data(task, pid, rnd, attack=attacks.get(pid), cfg=cfg, global_vec=global_vec)
            for pid in pids]
    gens = [torch_generator(cfg.seed, "client", pid, rnd) for pid in pids]
    start = global_vec.to(torch.float32)
    masks = [gradient_mask(attacks.get(pid), cfg, pid, global_vec) for pid in pids]
    result = train_many(task.template_model(), data, task.train_config, gens, start=start,
                        grad_masks=masks)
    updates = result.params.sub_(start)  # (K, d) in place: row k = client k's local − global
    replies = []
    for pid, delta, stats in zip(pids, updates, result.stats, strict=True):
        finished = finish_delta(attacks.get(pid), cfg, delta, start)
        if finished is not delta:
            delta.copy_(finished)
        replies.append(ClientUpdate(delta=delta, num_examples=stats.num_examples,
                                    loss=stats.loss))
    return RoundUpdates(updates=updates, replies=replies)


def _indicator(rule: Any, task: Any, cfg: RunConfig) -> Any | None:
    """BackdoorIndicator's planter, bound to the rule's detector, when the rule composes one."""
    from fedshield.server.indicator import IndicatorPlanter, indicator_detector

    detector = indicator_detector(rule)
    if detector is None:
        return None
    planter = IndicatorPlanter(task, cfg.dataset, detector.params(), cfg.seed)
    detector.bind(planter.check)
    return planter


def run_inline(cfg: RunConfig, *, on_round: Callable[[dict[str, Any]], None] | None = None,
               hooks: Hooks | None = None, clients: list[int] | None = None,
               post_step: Callable[[int, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
               | None = None) -> RunResult:
    """Run ``cfg`` to the end in this process and return its rounds and final vector.
    ``hooks``: explicit timing hooks (:class:`fedshield.server.round.Hooks`) for benchmarks;
    ``clients``: train only these partition ids (one FLCert group), every one every round;
    ``post_step``: (round, new global) -> (the model evaluated this round, the model the next
    round starts from) — CRFL's clipping and noise."""
    from fedshield import aggregators
    from fedshield.clients.attacks import attack_from_config
    from fedshield.clients.attacks.adversary import adversary_stage
    from fedshield.server.evaluation import GlobalEvaluator
    from fedshield.server.round import NoHooks, RoundCore, require_round_size
    from fedshield.tasks.device import aggregation_device
    from fedshield.tasks.task import get_task

    start = time.perf_counter()
    hooks = hooks or NoHooks()
    task = get_task(cfg)
    rule = aggregators.create(cfg.aggregator, **cfg.aggregator_params)
    require_round_size(rule, cfg.per_round if clients is None else len(clients))
    attack = attack_from_config(cfg, task.dataset)
    fakes = cfg.malicious_count if getattr(attack, "fake", False) else 0
    malicious = set() if fakes else set(cfg.malicious_ids())
    core = RoundCore(
        rule, server_lr=cfg.server_lr, adversary=adversary_stage(attack, rule, cfg.seed),
        reference_fn=(lambda rnd, g: server_reference(task, g, rnd, cfg))
        if rule.needs_reference else None, hooks=hooks, hashes=False, fake_clients=fakes,
        fake_first_id=cfg.num_clients, device=aggregation_device(cfg.device))
    evaluator = GlobalEvaluator(task, attack if malicious else None)
    planter = _indicator(rule, task, cfg)
    data_attack = attack if attack is not None and attack.kind == "data" else None
    global_vec = task.initial_vector().clone()
    rows: list[dict[str, Any]] = []
    for rnd in range(1, cfg.rounds + 1):
        t_round = time.perf_counter()
        pids = sample_clients(cfg, rnd) if clients is None else sorted(clients)
        active = not cfg.attack_stop or rnd <= cfg.attack_stop  # attackers honest after stop
        attacking = malicious if active else set()
        if planter is not None:  # BackdoorIndicator: the round's global model is the planted one
            with hooks.phase("train"):
                global_vec = planter.plant(global_vec, rnd)
        with hooks.phase("train"):
            trained = train_round(task, pids, global_vec, rnd, cfg,
                                  {pid: data_attack for pid in pids if pid in attacking})
        t_train = time.perf_counter() - t_round
        client_rows = [
            ClientRow(client_id=pid, partition_id=pid, malicious=pid in attacking,
                      num_examples=float(r.num_examples), train_loss=float(r.loss), index=k)
            for k, (pid, r) in enumerate(zip(pids, trained.replies, strict=True))]
        record = core.run(rnd, global_vec, trained.updates, client_rows,
                          fake_clients=fakes if active else 0)
        del trained  # the round's (n, d) matrix is freed before the next round trains
        global_vec = evaluated = record.new_vec
        if post_step is not None:
            evaluated, global_vec = post_step(rnd, global_vec)
        row = {**record.row(), "accuracy": None, "loss": None, "asr": None,
               "train_seconds": t_train}
        if cfg.attack_stop:
            row["attack_active"] = active
        if rnd % cfg.eval_every == 0 or rnd in (cfg.rounds, cfg.attack_stop):
            with hooks.phase("eval"):
                row.update(evaluator(evaluated))
        row["round_seconds"] = time.perf_counter() - t_round
        rows.append(row)
        if on_round is not None:
            on_round(row)
    attackers = sorted(malicious) or list(range(cfg.num_clients, cfg.num_clients + fakes))
    return RunResult(rounds=rows, final_vector=evaluated, malicious_ids=attackers,
                     seconds=time.perf_counter() - start)
