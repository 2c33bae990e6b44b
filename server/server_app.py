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

Durability: the ledger is signed with the server's Ed25519 ledger key, kept outside the output
directory (run config ``ledger-key``, else ``$FEDSHIELD_LEDGER_KEY``, else
``~/.fedshield/ledger-key.pem``, created 0600 on first use); ``ledger.pub`` is written beside the
ledger. Each round commits its ledger row, its ``rounds.jsonl`` row, then its checkpoint (the
commit point; see :mod:`fedshield.server.checkpoint`).

Resume (``resume=true``): the run continues after the latest readable checkpoint, from its vector
and its rule state (rounds, seeds and sampling continue as if uninterrupted). Ledger rows and
``rounds.jsonl`` rows past that checkpoint belong to a round that was never committed: they are
cut (the ledger's go to ``ledger.jsonl.uncommitted``) and the round is redone, so both files end
as an uninterrupted run's, the ledger with one ``resume`` row more. A ``resume=true`` whose
output_dir holds a run but no usable checkpoint is refused; ``restart=true`` moves the old run
aside (``previous-<time>/``) and starts afresh. Without either, an ``output_dir`` that already
holds a ledger is refused (``ServerAppError``).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from logging import INFO, WARNING
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, Context, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp

from fedshield import aggregators
from fedshield.clients.client_app import TRIGGER_KEY
from fedshield.server.checkpoint import (
    CheckpointError,
    CheckpointStore,
    RowLog,
    atomic_torch_save,
    check_compatible,
)
from fedshield.server.evaluation import GlobalEvaluator
from fedshield.server.ledger import Ledger, LedgerError, key_path, load_or_create_key, tensor_hash
from fedshield.server.reference import reference_update
from fedshield.server.round import require_round_size
from fedshield.server.strategy import RobustStrategy
from fedshield.tasks.config import FOLLOW_FEDERATION, ConfigError, RunConfig
from fedshield.tasks.device import aggregation_device
from fedshield.tasks.params import arrayrecord_to_vector, to_arrayrecord
from fedshield.tasks.task import get_task


class ServerAppError(ValueError):
    """The ServerApp cannot start with this configuration / output_dir."""


app = ServerApp()
NODE_WAIT_SECONDS = 300.0  # a federation smaller than num-clients fails after this, not never


#: run-config keys the ServerApp reads besides RunConfig's, with their defaults
SERVER_APP_KEYS: dict[str, bool | str] = {"resume": False, "restart": False, "ledger-key": ""}


def app_pyproject() -> dict[str, Any]:
    """The Flower app of the installed package: its components and every RunConfig key (plus
    the ServerApp's own keys) with its default, as ``flwr run`` needs them."""
    return {
        "build-system": {"requires": ["setuptools>=68"], "build-backend": "setuptools.build_meta"},
        "project": {"name": "fedshield-app", "version": "0.0.0", "dependencies": []},
        "tool": {"flwr": {"app": {
            "publisher": "fedshield",
            "fab-include": ["pyproject.toml"],
            "components": {"serverapp": "fedshield.server.server_app:app",
                           "clientapp": "fedshield.clients.client_app:app"},
            "config": {**RunConfig().to_flower(), "num-clients": FOLLOW_FEDERATION,
                       **SERVER_APP_KEYS},
        }}},
    }


def write_app(app_dir: Path) -> Path:
    """Write :func:`app_pyproject` into ``app_dir`` (created); returns it."""
    import tomli_w

    app_dir.mkdir(parents=True, exist_ok=True)
    (app_dir / "pyproject.toml").write_text(tomli_w.dumps(app_pyproject()))
    return app_dir


@app.main()
def main(grid: Grid, context: Context) -> None:
    follow = context.run_config.get("num-clients") == FOLLOW_FEDERATION
    cfg = RunConfig.from_flower(context.run_config,
                                federation_size=federation_size(grid) if follow else None)
    extra = {key: context.run_config.get(key, default)
             for key, default in SERVER_APP_KEYS.items()}
    for key, default in SERVER_APP_KEYS.items():
        if type(extra[key]) is not type(default):
            raise ServerAppError(f"{key} must be a {type(default).__name__}, got {extra[key]!r}")
    run_server(grid, cfg, resume=bool(extra["resume"]), restart=bool(extra["restart"]),
               ledger_key=str(extra["ledger-key"]) or None)


def build_attack(cfg: RunConfig, dataset: Any) -> Any | None:
    """The run's attack (the one builder, ``clients.attacks.attack_from_config``), None for
    attack='none'. Simulation-only: imported lazily, a deployment keeps attack='none'."""
    if cfg.attack == "none":
        return None
    from fedshield.clients.attacks import attack_from_config

    return attack_from_config(cfg, dataset)


def _adversary(cfg: RunConfig, attack: Any, rule: aggregators.Rule):
    """The simulation's adversary stage (None without a model attack), imported lazily."""
    if attack is None:
        return None
    from fedshield.clients.attacks.adversary import adversary_stage

    return adversary_stage(attack, rule, cfg.seed)


def trigger_reports(cfg: RunConfig, attack: Any):
    """For an attack whose trigger changes every round (A3FL): the reply observer that hands
    the server's evaluator the trigger the malicious clients report (``attack-trigger``), from
    the lowest malicious partition id among the round's replies. A report from a partition that
    is not malicious, or one the attack's ``restore`` refuses (shape, range, non-finite), is
    logged and ignored: the evaluator keeps the last good trigger. None for other attacks."""
    if not getattr(attack, "dynamic_trigger", False):
        return None
    from fedshield.clients.attacks import AttackError

    malicious = set(cfg.malicious_ids())

    def observe(rnd: int, replies: list[Any]) -> None:
        reports = []
        for msg in replies:
            if TRIGGER_KEY not in msg.content:
                continue
            pid = msg.content["meta"].get("partition-id") if "meta" in msg.content else None
            if pid not in malicious:
                log(WARNING, "round %d: a trigger report from partition %r, which is not one "
                    "of the simulation's attackers, was ignored", rnd, pid)
                continue
            reports.append((int(pid), msg.content[TRIGGER_KEY]))
        if not reports:
            return
        pid, record = min(reports, key=lambda r: r[0])
        try:
            attack.restore({key: torch.from_numpy(record[key].numpy()) for key in record})
        except (AttackError, TypeError, ValueError) as exc:
            log(WARNING, "round %d: the trigger reported by partition %d was refused: %s", rnd,
                pid, exc)

    return observe


def federation_size(grid: Grid, *, settle: float = 3.0,
                    timeout: float = NODE_WAIT_SECONDS) -> int:
    """The number of connected nodes once it has not changed for ``settle`` seconds (a simulated
    federation registers all its SuperNodes at once; in a deployment set ``num-clients``)."""
    start = time.monotonic()
    last, since = -1, start
    while True:
        count, now = len(list(grid.get_node_ids())), time.monotonic()
        if count != last:
            last, since = count, now
        if count >= 1 and now - since >= settle:
            log(INFO, "num-clients follows the federation: %d nodes", count)
            return count
        if now - start > timeout:
            raise ServerAppError(f"no node connected within {timeout:.0f} s (num-clients = 0 "
                                 "follows the federation)")
        time.sleep(0.5)


def run_server(grid: Grid, cfg: RunConfig, *, resume: bool = False, restart: bool = False,
               ledger_key: str | None = None) -> torch.Tensor:
    """Run ``cfg`` on ``grid``; returns the final global vector (also written to final.pt)."""
    if cfg.certify != "none":
        raise ServerAppError(f"certify = {cfg.certify!r} runs in the harness (fedshield sweep, "
                             "inline engine), not on a ServerApp; set certify = 'none'")
    task = get_task(cfg)
    rule = aggregators.create(cfg.aggregator, **cfg.aggregator_params)
    per_round = cfg.per_round
    try:
        require_round_size(rule, per_round)
    except ConfigError as exc:
        raise ServerAppError(str(exc)) from None
    attack = build_attack(cfg, task.dataset)
    if cfg.attack_stop:
        raise ServerAppError("attack-stop (durability) runs in the harness's inline engine")
    fakes = cfg.malicious_count if getattr(attack, "fake", False) else 0
    out = Path(cfg.output_dir) if cfg.output_dir else None
    files = _open_run_files(out, resume=resume, restart=restart, ledger_key=ledger_key)
    strategy = RobustStrategy(
        rule, server_lr=cfg.server_lr,
        reference_fn=(lambda rnd, g: reference_update(task, g, rnd, cfg))
        if rule.needs_reference else None,
        adversary=_adversary(cfg, attack, rule), fake_clients=fakes,
        observe_replies=trigger_reports(cfg, attack),
        observed_records=(TRIGGER_KEY,) if getattr(attack, "dynamic_trigger", False) else (),
        ledger=files.ledger,
        checkpoints=files.checkpoints, rows=files.rows, auto_commit=False,
        sample_seed=cfg.seed,
        fraction_train=per_round / cfg.num_clients, min_train_nodes=per_round,
        min_available_nodes=cfg.num_clients, fraction_evaluate=0.0,
        node_wait_timeout=NODE_WAIT_SECONDS, device=aggregation_device(cfg.device),
    )
    start_vec, done = task.initial_vector().clone(), 0
    if files.ledger is not None and resume and files.ledger.rows:
        start_vec, done = _resume(files, strategy, task, cfg)
    elif files.ledger is not None:
        files.ledger.append({"kind": "start", "config": _config_json(cfg), "rule": rule.name,
                             "rule_params": rule.params(), "model_hash": tensor_hash(start_vec)})
    final = start_vec
    if done < cfg.rounds:
        evaluate_fn = _evaluate_fn(cfg, task, attack, strategy)
        strategy.start(grid, to_arrayrecord(start_vec, task.layout), num_rounds=cfg.rounds - done,
                       evaluate_fn=evaluate_fn)
        final = strategy.latest_vec if strategy.latest_vec is not None else start_vec
    if out is not None:
        atomic_torch_save(final.detach().to(torch.float32).clone(), out / "final.pt")
    return final


@dataclass
class RunFiles:
    ledger: Ledger | None = None
    checkpoints: CheckpointStore | None = None
    rows: RowLog | None = None


def _open_run_files(out: Path | None, *, resume: bool, restart: bool,
                    ledger_key: str | None) -> RunFiles:
    if out is None:
        return RunFiles()
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ServerAppError(f"output_dir {str(out)!r} is not writable: {exc.strerror}") from None
    key_file = key_path(ledger_key).resolve()
    if key_file.is_relative_to(out.resolve()):
        raise ServerAppError(f"the ledger key {str(key_file)!r} must live outside output_dir "
                             f"{str(out)!r}: whoever can write the output could sign with it")
    has_run = (out / "ledger.jsonl").exists()
    if has_run and restart:
        _move_aside(out)
    elif has_run and not resume:
        raise ServerAppError(
            f"output_dir {str(out)!r} already holds a run (ledger.jsonl); pass resume=true "
            "to continue it, restart=true to move it aside and start over, or choose another "
            "output_dir")
    try:
        key = load_or_create_key(key_file)
        ledger = Ledger(out / "ledger.jsonl", key=key)
    except LedgerError as exc:
        raise ServerAppError(str(exc)) from None
    if ledger.torn:
        log(WARNING, "ledger: a torn last line (%d bytes) was moved to ledger.jsonl.torn",
            len(ledger.torn))
    return RunFiles(ledger, CheckpointStore(out / "checkpoints"), RowLog(out / "rounds.jsonl"))


def _move_aside(out: Path) -> None:
    """``restart=true``: the previous run's files go to ``previous-<UTC time>/`` (never lost)."""
    aside = out / time.strftime("previous-%Y%m%dT%H%M%SZ", time.gmtime())
    aside.mkdir()
    for name in ("ledger.jsonl", "ledger.jsonl.torn", "ledger.jsonl.uncommitted", "ledger.pub",
                 "rounds.jsonl", "checkpoints", "final.pt"):
        if (out / name).exists():
            os.replace(out / name, aside / name)
    log(INFO, "restart: the previous run was moved to %s", aside)


def _resume(files: RunFiles, strategy: RobustStrategy, task: Any,
            cfg: RunConfig) -> tuple[torch.Tensor, int]:
    """Continue after the latest checkpoint: cut what the crashed round left uncommitted."""
    assert files.ledger is not None and files.checkpoints is not None and files.rows is not None
    ckpt = files.checkpoints.latest()
    if ckpt is None:
        raise ServerAppError(
            f"resume=true, but {str(files.checkpoints.directory)!r} holds no readable "
            "checkpoint of this run; pass restart=true to move the run aside and start over")
    try:
        check_compatible(ckpt, list(task.layout.keys), [list(s) for s in task.layout.shapes],
                         cfg.rounds, strategy.rule_identity())
    except CheckpointError as exc:
        raise ServerAppError(str(exc)) from None
    cut = files.ledger.truncate(int(ckpt.meta.get("ledger_rows") or files.ledger.rows))
    files.rows.truncate(int(ckpt.meta.get("rounds_bytes") or files.rows.size()))
    strategy.restore(ckpt)
    files.ledger.append({"kind": "resume", "from_round": ckpt.round,
                         "model_hash": tensor_hash(ckpt.vector),
                         "uncommitted_rows": [json.loads(line)["hash"] for line in cut]})
    log(INFO, "Resuming from the checkpoint of round %s (%d uncommitted ledger rows cut)",
        ckpt.round, len(cut))
    return ckpt.vector.clone(), ckpt.round


def _evaluate_fn(cfg: RunConfig, task: Any, attack: Any, strategy: RobustStrategy):
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
        row = {**strategy.records[rnd].row(), **metrics}
        now = time.perf_counter()
        row["round_seconds"], clock["t"] = now - clock["t"], now
        strategy.commit(rnd, row)
        values = {k: v for k, v in metrics.items() if v is not None}
        return MetricRecord(values) if values else None

    return evaluate_fn


def _config_json(cfg: RunConfig) -> dict[str, Any]:
    return json.loads(json.dumps(asdict(cfg), default=str))
