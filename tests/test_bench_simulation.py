"""Correctness of the bench-simulation machinery (probe, round split, row watcher, tables).

No timed assertions: clocks are faked where a value is asserted."""

from __future__ import annotations

import json
import sys
import threading
import time
import types
from itertools import count

import pytest

from simulations import bench_simulation as bs


@pytest.fixture
def fake_modules():
    """A fake 'defining' module and a fake engine module that imported its functions by name."""
    lib = types.ModuleType("simulations._fake_lib")
    calls: list[str] = []

    def train(x):
        calls.append("train")
        return x + 1

    def client_update(x):  # calls train: nested, must be timed once
        calls.append("client_update")
        return lib.train(x)

    def robust_step(x):
        calls.append("robust_step")
        return x * 2

    lib.train, lib.client_update, lib.robust_step = train, client_update, robust_step
    engine = types.ModuleType("simulations._fake_engine")
    engine.client_update, engine.robust_step = client_update, robust_step
    sys.modules[lib.__name__] = lib
    sys.modules[engine.__name__] = engine
    yield lib, engine, calls
    del sys.modules[lib.__name__], sys.modules[engine.__name__]


def test_instrument_times_outermost_calls_and_restores(fake_modules):
    lib, engine, calls = fake_modules
    ticks = count()
    probe = bs.PhaseProbe(clock=lambda: float(next(ticks)), cpu_clock=lambda: 0.0)
    targets = {
        "train": (("simulations._fake_lib", "client_update"), ("simulations._fake_lib", "train")),
        "aggregate": (("simulations._fake_lib", "robust_step"),),
        "eval": (("simulations._no_such_module", "evaluate"),),
    }
    original = engine.client_update
    subs = {"sgd": (("simulations._fake_lib", "train"),)}
    with bs.instrument(probe, targets, subs) as found:
        assert found == ["simulations._fake_lib.client_update", "simulations._fake_lib.train",
                         "simulations._fake_lib.robust_step"]
        assert engine.client_update is not original  # the by-name import is patched too
        assert engine.client_update(1) == 2
        assert engine.robust_step(3) == 6
    assert engine.client_update is original and lib.train.__name__ == "train"
    assert not hasattr(lib.train, "__wrapped_by_probe__")
    assert calls == ["client_update", "train", "robust_step"]
    # fake clock: client_update 0..3 encloses train 1..2, which is not a second "train" event
    # but is the "sgd" sub-phase event; robust_step 4..5
    assert probe.events == [bs.Event("sgd", 1.0, 2.0), bs.Event("train", 0.0, 3.0),
                            bs.Event("aggregate", 4.0, 5.0)]


def test_split_rounds_hand_computed():
    ev = bs.Event
    events = [
        ev("train", 0.0, 1.0), ev("train", 1.0, 2.0), ev("aggregate", 2.5, 3.0),
        ev("eval", 3.0, 3.5),
        ev("train", 4.0, 5.0), ev("train", 5.0, 6.0), ev("aggregate", 6.0, 7.0),
    ]
    rounds = bs.split_rounds(events, end=8.0)
    assert [r.wall for r in rounds] == [4.0, 4.0]
    assert rounds[0].phases == {"train": 2.0, "aggregate": 0.5, "attack": 0.0, "eval": 0.5,
                                "sgd": 0.0}
    assert rounds[0].other == pytest.approx(1.5)
    assert rounds[1].phases["train"] == 2.0 and rounds[1].other == pytest.approx(1.0)


def test_row_watcher_records_each_complete_line(tmp_path):
    path = tmp_path / "rounds.jsonl"
    watcher = bs.RowWatcher(path, interval=0.005)
    watcher.start()

    def writer():
        with path.open("a") as fh:
            for i in range(3):
                fh.write(json.dumps({"round": i + 1}))
                fh.flush()
                time.sleep(0.02)
                fh.write("\n")
                fh.flush()
                time.sleep(0.02)

    thread = threading.Thread(target=writer)
    thread.start()
    thread.join()
    watcher.stop()
    assert len(watcher.times) == 3
    assert watcher.times == sorted(watcher.times)


def test_engine_measurement_steady_state_and_ratios():
    inline = bs.EngineMeasurement("inline", "fedavg", 100, 4, 3.0, 1.0, [0.9, 0.1, 0.1, 0.3])
    flower = bs.EngineMeasurement("flower", "fedavg", 100, 4, 30.0, 20.0, [2.0, 2.0, 2.0, 2.0])
    assert inline.round_median == pytest.approx(0.1)  # median of rounds 2..4
    assert inline.updates_per_second == pytest.approx(1000.0)
    ratios = bs.comparison([inline, flower])
    assert ratios["rounds_per_second_ratio"] == pytest.approx(20.0)
    assert ratios["total_wall_ratio"] == pytest.approx(10.0)
    assert ratios["startup_ratio"] == pytest.approx(20.0)


def test_parse_set_and_bad_flags():
    assert bs.parse_set(["local_steps=2", "partition=iid", "lr=0.1"]) == {
        "local_steps": 2, "partition": "iid", "lr": 0.1}
    with pytest.raises(bs.BenchError, match="key=value"):
        bs.parse_set(["novalue"])
    with pytest.raises(bs.BenchError, match="allowed: inline, flower"):
        bs._engines("inline,ray")
    assert bs.main(["--engines", "bogus"]) == 2


def test_table_formats_numbers():
    text = bs.table(["a", "b"], [(1.23456, float("nan")), ("x", 12345.6)])
    assert text.splitlines() == ["| a | b |", "|---|---|", "| 1.23 | – |", "| x | 12346 |"]


def test_rule_params_for_lowers_f_until_the_rule_accepts_n():
    import aggregators

    if "krum" not in aggregators.available():
        pytest.skip("krum not registered yet")
    params = bs.rule_params_for("krum", 10)
    assert params == {"f": 1}
    assert bs.rule_params_for("krum", 10, {"f": 3}) == {"f": 3}
    assert bs.rule_params_for("fedavg", 10) == {}


@pytest.mark.slow
def test_quick_inline_bench_end_to_end(tmp_path, capsys):
    pytest.importorskip("simulations.engine_inline")
    pytest.importorskip("clients.client")
    pytest.importorskip("tasks.task")
    out = tmp_path / "bench.json"
    code = bs.main(["--engines", "inline", "--clients", "6", "--rounds", "3",
                    "--rules", "fedavg,median", "--json", str(out)])
    assert code == 0
    payload = json.loads(out.read_text())
    (inline,) = payload["engines"]
    assert inline["engine"] == "inline" and len(inline["round_walls"]) == 3
    shares = inline["phase_shares"]
    assert shares["train"] > 0 and shares["aggregate"] > 0
    assert shares["train"] + shares["aggregate"] + shares["other"] == pytest.approx(1.0)
    assert [r["rule"] for r in payload["rules"]] == ["fedavg", "median"]
    text = capsys.readouterr().out
    assert "## Inline round split" in text and "| median |" in text
