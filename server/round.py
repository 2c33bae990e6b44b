"""The round core: everything one round does after its updates are decoded, for both engines.

``RobustStrategy`` (Flower) is "validate and decode the replies, then :meth:`RoundCore.run`"; the
inline engine is "train the sampled clients, then :meth:`RoundCore.run`". The steps, in this
order, exist only here:

1. drop invalid rows: a row with NaN/±Inf is rejected (``non-finite``); nothing can aggregate it;
2. (simulation only) the colluding adversary stage rewrites the malicious rows;
3. too few rows for the rule (``rule.min_clients()``): the round is skipped, θ_t kept;
4. the server's reference update, for rules that need one (FLTrust);
5. the rule, with the capped client-reported sample counts as ``weights`` and the authenticated
   client ids as ``client_ids``; any exception it raises skips the round (reason recorded);
6. the step θ_{t+1} = θ_t + η · A(Δ) (:func:`fedshield.server.aggregation.robust_step`);
7. divergence: θ_{t+1} not finite, or every row of the round non-finite. The round is marked
   ``diverged`` and θ_t is kept; the run goes on from θ_t in both engines (a deployed server must
   not stop on one bad round, and the simulation behaves as the server does);
8. shares, detection, norms and the training loss of the round. Detection precision, recall and
   FPR score a detector's ``flagged`` when the rule composes one (``detect``), else the rule's
   ``accepted``.

It returns one :class:`RoundRecord`; the ``rounds.jsonl`` row, the harness row
(:meth:`RoundRecord.row`), the ledger payload (:meth:`RoundRecord.report`) and Flower's metric
counts (:meth:`RoundRecord.counts`) are views of it. This module imports nothing of Flower.

``train_loss`` of a round: the mean of the reported training losses of the rows not flagged
malicious (in simulation the malicious rows trained on poisoned data; in a deployment no row is
flagged), weighted by their capped sample counts.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

import torch

from fedshield.aggregators import Aggregation, Rule
from fedshield.aggregators.base import finite_rows
from fedshield.server.aggregation import robust_step
from fedshield.server.ledger import tensor_hash
from fedshield.server.shares import detection, malicious_share, norm_summary, row_norms
from fedshield.tasks.config import ConfigError

ReferenceFn = Callable[[int, torch.Tensor], torch.Tensor]
AdversaryFn = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class Reason(StrEnum):
    """Why a reply or row was dropped before aggregation."""

    DUPLICATE = "duplicate-node"
    UNEXPECTED = "unexpected-node"
    ERROR_REPLY = "error-reply"
    MISSING_RECORD = "missing-record"
    EXTRA_RECORD = "extra-record"
    KEYS = "keys-mismatch"
    SHAPE = "shape-mismatch"
    DTYPE = "dtype-mismatch"
    NUM_EXAMPLES = "bad-num-examples"
    META = "bad-meta"
    UNDECODABLE = "undecodable"
    NON_FINITE = "non-finite"


@dataclass
class Rejection:
    """A reply or row dropped before aggregation (``index``: its position among the replies)."""

    index: int
    node_id: int | None
    partition_id: int | None
    reason: Reason
    detail: str


@dataclass
class ClientRow:
    """The metadata of one decoded update row.

    client_id:    the id per-client state is kept under: what the server authenticates (the
                  Flower node id, i.e. the SuperNode's identity), never a field a client fills in;
                  the inline engine's clients are its own partitions;
    partition_id: the partition the client claims (Flower) or is (inline); reports only;
    malicious:    simulation ground truth for detection metrics (None when unknown);
    num_examples: the client-reported sample count (unverified; capped by the core).
    """

    client_id: int
    partition_id: int | None
    malicious: bool | None
    num_examples: float
    train_loss: float | None = None
    node_id: int | None = None
    index: int = -1


class Hooks(Protocol):
    """Explicit timing hooks: ``phase(name)`` encloses each phase of a round ("train", "attack",
    "aggregate", "eval"); benchmarks pass a recorder, everyone else nothing."""

    def phase(self, name: str) -> AbstractContextManager[Any]: ...


class NoHooks:
    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        yield


@dataclass
class Decision:
    """What the round did with one client (a valid row, or a rejected reply)."""

    client_id: int | None
    node_id: int | None
    partition_id: int | None
    malicious: bool | None
    status: str  # "accepted" | "excluded" | "rejected"
    reason: str = ""
    detail: str = ""
    weight: float | None = None
    num_examples: float | None = None
    reported_examples: float | None = None
    train_loss: float | None = None
    update_norm: float | None = None
    update_hash: str | None = None


@dataclass
class RoundRecord:
    """Everything one round decided and measured; every row format is a view of it."""

    round: int
    rule: str
    rule_params: dict[str, Any]
    server_lr: float
    replies: int
    decisions: list[Decision]
    skipped: bool
    skip_reason: str
    diverged: bool
    has_accepted: bool
    malicious_share: float | None
    share_kind: str
    aggregation_seconds: float | None
    update_norm: float | None
    train_loss: float | None
    detection: dict[str, float | None]
    norms: dict[str, float | None]
    model_hash_before: str | None
    model_hash_after: str | None
    diagnostics: dict[str, Any]
    new_vec: torch.Tensor = field(repr=False)

    @property
    def valid(self) -> list[Decision]:
        return [d for d in self.decisions if d.status != "rejected"]

    @property
    def rejected(self) -> list[Decision]:
        return [d for d in self.decisions if d.status == "rejected"]

    def rejected_by_reason(self) -> dict[str, int]:
        return dict(Counter(d.reason for d in self.rejected))

    @property
    def accepted_count(self) -> int:
        return sum(d.status == "accepted" for d in self.decisions)

    @property
    def capped_count(self) -> int:
        """Valid rows whose client-reported sample count was capped."""
        return sum(1 for d in self.valid if d.num_examples is not None
                   and d.reported_examples is not None and d.num_examples < d.reported_examples)

    def row(self) -> dict[str, Any]:
        """The per-round metrics row: ``rounds.jsonl`` of the ServerApp and the harness row of
        both engines (the engine adds evaluation and wall-clock keys)."""
        valid = self.valid
        weights = [d.weight for d in valid]
        return {
            "round": self.round,
            "clients": len(valid),
            "partition_ids": [d.partition_id for d in valid],
            "malicious_in_round": [d.partition_id for d in valid if d.malicious],
            "accepted": ([int(d.status == "accepted") for d in valid]
                         if self.has_accepted else None),
            "weights": weights if valid and None not in weights else None,
            "update_norms": [d.update_norm for d in valid],
            "malicious_share": self.malicious_share,
            "share_kind": self.share_kind,
            "aggregation_seconds": self.aggregation_seconds,
            "update_norm": self.update_norm,
            "train_loss": self.train_loss,
            **{k: self.detection.get(k) for k in ("precision", "recall", "fpr")},
            **self.norms,
            "replies": self.replies,
            "valid": len(valid),
            "rejected": len(self.rejected),
            "rejected_by_reason": self.rejected_by_reason(),
            "capped": self.capped_count,
            "skipped": self.skipped,
            "skip_reason": self.skip_reason,
            "diverged": self.diverged,
            "model_hash": self.model_hash_after,
        }

    def report(self) -> dict[str, Any]:
        """The ledger payload: the row's decisions per client, hashes, parameters, diagnostics."""
        return {
            "round": self.round, "rule": self.rule, "rule_params": jsonable(self.rule_params),
            "server_lr": self.server_lr, "replies": self.replies, "valid": len(self.valid),
            "accepted": self.accepted_count,
            "rejected": len(self.rejected), "rejected_by_reason": self.rejected_by_reason(),
            "capped": self.capped_count,
            "skipped": self.skipped, "skip_reason": self.skip_reason, "diverged": self.diverged,
            "malicious_share": self.malicious_share, "share_kind": self.share_kind,
            "has_accepted": self.has_accepted,
            "model_hash_before": self.model_hash_before,
            "model_hash_after": self.model_hash_after,
            "aggregation_seconds": self.aggregation_seconds, "train_loss": self.train_loss,
            "clients": [jsonable(vars(d)) for d in self.decisions],
            "diagnostics": jsonable(self.diagnostics),
        }

    def counts(self) -> dict[str, int | float]:
        """Scalar counts of the round (Flower's MetricRecord; ids never go there)."""
        out: dict[str, int | float] = {
            "replies": self.replies, "valid": len(self.valid),
            "accepted": self.accepted_count,
            "rejected": len(self.rejected), "skipped": int(self.skipped),
            "capped": self.capped_count,
            "aggregation-seconds": float(self.aggregation_seconds or 0.0),
        }
        for reason, count in self.rejected_by_reason().items():
            out[f"rejected-{reason}"] = count
        if self.train_loss is not None:
            out["train-loss"] = float(self.train_loss)
        return out


#: the client ids of fake clients in a Flower run (node ids are drawn from the full 64-bit range;
#: the inline engine numbers them after its partitions)
FAKE_FIRST_ID = 1 << 62


def with_fake_clients(updates: torch.Tensor, rows: list[ClientRow], count: int,
                      first_id: int) -> tuple[torch.Tensor, list[ClientRow]]:
    """The round's matrix and rows with ``count`` fake clients appended (ids ``first_id`` …, no
    partition, zero rows for the adversary stage to write, and the median claimed sample count of
    the real clients: the attacker's best guess of a plausible claim)."""
    import statistics

    claim = statistics.median(r.num_examples for r in rows) if rows else 1.0
    fake_rows = [ClientRow(client_id=first_id + j, partition_id=None, malicious=True,
                           num_examples=claim, train_loss=None, index=len(rows) + j)
                 for j in range(count)]
    padded = torch.cat([updates, updates.new_zeros(count, updates.shape[1])])
    return padded, rows + fake_rows


class RoundCore:
    """One round after decoding (see the module docstring), for both engines.

    rule:         the aggregation rule; server_lr: η of the step;
    reference_fn: (round, θ_t) -> the server's reference delta (required if the rule needs one);
    adversary:    simulation-only colluding stage (round, updates (n, d), malicious (n,), θ_t) ->
                  the crafted malicious rows (m, d), written into the matrix in place (θ_t: the
                  global model the clients trained from, which every client receives);
    max_num_examples, num_examples_cap_factor: the cap on client-reported sample counts,
                  min(max_num_examples, factor · median of the round's reports) (None disables);
    hooks:        explicit timing hooks (:class:`Hooks`);
    hashes:       compute the model and update hashes (sha256 of each row, for the ledger); the
                  inline engine, which keeps no ledger, turns them off (None in its records);
    fake_clients: simulation-only: clients the attacker *adds* to every round (MPAF), rows
                  appended for the adversary stage to write, with ids ``fake_first_id`` … (a
                  round can turn them off: ``run(..., fake_clients=0)``);
    device:       where the rule's sorts and Gram products run (``tasks.device.
                  aggregation_device`` of the run key ``device``; None: the CPU).
    """

    def __init__(self, rule: Rule, *, server_lr: float = 1.0,
                 reference_fn: ReferenceFn | None = None, adversary: AdversaryFn | None = None,
                 max_num_examples: float | None = None,
                 num_examples_cap_factor: float | None = 10.0,
                 hooks: Hooks | None = None, hashes: bool = True, fake_clients: int = 0,
                 fake_first_id: int = FAKE_FIRST_ID, device: torch.device | None = None) -> None:
        if fake_clients < 0 or (fake_clients and adversary is None):
            raise ValueError("fake_clients must be >= 0, and needs an adversary to write them")
        self.fake_clients = fake_clients
        self.fake_first_id = fake_first_id
        self.rule = rule
        self.server_lr = float(server_lr)
        self.reference_fn = reference_fn
        self.adversary = adversary
        self.max_num_examples = max_num_examples
        self.num_examples_cap_factor = num_examples_cap_factor
        self.hooks: Hooks = hooks or NoHooks()
        self.hashes = hashes
        self.device = device

    def run(self, rnd: int, global_vec: torch.Tensor, updates: torch.Tensor,
            rows: Sequence[ClientRow], *, replies: int | None = None,
            rejected: Sequence[Rejection] = (), fake_clients: int | None = None) -> RoundRecord:
        """Aggregate round ``rnd``: ``updates`` (n, d) float32 deltas, row i of client ``rows[i]``;
        ``rejected``: what the decoding stage already dropped; ``replies``: how many came in;
        ``fake_clients``: this round's count (default: the core's)."""
        rows, rejected = list(rows), list(rejected)
        replies = len(rows) + len(rejected) if replies is None else replies
        finite = finite_rows(updates)
        if not bool(finite.all()):
            for row in (r for r, ok in zip(rows, finite.tolist(), strict=True) if not ok):
                rejected.append(Rejection(row.index, row.node_id, row.partition_id,
                                          Reason.NON_FINITE, "NaN/Inf in the update"))
            rows = [r for r, ok in zip(rows, finite.tolist(), strict=True) if ok]
            updates = updates[finite]
        fakes = self.fake_clients if fake_clients is None else fake_clients
        if fakes:  # MPAF: the attacker's fake clients join the round; the adversary fills them
            updates, rows = with_fake_clients(updates, rows, fakes, self.fake_first_id)
            replies += fakes
        counts = cap_num_examples([r.num_examples for r in rows],
                                  max_num_examples=self.max_num_examples,
                                  cap_factor=self.num_examples_cap_factor)
        mask = torch.tensor([bool(r.malicious) for r in rows], dtype=torch.bool)
        if self.adversary is not None and bool(mask.any()):
            with self.hooks.phase("attack"):
                updates[mask] = self.adversary(rnd, updates, mask, global_vec).to(updates.dtype)
        new_vec, agg, seconds, skip = global_vec, None, None, ""
        if len(rows) < self.rule.min_clients():
            skip = (f"{len(rows)} valid updates, rule {self.rule.name!r} needs "
                    f"{self.rule.min_clients()}; global model kept")
        else:
            try:
                reference = None
                if self.rule.needs_reference and self.reference_fn is not None:
                    with self.hooks.phase("train"):  # the server trains on its root data
                        reference = self.reference_fn(rnd, global_vec)
                with self.hooks.phase("aggregate"):
                    step = robust_step(
                        global_vec, updates, self.rule, server_lr=self.server_lr,
                        reference=reference, weights=torch.tensor(counts, dtype=torch.float64),
                        client_ids=[r.client_id for r in rows], device=self.device)
                new_vec, agg, seconds = step.new_vec, step.aggregation, step.seconds
            except Exception as exc:  # a rule must never take the server down: skip the round
                skip = f"aggregation failed: {type(exc).__name__}: {exc}; global model kept"
        all_non_finite = replies > 0 and not rows and bool(rejected) and all(
            r.reason == Reason.NON_FINITE for r in rejected)
        diverged = all_non_finite or not bool(torch.isfinite(new_vec).all())
        if diverged and not skip:
            skip = "the new global model is not finite; global model kept"
        if diverged:
            new_vec = global_vec
        return self._record(rnd, global_vec, new_vec, updates, rows, counts, mask, rejected,
                            replies, agg, seconds, skip, diverged)

    def _record(self, rnd: int, before: torch.Tensor, after: torch.Tensor, updates: torch.Tensor,
                rows: list[ClientRow], counts: list[float], mask: torch.Tensor,
                rejected: list[Rejection], replies: int, agg: Aggregation | None,
                seconds: float | None, skip: str, diverged: bool) -> RoundRecord:
        norms = row_norms(updates)
        decisions = [
            Decision(client_id=row.client_id, node_id=row.node_id, partition_id=row.partition_id,
                     malicious=row.malicious, status=status, weight=weight,
                     num_examples=count, reported_examples=row.num_examples,
                     train_loss=row.train_loss, update_norm=norm,
                     update_hash=tensor_hash(updates[i]) if self.hashes else None)
            for i, (row, (status, weight), count, norm)
            in enumerate(zip(rows, _decisions(agg, len(rows)), counts, norms.tolist(),
                             strict=True))]
        decisions += [Decision(client_id=None, node_id=r.node_id, partition_id=r.partition_id,
                               malicious=None, status="rejected", reason=str(r.reason),
                               detail=r.detail) for r in rejected]
        share, share_kind = (None, "none") if agg is None else malicious_share(
            agg, updates, mask, self.rule.name, self.rule.params())
        accepted = None if agg is None else agg.accepted
        if agg is not None and agg.flagged is not None:  # a detector's own decision
            accepted = ~agg.flagged
        return RoundRecord(
            round=rnd, rule=self.rule.name, rule_params=self.rule.params(),
            server_lr=self.server_lr, replies=replies, decisions=decisions,
            skipped=bool(skip), skip_reason=skip, diverged=diverged,
            has_accepted=accepted is not None, malicious_share=share, share_kind=share_kind,
            aggregation_seconds=seconds,
            update_norm=None if agg is None else float(
                torch.linalg.vector_norm(agg.update.double())),
            train_loss=_benign_loss(rows, counts),
            detection=detection(accepted, mask), norms=norm_summary(norms, mask),
            model_hash_before=tensor_hash(before) if self.hashes else None,
            model_hash_after=tensor_hash(after) if self.hashes else None,
            diagnostics={} if agg is None else dict(agg.diagnostics), new_vec=after)


def require_round_size(rule: Rule, per_round: int) -> None:
    """Refuse, before the first round, a run whose rounds can never hold enough clients for the
    rule (every round would keep the initial model)."""
    if per_round < rule.min_clients():
        raise ConfigError(
            f"aggregator {rule.name!r} with {rule.params()} needs at least {rule.min_clients()} "
            f"clients per round, the run has {per_round} (num-clients / clients-per-round): "
            "every round would keep the initial model")


def cap_num_examples(reported: Sequence[float], *, max_num_examples: float | None = None,
                     cap_factor: float | None = 10.0) -> list[float]:
    """Client-reported sample counts (unverified claims) capped at
    ``min(max_num_examples, cap_factor · median(reported))``; ``None`` disables either cap."""
    if not reported:
        return []
    cap = math.inf if max_num_examples is None else float(max_num_examples)
    if cap_factor is not None:
        cap = min(cap, cap_factor * statistics.median(reported))
    return [min(float(n), cap) for n in reported]


def _benign_loss(rows: list[ClientRow], counts: list[float]) -> float | None:
    pairs = [(r.train_loss, c) for r, c in zip(rows, counts, strict=True)
             if r.train_loss is not None and not r.malicious]
    total = sum(c for _, c in pairs)
    return sum(loss * c for loss, c in pairs) / total if total > 0 else None


def _decisions(agg: Aggregation | None, n: int) -> list[tuple[str, float | None]]:
    """(status, weight) of each valid row under the rule's decision: accepted / excluded by
    ``accepted`` when the rule selects, else by a positive weight; every row of a skipped round
    is excluded."""
    if agg is None:
        return [("excluded", None)] * n
    weights = [None] * n if agg.weights is None else agg.weights.double().tolist()
    if agg.accepted is not None:
        chosen = agg.accepted.tolist()
    else:
        chosen = [w is None or w > 0 for w in weights]
    return [("accepted" if ok else "excluded", w) for ok, w in zip(chosen, weights, strict=True)]


def jsonable(value: Any) -> Any:
    """Diagnostics/params as plain JSON (tensors to lists, non-finite floats to None, anything
    else by its repr)."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().tolist()
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, int | str | bool) or value is None:
        return value
    if hasattr(value, "item"):
        return jsonable(value.item())
    return repr(value)


__all__ = ["ClientRow", "Decision", "Hooks", "NoHooks", "Reason", "Rejection", "RoundCore",
           "RoundRecord", "cap_num_examples", "finite_rows", "jsonable", "require_round_size"]
