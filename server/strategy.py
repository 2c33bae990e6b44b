"""``RobustStrategy``: Flower's FedAvg (Message API) with a Byzantine-robust aggregation rule.

Usable in any ServerApp::

    from fedshield import RobustStrategy, create
    strategy = RobustStrategy(create("krum", f=2), min_available_nodes=10)
    result = strategy.start(grid, initial_arrays=ArrayRecord(model.state_dict()), num_rounds=5)

One round (``aggregate_train``), with θ_t the global model captured in ``configure_train``:

1. validate every reply (``fedshield.server.validation``: errors, records, keys/shapes/dtypes,
   num-examples, duplicates, non-sampled nodes) and drop the bad with a reason;
2. decode the valid replies *once* into one contiguous (n, d) float32 matrix of deltas θ_i − θ_t
   (replies are never emptied, ``keep_input=False`` is never used), rows sorted by (partition id,
   node id) whatever the arrival order;
3. everything after decoding is the round core, :class:`fedshield.server.round.RoundCore`
   (non-finite rows, the simulation's adversary stage, the too-few-clients skip, the reference
   update, the rule, the step, divergence, shares, detection, norms, losses), the same code the
   inline engine runs; entries outside the robust vector (BatchNorm's running statistics,
   integer counters) follow the buffer policy (``buffers``, ``integer_buffers``);
4. the clients' metrics, aggregated as FedAvg does (``train_metrics_aggr_fn``), with the round's
   counts beside them as ``robust-*``;
5. the commit (:meth:`RobustStrategy.commit`): the ledger row, the metrics row, then the
   checkpoint, which marks the round as committed (a crash before it is redone on resume).
   ``RobustStrategy`` commits in ``aggregate_train``; fedshield's ServerApp sets
   ``auto_commit=False`` and commits after its evaluation, so that the metrics row is part of it.

The round's :class:`~fedshield.server.round.RoundRecord` is kept in ``strategy.records[round]``
(``strategy.reports[round]`` is its ledger payload). Stateful rules key their per-client state by
the Flower node id (what the SuperLink authenticates), never by a partition id a client reports.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from logging import INFO, WARNING
from typing import Any

import numpy as np
import torch
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from fedshield import aggregators
from fedshield.aggregators import Detector, Rule
from fedshield.server.checkpoint import Checkpoint, CheckpointStore, RowLog
from fedshield.server.indicator import indicator_detector
from fedshield.server.ledger import Ledger
from fedshield.server.round import AdversaryFn, ReferenceFn, RoundCore, RoundRecord, jsonable
from fedshield.server.validation import (
    Expected,
    ReplyInfo,
    ReplyKeys,
    decode_updates,
    validate_replies,
)
from fedshield.tasks.params import ParamLayout, arrayrecord_to_vector, to_arrayrecord
from fedshield.tasks.seeding import seeded_sample


class StrategyError(ValueError):
    """Bad RobustStrategy configuration; the message names the parameter."""


class RobustStrategy(FedAvg):
    """FedAvg's sampling and messaging, robust aggregation of deltas (see module docstring).

    aggregator:  a ``Rule`` instance or a registered name (``aggregator_params`` = its params).
    detector:    optional: a ``Detector`` instance or a registered detector name
                 (``detector_params`` = its params) run before the rule, which then aggregates
                 the unflagged updates (``aggregators.create("detect", ...)``); the round's
                 detection counts read the detector's flags.
    server_lr:   η in θ_{t+1} = θ_t + η · A(Δ).
    reference_fn: (round, θ_t) -> reference delta; required when the rule needs one (FLTrust).
    adversary:   simulation-only colluding stage (round, updates (n,d), malicious (n,), θ_t) ->
                 the crafted malicious rows (m,d) (``fedshield.clients.attacks.adversary``).
    fake_clients: simulation-only: clients an attacker adds to every round (MPAF), whose rows
                 the adversary writes (see :class:`fedshield.server.round.RoundCore`).
    observe_replies: simulation-only: (round, the validated replies) before aggregation, for
                 the harness's measurements (A3FL's reported trigger); never changes the round;
                 ``observed_records``: the reply records it reads, accepted besides the three.
    ledger, checkpoints, rows: optional durability (``server.ledger.Ledger``, ``CheckpointStore``,
        ``RowLog`` of the per-round rows), written by :meth:`commit`.
    auto_commit: commit each round in ``aggregate_train`` (False: the caller calls ``commit``).
    max_num_examples, num_examples_cap_factor: cap on the client-reported weights
        (absolute, and relative to the round's median report; None disables either).
    round_offset: rounds already done (resume): Flower's round r is reported as r + round_offset.
    sample_seed: seed of the client sampling (``(sample_seed, "sample", round)``); None = unseeded.
    node_wait_timeout: seconds to wait for ``min_available_nodes`` nodes before raising
        StrategyError (None = wait forever, Flower's behaviour).
    buffers:     non-trainable float entries (``buffer_keys``; default BatchNorm's running
        statistics): ``"median"`` (coordinate-wise median of the replies, outside the robust
        vector, so they count in no norm or distance), ``"mean"``, or ``"rule"`` (part of the
        robust vector, aggregated by the rule like a parameter).
    integer_buffers: integer entries (``num_batches_tracked``) are never part of the robust
        vector: ``"median"`` (the replies' lower median, an exact integer) or ``"keep"``.
    release_replies: drop each reply's robust arrays as soon as they are decoded into their row
        of the (n, d) update matrix, so the server never holds a round's updates twice
        (``fedshield bench memory``); False keeps the replies whole (a caller that reads them
        after ``aggregate_train``).
    device:      where the rule's sorts and Gram products run, e.g. ``torch.device("cuda")``
        (``tasks.device.aggregation_device``); None (default) keeps aggregation on the CPU.
    Other keyword arguments go to ``FedAvg`` (fraction_train, min_available_nodes, ...).
    """

    def __init__(
        self,
        aggregator: Rule | str = "fedavg",
        aggregator_params: dict[str, Any] | None = None,
        *,
        detector: Detector | str | None = None,
        detector_params: dict[str, Any] | None = None,
        server_lr: float = 1.0,
        reference_fn: ReferenceFn | None = None,
        adversary: AdversaryFn | None = None,
        fake_clients: int = 0,
        observe_replies: Callable[[int, list[Message]], None] | None = None,
        observed_records: tuple[str, ...] = (),
        ledger: Ledger | None = None,
        checkpoints: CheckpointStore | None = None,
        rows: RowLog | None = None,
        auto_commit: bool = True,
        max_num_examples: float | None = None,
        num_examples_cap_factor: float | None = 10.0,
        round_offset: int = 0,
        sample_seed: int | None = None,
        node_wait_timeout: float | None = None,
        meta_key: str = "meta",
        buffers: str = "median",
        integer_buffers: str = "median",
        release_replies: bool = True,
        buffer_keys: Callable[[str], bool] | None = None,
        device: torch.device | None = None,
        **fedavg_kwargs: Any,
    ) -> None:
        super().__init__(**fedavg_kwargs)
        if buffers not in BUFFER_POLICIES:
            raise StrategyError(f"buffers must be one of {BUFFER_POLICIES}, got {buffers!r}")
        if integer_buffers not in INTEGER_BUFFER_POLICIES:
            raise StrategyError(f"integer_buffers must be one of {INTEGER_BUFFER_POLICIES}, "
                                f"got {integer_buffers!r}")
        if isinstance(aggregator, str):
            aggregator = aggregators.create(aggregator, **(aggregator_params or {}))
        elif aggregator_params:
            raise StrategyError("aggregator_params only apply when aggregator is given by name")
        if detector is not None:
            if isinstance(detector, Detector) and detector_params:
                raise StrategyError("detector_params only apply when detector is given by name")
            aggregator = aggregators.create("detect", detector=detector,
                                            detector_params=detector_params, inner=aggregator)
        elif detector_params:
            raise StrategyError("detector_params need a detector")
        if indicator_detector(aggregator) is not None:
            raise StrategyError("backdoor-indicator plants its indicator in the global model "
                                "each round: it runs in the harness's inline engine, not in "
                                "RobustStrategy")
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
        self.observe_replies = observe_replies
        self.core = RoundCore(aggregator, server_lr=server_lr, reference_fn=reference_fn,
                              adversary=adversary, max_num_examples=max_num_examples,
                              num_examples_cap_factor=num_examples_cap_factor,
                              fake_clients=fake_clients, device=device)
        self.ledger = ledger
        self.checkpoints = checkpoints
        self.rows = rows
        self.auto_commit = auto_commit
        self.round_offset = round_offset
        self.sample_seed = sample_seed
        self.node_wait_timeout = node_wait_timeout
        self.keys = ReplyKeys(arrays=self.arrayrecord_key, meta=meta_key,
                              weight=self.weighted_by_key, observed=tuple(observed_records))
        self.buffers = buffers
        self.integer_buffers = integer_buffers
        self.release_replies = release_replies
        self.buffer_keys = buffer_keys or is_running_statistic
        self.records: dict[int, RoundRecord] = {}
        self.reports: dict[int, dict[str, Any]] = {}  # the records' ledger payloads
        self._layout: ParamLayout | None = None  # the robust vector's entries
        self._full: ParamLayout | None = None  # every entry of the model
        self._arrays: ArrayRecord | None = None  # the round's global model
        self._expected: Expected | None = None
        self._global_vec: torch.Tensor | None = None
        self._sent_nodes: set[int] | None = None
        self.latest_vec: torch.Tensor | None = None  # robust vector after the last round
        self.latest_arrays: ArrayRecord | None = None  # the whole global model after it

    def summary(self) -> None:
        """What this strategy does, truthfully (FedAvg's summary would claim a weighted mean)."""
        log(INFO, "\t├──> Sampling: fraction train %.2f (at least %d nodes) | evaluate %.2f "
            "(at least %d) | available nodes at least %d", self.fraction_train,
            self.min_train_nodes, self.fraction_evaluate, self.min_evaluate_nodes,
            self.min_available_nodes)
        log(INFO, "\t├──> Robust aggregation: %r of the deltas, server_lr=%s; needs at least "
            "%d valid replies per round", self.rule, self.server_lr, self.rule.min_clients())
        weights = (f"client-reported '{self.weighted_by_key}', capped at "
                   f"{self.core.num_examples_cap_factor} x the round median"
                   if self.rule.uses_weights() else
                   f"not weighted ('{self.weighted_by_key}' is checked, the rule ignores it)")
        log(INFO, "\t├──> Weights: %s", weights)
        log(INFO, "\t└──> Keys in records: arrays '%s', config '%s', meta '%s'",
            self.arrayrecord_key, self.configrecord_key, self.keys.meta)

    # --- round setup ---------------------------------------------------------------------------
    def begin_round(self, arrays: ArrayRecord, sent_nodes: Iterable[int] | None = None) -> None:
        """Capture the round's global model and sampled nodes (``configure_train`` calls it)."""
        if self._layout is None:
            self._full = ParamLayout.of(arrays)
            self._layout = self._full.select(
                [key for key, dtype in zip(self._full.keys, self._full.dtypes, strict=True)
                 if dtype.is_floating_point
                 and (self.buffers == "rule" or not self.buffer_keys(key))])
            self._expected = Expected.of(arrays)
        self._arrays = arrays
        self._global_vec = arrayrecord_to_vector(arrays, self._layout, subset=True)
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
        if size < self.rule.min_clients():
            raise StrategyError(
                f"round {rnd} samples {size} of {len(nodes)} nodes (fraction_train="
                f"{self.fraction_train}, min_train_nodes={self.min_train_nodes}), but "
                f"{self.rule!r} needs at least {self.rule.min_clients()} "
                f"({self.rule.requirement or 'its minimum'}): no round could ever aggregate; "
                "raise fraction_train / min_train_nodes or lower the rule's f")
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
        valid, rejected = validate_replies(replies, self._expected,
                                           expected_nodes=self._sent_nodes, keys=self.keys)
        valid.sort(key=_aggregation_order)  # deterministic rows, whatever the arrival order
        if self.observe_replies is not None:
            self.observe_replies(rnd, [replies[i.index] for i in valid])
        updates, kept, undecodable = decode_updates(replies, valid, self._global_vec,
                                                    self._layout, self.arrayrecord_key,
                                                    subset=True, release=self.release_replies)
        record = self.core.run(rnd, self._global_vec, updates, [i.row() for i in kept],
                               replies=len(replies), rejected=rejected + undecodable)
        self._log_round(rnd, replies, record)
        in_rule = {d.node_id for d in record.valid}
        used = [replies[i.index] for i in kept if i.node_id in in_rule]
        self.latest_arrays = self._global_arrays(record.new_vec, used)  # before a commit saves it
        self._record(record)
        contents = [msg.content for msg in used]
        metrics = self.train_metrics_aggr_fn(contents, self.weighted_by_key) if contents else None
        robust = {f"robust-{key}": value for key, value in record.counts().items()}
        return self.latest_arrays, MetricRecord({**(dict(metrics) if metrics else {}), **robust})

    def _global_arrays(self, vec: torch.Tensor, used: list[Message]) -> ArrayRecord:
        """The new global model: the robust vector's entries from ``vec``, every other entry
        (buffers) by the buffer policy over the replies the rule saw."""
        assert self._layout is not None and self._full is not None and self._arrays is not None
        parts = dict(to_arrayrecord(vec, self._layout).items())
        for key in self._full.keys:
            if key not in parts:
                current = self._arrays[key].numpy()
                policy = (self.integer_buffers if not np.issubdtype(current.dtype, np.floating)
                          else self.buffers)
                values = [msg.content[self.arrayrecord_key][key].numpy() for msg in used]
                parts[key] = Array(combine_buffer(current, values, policy))
        return ArrayRecord({key: parts[key] for key in self._full.keys})

    @staticmethod
    def _log_round(rnd: int, replies: list[Message], record: RoundRecord) -> None:
        failures = sum(1 for msg in replies if msg.has_error())
        log(INFO, "aggregate_train: Received %s results and %s failures",
            len(replies) - failures, failures)
        status = {s: [d.node_id for d in record.valid if d.status == s]
                  for s in ("accepted", "excluded")}
        rejected = [f"{d.node_id} ({d.reason})" for d in record.rejected]
        log(INFO, "round %s, %s: kept %s, excluded by the rule %s, rejected %s%s", rnd,
            record.rule, status["accepted"], status["excluded"], rejected or "none",
            f"; SKIPPED: {record.skip_reason}" if record.skipped else "")
        for d in record.rejected:
            log(WARNING, "round %s: dropped reply of node %s (partition %s): %s: %s",
                rnd, d.node_id, d.partition_id, d.reason, d.detail)
        if record.skipped:
            log(WARNING, "round %s: %s", rnd, record.skip_reason)

    # --- bookkeeping ---------------------------------------------------------------------------
    def _record(self, record: RoundRecord) -> None:
        self.records[record.round] = record
        self.reports[record.round] = record.report()
        self.latest_vec = record.new_vec
        if self.auto_commit:
            self.commit(record.round)

    def commit(self, rnd: int, row: dict[str, Any] | None = None) -> None:
        """Persist round ``rnd``: its ledger row, its metrics ``row`` (default: the record's),
        then the checkpoint, which records the ledger rows and metrics bytes it covers — the
        commit point of the round."""
        if self.ledger is not None:
            self.ledger.append({"kind": "round", **self.reports[rnd]})
        if self.rows is not None:
            self.rows.append(row if row is not None else self.records[rnd].row())
        if self.checkpoints is not None:
            assert self._layout is not None
            self.checkpoints.save(Checkpoint(
                rnd, self.records[rnd].new_vec, list(self._layout.keys),
                [list(s) for s in self._layout.shapes], rule_state=self.rule.state_dict(),
                meta={**self.rule_identity(), "buffers": self._buffer_state(),
                      "ledger_rows": None if self.ledger is None else self.ledger.rows,
                      "rounds_bytes": None if self.rows is None else self.rows.size()},
            ))

    def _buffer_state(self) -> dict[str, torch.Tensor]:
        """The global model's entries outside the robust vector (checkpointed beside it)."""
        if self.latest_arrays is None or self._layout is None:
            return {}
        robust = set(self._layout.keys)
        return {key: torch.from_numpy(array.numpy().copy())
                for key, array in self.latest_arrays.items() if key not in robust}

    def rule_identity(self) -> dict[str, Any]:
        """What a checkpoint must match to be resumed by this strategy."""
        return {"rule": self.rule.name, "rule_params": jsonable(self.rule.params())}

    def restore(self, ckpt: Checkpoint) -> None:
        """Continue after ``ckpt``: offset the rounds and restore the rule's cross-round state
        (``Rule.load_state_dict``: per-client histories, random generators)."""
        self.round_offset = ckpt.round
        if ckpt.rule_state:
            self.rule.load_state_dict(ckpt.rule_state)


BUFFER_POLICIES = ("median", "mean", "rule")
INTEGER_BUFFER_POLICIES = ("median", "keep")


def is_running_statistic(key: str) -> bool:
    """BatchNorm's buffers (``running_mean``, ``running_var``, ``num_batches_tracked``)."""
    name = key.rsplit(".", 1)[-1]
    return name.startswith("running_") or name == "num_batches_tracked"


def combine_buffer(current: np.ndarray, values: list[np.ndarray], policy: str) -> np.ndarray:
    """One buffer of the new global model from the replies' ``values``: their coordinate-wise
    median (integer buffers: the lower median, an exact integer; a minority cannot move it
    outside the honest values), their mean (``"mean"``: any one client moves it at will), or
    the current value (``"keep"``, or when no reply holds a finite value)."""
    if policy == "keep" or not values:
        return current
    if not np.issubdtype(current.dtype, np.floating):  # exact, in the integers themselves
        ordered = np.sort(np.stack(values).astype(current.dtype), axis=0)
        return np.asarray(ordered[(len(values) - 1) // 2], dtype=current.dtype)
    stacked = np.stack(values).astype(np.float64)
    stacked[~np.isfinite(stacked)] = np.nan
    if np.isnan(stacked).all(axis=0).any():
        stacked = np.where(np.isnan(stacked).all(axis=0), current.astype(np.float64), stacked)
    out = np.nanmean(stacked, axis=0) if policy == "mean" else np.nanmedian(stacked, axis=0)
    return np.asarray(out, dtype=current.dtype)


def _aggregation_order(info: ReplyInfo) -> tuple[bool, int, int]:
    """Rows sorted by partition id (unknown last), then node id."""
    pid = info.partition_id
    return (pid is None, -1 if pid is None else pid, info.node_id)
