"""Diverged runs: non-finite client rows are dropped as the server drops them, a non-finite
global model is never adopted (the last finite model is kept and the run goes on, as on the
server), and the stored cell / report say so."""

from dataclasses import asdict

import pytest
import torch

import fedshield.simulations.engine_inline as engine
from fedshield.server.round import finite_rows
from fedshield.server.validation import Reason
from fedshield.simulations import report, tables
from fedshield.simulations.engine_inline import run_inline
from fedshield.tasks.config import RunConfig
from fedshield.tasks.task import get_task

TINY = dict(dataset="digits", model="logreg", partition="iid", num_clients=6, rounds=3,
            batch_size=16, lr=0.1)


def _poison_rows(monkeypatch, rows: list[int], value: float = float("nan")) -> None:
    """Make the given rows of every round's update matrix non-finite (as a diverged client)."""
    original = engine.train_round

    def train_round(*args, **kwargs):
        trained = original(*args, **kwargs)
        for r in rows:
            trained.updates[r, r] = value
        return trained

    monkeypatch.setattr(engine, "train_round", train_round)


def test_finite_rows_flags_nan_and_inf_rows():
    x = torch.zeros(4, 3)
    x[1, 2], x[3, 0] = float("nan"), float("-inf")
    assert finite_rows(x).tolist() == [True, False, True, False]
    assert finite_rows(torch.empty(2, 0)).tolist() == [True, True]


def test_reason_string_is_the_servers():
    assert str(Reason.NON_FINITE) == "non-finite"


def test_non_finite_row_is_dropped_and_counted(monkeypatch):
    cfg = RunConfig(**TINY, aggregator="fedavg")
    clean = run_inline(cfg)
    _poison_rows(monkeypatch, [0], float("inf"))
    result = run_inline(cfg)
    assert len(result.rounds) == 3
    for row in result.rounds:
        assert row["rejected"] == 1 and row["rejected_by_reason"] == {str(Reason.NON_FINITE): 1}
        assert row["clients"] == 5 and not row["skipped"] and not row["diverged"]
    assert torch.isfinite(result.final_vector).all()
    assert not torch.equal(result.final_vector, clean.final_vector)  # client 0 was left out
    assert all(r["rejected"] == 0 and r["rejected_by_reason"] == {} for r in clean.rounds)


def test_too_few_valid_rows_keep_the_model(monkeypatch):
    # krum f=1 needs 2f+3 = 5 rows; 6 - 2 non-finite = 4: every round keeps θ_0
    cfg = RunConfig(**TINY, aggregator="krum", aggregator_params={"f": 1})
    _poison_rows(monkeypatch, [1, 4])
    result = run_inline(cfg)
    assert [r["skipped"] for r in result.rounds] == [True] * 3
    assert all(r["rejected_by_reason"] == {"non-finite": 2} for r in result.rounds)
    assert "needs 5" in result.rounds[0]["skip_reason"] and not result.rounds[-1]["diverged"]
    assert torch.equal(result.final_vector, get_task(cfg).initial_vector())
    assert result.rounds[-1]["accuracy"] is not None  # the last round is still evaluated


def test_every_row_non_finite_is_divergence(monkeypatch):
    cfg = RunConfig(**TINY, aggregator="median")
    _poison_rows(monkeypatch, list(range(6)))
    result = run_inline(cfg)
    assert len(result.rounds) == 3 and all(r["diverged"] for r in result.rounds)
    assert result.rounds[-1]["accuracy"] is not None  # evaluated: the last finite model
    assert torch.equal(result.final_vector, get_task(cfg).initial_vector())


def test_non_finite_global_is_never_adopted_and_the_cell_says_diverged(tmp_path):
    from fedshield.simulations.runner import run_cell
    from fedshield.simulations.store import ResultsStore

    # server_lr 1e39 is +inf in float32: θ_1 = θ_0 + inf · update is not finite at round 1
    cfg = RunConfig(**{**TINY, "rounds": 4}, aggregator="fedavg", server_lr=1e39)
    meta = {"scenario": "div", "order": 0, "rule": "fedavg", "attack": "none", "axes": {}}
    record = run_cell({"config": asdict(cfg), "engine": "inline", "target_accuracy": 0.9,
                       "meta": meta})
    assert "failed" not in record and len(record["rounds"]) == 4
    assert all(r["diverged"] and r["skipped"] for r in record["rounds"])
    summary = record["summary"]
    assert summary["diverged"] is True and summary["diverged_round"] == 1
    assert summary["final_accuracy"] is not None  # accuracy of θ_0, the last finite model
    assert record["rounds"][0]["update_norm"] > 0
    final = run_inline(cfg).final_vector
    assert torch.isfinite(final).all() and torch.equal(final, get_task(cfg).initial_vector())

    store = ResultsStore(tmp_path)
    store.prepare()
    store.save_cell(record)
    cells = store.load_cells()
    assert cells[0]["summary"]["diverged"] is True
    table, _ = tables.summary_table(cells)
    acc = 100 * summary["final_accuracy"]
    assert f"{acc:.1f} (div 1/1)" in table
    asr = tables.Grid(cells, lambda c: c["summary"].get("final_asr"))
    assert asr.cell_text("fedavg", "none") == "div"  # no value, but never shown as missing
    assert "(div 1/1)" in report.write_report(tmp_path).read_text()


def test_summary_of_a_finite_run_is_not_diverged():
    from fedshield.simulations.metrics import summarize

    s = summarize([{"round": 1, "accuracy": 0.5}, {"round": 2, "accuracy": 0.6}], 0.9)
    assert s["diverged"] is False and s["diverged_round"] is None


@pytest.mark.parametrize("missing", [("root_bias_class", "root_p"), ("root_bias_class",)])
def test_report_reads_old_cells_through_runconfig_defaults(missing):
    def cell(i: int, **config) -> dict:
        cfg = asdict(RunConfig(**TINY, **config))
        return {"id": f"c{i}", "rule": "fedavg", "attack": "none", "config": cfg,
                "summary": {"final_accuracy": 0.5}}

    old = cell(0, alpha=0.5)
    for key in missing:
        del old["config"][key]
    new = [cell(1, alpha=0.1), cell(2, alpha=0.5, root_bias_class=3, root_p=0.5)]
    assert report.cell_config(old)["root_bias_class"] == RunConfig().root_bias_class
    # the newer cell first: the old report took the keys from it and then failed on the old
    # cell (KeyError: 'root_bias_class'); either order must give the same sections
    titles = dict(report.groups([*new, old]))
    assert titles.keys() == dict(report.groups([old, *new])).keys()
    assert "root_bias_class" in report.varying_keys([old, *new])
    old_title = next(t for t, cells in titles.items() if cells[0]["id"] == "c0")
    default = RunConfig().root_bias_class
    assert "alpha=0.5" in old_title and f"root_bias_class={default}" in old_title
    assert "root_bias_class" not in report.varying_keys([old, new[0]])  # default = default
