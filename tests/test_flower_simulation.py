"""`flwr run .` from the repository root: a real Simulation Engine run (Ray backend) with our
ServerApp and ClientApp, run-config overrides, files, ledger; and what the FAB contains."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from helpers_flower import private_flower_env

from fedshield.server.ledger import verify_ledger

REPO = Path(__file__).resolve().parent.parent


def test_fab_holds_the_configuration_and_no_code():
    """The components are the installed fedshield's: the FAB ships the app's configuration only,
    so no copy of the code in it can shadow or drift from the installed package."""
    from flwr.cli.build import build_fab_from_disk
    from flwr.cli.config_utils import load_and_validate

    fab = build_fab_from_disk(REPO)
    names = zipfile.ZipFile(io.BytesIO(fab)).namelist()
    assert [n for n in names if not n.startswith(".info/")] == ["pyproject.toml"]
    config, _ = load_and_validate(REPO / "pyproject.toml", check_module=True)  # raises if bad
    components = config["tool"]["flwr"]["app"]["components"]
    assert components == {"serverapp": "fedshield.server.server_app:app",
                          "clientapp": "fedshield.clients.client_app:app"}


@pytest.mark.flower
def test_flwr_run_simulation_with_overrides(tmp_path):
    home = tmp_path / "flwr_home"
    home.mkdir()
    out = tmp_path / "out"
    bindir = str(Path(sys.executable).parent)
    env = private_flower_env(home)
    run_config = (f"num-clients=5 rounds=2 local-steps=3 aggregator='krum' "
                  f"aggregator-params='{{\"f\": 1}}' attack='signflip' num-malicious=1 "
                  f"output-dir='{out}'")
    argv = ["timeout", "-k", "5", "300", f"{bindir}/flwr", "run", ".", "--stream",
            "--federation-config", "num-supernodes=5 client-resources-num-cpus=1",
            "--run-config", run_config]
    try:
        result = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True,
                                check=False)
    finally:
        from fedshield.simulations.engine_flower import stop_processes

        stop_processes(home)  # the detached local SuperLink, its ServerApp/simulation and Ray
    log = result.stdout[-3000:] + result.stderr[-3000:]
    assert result.returncode == 0, log
    rows = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2]
    from fedshield.tasks.config import RunConfig

    bad = RunConfig(num_clients=5, attack="signflip", num_malicious=1).malicious_ids()
    for row in rows:
        assert row["partition_ids"] == [0, 1, 2, 3, 4] and not row["skipped"]
        assert row["malicious_in_round"] == bad
        assert row["accepted"][bad[0]] == 0  # Krum does not select the sign-flipped update
        assert 0.0 < row["accuracy"] <= 1.0
    check = verify_ledger(out / "ledger.jsonl")
    assert check.ok and check.rows == 3
    assert (out / "final.pt").exists() and (out / "checkpoints" / "round-000002.pt").exists()
    from fedshield.simulations.engine_flower import processes_of

    assert not processes_of(home)


@pytest.mark.flower
def test_bare_flwr_run_finishes_every_round_on_flowers_default_federation(tmp_path):
    """``flwr run .`` with no flag: num-clients follows the default federation's SuperNodes."""
    home = tmp_path / "flwr_home"
    home.mkdir()
    bindir = str(Path(sys.executable).parent)
    argv = ["timeout", "-k", "5", "300", f"{bindir}/flwr", "run", ".", "--stream"]
    try:
        result = subprocess.run(argv, cwd=REPO, env=private_flower_env(home),
                                capture_output=True, text=True, check=False)
    finally:
        from fedshield.simulations.engine_flower import stop_processes

        stop_processes(home)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-3000:]
    assert "num-clients follows the federation: 2 nodes" in log, log[-3000:]
    assert "round 5, fedavg: kept [" in log and "Waiting for nodes" not in log, log[-3000:]


def test_num_clients_zero_follows_the_federation():
    from fedshield.tasks.config import ConfigError, RunConfig

    assert RunConfig.from_flower({"num-clients": 0}, federation_size=3).num_clients == 3
    assert RunConfig.from_flower({"num-clients": 7}, federation_size=3).num_clients == 7
    with pytest.raises(ConfigError, match="follows the federation"):
        RunConfig.from_flower({"num-clients": 0})
