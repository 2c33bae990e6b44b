"""ServerApp + ClientApp end to end in one process (InProcessGrid): files, parity with the inline
engine, crash and resume, FLTrust reference, the simulation adversary stage, node identity."""

from __future__ import annotations

import json

import pytest
import torch
from flwr.app import Context, RecordDict
from helpers_flower import InProcessGrid

from fedshield.clients.client_app import node_identity
from fedshield.server.ledger import verify_ledger
from fedshield.server.server_app import ServerAppError, run_server
from fedshield.tasks.config import ConfigError, RunConfig

BASE = dict(dataset="digits", model="logreg", num_clients=4, rounds=2, local_steps=2,
            batch_size=16, partition="iid", seed=3)


def serve(cfg: RunConfig, **grid_kwargs):
    grid = InProcessGrid(cfg.to_flower(), cfg.num_clients, **grid_kwargs)
    return run_server(grid, cfg)


def rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_files_and_parity_with_inline_engine(tmp_path):
    from fedshield.simulations.engine_inline import run_inline

    cfg = RunConfig(**BASE, aggregator="median", output_dir=str(tmp_path))
    final = serve(cfg)
    out = rows(tmp_path / "rounds.jsonl")
    assert [r["round"] for r in out] == [1, 2]
    assert out[0]["partition_ids"] == [0, 1, 2, 3] and out[0]["rejected"] == 0
    assert 0.0 <= out[1]["accuracy"] <= 1.0 and out[1]["model_hash"]
    check = verify_ledger(tmp_path / "ledger.jsonl")
    assert check.ok and check.rows == 3  # start + 2 rounds
    assert torch.equal(torch.load(tmp_path / "final.pt"), final)
    inline = run_inline(cfg.with_updates(output_dir=""))
    # the ClientApp sends θ_t + Δ (float32) and the server subtracts θ_t: equal up to rounding
    torch.testing.assert_close(final, inline.final_vector, atol=1e-5, rtol=0)
    assert out[1]["accuracy"] == pytest.approx(inline.rounds[-1]["accuracy"], abs=0.01)


@pytest.mark.parametrize("extra", [
    # partial participation (5 of 8 per round) and an omniscient model attack
    dict(num_clients=8, clients_per_round=5, aggregator="krum", aggregator_params={"f": 1},
         attack="alie", num_malicious=2),
    # a data attack, weights from the rule, full participation
    dict(num_clients=6, aggregator="multikrum", aggregator_params={"f": 1},
         attack="labelflip", num_malicious=2),
    # coordinate-wise rule: coordinate share, no per-client decision
    dict(num_clients=6, clients_per_round=4, aggregator="median", attack="signflip",
         attack_params={"factor": 4.0}, num_malicious=2, rounds=3),
])
def test_inline_and_in_process_grid_rows_are_the_same_key_by_key(tmp_path, extra):
    """The two engines share the round core: their per-round rows agree key by key (wall-clock
    keys and the model hash aside). The in-process grid's node i+1001 is partition i, so seeded
    sampling over sorted node ids picks the inline engine's partitions."""
    from conftest import assert_same_rows

    from fedshield.simulations.engine_inline import run_inline

    cfg = RunConfig(**{**BASE, **extra}, output_dir=str(tmp_path))
    final = serve(cfg)
    inline = run_inline(cfg.with_updates(output_dir=""))
    assert_same_rows(rows(tmp_path / "rounds.jsonl"), inline.rounds, atol=1e-4)
    torch.testing.assert_close(final, inline.final_vector, atol=1e-5, rtol=0)


@pytest.mark.parametrize("rule, params", [("median", {}), ("trimmedmean", {"beta": 0.2}),
                                          ("krum", {"f": 1})])
def test_malicious_share_is_the_inline_engines(tmp_path, rule, params):
    from fedshield.simulations.engine_inline import run_inline

    cfg = RunConfig(**{**BASE, "num_clients": 5}, aggregator=rule, aggregator_params=params,
                    attack="labelflip", num_malicious=2, output_dir=str(tmp_path))
    serve(cfg)
    out = rows(tmp_path / "rounds.jsonl")
    inline = run_inline(cfg.with_updates(output_dir=""))
    assert [r["share_kind"] for r in out] == [r["share_kind"] for r in inline.rounds]
    assert out[0]["share_kind"] == ("weights" if rule == "krum" else "coordinates")
    for mine, theirs in zip(out, inline.rounds, strict=True):
        assert mine["malicious_share"] == pytest.approx(theirs["malicious_share"], abs=0.01)


