"""The findings checker on constructed results: each finding holds, fails, or reports missing
cells exactly where the published criterion says it should."""

from __future__ import annotations

import json

import pytest

from fedshield.simulations import findings as fd
from fedshield.simulations.findings import Cell, Results


def cell(rule: str, attack: str, err: float, *, asr=None, seed=0, partition="bias", secs=1.0):
    return Cell(rule, attack, partition, seed, 1.0 - err, asr, rounds=10, seconds=secs)


def paper_like() -> list[Cell]:
    """A results set shaped like FLTrust's Table II (every criterion holds)."""
    errors = {
        "fedavg": {"none": 0.04, "labelflip": 0.06, "fang-krum": 0.10, "fang-trim": 0.28},
        "krum": {"none": 0.10, "labelflip": 0.10, "fang-krum": 0.90, "fang-trim": 0.10},
        "trimmedmean": {"none": 0.06, "labelflip": 0.06, "fang-krum": 0.07, "fang-trim": 0.30},
        "median": {"none": 0.06, "labelflip": 0.06, "fang-krum": 0.06, "fang-trim": 0.15},
        "fltrust": {"none": 0.05, "labelflip": 0.05, "fang-krum": 0.05, "fang-trim": 0.05},
    }
    cells = [cell(r, a, e) for r, row in errors.items() for a, e in row.items()]
    cells += [
        cell("fedavg", "scaling", 0.05, asr=1.0),
        cell("krum", "scaling", 0.10, asr=0.0),
        cell("trimmedmean", "scaling", 0.06, asr=0.5),
        cell("median", "scaling", 0.06, asr=0.4),
        cell("fltrust", "scaling", 0.05, asr=0.0),
    ]
    return cells


def replace(cells: list[Cell], rule: str, attack: str, **changes) -> list[Cell]:
    out = []
    for c in cells:
        if c.aggregator == rule and c.attack == attack:
            c = Cell(**{**c.__dict__, **changes})
        out.append(c)
    return out


def by_key(findings):
    return {f.key: f for f in findings}


def test_fltrust_paper_shaped_results_pass_every_criterion():
    found = fd.check_fltrust(Results(paper_like()))
    assert [f.status for f in found] == ["holds"] * 5
    assert fd.exit_code(found) == 0


def test_fltrust_margin_is_inclusive_and_uses_the_worst_attack():
    # fedavg/none 0.04 → bound 0.08: 0.08 holds, 0.0801 on one attack fails
    cells = replace(paper_like(), "fltrust", "fang-trim", accuracy=1 - 0.08)
    assert by_key(fd.check_fltrust(Results(cells)))["fltrust-within-0.04"].holds is True
    cells = replace(paper_like(), "fltrust", "labelflip", accuracy=1 - 0.0801)
    f = by_key(fd.check_fltrust(Results(cells)))["fltrust-within-0.04"]
    assert f.holds is False and "labelflip 0.080" in f.detail


def test_krum_attack_needs_error_strictly_above_half():
    cells = replace(paper_like(), "krum", "fang-krum", accuracy=0.5)  # error exactly 0.5
    assert by_key(fd.check_fltrust(Results(cells)))["krum-attack-breaks-krum"].holds is False


def test_trim_attack_must_double_both_rules():
    cells = replace(paper_like(), "median", "fang-trim", accuracy=1 - 0.119)  # 0.06 → 0.119
    f = by_key(fd.check_fltrust(Results(cells)))["trim-attack-doubles"]
    assert f.holds is False and "median 0.060 → 0.119" in f.detail
    cells = replace(paper_like(), "median", "fang-trim", accuracy=1 - 0.12)  # exactly ×2
    assert by_key(fd.check_fltrust(Results(cells)))["trim-attack-doubles"].holds is True


@pytest.mark.parametrize(
    ("rule", "asr", "holds"),
    [
        ("fedavg", 0.9, True),
        ("fedavg", 0.89, False),
        ("fltrust", 0.05, True),
        ("fltrust", 0.06, False),
    ],
)
def test_scaling_backdoor_bounds(rule, asr, holds):
    cells = replace(paper_like(), rule, "scaling", asr=asr)
    assert by_key(fd.check_fltrust(Results(cells)))["scaling-backdoor"].holds is holds


