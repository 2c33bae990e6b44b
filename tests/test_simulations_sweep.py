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


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="ignore")
    except OSError:
        return ""


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc (Linux)")
def test_sigkill_of_the_sweep_alone_takes_its_workers_with_it(tmp_path):
    """Only the parent is killed (not its process group): its spawned workers must not live on."""
    scenario = tmp_path / "s.toml"
    scenario.write_text(
        'name = "orphans"\nworkers = 2\ndataset = "digits"\nmodel = "mlp"\nnum_clients = 6\n'
        'rounds = 40\naggregator = ["fedavg", "median"]\nattack = ["none", "signflip"]\n'
        'malicious_fraction = 0.34\n')
    cmd = [sys.executable, "-m", "fedshield.simulations.cli", "run", str(scenario),
           "--out", str(tmp_path / "res"), "--no-report", "--workers", "2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    workers: list[int] = []
    while time.monotonic() < deadline and len(workers) < 2:
        time.sleep(0.2)
        workers = [p for p in _children(proc.pid) if "spawn_main" in _cmdline(p)]
    assert len(workers) >= 1, "the sweep started no worker"
    time.sleep(1.0)  # the workers are past their initializer
    proc.kill()
    proc.wait(timeout=30)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and any(_running(p) for p in workers):
        time.sleep(0.2)
    alive = [p for p in workers if _running(p)]
    for p in alive:
        os.kill(p, signal.SIGKILL)
    assert not alive, f"workers {alive} outlived the killed sweep"


def test_a_corrupt_cell_file_is_named_moved_aside_and_its_cell_runs_again(tmp_path, capsys):
    scen = sc.load("smoke", ["rounds=1", "num_clients=6", "aggregator=['fedavg', 'median']",
                             "attack=none"])
    cells = sc.expand(scen)
    store = ResultsStore(tmp_path)
    store.prepare()
    run_sweep(scen, cells, store, workers=1)
    victim = tmp_path / "cells" / f"{cells[1].id}.json"
    victim.write_bytes(victim.read_bytes()[:40])  # torn by a crash of another program
    assert store.finished() == {cells[0].id}  # the other cell is still there, usable
    err = capsys.readouterr().err
    assert str(victim) in err and "unreadable" in err
    assert (tmp_path / "corrupt" / victim.name).exists()
    records = run_sweep(scen, cells, store, workers=1)
    assert [r["id"] for r in records] == [cells[1].id]  # only the lost cell runs again
    assert store.finished() == {c.id for c in cells}
