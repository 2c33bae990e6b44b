"""Deployment engine with TLS and SuperNode authentication on 127.0.0.1: a SuperLink and three
registered SuperNodes (one malicious by node-config) run 2 rounds of `median`; the ledger verifies;
a SuperNode with an unregistered key is refused. Every process is bounded by `timeout` and killed
by the test."""

from __future__ import annotations

import json
import socket
import ssl
from pathlib import Path

import pytest

from fedshield.server.deploy.local import LocalFederation, descendants, is_alive
from fedshield.server.ledger import verify_ledger

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.flower
def test_tls_authenticated_deployment_two_rounds_of_median(tmp_path):
    out = tmp_path / "out"
    fed = LocalFederation(tmp_path / "fed", num_supernodes=3, seconds=400)
    started: list[int] = []
    try:
        fed.start(malicious=(1,))
        tls_version, plain_reply = _probe_tls(fed)
        intruder = fed.start_supernode(0, _intruder_key(fed), name="intruder")
        started = [p.popen.pid for p in fed.procs]
        run = fed.run(REPO, f"num-clients=3 rounds=2 local-steps=3 aggregator='median' "
                            f"attack='labelflip' num-malicious=0 output-dir='{out}'",
                      timeout=300)
        intruder_rc = intruder.popen.wait(timeout=60)
    finally:
        fed.stop()
    log = (fed.logs / "flwr-run.log").read_text(errors="replace")
    assert run.returncode == 0, log[-3000:]
    rows = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2]
    for row in rows:
        assert row["partition_ids"] == [0, 1, 2] and row["malicious_in_round"] == [1]
        assert row["rejected"] == 0 and not row["skipped"]
    check = verify_ledger(out / "ledger.jsonl")
    assert check.ok and check.rows == 3, check
    ledger = [json.loads(line) for line in (out / "ledger.jsonl").read_text().splitlines()]
    assert ledger[1]["rule"] == "median"
    assert {c["partition_id"]: c["malicious"] for c in ledger[1]["clients"]} == \
        {0: False, 1: True, 2: False}
    # the unregistered SuperNode is refused by the SuperLink: Flower logs its exit code 305 and
    # the process exits with status 1
    assert intruder_rc == 1
    assert "Exit Code: 305" in intruder.tail(80)
    superlink_log = (fed.logs / "superlink.log").read_text(errors="replace")
    assert "No SuperNode found with the given public key" in superlink_log
    # the SuperLink speaks TLS with our CA's certificate, and refuses plaintext HTTP
    assert tls_version.startswith("TLS")
    assert not plain_reply.startswith(b"HTTP/1.1 200")
    assert not [p for p in descendants(started) if is_alive(p)]


def _probe_tls(fed: LocalFederation) -> tuple[str, bytes]:
    """(negotiated TLS version verifying against our CA, what a plaintext HTTP request gets)."""
    ctx = ssl.create_default_context(cafile=str(fed.creds.ca_cert))
    with socket.create_connection(("127.0.0.1", fed.port), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        version = tls.version() or ""
    with socket.create_connection(("127.0.0.1", fed.port), timeout=10) as raw:
        raw.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        try:
            reply = raw.recv(64)
        except (ConnectionResetError, TimeoutError):
            reply = b""
    return version, reply


def _intruder_key(fed: LocalFederation) -> Path:
    from fedshield.server.deploy.credentials import supernode_keypair

    return supernode_keypair(fed.workdir / "keys" / "intruder")
