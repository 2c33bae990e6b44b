"""The inline engine: a whole federated run in one process, with the same client, attack,
aggregator and aggregation-step code as the Flower ServerApp/ClientApp.

One round ``t`` (1-based, as Flower's ``server_round``):

1. sample the round's clients — all of them when ``clients_per_round = 0``, else
   ``tasks.seeding.seeded_sample(range(num_clients), k, seed, "sample", t)`` (sorted);
2. every sampled client runs :func:`clients.client.client_update` (honest training, or training
   on its poisoned data for a data attack), seeded by ``(seed, "client", pid, t)``;
3. a model attack rewrites the malicious rows through the colluding adversary stage
   :func:`clients.attacks.adversary.apply_model_attack`, seeded by ``(seed, "attack", t)``;
4. :func:`server.aggregation.robust_step` aggregates (with FLTrust's server reference update
   when the rule needs one) and applies ``global += server_lr · update``;
5. every ``eval_every`` rounds and at the last round: clean test accuracy and loss, and the
   attack success rate on the attack's ``asr_inputs`` (``server.evaluation.GlobalEvaluator``,
   the evaluator of the ServerApp).

Each round yields a metrics row (see :mod:`simulations.metrics` for the definitions).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from tasks.config import RunConfig
from tasks.seeding import seeded_sample


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


def build_attack(cfg: RunConfig, dataset: Any) -> Any:
    """The scenario's attack object, or None for ``attack = "none"`` / no malicious client
    (``clients.attacks.attack_from_config``)."""
    from clients.attacks import attack_from_config

    return attack_from_config(cfg, dataset)


def server_reference(task: Any, global_vec: torch.Tensor, server_round: int,
                     cfg: RunConfig) -> torch.Tensor:
    """FLTrust's server update on the root set (the one implementation lives in server/)."""
    from server.reference import reference_update

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
    from clients.client import ClientUpdate, client_update, local_data, update_boost

    if not task.batched or len(pids) < 2:
        updates = torch.empty(len(pids), task.layout.numel, dtype=torch.float32)
        replies = []
        for row, pid in zip(updates, pids, strict=True):
            reply = client_update(task, pid, global_vec, rnd, cfg=cfg, attack=attacks.get(pid))
            row.copy_(reply.delta)
            replies.append(ClientUpdate(delta=row, num_examples=reply.num_examples,
                                        loss=reply.loss))
        return RoundUpdates(updates=updates, replies=replies)
    from tasks.seeding import torch_generator
    from tasks.training import train_many

    data = [local_data(task, pid, rnd, attack=attacks.get(pid), cfg=cfg) for pid in pids]
    gens = [torch_generator(cfg.seed, "client", pid, rnd) for pid in pids]
    start = global_vec.to(torch.float32)
    result = train_many(task.template_model(), data, task.train_config, gens, start=start)
    updates = result.params.sub_(start)  # (K, d) in place: row k = client k's local − global
    replies = []
    for pid, delta, stats in zip(pids, updates, result.stats, strict=True):
        boost = update_boost(attacks.get(pid), cfg)
        if boost != 1.0:
            delta.mul_(boost)
        replies.append(ClientUpdate(delta=delta, num_examples=stats.num_examples,
                                    loss=stats.loss))
    return RoundUpdates(updates=updates, replies=replies)


@dataclass
class _Run:
    """What every round of a run shares."""

    cfg: RunConfig
    task: Any
    rule: Any
    data_attack: Any
    model_attack: Any
    malicious: set[int]
    evaluator: Any


def run_inline(cfg: RunConfig, *,
               on_round: Callable[[dict[str, Any]], None] | None = None) -> RunResult:
    """Run ``cfg`` to the end in this process and return its rounds and final vector."""
    import aggregators
    from server.evaluation import GlobalEvaluator
    from tasks.task import get_task

    start = time.perf_counter()
    task = get_task(cfg)
    rule = aggregators.create(cfg.aggregator, **cfg.aggregator_params)
    attack = build_attack(cfg, task.dataset)
    run = _Run(cfg=cfg, task=task, rule=rule,
               data_attack=attack if attack is not None and attack.kind == "data" else None,
               model_attack=attack if attack is not None and attack.kind == "model" else None,
               malicious=set(cfg.malicious_ids()) if attack is not None else set(),
               evaluator=GlobalEvaluator(task, attack))
    global_vec = task.initial_vector().clone()
    rows: list[dict[str, Any]] = []
    for rnd in range(1, cfg.rounds + 1):
        row, global_vec = run_round(run, rnd, global_vec)
        rows.append(row)
        if on_round is not None:
            on_round(row)
        if row["diverged"]:
            break
    return RunResult(rounds=rows, final_vector=global_vec, malicious_ids=sorted(run.malicious),
                     seconds=time.perf_counter() - start)


