"""Validation of the clients' train replies before anything is aggregated.

A reply is dropped, never "repaired", when it is not what an honest ClientApp sends for the round's
global model. Each drop carries one :class:`Reason` (counted in the round's metrics, logged, written
to the ledger) and a human-readable detail. The round goes on with the rest.

Checks, in order (first failure wins):

1. ``duplicate-node``  the node answered more than once this round: *all* its replies are dropped
   (the server cannot tell which one is genuine; an honest node answers once);
2. ``unexpected-node`` the node was not sent a train message this round;
3. ``error-reply``     the reply carries an ``Error`` (the ClientApp raised, failed to load, ...);
4. ``missing-record`` / ``extra-record``  the content must be exactly an ArrayRecord ``arrays``, a
   MetricRecord ``metrics`` and optionally a ConfigRecord ``meta`` (keys configurable), plus the
   records a simulation's observer declares (``ReplyKeys.observed``);
5. ``keys-mismatch`` / ``shape-mismatch`` / ``dtype-mismatch``  the ArrayRecord must have the global
   model's keys, each with its shape and dtype (declared metadata);
6. ``bad-num-examples`` the weight key (``num-examples``) must be a number in [1, 2⁵³]; it is
   client-reported and unverified, so the round core also *caps* it (not dropped) at
   ``min(max_num_examples, cap_factor · median of the round's reports)``;
7. ``bad-meta``        ``meta`` has a ``partition-id`` not an int >= 0 or a non-bool ``malicious``;
8. while decoding (:func:`decode_updates`): ``undecodable`` (the serialized data is not a numeric
   numpy array of the declared shape). Rows with NaN or ±Inf are then dropped as ``non-finite`` by
   the round core, in both engines.

The ``meta`` ConfigRecord ``{"partition-id": int, "malicious": bool}`` is the ground truth an
*evaluation* ClientApp reports so detection can be scored; it is never used to decide acceptance.
"""

from __future__ import annotations

import ctypes
import functools
import math
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord

from fedshield.server.round import ClientRow, Reason, Rejection
from fedshield.tasks.params import ParamLayout, arrayrecord_to_vector

__all__ = ["Expected", "Reason", "Rejection", "ReplyInfo", "ReplyKeys", "check_reply",
           "count_reasons", "decode_updates", "validate_replies"]


@dataclass(frozen=True)
class Expected:
    """What a reply's ArrayRecord must look like: the global model's keys, shapes, dtypes."""

    keys: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[str, ...]

    @classmethod
    def of(cls, record: ArrayRecord) -> Expected:
        keys = tuple(record.keys())
        return cls(
            keys,
            tuple(tuple(record[k].shape) for k in keys),
            tuple(str(record[k].dtype) for k in keys),
        )


@dataclass
class ReplyInfo:
    """One reply that passed the structural checks (``index`` = position in the replies list)."""

    index: int
    node_id: int
    partition_id: int | None
    malicious: bool | None
    num_examples: float  # as reported (the round core caps it)
    train_loss: float | None

    def row(self) -> ClientRow:
        """The round core's view: per-client state is keyed by the node id (what the SuperLink
        authenticates), never by the partition id the client reports."""
        return ClientRow(client_id=self.node_id, partition_id=self.partition_id,
                         malicious=self.malicious, num_examples=self.num_examples,
                         train_loss=self.train_loss, node_id=self.node_id, index=self.index)


@dataclass
class ReplyKeys:
    arrays: str = "arrays"
    metrics: str = "metrics"
    meta: str = "meta"
    weight: str = "num-examples"
    loss: str = "train_loss"  # Flower's convention
    #: records a simulation's observer reads besides these (A3FL's trigger report); any other
    #: record is ``extra-record``
    observed: tuple[str, ...] = ()


