"""`flwr run .` from the repository root: a real Simulation Engine run (Ray backend) with our
ServerApp and ClientApp, run-config overrides, files, ledger; and what the FAB contains."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from server.deploy.local import free_port
from server.ledger import verify_ledger

REPO = Path(__file__).resolve().parent.parent


def test_fab_holds_the_code_not_the_vendored_data():
    from flwr.cli.build import build_fab_from_disk
    from flwr.common.constant import FAB_MAX_SIZE

    fab = build_fab_from_disk(REPO)
    names = zipfile.ZipFile(io.BytesIO(fab)).namelist()
    assert len(fab) < FAB_MAX_SIZE
    for module in ("server/server_app.py", "clients/client_app.py", "server/strategy.py",
                   "aggregators/base.py", "tasks/config.py", "pyproject.toml"):
        assert module in names
    assert not [n for n in names if n.endswith(".gz") or n.split("/")[0] == "tests"
                  or n.startswith("server/deploy/")]


@pytest.mark.flower
def test_flwr_run_simulation_with_overrides(tmp_path):
    home = tmp_path / "flwr_home"
    home.mkdir()
    out = tmp_path / "out"
    bindir = str(Path(sys.executable).parent)
    env = {**os.environ, "FLWR_HOME": str(home), "PATH": f"{bindir}:{os.environ['PATH']}",
           "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1", "FLWR_DISABLE_UPDATE_CHECK": "1",
           "FLWR_TELEMETRY_ENABLED": "0", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
           "MKL_NUM_THREADS": "1",
           # a private managed SuperLink: never reuse (or collide with) another user's
           "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(free_port()),
           "FLWR_LOCAL_CONTROL_API_PORT": str(free_port())}
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
        from simulations.engine_flower import stop_processes

        stop_processes(home)  # the detached local SuperLink, its ServerApp/simulation and Ray
    log = result.stdout[-3000:] + result.stderr[-3000:]
    assert result.returncode == 0, log
    rows = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2]
    from tasks.config import RunConfig

    bad = RunConfig(num_clients=5, attack="signflip", num_malicious=1).malicious_ids()
    for row in rows:
        assert row["partition_ids"] == [0, 1, 2, 3, 4] and not row["skipped"]
        assert row["malicious_in_round"] == bad
        assert row["accepted"][bad[0]] == 0  # Krum does not select the sign-flipped update
        assert row["accuracy"] is not None
    check = verify_ledger(out / "ledger.jsonl")
    assert check.ok and check.rows == 3
    assert (out / "final.pt").exists() and (out / "checkpoints" / "round-000002.pt").exists()
    from simulations.engine_flower import processes_of

    assert not processes_of(home)