def run_round(run: _Run, rnd: int, global_vec: torch.Tensor) -> tuple[dict[str, Any],
                                                                       torch.Tensor]:
    """One round: its metrics row and the new global vector. The round's (n, d) update matrix
    lives in this frame only, so it is freed before the next round trains."""
    from clients.attacks.adversary import apply_model_attack
    from server.aggregation import robust_step
    from server.validation import Reason, cap_num_examples
    from tasks.seeding import torch_generator

    cfg, rule, malicious = run.cfg, run.rule, run.malicious
    t_round = time.perf_counter()
    pids = sample_clients(cfg, rnd)
    trained = train_round(run.task, pids, global_vec, rnd, cfg,
                          {pid: run.data_attack for pid in pids if pid in malicious})
    t_train = time.perf_counter() - t_round
    updates = trained.updates
    num_examples = [r.num_examples for r in trained.replies]
    losses = [r.loss for r in trained.replies]
    del trained  # the replies' deltas are views of `updates`: keep no other reference
    mask = torch.tensor([pid in malicious for pid in pids], dtype=torch.bool)
    if run.model_attack is not None and bool(mask.any()):
        updates = apply_model_attack(updates, mask, run.model_attack, aggregator=rule,
                                     generator=torch_generator(cfg.seed, "attack", rnd))
    finite = finite_rows(updates)
    dropped = len(pids) - int(finite.sum())
    if dropped:
        keep = finite.tolist()
        pids = [p for p, k in zip(pids, keep, strict=True) if k]
        num_examples = [n for n, k in zip(num_examples, keep, strict=True) if k]
        losses = [loss for loss, k in zip(losses, keep, strict=True) if k]
        updates, mask = updates[finite], mask[finite]
    checks = {"rejected": dropped,
              "rejected_by_reason": {str(Reason.NON_FINITE): dropped} if dropped else {},
              "skipped": False, "skip_reason": "", "diverged": False}
    if dropped and len(pids) < rule.min_clients():  # (a round too small as configured raises)
        checks.update(skipped=True, diverged=not pids,
                      skip_reason=f"{len(pids)} valid rows, rule {rule.name!r} needs "
                                  f"{rule.min_clients()}; global model kept")
        row = {**skipped_row(rnd, pids, mask, losses), **checks}
    else:
        reference = (server_reference(run.task, global_vec, rnd, cfg)
                     if getattr(rule, "needs_reference", False) else None)
        weights = torch.tensor(cap_num_examples(num_examples), dtype=torch.float32)
        step = robust_step(global_vec, updates, rule, server_lr=cfg.server_lr,
                           reference=reference, weights=weights, client_ids=pids)
        row = {**round_row(rnd, pids, mask, updates, step, rule, losses), **checks}
        if bool(torch.isfinite(step.new_vec).all()):
            global_vec = step.new_vec
        else:
            row.update(diverged=True, skip_reason="the new global model is not finite; "
                                                  "last finite model kept, run stopped")
    row["train_seconds"] = t_train
    if rnd % cfg.eval_every == 0 or rnd == cfg.rounds or row["diverged"]:
        row.update(run.evaluator(global_vec))
    row["round_seconds"] = time.perf_counter() - t_round
    return row, global_vec


def finite_rows(updates: torch.Tensor) -> torch.Tensor:
    """(n,) bool: which rows hold no NaN/±Inf — one pass, no (n, d) temporary (a float64 sum of
    float32 values cannot overflow, so it is finite iff every value is; as
    ``server.validation.stack_updates``)."""
    if updates.numel() == 0:
        return torch.ones(updates.shape[0], dtype=torch.bool)
    return torch.isfinite(updates.sum(dim=1, dtype=torch.float64))


def skipped_row(rnd: int, pids: list[int], mask: torch.Tensor,
                losses: list[float]) -> dict[str, Any]:
    """The metrics row of a round that aggregated nothing (too few valid rows)."""
    benign_losses = [loss for loss, m in zip(losses, mask.tolist(), strict=True) if not m]
    return {
        "round": rnd, "clients": len(pids),
        "malicious_in_round": [p for p, m in zip(pids, mask.tolist(), strict=True) if m],
        "accepted": None, "malicious_share": None, "share_kind": "none",
        "aggregation_seconds": None, "update_norm": None,
        "train_loss": sum(benign_losses) / len(benign_losses) if benign_losses else None,
        "accuracy": None, "loss": None, "asr": None,
        "precision": None, "recall": None, "fpr": None,
        "norm_benign": None, "norm_malicious": None, "norm_max": None,
    }


def round_row(rnd: int, pids: list[int], mask: torch.Tensor, updates: torch.Tensor,
              step: Any, rule: Any, losses: list[float]) -> dict[str, Any]:
    """The per-round metrics that do not need an evaluation pass (``losses``: the clients'
    mean training losses, in ``pids`` order)."""
    from simulations import metrics

    agg = step.aggregation
    share, share_kind = metrics.malicious_share(agg, updates, mask, rule.name, rule.params())
    benign_losses = [loss for loss, m in zip(losses, mask.tolist(), strict=True) if not m]
    row: dict[str, Any] = {
        "round": rnd,
        "clients": len(pids),
        "malicious_in_round": [p for p, m in zip(pids, mask.tolist(), strict=True) if m],
        "accepted": None if agg.accepted is None else [int(v) for v in agg.accepted.tolist()],
        "malicious_share": share,
        "share_kind": share_kind,
        "aggregation_seconds": float(step.seconds),
        "update_norm": float(torch.linalg.vector_norm(agg.update.double())),
        "train_loss": sum(benign_losses) / len(benign_losses) if benign_losses else None,
        "accuracy": None, "loss": None, "asr": None,
    }
    det = metrics.detection(agg.accepted, mask)
    row.update({k: det[k] for k in ("precision", "recall", "fpr")})
    row.update(metrics.norm_stats(updates, mask))
    return row
