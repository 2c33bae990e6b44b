"""Correctness of the bench-simulation machinery (probe, round split, row watcher, tables).

No timed assertions: clocks are faked where a value is asserted."""

from __future__ import annotations

import json
import threading
import time
from itertools import count

import pytest

from fedshield.simulations.bench import simulation as bs


def test_phase_probe_records_outermost_phases_only():
    ticks = count()
    probe = bs.PhaseProbe(clock=lambda: float(next(ticks)), cpu_clock=lambda: 0.0)
    # train 0..3 encloses a nested train 1..2, which is not a second event
    with probe.phase("train"), probe.phase("train"):
        pass
    with probe.phase("aggregate"):  # 4..5
        pass
    assert probe.events == [bs.Event("train", 0.0, 3.0), bs.Event("aggregate", 4.0, 5.0)]


def test_the_inline_engine_calls_the_hooks_in_round_order():
    from fedshield.simulations.engine_inline import run_inline
    from fedshield.tasks.config import RunConfig

    probe = bs.PhaseProbe()
    run_inline(RunConfig(num_clients=6, rounds=2, aggregator="median", attack="signflip",
                         num_malicious=1), hooks=probe)
    assert [e.phase for e in probe.events] == ["train", "attack", "aggregate", "eval"] * 2


def test_split_rounds_hand_computed():
    ev = bs.Event
    events = [
        ev("train", 0.0, 1.0), ev("train", 1.0, 2.0), ev("aggregate", 2.5, 3.0),
        ev("eval", 3.0, 3.5),
        ev("train", 4.0, 5.0), ev("train", 5.0, 6.0), ev("aggregate", 6.0, 7.0),
    ]
    rounds = bs.split_rounds(events, end=8.0)
    assert [r.wall for r in rounds] == [4.0, 4.0]
    assert rounds[0].phases == {"train": 2.0, "aggregate": 0.5, "attack": 0.0, "eval": 0.5}
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
    params = bs.rule_params_for("krum", 10)
    assert params == {"f": 1}
    assert bs.rule_params_for("krum", 10, {"f": 3}) == {"f": 3}
    assert bs.rule_params_for("fedavg", 10) == {}


@pytest.mark.slow
def test_quick_inline_bench_end_to_end(tmp_path, capsys):
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


@pytest.mark.slow
def test_cnn_bench_times_the_fresh_model_baseline_against_the_current_round(tmp_path, capsys):
    out = tmp_path / "cnn.json"
    assert bs.main(["--cnn", "--quick", "--clients", "4", "--repeats", "1",
                    "--json", str(out)]) == 0
    cnn = json.loads(out.read_text())["cnn"]
    assert cnn["clients"] == 4
    assert len(cnn["baseline_seconds"]) == len(cnn["current_seconds"]) == 1
    assert cnn["max_abs_diff"] < 1e-5  # both steps compute the same updates
    assert cnn["gflop"] > 0 and cnn["sgemm_gflops"] > 0
    assert cnn["ratio"] == pytest.approx(cnn["baseline_median"] / cnn["current_median"])
    text = capsys.readouterr().out
    assert "baseline: fresh NCHW model per client" in text and "compute floor" in text
    assert bs.main(["--cnn", "--repeats", "0"]) == 2


@pytest.mark.slow
def test_gpu_bench_prints_no_gpu_without_one(capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert bs.main(["--gpu", "--quick", "--clients", "4", "--rounds", "2"]) == 0
    text = capsys.readouterr().out
    assert "| round median ms |" in text and "no GPU" in text
    for rule in bs.DEVICE_RULES:  # the aggregation table: the CPU path timed, no GPU column
        cells = text.split(f"\n| {rule} | ")[1].split("\n")[0].split(" | ")
        assert float(cells[0]) > 0 and cells[1] == "no GPU"
