"""A Flower user's own app (tests/flower_app: quickstart-style ClientApp returning full weights
and ``train_loss``, an MLP with BatchNorm), with ``RobustStrategy`` dropped in, under ``flwr run``
with 6 SuperNodes of which 2 attack: it finishes, the user's metrics aggregation runs, the final
``Result.arrays`` loads into the model with integer buffers intact, and the robust rule beats
FedAvg under the attack."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers_flower import private_flower_env

APP = Path(__file__).with_name("flower_app")


def flwr_run(tmp_path: Path, strategy: str) -> dict:
    from fedshield.simulations.engine_flower import stop_processes

    home = tmp_path / f"home-{strategy}"
    home.mkdir()
    result = tmp_path / f"{strategy}.json"
    bindir = str(Path(sys.executable).parent)
    env = private_flower_env(home)
    argv = ["timeout", "-k", "5", "300", f"{bindir}/flwr", "run", str(APP), "--stream",
            "--federation-config", "num-supernodes=6 client-resources-num-cpus=1",
            "--run-config", f"strategy='{strategy}' result-file='{result}'"]
    try:
        done = subprocess.run(argv, cwd=APP, env=env, capture_output=True, text=True,
                              check=False)
    finally:
        stop_processes(home)
    log = done.stdout + done.stderr
    assert done.returncode == 0 and result.exists(), log[-4000:]
    return json.loads(result.read_text())


@pytest.mark.flower
def test_a_quickstart_app_with_robust_strategy_dropped_in(tmp_path):
    robust = flwr_run(tmp_path, "median")
    fedavg = flwr_run(tmp_path, "fedavg")
    assert robust["metrics_calls"] == [6] * 5  # the user's train_metrics_aggr_fn, every round
    assert all("train_loss" in m and "robust-accepted" in m
               for m in robust["train_metrics"].values())
    assert robust["num_batches_tracked_dtype"] == "torch.int64"
    assert robust["accuracy"] > 0.8, robust
    assert robust["accuracy"] > fedavg["accuracy"] + 0.3, (robust, fedavg)
