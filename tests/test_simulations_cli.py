"""The fedshield CLI: help, errors, list, ledger, and the default benchmark end to end."""

import subprocess
import sys
from pathlib import Path

import pytest

from fedshield.simulations.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_help_is_fast_and_imports_no_torch():
    code = ("import sys; from simulations import cli; cli.build_parser().format_help(); "
            "print('torch' in sys.modules, 'flwr' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         env={"PYTHONPATH": str(ROOT), "PATH": ""}, timeout=60)
    assert out.stdout.strip() == "False False", out.stderr
    for argv in (["--help"], ["run", "--help"], ["report", "--help"], ["bench", "--help"],
                 ["ledger", "verify", "--help"], ["findings", "--help"],
                 ["bench", "simulation", "--help"]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 0


def test_options_before_and_after_the_subcommand_are_the_same():
    from fedshield.simulations.cli import build_parser

    parse = build_parser().parse_args
    assert parse(["--engine", "flower", "run", "smoke"]).engine == "flower"
    assert parse(["run", "smoke", "--engine", "flower"]).engine == "flower"
    assert parse(["run", "smoke"]).engine is None
    both = parse(["--set", "rounds=2", "--workers", "1", "run", "smoke", "--set", "seed=1"])
    assert both.overrides == ["rounds=2"] and both.sub_overrides == ["seed=1"]
    assert both.workers == 1


def test_set_before_and_after_the_subcommand_add_up(capsys):
    assert main(["--set", "seeds=[0, 1]", "run", "smoke", "--set", "rounds=2", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "8 cells" in out and "seed=1" in out


def test_user_errors_exit_2_with_a_message(capsys, tmp_path):
    assert main(["run", "smoke", "--set", "bogus=1"]) == 2
    assert "error: unknown scenario key 'bogus'" in capsys.readouterr().err
    assert main(["run", "smoke", "--set", "aggregator=nosuchrule", "--dry-run"]) == 2
    assert "nosuchrule" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "none")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_dry_run_lists_the_cells(capsys):
    assert main(["sweep", "smoke", "--set", "seeds=[0, 1]", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "smoke: 8 cells" in out and "labelflip" in out


def test_list_shows_every_registry(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for word in ("rules", "fedavg", "attacks", "labelflip", "datasets", "digits", "partitions",
                 "dirichlet", "models", "mlp", "scenarios", "default"):
        assert word in out


def test_ledger_verify(tmp_path, capsys):
    from fedshield.server.ledger import Ledger

    path = tmp_path / "ledger.jsonl"
    ledger = Ledger(path)
    ledger.append({"kind": "start"})
    ledger.append({"kind": "round", "round": 1})
    assert main(["ledger", "verify", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("OK: 2 rows") and f"head {ledger.last_hash}" in out
    path.write_text(path.read_text().replace('"round": 1', '"round": 2').replace(
        '"round":1', '"round":2'))
    assert main(["ledger", "verify", str(path)]) == 1


@pytest.mark.slow
def test_default_benchmark_end_to_end_on_a_reduced_size(tmp_path, capsys):
    out = tmp_path / "default"
    code = main(["--out", str(out), "--workers", "2", "--set", "rounds=2",
                 "--set", "attack=['none', 'labelflip']"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "| rule | none | labelflip | worst |" in printed
    report = (out / "report.md").read_text()
    assert "### Final clean accuracy" in report and "### Ranking by worst-case accuracy" in report
    for rule in ("fedavg", "krum(f=4)", "median", "fltrust", "centeredclip(iterations=3,tau=0.5)"):
        assert f"| {rule} |" in report
    for png in ("accuracy.png", "heatmap.png", "detection.png"):
        assert (out / "plots" / png).stat().st_size > 5000
    assert len(list((out / "cells").glob("*.json"))) == 2 * 9 * 3  # 3 seeds
