"""``RobustStrategy``: Flower's FedAvg (Message API) with a Byzantine-robust aggregation rule.

Usable in any ServerApp::

    from aggregators import create
    from server.strategy import RobustStrategy
    strategy = RobustStrategy(create("krum", f=2), min_available_nodes=10)
    result = strategy.start(grid, initial_arrays=ArrayRecord(model.state_dict()), num_rounds=5)

One round (``aggregate_train``), with θ_t the global model captured in ``configure_train``:

1. validate every reply (``server.validation``: errors, records, keys/shapes/dtypes, num-examples,
   duplicates, non-sampled nodes, undecodable or non-finite arrays); drop the bad with a reason;
2. decode the valid replies *once* into one contiguous (n, d) float32 matrix of deltas θ_i − θ_t
   (replies are never emptied, ``keep_input=False`` is never used);
3. optional ``adversary(round, updates, malicious_mask)`` hook — the simulation's colluding
   model-poisoning stage (never set in a real deployment);
4. if fewer than ``rule.min_clients()`` valid replies remain, keep θ_t and say so;
5. FLTrust-style rules (``rule.needs_reference``) get ``reference_fn(round, θ_t)``;
6. θ_{t+1} = θ_t + η · rule(Δ; weights = capped num-examples, client_ids = :func:`history_ids`)
   (``server.aggregation.robust_step``);
7. a ledger row and a checkpoint (when configured), and a round report.

Divergence (:func:`diverged_round`): when θ_{t+1} is not finite, or every reply was dropped as
``non-finite`` (no client can train from θ_t), the round is ``diverged``: θ_t is kept (skipped
round). The run is *not* stopped early — the remaining rounds repeat from the last finite model —
but the rows say ``diverged`` and the final model is the last finite one (the inline engine stops).

Round report (``strategy.reports[round]``, also the ledger payload)::

    {"round", "rule", "rule_params", "server_lr", "replies", "valid", "accepted", "rejected",
     "rejected_by_reason": {reason: count}, "skipped": bool, "skip_reason": str, "diverged": bool,
     "malicious_share", "share_kind",
     "model_hash_before", "model_hash_after", "aggregation_seconds", "train_loss",
     "clients": [{"node_id", "partition_id", "malicious",
                  "status": "accepted"|"excluded"|"rejected", "reason", "weight", "num_examples",
                  "update_norm", "update_hash"}], "diagnostics": {...}}

``status`` is ``rejected`` for replies dropped by validation (``reason`` set), ``excluded`` for
valid replies the rule left out (``accepted[i]`` False, or weight 0), ``accepted`` otherwise.
``weight`` is the rule's per-client share when it defines one (None for coordinate-wise rules).
``malicious_share``/``share_kind``: ``server.shares.malicious_share`` of the round on the valid
rows flagged ``malicious`` in their meta (after the adversary stage; the inline engine's figure);
None/"none" for a skipped round.
The MetricRecord returned to Flower holds the scalar counts only (Flower averages metric records;
ids never go there).

Client ids of stateful rules (FoolsGold keeps one history per ``client_ids`` entry): the
*partition ids* the replies report in ``meta`` when every kept reply reports one and they are
distinct, else the Flower node ids (:func:`history_ids`). Partition ids are what the inline engine
passes, so both engines keep the same histories, and they survive a resume: the Flower simulation
gives the nodes new random node ids when it restarts, which would silently start every history
afresh. The partition id is client-reported (unverified): in a deployment whose ClientApps do not
report one, the node ids are used (stable for as long as a SuperNode keeps its identity).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from logging import INFO, WARNING
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

import aggregators
from aggregators import AggregatorError, Rule
from server.aggregation import robust_step
from server.checkpoint import Checkpoint, CheckpointStore
from server.ledger import Ledger, tensor_hash
from server.shares import malicious_share
from server.validation import (
    Expected,
    Reason,
    Rejection,
    ReplyInfo,
    ReplyKeys,
    count_reasons,
    stack_updates,
    validate_replies,
)
from tasks.params import ParamLayout, arrayrecord_to_vector, to_arrayrecord
from tasks.seeding import seeded_sample

ReferenceFn = Callable[[int, torch.Tensor], torch.Tensor]
AdversaryFn = Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor]


class StrategyError(ValueError):
    """Bad RobustStrategy configuration; the message names the parameter."""


class RobustStrategy(FedAvg):
    """FedAvg's sampling and messaging, robust aggregation of deltas (see module docstring).

    aggregator:  a ``Rule`` instance or a registered name (``aggregator_params`` = its params).
    server_lr:   η in θ_{t+1} = θ_t + η · A(Δ).
    reference_fn: (round, θ_t) -> reference delta; required when the rule needs one (FLTrust).
    adversary:   simulation-only colluding stage (round, updates (n,d), malicious (n,)) -> (n,d).
    ledger, checkpoints: optional durability (``server.ledger.Ledger``, ``CheckpointStore``).
    max_num_examples, num_examples_cap_factor: cap on the client-reported weights
        (absolute, and relative to the round's median report; None disables either).
    round_offset: rounds already done (resume): Flower's round r is reported as r + round_offset.
    sample_seed: seed of the client sampling (``(sample_seed, "sample", round)``); None = unseeded.
    node_wait_timeout: seconds to wait for ``min_available_nodes`` nodes before raising
        StrategyError (None = wait forever, Flower's behaviour).
    Other keyword arguments go to ``FedAvg`` (fraction_train, min_available_nodes, ...).
    """

    def __init__(
        self,
        aggregator: Rule | str = "fedavg",
        aggregator_params: dict[str, Any] | None = None,
        *,
        server_lr: float = 1.0,
        reference_fn: ReferenceFn | None = None,
        adversary: AdversaryFn | None = None,
        ledger: Ledger | None = None,
        checkpoints: CheckpointStore | None = None,
        max_num_examples: float | None = None,
        num_examples_cap_factor: float | None = 10.0,
        round_offset: int = 0,
        sample_seed: int | None = None,
        node_wait_timeout: float | None = None,
        meta_key: str = "meta",
        **fedavg_kwargs: Any,
    ) -> None:
        super().__init__(**fedavg_kwargs)
        if isinstance(aggregator, str):
            aggregator = aggregators.create(aggregator, **(aggregator_params or {}))
        elif aggregator_params:
            raise StrategyError("aggregator_params only apply when aggregator is given by name")
        if not isinstance(aggregator, Rule):
            raise StrategyError(f"aggregator must be a Rule or a name, got {type(aggregator)}")
        if not server_lr > 0:
            raise StrategyError(f"server_lr must be > 0, got {server_lr}")
        if aggregator.needs_reference and reference_fn is None:
            raise StrategyError(
                f"aggregator {aggregator.name!r} needs a server reference update: pass reference_fn"
            )
        if num_examples_cap_factor is not None and num_examples_cap_factor < 1:
            raise StrategyError("num_examples_cap_factor must be >= 1 or None")
        self.rule = aggregator
        self.server_lr = float(server_lr)
        self.reference_fn = reference_fn
        self.adversary = adversary
        self.ledger = ledger
        self.checkpoints = checkpoints
        self.max_num_examples = max_num_examples
        self.num_examples_cap_factor = num_examples_cap_factor
        self.round_offset = round_offset
        self.sample_seed = sample_seed
        self.node_wait_timeout = node_wait_timeout
        self.keys = ReplyKeys(arrays=self.arrayrecord_key, meta=meta_key,
                              weight=self.weighted_by_key)
        self.reports: dict[int, dict[str, Any]] = {}
        self._layout: ParamLayout | None = None
        self._expected: Expected | None = None
        self._global_vec: torch.Tensor | None = None
        self._sent_nodes: set[int] | None = None
        self.latest_vec: torch.Tensor | None = None  # global model after the last round

    def summary(self) -> None:
        super().summary()
        log(INFO, "\t└──> Robust aggregation: %r, server_lr=%s", self.rule, self.server_lr)

    # --- round setup ---------------------------------------------------------------------------
    def begin_round(self, arrays: ArrayRecord, sent_nodes: Iterable[int] | None = None) -> None:
        """Capture the round's global model and sampled nodes (``configure_train`` calls it)."""
        if self._layout is None:
            self._layout = ParamLayout.of(arrays)
            self._expected = Expected.of(arrays)
        self._global_vec = arrayrecord_to_vector(arrays, self._layout)
        self._sent_nodes = None if sent_nodes is None else set(sent_nodes)

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """FedAvg's train messages with seeded sampling from the sorted node ids; the round sent in
        ``config["server-round"]`` includes ``round_offset``."""
        if self.fraction_train == 0.0:
            return []
        rnd = server_round + self.round_offset
        nodes = sorted(self._wait_for_nodes(grid))
        size = min(len(nodes), max(int(len(nodes) * self.fraction_train), self.min_train_nodes))
        seed_parts = () if self.sample_seed is None else (self.sample_seed, "sample", rnd)
        sampled = seeded_sample(nodes, size, *seed_parts)
        log(INFO, "configure_train: sampled %s nodes (out of %s)", len(sampled), len(nodes))
        config["server-round"] = rnd
        record = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: config})
        self.begin_round(arrays, sampled)
        return self._construct_messages(record, sampled, MessageType.TRAIN)

    def _wait_for_nodes(self, grid: Grid) -> list[int]:
        need = max(self.min_available_nodes, self.min_train_nodes)
        start = time.monotonic()
        while len(nodes := list(grid.get_node_ids())) < need:
            waited = time.monotonic() - start
            if self.node_wait_timeout is not None and waited > self.node_wait_timeout:
                raise StrategyError(
                    f"only {len(nodes)} nodes connected after {waited:.0f} s, "
                    f"min_available_nodes={need} (run config num-clients); in simulation pass "
                    f'--federation-config "num-supernodes={need}"'
                )
            log(INFO, "Waiting for nodes to connect: %d connected (minimum %d)", len(nodes), need)
            time.sleep(1)
        return nodes

    # --- aggregation ---------------------------------------------------------------------------
    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        if self._global_vec is None or self._layout is None or self._expected is None:
            raise StrategyError("aggregate_train called before configure_train/begin_round")
        rnd = server_round + self.round_offset
        replies = list(replies)
        global_vec, layout = self._global_vec, self._layout
        valid, rejected = validate_replies(
            replies, self._expected, expected_nodes=self._sent_nodes, keys=self.keys,
            max_num_examples=self.max_num_examples, cap_factor=self.num_examples_cap_factor,
        )
        valid.sort(key=_aggregation_order)  # deterministic rows, whatever the arrival order
        updates, kept, undecodable = stack_updates(replies, valid, global_vec, layout,
                                                   self.arrayrecord_key)
        rejected += undecodable
        for r in rejected:
            log(WARNING, "round %s: dropped reply of node %s (partition %s): %s: %s",
                rnd, r.node_id, r.partition_id, r.reason, r.detail)
        new_vec, agg, seconds, skip = global_vec, None, 0.0, ""
        if len(kept) < self.rule.min_clients():
            skip = (f"{len(kept)} valid replies, rule {self.rule.name!r} needs "
                    f"{self.rule.min_clients()}; global model kept")
        else:
            mask = torch.tensor([bool(i.malicious) for i in kept], dtype=torch.bool)
            if self.adversary is not None and bool(mask.any()):
                updates = self.adversary(rnd, updates, mask).to(torch.float32).contiguous()
            try:
                reference = (self.reference_fn(rnd, global_vec)
                             if self.rule.needs_reference and self.reference_fn else None)
                step = robust_step(
                    global_vec, updates, self.rule, server_lr=self.server_lr, reference=reference,
                    weights=torch.tensor([i.num_examples for i in kept], dtype=torch.float32),
                    client_ids=history_ids(kept),
                )
                new_vec, agg, seconds = step.new_vec, step.aggregation, step.seconds
            except AggregatorError as exc:
                skip = f"aggregation failed: {exc}; global model kept"
        diverged = diverged_round(replies, kept, rejected, new_vec)
        if diverged and not skip:
            new_vec, skip = global_vec, "the new global model is not finite; global model kept"
        if skip:
            log(WARNING, "round %s: %s", rnd, skip)
        report = self._report(rnd, replies, kept, rejected, updates, agg, skip, seconds,
                              global_vec, new_vec)
        report["diverged"] = diverged
        self._record(rnd, report, new_vec)
        arrays = None if skip else to_arrayrecord(new_vec, layout)
        return arrays, self._metrics(report)

    # --- bookkeeping ---------------------------------------------------------------------------
    def _report(
        self, rnd: int, replies: list[Message], kept: list[ReplyInfo], rejected: list[Rejection],
        updates: torch.Tensor, agg: aggregators.Aggregation | None, skip: str, seconds: float,
        before: torch.Tensor, after: torch.Tensor,
    ) -> dict[str, Any]:
        clients: list[dict[str, Any]] = []
        accepted = 0
        norms = torch.linalg.vector_norm(updates, dim=1).tolist() if len(kept) else []
        for row, info in enumerate(kept):
            status, weight = _decision(agg, row)
            if skip:
                status = "excluded"
            accepted += status == "accepted"
            clients.append({
                "node_id": info.node_id, "partition_id": info.partition_id,
                "malicious": info.malicious, "status": status, "reason": "",
                "weight": weight, "num_examples": info.num_examples,
                "reported_examples": info.reported_examples,
                "train_loss": info.train_loss, "update_norm": norms[row],
                "update_hash": tensor_hash(updates[row]),
            })
        for r in rejected:
            clients.append({
                "node_id": r.node_id, "partition_id": r.partition_id, "malicious": None,
                "status": "rejected", "reason": str(r.reason), "detail": r.detail,
                "weight": None, "num_examples": None, "update_norm": None, "update_hash": None,
            })
        share, share_kind = None, "none"
        if agg is not None:
            mask = torch.tensor([bool(i.malicious) for i in kept], dtype=torch.bool)
            share, share_kind = malicious_share(agg, updates, mask, self.rule.name,
                                                self.rule.params())
        losses = [(i.train_loss, i.num_examples) for i in kept if i.train_loss is not None]
        total = sum(w for _, w in losses)
        return {
            "round": rnd, "rule": self.rule.name, "rule_params": _jsonable(self.rule.params()),
            "server_lr": self.server_lr, "replies": len(replies), "valid": len(kept),
            "accepted": accepted, "rejected": len(rejected),
            "rejected_by_reason": count_reasons(rejected),
            "capped": sum(i.capped for i in kept),
            "skipped": bool(skip), "skip_reason": skip,
            "malicious_share": share, "share_kind": share_kind,
            "has_accepted": agg is not None and agg.accepted is not None,
            "model_hash_before": tensor_hash(before), "model_hash_after": tensor_hash(after),
            "aggregation_seconds": seconds,
            "train_loss": sum(loss * w for loss, w in losses) / total if total else None,
            "clients": clients,
            "diagnostics": _jsonable(agg.diagnostics) if agg is not None else {},
        }

    def _record(self, rnd: int, report: dict[str, Any], new_vec: torch.Tensor) -> None:
        self.reports[rnd] = report
        self.latest_vec = new_vec
        if self.ledger is not None:
            self.ledger.append({"kind": "round", **report})
        if self.checkpoints is not None:
            assert self._layout is not None
            state = dict(vars(self.rule)) if self.rule.stateful else None
            self.checkpoints.save(Checkpoint(
                rnd, new_vec, list(self._layout.keys), [list(s) for s in self._layout.shapes],
                rule_state=state, meta={"rule": self.rule.name},
            ))

    @staticmethod
    def _metrics(report: dict[str, Any]) -> MetricRecord:
        out: dict[str, int | float] = {
            "replies": report["replies"], "valid": report["valid"],
            "accepted": report["accepted"], "rejected": report["rejected"],
            "capped": report["capped"], "skipped": int(report["skipped"]),
            "aggregation-seconds": float(report["aggregation_seconds"]),
        }
        for reason, count in report["rejected_by_reason"].items():
            out[f"rejected-{reason}"] = count
        if report["train_loss"] is not None:
            out["train-loss"] = float(report["train_loss"])
        return MetricRecord(out)

    def restore(self, ckpt: Checkpoint) -> None:
        """Continue after ``ckpt``: offset the rounds and restore a stateful rule's state."""
        self.round_offset = ckpt.round
        if self.rule.stateful and ckpt.rule_state:
            vars(self.rule).update(ckpt.rule_state)


