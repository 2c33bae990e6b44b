"""Per-round checkpoints of the global model, and resume after a crash.

Layout: ``<output_dir>/checkpoints/round-000007.pt``, one file per finished round, each a
``torch.save`` of ``{"round", "vector" (d,) float32, "model_hash", "keys", "shapes", "rule_state",
"meta"}`` — tensors and plain containers only (the rule's ``state_dict()``), read back with
``torch.load(weights_only=True)``: a checkpoint is data, and a crafted file cannot run code.
Files are written atomically (temporary file + ``os.replace``) so a crash mid-write never leaves a
truncated "latest" checkpoint; only the ``keep`` most recent are kept.

A round is committed in this order: its ledger row, its ``rounds.jsonl`` row, then its
checkpoint, which records how many ledger rows and ``rounds.jsonl`` bytes the committed rounds
hold (``meta["ledger_rows"]``, ``meta["rounds_bytes"]``). The checkpoint is the commit point: a
crash at any step leaves either a committed round or records past the last checkpoint, which a
resume cuts back (:meth:`RowLog.truncate`, ``Ledger.truncate``) before it redoes the round.

Resume policy (ServerApp, run_config ``resume=true``): the run restarts after the latest
checkpoint's round, from its vector. A checkpoint whose ``keys``/``shapes``, rule or rule
parameters differ from the run, or whose round exceeds the configured rounds, is refused with
:class:`CheckpointError` (another experiment wrote that output_dir).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fedshield.server.ledger import tensor_hash

_NAME = re.compile(r"^round-(\d{6})\.pt$")


class CheckpointError(ValueError):
    """A checkpoint cannot be used to resume this run; the message says why."""


@dataclass
class Checkpoint:
    round: int
    vector: torch.Tensor
    keys: list[str] = field(default_factory=list)
    shapes: list[list[int]] = field(default_factory=list)
    rule_state: dict[str, Any] | None = None
    meta: dict[str, Any] = field(default_factory=dict)


class CheckpointStore:
    """Save/load round checkpoints under ``directory``."""

    def __init__(self, directory: str | os.PathLike[str], *, keep: int = 2) -> None:
        if keep < 1:
            raise CheckpointError(f"keep must be >= 1, got {keep}")
        self.directory = Path(directory)
        self.keep = keep

    def path_for(self, server_round: int) -> Path:
        return self.directory / f"round-{server_round:06d}.pt"

    def rounds(self) -> list[int]:
        if not self.directory.is_dir():
            return []
        found = (_NAME.match(p.name) for p in self.directory.iterdir())
        return sorted(int(m.group(1)) for m in found if m)

    def save(self, ckpt: Checkpoint) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        vec = ckpt.vector.detach().to(torch.float32).contiguous().clone()
        payload = {
            "round": int(ckpt.round),
            "vector": vec,
            "model_hash": tensor_hash(vec),
            "keys": list(ckpt.keys),
            "shapes": [list(s) for s in ckpt.shapes],
            "rule_state": ckpt.rule_state,
            "meta": dict(ckpt.meta),
        }
        target = self.path_for(ckpt.round)
        atomic_torch_save(payload, target)
        for old in self.rounds()[: -self.keep]:
            self.path_for(old).unlink(missing_ok=True)
        return target

    def load(self, server_round: int) -> Checkpoint:
        path = self.path_for(server_round)
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
            vec = data["vector"]
        except Exception as exc:  # a damaged file raises anything from pickle/zip/torch
            raise CheckpointError(f"cannot read checkpoint {str(path)!r}: {exc!r}") from None
        if tensor_hash(vec) != data.get("model_hash"):
            raise CheckpointError(f"checkpoint {str(path)!r}: vector does not match its model_hash")
        return Checkpoint(
            round=int(data["round"]),
            vector=vec,
            keys=list(data.get("keys", [])),
            shapes=[list(s) for s in data.get("shapes", [])],
            rule_state=data.get("rule_state"),
            meta=dict(data.get("meta", {})),
        )

    def latest(self) -> Checkpoint | None:
        """The most recent readable checkpoint, or None when there is none."""
        for server_round in reversed(self.rounds()):
            try:
                return self.load(server_round)
            except CheckpointError:
                continue  # a damaged newest file: fall back to the previous one
        return None


def check_compatible(
    ckpt: Checkpoint, keys: list[str], shapes: list[list[int]], rounds: int,
    rule: dict[str, Any] | None = None,
) -> None:
    """Raise :class:`CheckpointError` unless ``ckpt`` belongs to a model with these keys/shapes
    (and, given ``rule`` = {"rule", "rule_params"}, to this rule) and leaves rounds to run
    (``ckpt.round <= rounds``)."""
    if ckpt.keys and (ckpt.keys != list(keys) or ckpt.shapes != [list(s) for s in shapes]):
        raise CheckpointError(
            "checkpoint model layout differs from the task's model (different model/dataset "
            "wrote this output_dir); use another output_dir or resume=false"
        )
    for key, value in (rule or {}).items():
        if key in ckpt.meta and ckpt.meta[key] != value:
            raise CheckpointError(f"checkpoint was written with {key}={ckpt.meta[key]!r}, the run "
                                  f"has {value!r}; use another output_dir")
    if ckpt.round > rounds:
        raise CheckpointError(
            f"checkpoint is at round {ckpt.round} but the run has rounds={rounds}"
        )


def atomic_torch_save(obj: Any, target: Path) -> None:
    """``torch.save`` to ``target`` atomically: a temp file in the same directory, fsync'd, then
    ``os.replace`` — a crash leaves the old file or the new one, never a torn one."""
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-", suffix=".pt")
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class RowLog:
    """An append-only JSONL file of per-round rows (``rounds.jsonl``), each line fsync'd."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def append(self, row: dict[str, Any]) -> None:
        line = json.dumps(row, allow_nan=False) + "\n"
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())

    def size(self) -> int:
        return self.path.stat().st_size if self.path.exists() else 0

    def truncate(self, size: int) -> int:
        """Keep the first ``size`` bytes (the committed rounds); returns the bytes cut."""
        current = self.size()
        if current > size:
            with open(self.path, "r+b") as fh:
                fh.truncate(size)
                os.fsync(fh.fileno())
        return max(0, current - size)
