"""Append-only, hash-chained and signed round ledger (JSONL): what the server accepted, and why.

Each line is one JSON object. Besides its payload (the round core's ledger rows, see
:meth:`fedshield.server.round.RoundRecord.report`) every row carries

- ``seq``       0, 1, 2, ... (its position in the file);
- ``prev_hash`` the ``hash`` of the previous row (``GENESIS`` = 64 zeros for the first row);
- ``hash``      ``sha256(canonical_json(row without "hash" and "sig"))`` in hex;
- ``sig``       the Ed25519 signature of the 32 hash bytes by the server's ledger key, in hex,

where ``canonical_json`` is ``json.dumps(obj, sort_keys=True, separators=(",", ":"),
ensure_ascii=False, allow_nan=False)`` encoded as UTF-8.

The chain makes every edit, deletion, insertion or reordering visible at its row; the signatures
make a recomputed chain (a forged row with a valid hash) visible too, since only the holder of
the private key can sign. The key lives outside the output directory (:func:`load_or_create_key`);
its public half is written beside the ledger as ``ledger.pub``, but an auditor pins the key they
trust (``verify --key``) — a public key read from the same directory an attacker can write proves
nothing. Dropping rows from the tail or emptying the file cannot be seen from the file alone:
``verify`` prints the head hash and the row count, to be recorded elsewhere, and checks them
later with ``--expect-head`` and ``--min-rows``. ``verify`` also checks that the model hashes
form one history: each round's ``model_hash_before`` is the previous round's
``model_hash_after`` (the ``start`` row's, or the ``resume`` row's, model hash at the start).

Model and update hashes (:func:`tensor_hash`) are ``sha256`` of the contiguous float32 little-endian
bytes of the flat vector (``fedshield.tasks.params.flatten`` order).

A crash while a row is written leaves a last line without its newline: opening the ledger to
append moves that torn fragment to ``<ledger>.torn`` and continues after the last whole row.

CLI: ``fedshield ledger verify PATH [--key PUB] [--expect-head HASH] [--min-rows N]``: exit 0 if
everything holds, 1 with the first bad row otherwise.
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

GENESIS = "0" * 64
DEFAULT_KEY = Path.home() / ".fedshield" / "ledger-key.pem"
KEY_ENV = "FEDSHIELD_LEDGER_KEY"


class LedgerError(ValueError):
    """The ledger file cannot be appended to (broken chain, unreadable row, wrong key)."""


def canonical_json(obj: Any) -> bytes:
    """The exact bytes that are hashed: sorted keys, no spaces, UTF-8, NaN/Inf refused."""
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def row_hash(row: dict[str, Any]) -> str:
    """sha256 hex of the canonical JSON of ``row`` without its ``hash`` and ``sig`` fields."""
    body = {k: v for k, v in row.items() if k not in ("hash", "sig")}
    return hashlib.sha256(canonical_json(body)).hexdigest()


def tensor_hash(vec: Any) -> str:
    """sha256 hex of a flat vector's (torch or numpy) float32 little-endian bytes."""
    if hasattr(vec, "detach"):  # a torch.Tensor (torch is not imported here: the CLI stays light)
        vec = vec.detach().cpu().numpy()
    arr = np.ascontiguousarray(vec, dtype="<f4").reshape(-1)
    return hashlib.sha256(memoryview(arr).cast("B")).hexdigest()


# --- keys -----------------------------------------------------------------------------------------
def key_path(configured: str | os.PathLike[str] | None = None) -> Path:
    """The ledger key's file: the configured path, else ``$FEDSHIELD_LEDGER_KEY``, else
    ``~/.fedshield/ledger-key.pem``."""
    return Path(configured or os.environ.get(KEY_ENV) or DEFAULT_KEY).expanduser()


def load_or_create_key(path: str | os.PathLike[str]) -> Any:
    """The Ed25519 private key in ``path`` (PEM, unencrypted), created with mode 0600 in a 0700
    directory when the file does not exist."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    path = Path(path)
    if path.exists():
        try:
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except (ValueError, TypeError) as exc:
            raise LedgerError(f"ledger key {str(path)!r} is not a PEM private key: {exc}") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise LedgerError(f"ledger key {str(path)!r} is not an Ed25519 key")
        return key
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # never readable by others
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    return key


def public_pem(key: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    public = key.public_key() if hasattr(key, "public_key") else key
    return public.public_bytes(serialization.Encoding.PEM,
                               serialization.PublicFormat.SubjectPublicKeyInfo)


def fingerprint(key: Any) -> str:
    """sha256 of the public key's PEM, first 16 hex digits."""
    return hashlib.sha256(public_pem(key)).hexdigest()[:16]


