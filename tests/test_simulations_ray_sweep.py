"""Sweeps on a Ray cluster: a local head started and stopped by the test, a driver killed
mid-sweep and resumed, the same records as the local path."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedshield.simulations import ray_sweep
from fedshield.simulations import scenario as sc
from fedshield.simulations.runner import failure_record, payloads, run_cell
from fedshield.simulations.store import ResultsStore

SCENARIO = """
name = "ray-sweep-test"
engine = "inline"
seeds = [0, 1, 2, 3]
target_accuracy = 0.5
dataset = "digits"
partition = "iid"
model = "logreg"
num_clients = 6
rounds = 4
local_epochs = 1
batch_size = 16
lr = 0.1
malicious_fraction = 0.34
aggregator = ["fedavg", "median", { name = "trimmedmean", f = "auto" }]
attack = ["none", "labelflip"]
"""

DRIVER = "from fedshield.simulations.cli import main; raise SystemExit(main())"


def _driver(toml: Path, out: Path, address: str) -> list[str]:
    return [sys.executable, "-c", DRIVER, "sweep", str(toml), "--out", str(out),
            "--ray", address, "--no-report"]


def _env() -> dict[str, str]:
    return {**os.environ, **ray_sweep.QUIET_ENV, "OMP_NUM_THREADS": "1"}


def test_flower_cells_are_refused_before_ray_starts():
    payload = {"engine": "flower", "config": {}, "meta": {}}
    with pytest.raises(ray_sweep.RaySweepError, match="inline cells only"):
        ray_sweep.run_on_ray([payload], lambda record: None, address="auto")


def test_a_dead_worker_becomes_a_failed_cell_record(tmp_path):
    toml = tmp_path / "s.toml"
    toml.write_text(SCENARIO)
    scenario = sc.load(str(toml), [])
    (payload, *_) = payloads(scenario, sc.expand(scenario))
    record = failure_record(payload, RuntimeError("worker died"))
    assert record["failed"] and record["error"] == "RuntimeError: worker died"
    assert record["id"] == sc.expand(scenario)[0].id and record["rule"] == "fedavg"


@pytest.mark.flower
@pytest.mark.slow
def test_a_sweep_on_a_local_ray_head_survives_a_killed_driver_and_resumes(tmp_path):
    toml = tmp_path / "ray-sweep-test.toml"
    toml.write_text(SCENARIO)
    scenario = sc.load(str(toml), [])
    cells = sc.expand(scenario)
    out = tmp_path / "results"
    store = ResultsStore(out)
    with ray_sweep.local_head(num_cpus=2) as head:
        address = head.address
        driver = subprocess.Popen(_driver(toml, out, address), env=_env(),
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 180
        while not store.finished() and driver.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=30)
        before = store.finished()
        assert 1 <= len(before) < len(cells), driver.stderr.read().decode()[-2000:]
        resumed = subprocess.run(_driver(toml, out, address), env=_env(), capture_output=True,
                                 text=True, timeout=300)
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        assert f"resuming: {len(before)} finished cells skipped" in resumed.stdout
    assert not ray_sweep.group_alive(head.pid)  # every process the head started is gone
    records = store.load_cells()
    assert sorted(r["id"] for r in records) == sorted(c.id for c in cells)
    assert not any(out.glob("failed/*"))
    # a cell run on Ray is the cell run here
    (payload, *_) = payloads(scenario, cells)
    local = run_cell(payload)
    remote = next(r for r in records if r["id"] == local["id"])
    assert remote["final_vector_blake2b"] == local["final_vector_blake2b"]


def test_the_sweep_bench_times_a_path_and_its_rates(tmp_path):
    from fedshield.simulations.bench.sweep import SweepTiming, time_sweep

    timing = SweepTiming("local", cells=3, wall=6.0, arrivals=[2.0, 3.0, 4.0])
    assert timing.cells_per_minute == 30.0 and timing.first_cell == 2.0
    assert timing.steady_per_minute == 60.0  # 2 cells in the 2 s after the first
    toml = tmp_path / "s.toml"
    toml.write_text(SCENARIO.replace("seeds = [0, 1, 2, 3]", "seeds = [0]")
                    .replace("rounds = 4", "rounds = 1"))
    scenario = sc.load(str(toml), [])
    cells = sc.expand(scenario)[:2]
    local = time_sweep("local", scenario, cells, workers=1, ray=None)
    assert local.cells == 2 and len(local.arrivals) == 2 and local.wall >= local.arrivals[-1]
    assert set(local.vectors) == {c.id for c in cells}