def test_crash_then_resume_gives_the_uninterrupted_result(tmp_path):
    cfg = RunConfig(**{**BASE, "rounds": 3}, aggregator="trimmedmean",
                    aggregator_params={"f": 1}, output_dir=str(tmp_path / "a"))
    reference = serve(cfg)
    crashed = cfg.with_updates(output_dir=str(tmp_path / "b"))
    with pytest.raises(RuntimeError, match="simulated crash"):
        serve(crashed, crash_in_round=2)
    with pytest.raises(ServerAppError, match="resume=true"):
        serve(crashed)
    resumed = run_server(InProcessGrid(crashed.to_flower(), 4), crashed, resume=True)
    torch.testing.assert_close(resumed, reference, atol=0, rtol=0)
    assert [r["round"] for r in rows(tmp_path / "b" / "rounds.jsonl")] == [1, 2, 3]
    kinds = [r["kind"] for r in rows(tmp_path / "b" / "ledger.jsonl")]
    assert kinds == ["start", "round", "resume", "round", "round"]
    assert verify_ledger(tmp_path / "b" / "ledger.jsonl").ok


def test_foolsgold_resume_continues_the_histories_of_the_same_nodes(tmp_path):
    # FoolsGold keeps one history per client id, the authenticated node id (a SuperNode keeps its
    # identity across a server restart); the histories are restored from the checkpoint, so the
    # resumed run equals the uninterrupted one
    cfg = RunConfig(**{**BASE, "rounds": 3}, aggregator="foolsgold",
                    output_dir=str(tmp_path / "a"))
    reference = serve(cfg)
    crashed = cfg.with_updates(output_dir=str(tmp_path / "b"))
    with pytest.raises(RuntimeError, match="simulated crash"):
        serve(crashed, crash_in_round=3)
    resumed = run_server(InProcessGrid(crashed.to_flower(), 4), crashed, resume=True)
    torch.testing.assert_close(resumed, reference, atol=0, rtol=0)
    last = [r for r in rows(tmp_path / "b" / "ledger.jsonl") if r["kind"] == "round"][-1]
    assert last["round"] == 3
    assert {d["client_id"] for d in last["clients"]} == set(range(1001, 1005))


def test_fltrust_gets_the_server_reference_update(tmp_path):
    cfg = RunConfig(**BASE, aggregator="fltrust", root_size=40, output_dir=str(tmp_path))
    serve(cfg)
    out = rows(tmp_path / "rounds.jsonl")
    assert not out[0]["skipped"] and out[0]["weights"] is not None
    ledger = [r for r in rows(tmp_path / "ledger.jsonl") if r["kind"] == "round"]
    assert ledger[0]["clients"][0]["status"] in ("accepted", "excluded")
    assert sum(out[0]["weights"]) == pytest.approx(1.0, abs=1e-5)


def test_model_attack_applied_by_adversary_stage_on_reported_malicious(tmp_path):
    cfg = RunConfig(**{**BASE, "num_clients": 5}, aggregator="krum", aggregator_params={"f": 1},
                    attack="signflip", num_malicious=1, output_dir=str(tmp_path))
    serve(cfg)
    bad = cfg.malicious_ids()
    out = rows(tmp_path / "rounds.jsonl")
    ledger_rounds = [r for r in rows(tmp_path / "ledger.jsonl") if r["kind"] == "round"]
    for row, entry in zip(out, ledger_rounds, strict=True):
        assert not row["skipped"] and sum(row["accepted"]) == 1
        assert row["malicious_in_round"] == bad
        decisions = {d["partition_id"]: d for d in entry["clients"]}
        assert decisions[bad[0]]["malicious"] is True
        assert decisions[bad[0]]["status"] == "excluded"  # krum drops the sign-flipped update
    assert ledger_rounds[0]["rule"] == "krum" and ledger_rounds[0]["rule_params"]["f"] == 1


def test_node_config_decides_malicious_in_a_deployment(tmp_path):
    cfg = RunConfig(**BASE, aggregator="median", attack="labelflip", num_malicious=0,
                    output_dir=str(tmp_path))
    serve(cfg, node_config={2: {"malicious": True}})
    row = rows(tmp_path / "rounds.jsonl")[0]
    assert row["malicious_in_round"] == [2] and not row["skipped"]


def test_too_few_clients_for_the_rule_is_refused_up_front(tmp_path):
    cfg = RunConfig(**BASE, aggregator="krum", aggregator_params={"f": 1})
    with pytest.raises(ServerAppError, match="needs at least 5 clients per round"):
        serve(cfg)


def ctx(node_config, cfg):
    return Context(run_id=1, node_id=5, node_config=node_config, state=RecordDict(),
                   run_config=cfg.to_flower())


def test_node_identity_checks():
    cfg = RunConfig(num_clients=4, attack="labelflip", num_malicious=1)
    pid, mal = node_identity(ctx({"partition-id": 1, "num-partitions": 4}, cfg), cfg)
    assert pid == 1 and mal == (1 in cfg.malicious_ids())
    assert node_identity(ctx({"partition-id": 1, "num-partitions": 4, "malicious": True}, cfg),
                         cfg) == (1, True)
    with pytest.raises(ConfigError, match="num-clients=4"):
        node_identity(ctx({"partition-id": 1, "num-partitions": 2}, cfg), cfg)
    with pytest.raises(ConfigError, match="partition-id=4"):
        node_identity(ctx({"partition-id": 4, "num-partitions": 4}, cfg), cfg)
    with pytest.raises(ConfigError, match="node_config needs"):
        node_identity(ctx({}, cfg), cfg)