def load_public_key(path: str | os.PathLike[str]) -> Any:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        key = serialization.load_pem_public_key(Path(path).read_bytes())
    except (OSError, ValueError) as exc:
        raise LedgerError(f"cannot read public key {str(path)!r}: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise LedgerError(f"{str(path)!r} is not an Ed25519 public key")
    return key


def public_key_path(ledger: str | os.PathLike[str]) -> Path:
    return Path(ledger).with_name("ledger.pub")


# --- verification ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class LedgerCheck:
    """Result of :func:`verify_ledger`. ``first_bad`` is the 1-based line number of the first row
    that fails (None when ``ok``); ``rows`` the number of rows that verified; ``head`` the hash of
    the last verified row; ``key`` the fingerprint of the key the signatures were checked with
    and ``pinned`` whether that key was given by the caller."""

    ok: bool
    rows: int
    first_bad: int | None = None
    reason: str = ""
    head: str = GENESIS
    key: str = ""
    pinned: bool = False


def verify_ledger(path: str | os.PathLike[str], *, key: str | os.PathLike[str] | None = None,
                  expect_head: str | None = None, min_rows: int = 0,
                  require_signatures: bool = True) -> LedgerCheck:
    """Check every row: chain, signature, model-hash continuity; then the head and row count.

    ``key``: the trusted public key (PEM); by default ``ledger.pub`` beside the ledger (reported
    as not pinned). ``expect_head``: a head hash recorded earlier that must still be in the chain
    (rows dropped from the tail remove it). ``min_rows``: the least number of rows."""
    try:
        lines = Path(path).read_bytes().split(b"\n")
    except OSError as exc:
        return LedgerCheck(False, 0, None, f"cannot read ledger {str(path)!r}: {exc.strerror}")
    pub_path = Path(key) if key else public_key_path(path)
    public = None
    if pub_path.exists():
        try:
            public = load_public_key(pub_path)
        except LedgerError as exc:
            return LedgerCheck(False, 0, None, str(exc))
    elif key:
        return LedgerCheck(False, 0, None, f"no public key at {str(pub_path)!r}")
    fp = fingerprint(public) if public is not None else ""
    if lines and lines[-1] == b"":
        lines.pop()
    prev, count, model, heads = GENESIS, 0, None, set()
    for lineno, raw in enumerate(lines, start=1):
        bad, row = _check_row(raw, count, prev)
        if not bad:
            bad = _check_signature(row, public, require_signatures)
        if not bad:
            bad, model = _check_model_history(row, model)
        if bad:
            return LedgerCheck(False, count, lineno, bad, prev, fp, bool(key))
        prev = row["hash"]
        heads.add(prev)
        count += 1
    if count < min_rows:
        return LedgerCheck(False, count, None, f"{count} rows, expected at least {min_rows} "
                           "(rows dropped from the tail?)", prev, fp, bool(key))
    if expect_head and expect_head not in heads:
        return LedgerCheck(False, count, None, f"head {expect_head} is not in the chain (rows "
                           "dropped or replaced)", prev, fp, bool(key))
    return LedgerCheck(True, count, None, "", prev, fp, bool(key))


def _check_row(raw: bytes, seq: int, prev: str) -> tuple[str, dict[str, Any]]:
    """("", row) if the row is a valid link after ``prev``, else (why not, {})."""
    try:
        row = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return f"not valid JSON: {exc}", {}
    if not isinstance(row, dict):
        return "not a JSON object", {}
    if row.get("seq") != seq:
        return f"seq is {row.get('seq')!r}, expected {seq} (row deleted, inserted or moved)", {}
    if row.get("prev_hash") != prev:
        return "prev_hash does not match the previous row's hash (chain broken)", {}
    try:
        expected = row_hash(row)
    except ValueError as exc:  # NaN/Inf smuggled in
        return f"row not canonically serialisable: {exc}", {}
    if row.get("hash") != expected:
        return "hash does not match the row's content (row modified)", {}
    return "", row


def _check_signature(row: dict[str, Any], public: Any, required: bool) -> str:
    sig = row.get("sig")
    if sig is None:
        return "row is not signed" if required and public is not None else ""
    if public is None:
        return "row is signed but no public key was found (pass --key)"
    from cryptography.exceptions import InvalidSignature

    try:
        public.verify(bytes.fromhex(sig), bytes.fromhex(row["hash"]))
    except (InvalidSignature, ValueError):
        return "signature does not verify with the ledger key (forged or re-signed row)"
    return ""


def _check_model_history(row: dict[str, Any], model: str | None) -> tuple[str, str | None]:
    kind = row.get("kind")
    if kind == "start":
        return "", row.get("model_hash")
    if kind == "resume":
        if model is not None and row.get("model_hash") != model:
            return "resume model_hash is not the last round's model_hash_after", model
        return "", row.get("model_hash")
    if kind == "round":
        if model is not None and row.get("model_hash_before") != model:
            return ("model_hash_before is not the previous round's model_hash_after (a round "
                    "missing or out of order)"), model
        return "", row.get("model_hash_after")
    return "", model


# --- appending ------------------------------------------------------------------------------------
class Ledger:
    """Appender. Opening an existing file verifies it first and continues its chain (resume);
    a broken file raises :class:`LedgerError` rather than being silently extended. With a
    ``key`` (an Ed25519 private key) every row is signed and ``ledger.pub`` is written beside
    the file (an existing one must hold the same key)."""

    def __init__(self, path: str | os.PathLike[str], key: Any = None) -> None:
        self.path = Path(path)
        self.key = key
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if key is not None:
            pub = public_key_path(self.path)
            if pub.exists() and pub.read_bytes() != public_pem(key):
                raise LedgerError(f"{str(pub)!r} holds another key than the server's ledger key "
                                  f"({fingerprint(key)}); refusing to append")
            if not pub.exists():
                pub.write_bytes(public_pem(key))
        self.torn = self._cut_torn_tail()
        if self.path.exists() and self.path.stat().st_size > 0:
            check = verify_ledger(self.path, require_signatures=key is not None)
            if not check.ok:
                raise LedgerError(
                    f"ledger {str(self.path)!r} fails verification at line {check.first_bad}: "
                    f"{check.reason}; refusing to append")
            self._seq, self._prev = check.rows, check.head
        else:
            self._seq, self._prev = 0, GENESIS

    def _cut_torn_tail(self) -> bytes:
        """A crash mid-write leaves a last line without its newline: move it to ``.torn``."""
        if not self.path.exists():
            return b""
        data = self.path.read_bytes()
        if not data or data.endswith(b"\n"):
            return b""
        cut = data.rfind(b"\n") + 1
        with open(self.path.with_name(self.path.name + ".torn"), "ab") as fh:
            fh.write(data[cut:] + b"\n")
        with open(self.path, "r+b") as fh:
            fh.truncate(cut)
            os.fsync(fh.fileno())
        return data[cut:]

    @property
    def rows(self) -> int:
        return self._seq

    @property
    def last_hash(self) -> str:
        return self._prev

    def append(self, payload: dict[str, Any]) -> dict[str, Any]:
        """Add one row (payload must be JSON-serialisable, finite); returns the stored row."""
        reserved = {"seq", "prev_hash", "hash", "sig"} & payload.keys()
        if reserved:
            raise LedgerError(f"payload uses reserved ledger key(s) {sorted(reserved)}")
        row = {**payload, "seq": self._seq, "prev_hash": self._prev}
        row["hash"] = row_hash(row)
        if self.key is not None:
            row["sig"] = self.key.sign(bytes.fromhex(row["hash"])).hex()
        with open(self.path, "ab") as fh:
            fh.write(canonical_json(row) + b"\n")
            fh.flush()
            os.fsync(fh.fileno())
        self._seq += 1
        self._prev = row["hash"]
        return row

    def truncate(self, rows: int) -> list[bytes]:
        """Keep the first ``rows`` rows (crash recovery: rows of a round that was never
        committed); the removed lines are returned and appended to ``<ledger>.uncommitted``."""
        lines = self.path.read_bytes().splitlines(keepends=True)
        if rows > len(lines):
            raise LedgerError(f"cannot keep {rows} rows of a ledger of {len(lines)}")
        removed = lines[rows:]
        if removed:
            with open(self.path.with_name(self.path.name + ".uncommitted"), "ab") as fh:
                fh.writelines(removed)
            with open(self.path, "r+b") as fh:
                fh.truncate(sum(len(line) for line in lines[:rows]))
                os.fsync(fh.fileno())
            self._seq = rows
            self._prev = json.loads(lines[rows - 1])["hash"] if rows else GENESIS
        return removed


def main(argv: list[str] | None = None) -> int:
    """``verify PATH``: print the verdict; exit code 0 ok, 1 tampered/unreadable."""
    parser = argparse.ArgumentParser(prog="fedshield ledger", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    add_verify_arguments(sub.add_parser("verify", help="check a ledger's chain and signatures"))
    args = parser.parse_args(argv)
    return report(args)


def add_verify_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", type=Path)
    parser.add_argument("--key", help="the trusted ledger public key (PEM); default: ledger.pub "
                        "beside the ledger, which proves nothing against who can write there")
    parser.add_argument("--expect-head", help="a head hash recorded earlier: it must still be in "
                        "the chain")
    parser.add_argument("--min-rows", type=int, default=0, help="the least number of rows")


def report(args: argparse.Namespace) -> int:
    check = verify_ledger(args.path, key=args.key, expect_head=args.expect_head,
                          min_rows=args.min_rows)
    key = f"key {check.key} ({'pinned' if check.pinned else 'from ledger.pub, not pinned'})" \
        if check.key else "unsigned"
    if check.ok:
        print(f"OK: {check.rows} rows, chain and model history intact, {key}, head {check.head}")
        return 0
    where = f"line {check.first_bad}" if check.first_bad else "ledger"
    print(f"TAMPERED: {where}: {check.reason} ({check.rows} rows verified before it; "
          f"head {check.head}, {key})")
    return 1


if __name__ == "__main__":
    sys.exit(main())