def validate_replies(
    replies: Sequence[Message],
    expected: Expected,
    *,
    expected_nodes: Iterable[int] | None = None,
    keys: ReplyKeys | None = None,
) -> tuple[list[ReplyInfo], list[Rejection]]:
    """Structural checks 1–7 of the module docstring; returns (valid, rejected) in reply order."""
    keys = keys or ReplyKeys()
    allowed = None if expected_nodes is None else set(expected_nodes)
    counts = Counter(msg.metadata.src_node_id for msg in replies)
    valid: list[ReplyInfo] = []
    rejected: list[Rejection] = []
    for index, msg in enumerate(replies):
        node = msg.metadata.src_node_id
        pid = _partition_id_hint(msg, keys)
        if counts[node] > 1:
            rejected.append(Rejection(index, node, pid, Reason.DUPLICATE,
                                      f"node {node} sent {counts[node]} replies this round"))
            continue
        if allowed is not None and node not in allowed:
            rejected.append(Rejection(index, node, pid, Reason.UNEXPECTED,
                                      f"node {node} was not sampled this round"))
            continue
        outcome = check_reply(index, msg, expected, keys)
        (rejected if isinstance(outcome, Rejection) else valid).append(outcome)
    return valid, rejected


def check_reply(
    index: int, msg: Message, expected: Expected, keys: ReplyKeys
) -> ReplyInfo | Rejection:
    """Checks 3–7 for one reply."""
    node = msg.metadata.src_node_id
    pid = _partition_id_hint(msg, keys)

    def reject(reason: Reason, detail: str) -> Rejection:
        return Rejection(index, node, pid, reason, detail)

    if msg.has_error():
        err = msg.error
        return reject(Reason.ERROR_REPLY, f"error code {err.code}: {err.reason}")
    content = msg.content
    arrays, metrics = content.get(keys.arrays), content.get(keys.metrics)
    if not isinstance(arrays, ArrayRecord):
        return reject(Reason.MISSING_RECORD, f"no ArrayRecord {keys.arrays!r}")
    if not isinstance(metrics, MetricRecord):
        return reject(Reason.MISSING_RECORD, f"no MetricRecord {keys.metrics!r}")
    meta = content.get(keys.meta)
    if meta is not None and not isinstance(meta, ConfigRecord):
        return reject(Reason.EXTRA_RECORD, f"{keys.meta!r} is a {type(meta).__name__}, "
                                           "expected a ConfigRecord")
    extra = sorted(set(content.keys()) - {keys.arrays, keys.metrics, keys.meta, *keys.observed})
    if extra:
        return reject(Reason.EXTRA_RECORD, f"unexpected record(s) {extra}")
    problem = _check_arrays(arrays, expected)
    if problem:
        return reject(*problem)
    reported = metrics.get(keys.weight)
    if not _is_count(reported):
        return reject(Reason.NUM_EXAMPLES,
                      f"{keys.weight!r} must be a number in [1, 2^53], got {reported!r}")
    partition_id, malicious, meta_problem = _read_meta(meta)
    if meta_problem:
        return reject(Reason.META, meta_problem)
    loss = metrics.get(keys.loss)
    loss = float(loss) if isinstance(loss, int | float) and math.isfinite(loss) else None
    return ReplyInfo(index, node, partition_id, malicious, float(reported), loss)