def test_fang_ordering_compares_increases_not_levels():
    # median's increase (0.09) overtakes trimmed mean's (0.24 → set to 0.05): ordering broken
    cells = replace(paper_like(), "trimmedmean", "fang-trim", accuracy=1 - 0.11)
    f = by_key(fd.check_fltrust(Results(cells)))["fang-ordering"]
    assert f.holds is False and "trimmedmean +0.050" in f.detail and "median +0.090" in f.detail


def test_missing_cells_are_reported_never_passed():
    cells = [c for c in paper_like() if not (c.aggregator == "krum" and c.attack == "fang-krum")]
    found = by_key(fd.check_fltrust(Results(cells)))
    assert found["krum-attack-breaks-krum"].holds is None
    assert "krum × fang-krum" in found["krum-attack-breaks-krum"].detail
    assert found["fang-ordering"].holds is None
    assert fd.exit_code(list(found.values())) == 2


def test_seeds_are_averaged():
    cells = [*paper_like(), cell("krum", "fang-krum", 0.2, seed=1)]  # mean (0.9 + 0.2)/2 = 0.55
    stat = Results(cells).error("krum", "fang-krum")
    assert stat.n == 2 and stat.mean == pytest.approx(0.55)
    assert stat.std == pytest.approx(0.4949747, rel=1e-6)
    cells = [*paper_like(), cell("krum", "fang-krum", 0.0, seed=1)]  # mean 0.45
    assert by_key(fd.check_fltrust(Results(cells)))["krum-attack-breaks-krum"].holds is False


def bucketing_cells(acc_overrides=None) -> list[Cell]:
    acc = {
        ("fedavg", "iid"): 0.988,
        ("krum", "iid"): 0.981,
        ("median", "iid"): 0.978,
        ("geomed", "iid"): 0.987,
        ("centeredclip", "iid"): 0.987,
        ("fedavg", "shards"): 0.988,
        ("krum", "shards"): 0.83,
        ("median", "shards"): 0.80,
        ("geomed", "shards"): 0.85,
        ("centeredclip", "shards"): 0.98,
    }
    acc.update(acc_overrides or {})
    return [cell(r, "none", 1 - a, partition=p) for (r, p), a in acc.items()]


def test_bucketing_published_table_shape_passes():
    found = fd.check_bucketing(Results(bucketing_cells()))
    assert [f.status for f in found] == ["holds"] * 4


def test_bucketing_each_finding_can_fail():
    found = by_key(fd.check_bucketing(Results(bucketing_cells({("krum", "iid"): 0.96}))))
    assert found["iid-all-close"].holds is False
    found = by_key(fd.check_bucketing(Results(bucketing_cells({("geomed", "shards"): 0.95}))))
    assert found["noniid-classic-rules-lose"].holds is False
    cells = bucketing_cells({("centeredclip", "shards"): 0.96})
    assert by_key(fd.check_bucketing(Results(cells)))["noniid-cclip-holds"].holds is False
    cells = bucketing_cells({("fedavg", "shards"): 0.96})
    assert by_key(fd.check_bucketing(Results(cells)))["fedavg-split-insensitive"].holds is False


def alie_cells(err_overrides=None) -> list[Cell]:
    err = {}
    for rule in ("fedavg", "krum", "median", "trimmedmean", "bulyan", "centeredclip"):
        err[(rule, "none")] = 0.10
        err[(rule, "alie")] = 0.12 if rule in ("fedavg", "centeredclip") else 0.40
        err[(rule, "ipm")] = 0.11 if rule in ("fedavg", "centeredclip") else 0.30
    err.update(err_overrides or {})
    return [cell(r, a, e, partition="dirichlet") for (r, a), e in err.items()]


def test_alie_ipm_findings():
    assert [f.holds for f in fd.check_alie_ipm(Results(alie_cells()))] == [True, True]
    # bulyan hurt exactly as much as fedavg: strict inequality fails
    found = fd.check_alie_ipm(Results(alie_cells({("bulyan", "alie"): 0.12})))
    assert [f.holds for f in found] == [False, True]
    found = fd.check_alie_ipm(Results(alie_cells({("median", "ipm"): 0.105})))
    assert [f.holds for f in found] == [True, False]


