"""fedshield's Flower ServerApp: ``RobustStrategy`` driven by the run's ``RunConfig``.

``flwr run .`` (simulation) or ``flwr run . <connection>`` (deployment) starts it; every knob is a
``[tool.flwr.app.config]`` key (``tasks.config.RunConfig`` in kebab-case), overridable with
``--run-config "aggregator='krum' aggregator-params='{\\"f\\": 2}' rounds=3"``. One extra key,
``resume`` (bool, default false), is read here and is not part of ``RunConfig``.

What one run does:

- builds the task (``tasks.task.get_task``), the rule (``aggregators.create``), and — when the run
  has an attack — the attack object (lazily from ``clients.attacks``): a *model* attack becomes the
  simulation's colluding adversary stage (``clients.attacks.adversary.apply_model_attack``
  between the replies and the rule, on the rows whose ClientApp reported ``malicious=True``,
  seeded by ``(seed, "attack", round)``); a *data* attack runs inside the malicious
  ClientApps and here only provides the backdoor test inputs (ASR). A production
  deployment keeps ``attack='none'``;
- samples ``clients_per_round`` nodes per round (all when 0) with ``(seed, "sample", round)``, waits
  for ``num_clients`` nodes to be connected;
- FLTrust-style rules get the server's root-data update (``server.reference``) every round;
- evaluates the global model on the test set every ``eval_every`` rounds and at the last round.

Files, when ``output_dir`` is set (use an absolute path in deployment: the ServerApp process's
working directory is the SuperLink's):

- ``ledger.jsonl``   hash-chained audit rows (``server.ledger``): a ``start`` row (run config, rule,
  initial model hash), a ``round`` row per round (``RobustStrategy`` report), ``resume`` rows;
- ``checkpoints/round-NNNNNN.pt`` the global model after each round (``server.checkpoint``);
- ``rounds.jsonl``   one JSON row per round, appended after the round's evaluation: the round
  core's :meth:`fedshield.server.round.RoundRecord.row` (the same row the inline engine yields)
  plus ``accuracy``, ``loss``, ``asr`` (null when not evaluated) and ``round_seconds``. The
  per-valid-row lists are in aggregation order: sorted by (partition id, node id).
- ``final.pt``       ``torch.save`` of the final global vector, a (d,) float32 tensor.

Data: the apps are the installed ``fedshield`` package's, and so is its vendored MNIST: neither
``digits`` nor ``mnist`` needs a ``data-root``.

Resume (``resume=true``): if ``output_dir/checkpoints`` holds a checkpoint of the same model, the
run continues after its round from its vector (rounds, seeds and sampling continue as if
uninterrupted; a stateful rule's state is restored), appending to the ledger (a ``resume`` row)
and to ``rounds.jsonl``. Rows of rounds after the checkpoint (a crash between the row and the
checkpoint) are dropped from ``rounds.jsonl`` so every round appears once; the ledger keeps
them (append-only). Without ``resume``, an ``output_dir`` that already holds a ledger is
refused (``ServerAppError``).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict
from logging import INFO
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, Context, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp

from fedshield import aggregators
from fedshield.server.checkpoint import CheckpointStore, atomic_torch_save, check_compatible
from fedshield.server.evaluation import GlobalEvaluator
from fedshield.server.ledger import Ledger, tensor_hash
from fedshield.server.reference import reference_update
from fedshield.server.round import require_round_size
from fedshield.server.strategy import RobustStrategy
from fedshield.tasks.config import ConfigError, RunConfig
from fedshield.tasks.params import arrayrecord_to_vector, to_arrayrecord
from fedshield.tasks.task import get_task


class ServerAppError(ValueError):
    """The ServerApp cannot start with this configuration / output_dir."""


app = ServerApp()
NODE_WAIT_SECONDS = 300.0  # a federation smaller than num-clients fails after this, not never


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = RunConfig.from_flower(context.run_config)
    resume = context.run_config.get("resume", False)
    if not isinstance(resume, bool):
        raise ServerAppError(f"resume must be a boolean, got {resume!r}")
    run_server(grid, cfg, resume=resume)


def build_attack(cfg: RunConfig, dataset: Any) -> Any | None:
    """The run's attack (the one builder, ``clients.attacks.attack_from_config``), None for
    attack='none'. Simulation-only: imported lazily, a deployment keeps attack='none'."""
    if cfg.attack == "none":
        return None
    from fedshield.clients.attacks import attack_from_config

    return attack_from_config(cfg, dataset)


def _adversary(cfg: RunConfig, attack: Any, rule: aggregators.Rule):
    if attack is None or attack.kind != "model":
        return None
    from fedshield.clients.attacks.adversary import adversary_stage

    return adversary_stage(attack, rule, cfg.seed)


def run_server(grid: Grid, cfg: RunConfig, *, resume: bool = False) -> torch.Tensor:
    """Run ``cfg`` on ``grid``; returns the final global vector (also written to final.pt)."""
    task = get_task(cfg)
    rule = aggregators.create(cfg.aggregator, **cfg.aggregator_params)
    per_round = cfg.per_round
    try:
        require_round_size(rule, per_round)
    except ConfigError as exc:
        raise ServerAppError(str(exc)) from None
    attack = build_attack(cfg, task.dataset)
    out = Path(cfg.output_dir) if cfg.output_dir else None
    start_vec, done = task.initial_vector().clone(), 0
    ledger = store = None
    rounds_path = None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        rounds_path = out / "rounds.jsonl"
        store = CheckpointStore(out / "checkpoints")
        if (out / "ledger.jsonl").exists() and not resume:
            raise ServerAppError(
                f"output_dir {str(out)!r} already holds a run (ledger.jsonl); pass resume=true "
                "to continue it or choose another output_dir"
            )
        ledger = Ledger(out / "ledger.jsonl")
    strategy = RobustStrategy(
        rule, server_lr=cfg.server_lr,
        reference_fn=(lambda rnd, g: reference_update(task, g, rnd, cfg))
        if rule.needs_reference else None,
        adversary=_adversary(cfg, attack, rule), ledger=ledger, checkpoints=store,
        sample_seed=cfg.seed,
        fraction_train=per_round / cfg.num_clients, min_train_nodes=per_round,
        min_available_nodes=cfg.num_clients, fraction_evaluate=0.0,
        node_wait_timeout=NODE_WAIT_SECONDS,
    )
    ckpt = store.latest() if (resume and store is not None) else None
    if ckpt is not None:
        check_compatible(ckpt, list(task.layout.keys), [list(s) for s in task.layout.shapes],
                         cfg.rounds)
        start_vec, done = ckpt.vector.clone(), ckpt.round
        strategy.restore(ckpt)
        _truncate_rows(rounds_path, done)
        ledger.append({"kind": "resume", "from_round": done, "model_hash": tensor_hash(start_vec)})
        log(INFO, "Resuming from checkpoint of round %s", done)
    elif ledger is not None:
        ledger.append({"kind": "start", "config": _config_json(cfg), "rule": rule.name,
                       "rule_params": rule.params(), "model_hash": tensor_hash(start_vec)})
    final = start_vec
    if done < cfg.rounds:
        evaluate_fn = _evaluate_fn(cfg, task, attack, strategy, rounds_path)
        strategy.start(grid, to_arrayrecord(start_vec, task.layout), num_rounds=cfg.rounds - done,
                       evaluate_fn=evaluate_fn)
        final = strategy.latest_vec if strategy.latest_vec is not None else start_vec
    if out is not None:
        atomic_torch_save(final.detach().to(torch.float32).clone(), out / "final.pt")
    return final


def _evaluate_fn(cfg: RunConfig, task: Any, attack: Any, strategy: RobustStrategy,
                 rounds_path: Path | None):
    evaluator = GlobalEvaluator(task, attack)
    clock = {"t": time.perf_counter()}

    def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        if server_round == 0:  # Flower's pre-training call: no row (the rounds start at 1)
            clock["t"] = time.perf_counter()
            return None
        rnd = server_round + strategy.round_offset
        metrics: dict[str, float | None] = {"accuracy": None, "loss": None, "asr": None}
        if rnd % cfg.eval_every == 0 or rnd == cfg.rounds:
            metrics = evaluator(arrayrecord_to_vector(arrays, task.layout))
        record = strategy.records.get(rnd)
        row = {**(record.row() if record is not None else {"round": rnd}), **metrics}
        now = time.perf_counter()
        row["round_seconds"], clock["t"] = now - clock["t"], now
        if rounds_path is not None:
            with open(rounds_path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(row, allow_nan=False) + "\n")
        values = {k: v for k, v in metrics.items() if v is not None}
        return MetricRecord(values) if values else None

    return evaluate_fn


def _truncate_rows(path: Path | None, last_round: int) -> None:
    if path is None or not path.exists():
        return
    keep = [line for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip() and json.loads(line).get("round", 0) <= last_round]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(line + "\n" for line in keep), encoding="utf-8")
    os.replace(tmp, path)


def _config_json(cfg: RunConfig) -> dict[str, Any]:
    return json.loads(json.dumps(asdict(cfg), default=str))
