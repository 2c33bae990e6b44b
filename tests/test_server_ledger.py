"""Hash-chained ledger: the chain verifies, each kind of tampering is located, resume continues it;
checkpoints: atomic save, latest, keep, integrity, compatibility."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

from fedshield.server.checkpoint import (
    Checkpoint,
    CheckpointError,
    CheckpointStore,
    check_compatible,
)
from fedshield.server.ledger import (
    GENESIS,
    Ledger,
    LedgerError,
    canonical_json,
    main,
    row_hash,
    tensor_hash,
    verify_ledger,
)


def write(path, n=4):
    ledger = Ledger(path)
    for i in range(n):
        ledger.append({"kind": "round", "round": i + 1, "value": i * 0.5})
    return ledger


def lines(path):
    return path.read_text(encoding="utf-8").splitlines()


def test_row_hash_is_sha256_of_canonical_json(tmp_path):
    path = tmp_path / "l.jsonl"
    Ledger(path).append({"b": 1, "a": "é"})
    row = json.loads(lines(path)[0])
    body = '{"a":"é","b":1,"prev_hash":"' + GENESIS + '","seq":0}'
    assert row["hash"] == hashlib.sha256(body.encode("utf-8")).hexdigest()
    assert row["prev_hash"] == GENESIS


def test_intact_chain_verifies(tmp_path):
    path = tmp_path / "l.jsonl"
    ledger = write(path)
    check = verify_ledger(path)
    assert check.ok and check.rows == 4 and check.first_bad is None
    assert check.head == ledger.last_hash


@pytest.mark.parametrize(("tamper", "first_bad", "why"), [
    ("edit", 3, "modified"),
    ("delete", 2, "seq"),
    ("swap", 2, "seq"),
    ("garbage", 5, "JSON"),
    ("relink", 4, "prev_hash"),
])
def test_tampering_names_first_bad_row(tmp_path, tamper, first_bad, why):
    path = tmp_path / "l.jsonl"
    write(path)
    rows = lines(path)
    if tamper == "edit":
        rows[2] = rows[2].replace('"value":1.0', '"value":9.0')
    elif tamper == "delete":
        del rows[1]
    elif tamper == "swap":
        rows[1], rows[2] = rows[2], rows[1]
    elif tamper == "garbage":
        rows.append("{not json")
    elif tamper == "relink":  # recompute row 3's own hash after editing: the next link breaks
        row = json.loads(rows[2])
        row["value"] = 9.0
        row["hash"] = row_hash(row)
        rows[2] = canonical_json(row).decode()
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    check = verify_ledger(path)
    assert not check.ok and check.first_bad == first_bad and why in check.reason
    assert main(["verify", str(path)]) == 1


def test_reopen_continues_chain_and_refuses_broken_file(tmp_path):
    path = tmp_path / "l.jsonl"
    write(path, 2)
    Ledger(path).append({"kind": "resume"})
    check = verify_ledger(path)
    assert check.ok and check.rows == 3
    path.write_text(path.read_text().replace('"round":1', '"round":7'))
    with pytest.raises(LedgerError, match="line 1"):
        Ledger(path)
    with pytest.raises(LedgerError, match="reserved"):
        Ledger(tmp_path / "other.jsonl").append({"hash": "x"})


def test_cli_ok_and_missing_file(tmp_path, capsys):
    path = tmp_path / "l.jsonl"
    write(path, 1)
    assert main(["verify", str(path)]) == 0
    assert "OK: 1 rows" in capsys.readouterr().out
    assert main(["verify", str(tmp_path / "nope.jsonl")]) == 1


def test_tensor_hash_depends_on_values_only():
    a = torch.tensor([1.0, 2.0, 3.0])
    assert tensor_hash(a) == tensor_hash(a.clone().numpy()) == tensor_hash(a.double())
    assert tensor_hash(a) != tensor_hash(torch.tensor([1.0, 2.0, 3.0001]))


def test_checkpoints_latest_keep_and_integrity(tmp_path):
    store = CheckpointStore(tmp_path, keep=2)
    for rnd in (1, 2, 3):
        store.save(Checkpoint(rnd, torch.full((4,), float(rnd)), ["w"], [[4]]))
    assert store.rounds() == [2, 3]
    latest = store.latest()
    assert latest.round == 3 and torch.equal(latest.vector, torch.full((4,), 3.0))
    store.path_for(3).write_bytes(b"truncated")  # crash mid-write of a non-atomic writer
    assert store.latest().round == 2
    assert not list(tmp_path.glob(".tmp-*"))


def test_checkpoint_compatibility(tmp_path):
    ck = Checkpoint(3, torch.zeros(4), ["w"], [[4]])
    check_compatible(ck, ["w"], [[4]], rounds=5)
    with pytest.raises(CheckpointError, match="layout"):
        check_compatible(ck, ["w"], [[2, 2]], rounds=5)
    with pytest.raises(CheckpointError, match="rounds=2"):
        check_compatible(ck, ["w"], [[4]], rounds=2)


# --- signatures, head, model history, torn tail --------------------------------------------------
def signed(path, key, n=3):
    ledger = Ledger(path, key=key)
    ledger.append({"kind": "start", "model_hash": "m0"})
    for i in range(1, n + 1):
        ledger.append({"kind": "round", "round": i, "model_hash_before": f"m{i - 1}",
                       "model_hash_after": f"m{i}"})
    return ledger


@pytest.fixture
def key(tmp_path):
    from fedshield.server.ledger import load_or_create_key

    return load_or_create_key(tmp_path / "keys" / "ledger-key.pem")


def test_the_key_is_created_private_and_outside_the_output(tmp_path, key):
    import stat

    path = tmp_path / "keys" / "ledger-key.pem"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_a_forged_row_with_a_recomputed_hash_is_caught_by_its_signature(tmp_path, key):
    path = tmp_path / "out" / "ledger.jsonl"
    ledger = signed(path, key)
    assert verify_ledger(path).ok
    forged = {"kind": "round", "round": 4, "model_hash_before": "m3", "model_hash_after": "evil",
              "seq": 4, "prev_hash": ledger.last_hash}
    forged["hash"] = row_hash(forged)  # the unkeyed chain alone would accept this row
    with open(path, "ab") as fh:
        fh.write(canonical_json(forged) + b"\n")
    check = verify_ledger(path)
    assert not check.ok and check.first_bad == 5 and "not signed" in check.reason
    forged["sig"] = "00" * 64
    lines_ = [*path.read_bytes().splitlines()[:-1], canonical_json(forged)]
    path.write_bytes(b"\n".join(lines_) + b"\n")
    check = verify_ledger(path)
    assert not check.ok and "signature does not verify" in check.reason


def test_a_replaced_public_key_is_caught_when_the_key_is_pinned(tmp_path, key):
    from fedshield.server.ledger import load_or_create_key, public_pem

    path = tmp_path / "out" / "ledger.jsonl"
    signed(path, key)
    trusted = tmp_path / "trusted.pub"
    trusted.write_bytes(public_pem(key))
    # the attacker re-signs everything with their own key and replaces ledger.pub
    evil = load_or_create_key(tmp_path / "evil.pem")
    rows = [json.loads(x) for x in path.read_bytes().splitlines()]
    for row in rows:
        row["sig"] = evil.sign(bytes.fromhex(row["hash"])).hex()
    path.write_bytes(b"".join(canonical_json(r) + b"\n" for r in rows))
    (path.parent / "ledger.pub").write_bytes(public_pem(evil))
    assert verify_ledger(path).ok and not verify_ledger(path).pinned  # unpinned: proves nothing
    check = verify_ledger(path, key=trusted)
    assert not check.ok and check.pinned and "signature does not verify" in check.reason


def test_dropped_tail_or_emptied_file_is_caught_by_the_recorded_head_and_count(tmp_path, key):
    path = tmp_path / "out" / "ledger.jsonl"
    ledger = signed(path, key)
    head, rows = ledger.last_hash, ledger.rows
    assert verify_ledger(path, expect_head=head, min_rows=rows).ok
    path.write_bytes(b"".join(path.read_bytes().splitlines(keepends=True)[:-1]))
    check = verify_ledger(path, expect_head=head)
    assert not check.ok and "not in the chain" in check.reason
    path.write_bytes(b"")
    check = verify_ledger(path, min_rows=rows)
    assert not check.ok and "expected at least 4" in check.reason
    assert main(["verify", str(path), "--min-rows", "4"]) == 1


def test_model_history_must_be_one_chain(tmp_path, key):
    path = tmp_path / "out" / "ledger.jsonl"
    ledger = signed(path, key, n=2)
    ledger.append({"kind": "round", "round": 3, "model_hash_before": "m1",
                   "model_hash_after": "m3"})  # signed, but it skips round 2's model
    check = verify_ledger(path)
    assert not check.ok and check.first_bad == 4 and "model_hash_before" in check.reason


def test_a_torn_last_line_is_set_aside_and_the_chain_continues(tmp_path, key):
    path = tmp_path / "out" / "ledger.jsonl"
    signed(path, key, n=2)
    with open(path, "ab") as fh:
        fh.write(b'{"kind":"round","round":3,"model_ha')  # killed mid-write
    assert not verify_ledger(path).ok
    ledger = Ledger(path, key=key)
    assert ledger.rows == 3 and ledger.torn.startswith(b'{"kind":"round"')
    assert (path.parent / "ledger.jsonl.torn").read_bytes().startswith(b'{"kind":"round"')
    ledger.append({"kind": "resume", "model_hash": "m2"})
    assert verify_ledger(path).ok


def test_another_key_cannot_append_to_a_signed_ledger(tmp_path, key):
    from fedshield.server.ledger import load_or_create_key

    path = tmp_path / "out" / "ledger.jsonl"
    signed(path, key)
    with pytest.raises(LedgerError, match="another key"):
        Ledger(path, key=load_or_create_key(tmp_path / "other.pem"))
