"""Sweeps: parallel runner, results store, resume after a kill."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedshield.simulations import scenario as sc
from fedshield.simulations.runner import run_sweep
from fedshield.simulations.store import ResultsStore

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["rounds=2", "num_clients=6", "attack=['none', 'labelflip']",
         "aggregator=['fedavg', 'median', 'trimmedmean']", "aggregator_params={}"]


def test_run_sweep_writes_each_cell_once_and_skips_finished(tmp_path):
    scen = sc.load("smoke", ["rounds=2"])
    cells = sc.expand(scen)
    store = ResultsStore(tmp_path)
    store.prepare()
    first = run_sweep(scen, cells[:2], store, workers=1)
    assert [r["id"] for r in first] == [c.id for c in cells[:2]]
    seen = []
    records = run_sweep(scen, cells, store, workers=1,
                        on_start=lambda todo, skipped: seen.append((todo, skipped)))
    assert seen == [(len(cells) - 2, 2)]
    assert {r["id"] for r in records} == {c.id for c in cells[2:]}
    index = [json.loads(x) for x in (tmp_path / "cells.jsonl").read_text().splitlines()]
    assert sorted(r["id"] for r in index) == sorted(c.id for c in cells)
    rounds = (tmp_path / "rounds.jsonl").read_text().splitlines()
    assert len(rounds) == 2 * len(cells)
    # the attack-free twin gives each attacked cell its accuracy drop
    drops = {r["attack"]: r["accuracy_drop"] for r in index if r["rule"] == "fedavg"}
    accuracy = {r["attack"]: r["final_accuracy"] for r in index if r["rule"] == "fedavg"}
    assert drops["none"] == 0.0
    assert drops["labelflip"] == pytest.approx(accuracy["none"] - accuracy["labelflip"])


def _cells(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in (out / "cells").glob("*.json")}


@pytest.mark.slow
def test_killed_sweep_resumes_without_recomputing_or_duplicating(tmp_path):
    out = tmp_path / "res"
    scenario = tmp_path / "s.toml"
    scenario.write_text(
        'name = "resume"\nworkers = 1\ndataset = "digits"\nmodel = "logreg"\n'
        'partition = "iid"\nnum_clients = 6\nrounds = 3\nmalicious_fraction = 0.34\n'
        'aggregator = ["fedavg", "median"]\nattack = ["none", "labelflip", "signflip"]\n'
        'seeds = [0, 1]\n')
    cmd = [sys.executable, "-m", "fedshield.simulations.cli", "run", str(scenario),
           "--out", str(out), "--no-report"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(_cells(out) if out.exists() else {}) < 3:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    before = _cells(out)
    assert 3 <= len(before) < 12, "the run must be killed midway"
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"resuming: {len(before)} finished cells skipped" in done.stdout
    after = _cells(out)
    assert len(after) == 12
    for name, data in before.items():
        assert after[name] == data  # finished cells were not recomputed
    index = [json.loads(x) for x in (out / "cells.jsonl").read_text().splitlines()]
    assert len(index) == 12 and len({r["id"] for r in index}) == 12
    assert len((out / "rounds.jsonl").read_text().splitlines()) == 12 * 3


def test_a_failing_cell_is_recorded_and_the_sweep_goes_on(tmp_path):
    # krum with f=2 needs n >= 2f + 3 = 7 clients; 6 are aggregated: that cell fails
    scen = sc.load("smoke", ["rounds=1", "num_clients=6",
                             "aggregator=['fedavg', {name = 'krum', f = 2}]", "attack=none"])
    cells = sc.expand(scen)
    with pytest.raises(sc.ScenarioError, match=r"krum\(f=2\) needs at least 7 clients"):
        sc.validate_components(cells)
    store = ResultsStore(tmp_path)
    store.prepare()
    records = run_sweep(scen, cells, store, workers=1)
    assert [r.get("failed", False) for r in records] == [False, True]
    assert "needs at least 7" in records[1]["error"]
    assert store.finished() == {cells[0].id}
    assert [f["id"] for f in store.failures()] == [cells[1].id]


def test_appended_index_rows_get_the_drop_when_the_twin_is_done(tmp_path):
    from test_simulations_report import fake_cell

    store = ResultsStore(tmp_path)
    store.prepare()
    store.save_cell(fake_cell(0, "fedavg", "labelflip"))  # twin not finished yet
    store.save_cell(fake_cell(1, "fedavg", "none"))
    store.save_cell(fake_cell(2, "fedavg", "backdoor-patch"))  # twin done: drop 0.9 - 0.85
    rows = [json.loads(x) for x in (tmp_path / "cells.jsonl").read_text().splitlines()]
    assert [r["accuracy_drop"] for r in rows] == [None, 0.0, pytest.approx(0.05)]
    with open(tmp_path / "cells.jsonl", "a") as fh:
        fh.write('{"id": "torn')  # a kill in the middle of an append
    store.rebuild_indexes()
    rows = [json.loads(x) for x in (tmp_path / "cells.jsonl").read_text().splitlines()]
    assert [r["accuracy_drop"] for r in rows] == [pytest.approx(0.6), 0.0, pytest.approx(0.05)]