def diverged_round(replies: list[Message], kept: list[ReplyInfo], rejected: list[Rejection],
                   new_vec: torch.Tensor) -> bool:
    """The round diverged: θ_{t+1} is not finite, or every reply was dropped as non-finite."""
    all_non_finite = bool(replies) and not kept and bool(rejected) and all(
        r.reason == Reason.NON_FINITE for r in rejected)
    return all_non_finite or not bool(torch.isfinite(new_vec).all())


def history_ids(kept: list[ReplyInfo]) -> list[int]:
    """The rule's ``client_ids`` for the kept replies (row order): their reported partition ids
    when every one has a partition id and no two share one, else their node ids."""
    pids = [info.partition_id for info in kept]
    if pids and None not in pids and len(set(pids)) == len(pids):
        return [int(p) for p in pids if p is not None]
    return [info.node_id for info in kept]


def _aggregation_order(info: ReplyInfo) -> tuple[bool, int, int]:
    """Rows sorted by partition id (unknown last), then node id."""
    pid = info.partition_id
    return (pid is None, -1 if pid is None else pid, info.node_id)


def _decision(agg: aggregators.Aggregation | None, row: int) -> tuple[str, float | None]:
    """(status, weight) of valid client ``row`` under the rule's decision."""
    if agg is None:
        return "excluded", None
    weight = None if agg.weights is None else float(agg.weights[row])
    if agg.accepted is not None:
        return ("accepted" if bool(agg.accepted[row]) else "excluded"), weight
    if weight is not None:
        return ("accepted" if weight > 0 else "excluded"), weight
    return "accepted", weight


def _jsonable(value: Any) -> Any:
    """Diagnostics/params as plain JSON (tensors to lists, non-finite floats to None)."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().tolist()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else None
    if isinstance(value, int | str | bool) or value is None:
        return value
    if hasattr(value, "item"):
        return _jsonable(value.item())
    return repr(value)