# --- crash consistency ---------------------------------------------------------------------------
def _round_rows(path):
    """The ledger's round rows without the chain fields and timings (equal across runs)."""
    skip = {"seq", "prev_hash", "hash", "sig", "aggregation_seconds"}
    return [{k: v for k, v in r.items() if k not in skip}
            for r in rows(path) if r["kind"] == "round"]


def _metric_rows(path):
    skip = {"round_seconds", "aggregation_seconds"}
    return [{k: v for k, v in r.items() if k not in skip} for r in rows(path)]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("reference")
    cfg = RunConfig(**{**BASE, "rounds": 3}, aggregator="foolsgold", output_dir=str(out))
    return cfg, serve(cfg), out


@pytest.mark.slow
@pytest.mark.parametrize("step", ["aggregated", "ledger", "metrics", "checkpoint"])
def test_sigkill_at_any_step_of_a_round_then_resume_equals_the_uninterrupted_run(
        tmp_path, uninterrupted, step):
    """The ServerApp process is killed (SIGKILL, no cleanup) after one step of round 2; the
    resumed run's final model, rounds.jsonl and ledger round rows equal the uninterrupted run's,
    and its ledger verifies (with one resume row)."""
    import os
    import signal
    import subprocess
    import sys
    from dataclasses import asdict
    from pathlib import Path

    ref_cfg, ref_final, ref_out = uninterrupted
    cfg = ref_cfg.with_updates(output_dir=str(tmp_path / "run"))
    helper = Path(__file__).with_name("helpers_crash.py")
    env = {**os.environ, "PYTHONPATH": str(helper.parent)}
    done = subprocess.run([sys.executable, str(helper), json.dumps(asdict(cfg)), step, "2"],
                          env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    final = run_server(InProcessGrid(cfg.to_flower(), cfg.num_clients), cfg, resume=True)
    torch.testing.assert_close(final, ref_final, atol=0, rtol=0)
    out = tmp_path / "run"
    assert _metric_rows(out / "rounds.jsonl") == _metric_rows(ref_out / "rounds.jsonl")
    assert _round_rows(out / "ledger.jsonl") == _round_rows(ref_out / "ledger.jsonl")
    kinds = [r["kind"] for r in rows(out / "ledger.jsonl")]
    assert kinds.count("resume") == 1 and kinds.count("start") == 1
    assert verify_ledger(out / "ledger.jsonl", min_rows=5).ok


def test_resume_without_a_checkpoint_is_refused_and_restart_moves_the_run_aside(tmp_path):
    cfg = RunConfig(**BASE, aggregator="median", output_dir=str(tmp_path))
    with pytest.raises(RuntimeError, match="simulated crash"):
        serve(cfg, crash_in_round=1)  # the run holds a start row and no checkpoint
    with pytest.raises(ServerAppError, match=r"no readable checkpoint.*restart=true"):
        run_server(InProcessGrid(cfg.to_flower(), 4), cfg, resume=True)
    final = run_server(InProcessGrid(cfg.to_flower(), 4), cfg, restart=True)
    (aside,) = tmp_path.glob("previous-*")
    assert (aside / "ledger.jsonl").exists()
    kinds = [r["kind"] for r in rows(tmp_path / "ledger.jsonl")]
    assert kinds == ["start", "round", "round"]
    assert torch.equal(torch.load(tmp_path / "final.pt"), final)


def test_a_checkpoint_of_another_rule_is_refused(tmp_path):
    cfg = RunConfig(**BASE, aggregator="median", output_dir=str(tmp_path))
    serve(cfg)
    other = cfg.with_updates(aggregator="trimmedmean", aggregator_params={"f": 1}, rounds=3)
    with pytest.raises(ServerAppError, match="rule='median'"):
        run_server(InProcessGrid(other.to_flower(), 4), other, resume=True)


def test_a_crafted_checkpoint_does_not_run_code_on_resume(tmp_path):
    """A pickle that would run code when unpickled is refused by weights_only loading."""
    import pickle

    cfg = RunConfig(**BASE, aggregator="median", output_dir=str(tmp_path))
    serve(cfg)
    marker = tmp_path / "owned"

    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    (ckpt,) = sorted((tmp_path / "checkpoints").glob("round-*.pt"))[-1:]
    with open(ckpt, "wb") as fh:
        pickle.dump({"round": 2, "vector": Exploit()}, fh)
    for older in sorted((tmp_path / "checkpoints").glob("round-*.pt"))[:-1]:
        older.unlink()
    with pytest.raises(ServerAppError, match="no readable checkpoint"):
        run_server(InProcessGrid(cfg.to_flower(), 4), cfg.with_updates(rounds=3), resume=True)
    assert not marker.exists()


def test_the_ledger_key_must_live_outside_the_output(tmp_path):
    cfg = RunConfig(**BASE, aggregator="median", output_dir=str(tmp_path))
    with pytest.raises(ServerAppError, match="outside output_dir"):
        run_server(InProcessGrid(cfg.to_flower(), 4), cfg, ledger_key=str(tmp_path / "k.pem"))