def test_tables_show_measured_beside_published():
    table = fd.fltrust_table(Results(paper_like()))
    assert table.splitlines()[0] == "| rule | none | labelflip | fang-krum | fang-trim | scaling |"
    assert "| krum | 0.100 (0.10 c) |" in table
    assert "0.050 / 1.000 (? / ≈1.00 ~)" in table
    table = fd.bucketing_table(Results(bucketing_cells()))
    assert "| krum | 98.10 | 98.10 ± 0.14 | 83.00 | 82.97 ± 3.64 |" in table


def write_store(tmp_path, cells: list[Cell], scenario: str = "fltrust-mnist") -> None:
    """Cell records as simulations.store writes them (DIR/cells/<id>.json)."""
    (tmp_path / "cells").mkdir(exist_ok=True)
    for old in (tmp_path / "cells").glob("*.json"):
        old.unlink()
    for number, c in enumerate(cells):
        config = {
            "aggregator": c.aggregator,
            "attack": c.attack,
            "partition": c.partition,
            "seed": c.seed,
            "rounds": c.rounds,
        }
        summary = {"final_accuracy": c.accuracy, "final_asr": c.asr, "rounds": c.rounds}
        record = {
            "id": f"c{number:04d}",
            "scenario": scenario,
            "rule": c.aggregator,
            "attack": c.attack,
            "config": config,
            "summary": summary,
            "rounds": [],
            "seconds": c.seconds,
        }
        (tmp_path / "cells" / f"c{number:04d}.json").write_text(json.dumps(record))


def test_main_reads_a_store_and_sets_the_exit_status(tmp_path, capsys):
    write_store(tmp_path, paper_like())
    assert fd.main(["fltrust", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "25 cells; rounds [10]; seeds [0]; wall time 0.4 min" in out
    assert out.count("holds") == 5
    write_store(tmp_path, replace(paper_like(), "krum", "fang-krum", accuracy=0.9))
    assert fd.main(["fltrust", str(tmp_path), "--markdown"]) == 1
    assert "| Fang's Krum attack raises Krum's error above 0.5 | **FAILS** |" in (
        capsys.readouterr().out
    )


def test_main_json_output(tmp_path, capsys):
    write_store(tmp_path, alie_cells())
    assert fd.main(["alie-ipm", str(tmp_path), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["key"] for r in rows] == ["alie-breaks-classics", "ipm-breaks-classics"]
    assert all(r["status"] == "holds" for r in rows)


def test_scenario_filter(tmp_path, capsys):
    write_store(tmp_path, paper_like(), scenario="other")
    assert fd.main(["fltrust", str(tmp_path), "--scenario", "fltrust-mnist"]) == 2
    assert "no finished cell of scenario 'fltrust-mnist'" in capsys.readouterr().err
    assert len(fd.load_cells(tmp_path, scenario="other")) == 25


def test_bad_results_directories_give_clear_errors(tmp_path, capsys):
    assert fd.main(["fltrust", str(tmp_path / "nowhere")]) == 2
    assert "no results store" in capsys.readouterr().err
    (tmp_path / "cells").mkdir()
    record = {
        "id": "x", "rule": "krum", "attack": "none", "rounds": [],
        "config": {"aggregator": "krum", "attack": "none", "seed": 0},
        "summary": {"final_accuracy": None},
    }
    (tmp_path / "cells" / "x.json").write_text(json.dumps(record))
    with pytest.raises(fd.FindingsError, match="no final accuracy"):
        fd.load_cells(tmp_path)
    # a file that is not a cell record is named and skipped (never a traceback)
    for bad, why in ((json.dumps({"id": "x", "config": {}}), "no str 'rule'"),
                     ("not json", "unreadable (JSONDecodeError"),
                     (b"\xff\xfe", "unreadable (UnicodeDecodeError")):
        target = tmp_path / "cells" / "x.json"
        target.write_bytes(bad if isinstance(bad, bytes) else bad.encode())
        with pytest.raises(fd.FindingsError, match="holds no finished cell"):
            fd.load_cells(tmp_path)
        err = capsys.readouterr().err
        assert str(target) in err and why in err
        assert target.exists()  # the findings only read: the sweep moves bad files aside
    with pytest.raises(SystemExit):
        fd.main(["nonsense", str(tmp_path)])
