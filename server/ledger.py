"""Append-only, hash-chained round ledger (JSONL): what the server accepted, and why.

Each line is one JSON object. Besides its payload (see ``RobustStrategy`` for the round rows) every
row carries

- ``seq``       0, 1, 2, ... (its position in the file);
- ``prev_hash`` the ``hash`` of the previous row (``GENESIS`` = 64 zeros for the first row);
- ``hash``      ``sha256(canonical_json(row without "hash"))`` in hex,

where ``canonical_json`` is ``json.dumps(obj, sort_keys=True, separators=(",", ":"),
ensure_ascii=False, allow_nan=False)`` encoded as UTF-8. Editing, deleting, inserting or reordering
a row breaks the chain at that row, which :func:`verify_ledger` names (1-based line number).
The chain detects tampering of a copy checked against a trusted last hash, or of any row but the
last ones when the attacker cannot rewrite all the rows after it; like any hash chain it is not a
signature (an attacker who rewrites the whole tail recomputes valid hashes) — anchor the last hash
elsewhere (a log, a signed tag) when that matters.

Model and update hashes (:func:`tensor_hash`) are ``sha256`` of the contiguous float32 little-endian
bytes of the flat vector (``tasks.params.flatten`` order).

CLI: ``python -m server.ledger verify PATH`` (also ``fedshield ledger verify PATH``): exit 0 if the
chain holds, 1 with the first bad row otherwise, 2 on usage errors.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

GENESIS = "0" * 64


class LedgerError(ValueError):
    """The ledger file cannot be appended to (broken chain, unreadable row)."""


def canonical_json(obj: Any) -> bytes:
    """The exact bytes that are hashed: sorted keys, no spaces, UTF-8, NaN/Inf refused."""
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def row_hash(row: dict[str, Any]) -> str:
    """sha256 hex of the canonical JSON of ``row`` without its ``hash`` field."""
    body = {k: v for k, v in row.items() if k != "hash"}
    return hashlib.sha256(canonical_json(body)).hexdigest()


def tensor_hash(vec: torch.Tensor | np.ndarray) -> str:
    """sha256 hex of a flat vector's float32 little-endian bytes."""
    if isinstance(vec, torch.Tensor):
        vec = vec.detach().cpu().numpy()
    arr = np.ascontiguousarray(vec, dtype="<f4").reshape(-1)
    return hashlib.sha256(memoryview(arr).cast("B")).hexdigest()


@dataclass(frozen=True)
class LedgerCheck:
    """Result of :func:`verify_ledger`. ``first_bad`` is the 1-based line number of the first row
    that breaks the chain (None when ``ok``); ``rows`` the number of rows that verified."""

    ok: bool
    rows: int
    first_bad: int | None = None
    reason: str = ""
    last_hash: str = GENESIS


def verify_ledger(path: str | os.PathLike[str]) -> LedgerCheck:
    """Check every row's hash and its link to the previous row; stop at the first bad row."""
    prev, count = GENESIS, 0
    try:
        lines = Path(path).read_bytes().split(b"\n")
    except OSError as exc:
        return LedgerCheck(False, 0, None, f"cannot read ledger {str(path)!r}: {exc.strerror}")
    if lines and lines[-1] == b"":
        lines.pop()
    for lineno, raw in enumerate(lines, start=1):
        bad = _check_row(raw, count, prev)
        if bad:
            return LedgerCheck(False, count, lineno, bad, prev)
        prev = json.loads(raw)["hash"]
        count += 1
    return LedgerCheck(True, count, None, "", prev)


def _check_row(raw: bytes, seq: int, prev: str) -> str:
    """Empty string if the row is a valid link after ``prev``, else why not."""
    try:
        row = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return f"not valid JSON: {exc}"
    if not isinstance(row, dict):
        return "not a JSON object"
    if row.get("seq") != seq:
        return f"seq is {row.get('seq')!r}, expected {seq} (row deleted, inserted or moved)"
    if row.get("prev_hash") != prev:
        return "prev_hash does not match the previous row's hash (chain broken)"
    try:
        expected = row_hash(row)
    except ValueError as exc:  # NaN/Inf smuggled in
        return f"row not canonically serialisable: {exc}"
    if row.get("hash") != expected:
        return "hash does not match the row's content (row modified)"
    return ""


class Ledger:
    """Appender. Opening an existing file verifies it first and continues its chain (resume);
    a broken file raises :class:`LedgerError` rather than being silently extended."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists() and self.path.stat().st_size > 0:
            check = verify_ledger(self.path)
            if not check.ok:
                raise LedgerError(
                    f"ledger {str(self.path)!r} fails verification at line {check.first_bad}: "
                    f"{check.reason}; refusing to append"
                )
            self._seq, self._prev = check.rows, check.last_hash
        else:
            self._seq, self._prev = 0, GENESIS

    @property
    def last_hash(self) -> str:
        return self._prev

    def append(self, payload: dict[str, Any]) -> dict[str, Any]:
        """Add one row (payload must be JSON-serialisable, finite); returns the stored row."""
        reserved = {"seq", "prev_hash", "hash"} & payload.keys()
        if reserved:
            raise LedgerError(f"payload uses reserved ledger key(s) {sorted(reserved)}")
        row = {**payload, "seq": self._seq, "prev_hash": self._prev}
        row["hash"] = row_hash(row)
        line = canonical_json(row) + b"\n"
        with open(self.path, "ab") as fh:
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())
        self._seq += 1
        self._prev = row["hash"]
        return row


def main(argv: list[str] | None = None) -> int:
    """``verify PATH``: print the verdict; exit code 0 ok, 1 tampered/unreadable."""
    parser = argparse.ArgumentParser(prog="fedshield ledger", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    verify = sub.add_parser("verify", help="check the hash chain of a ledger file")
    verify.add_argument("path")
    args = parser.parse_args(argv)
    check = verify_ledger(args.path)
    if check.ok:
        print(f"OK: {check.rows} rows, chain intact, last hash {check.last_hash}")
        return 0
    where = f"line {check.first_bad}" if check.first_bad else "file"
    print(f"TAMPERED: {where}: {check.reason} ({check.rows} rows verified before it)")
    return 1


if __name__ == "__main__":
    sys.exit(main())