def decode_updates(
    replies: Sequence[Message],
    valid: list[ReplyInfo],
    global_vec: torch.Tensor,
    layout: ParamLayout,
    arrays_key: str = "arrays",
    *,
    subset: bool = False,
    release: bool = False,
) -> tuple[torch.Tensor, list[ReplyInfo], list[Rejection]]:
    """Decode each valid reply once into a preallocated (n, d) float32 matrix of deltas
    (client − global); drop the replies that do not decode (check 8). Non-finite rows are the
    round core's to drop (``fedshield.server.round``), for both engines alike. ``release``:
    delete each decoded reply's ``layout`` entries from its ArrayRecord as soon as its row is
    written (other entries, e.g. buffers, stay), so that the replies' memory is freed while the
    matrix fills: the round never holds every update twice.

    Returns (updates (k, d) contiguous, kept infos in row order, new rejections)."""
    out = torch.empty((len(valid), global_vec.numel()), dtype=torch.float32)
    kept: list[ReplyInfo] = []
    rejected: list[Rejection] = []
    for info in valid:
        target = out[len(kept)]
        try:
            arrayrecord_to_vector(replies[info.index].content[arrays_key], layout, out=target,
                                  subset=subset)
        except (ValueError, TypeError, RuntimeError, OSError, EOFError) as exc:
            rejected.append(Rejection(info.index, info.node_id, info.partition_id,
                                      Reason.UNDECODABLE, f"cannot decode arrays: {exc}"))
            continue
        target.sub_(global_vec)
        kept.append(info)
        if release:
            record = replies[info.index].content[arrays_key]
            for key in layout.keys:
                del record[key]
            return_freed_memory()
    return out[: len(kept)], kept, rejected


# --- helpers -------------------------------------------------------------------------------------
@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim  # type: ignore[no-any-return]
    except (OSError, AttributeError):  # not glibc
        return None


def return_freed_memory() -> None:
    """Give the heap's free pages back to the system (glibc ``malloc_trim``; a no-op elsewhere).

    A released reply's buffers are mostly heap memory (glibc serves blocks below its adaptive
    mmap threshold, up to 32 MiB, from the heap), which ``free`` keeps for reuse; the update
    matrix is one fresh mapping that cannot reuse it. Without the trim the process holds both."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def _check_arrays(arrays: ArrayRecord, expected: Expected) -> tuple[Reason, str] | None:
    got = tuple(arrays.keys())
    if got != expected.keys:
        missing = sorted(set(expected.keys) - set(got))
        extra = sorted(set(got) - set(expected.keys))
        order = "" if missing or extra else " (same keys, different order)"
        return Reason.KEYS, f"missing keys {missing}, unexpected keys {extra}{order}"
    for key, shape, dtype in zip(expected.keys, expected.shapes, expected.dtypes, strict=True):
        arr = arrays[key]
        if tuple(arr.shape) != shape:
            return Reason.SHAPE, f"{key!r} has shape {tuple(arr.shape)}, expected {shape}"
        if str(arr.dtype) != dtype:
            return Reason.DTYPE, f"{key!r} has dtype {arr.dtype}, expected {dtype}"
    return None


# No client holds more than 2^53 examples (the largest count a float64 holds exactly); a larger
# claim is a lie whose only use is to overflow the weights.
MAX_NUM_EXAMPLES = 2**53


def _is_count(value: Any) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and 1 <= value <= MAX_NUM_EXAMPLES
    )


def _read_meta(meta: ConfigRecord | None) -> tuple[int | None, bool | None, str]:
    if meta is None:
        return None, None, ""
    pid = meta.get("partition-id")
    mal = meta.get("malicious")
    if pid is not None and (isinstance(pid, bool) or not isinstance(pid, int) or pid < 0):
        return None, None, f"partition-id must be an int >= 0, got {pid!r}"
    if mal is not None and not isinstance(mal, bool):
        return None, None, f"malicious must be a bool, got {mal!r}"
    return pid, mal, ""


def _partition_id_hint(msg: Message, keys: ReplyKeys) -> int | None:
    """The partition id a reply claims, for logging even a rejected reply (None if absent)."""
    if msg.has_error():
        return None
    meta = msg.content.get(keys.meta)
    if isinstance(meta, ConfigRecord):
        pid = meta.get("partition-id")
        if isinstance(pid, int) and not isinstance(pid, bool):
            return pid
    return None


def count_reasons(rejected: Iterable[Rejection]) -> dict[str, int]:
    """{reason: count}, for the round metrics."""
    return dict(Counter(str(r.reason) for r in rejected))
