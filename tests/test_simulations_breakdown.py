"""Breakdown points, confidence intervals and the leaderboard: the definitions on constructed
curves and hand-computed cases, then a real (tiny) breakdown sweep through the CLI."""

import csv
import json
import math

import pytest

from fedshield.simulations import breakdown, stats
from fedshield.simulations.breakdown import asr_breakdown_point, breakdown_point
from fedshield.simulations.cli import main
from fedshield.simulations.tables import Grid, ranking, rule_family, summary_value

FRACTIONS = [0.0, 0.1, 0.2, 0.3, 0.4]


# --- the definitions -----------------------------------------------------------------------------
def test_a_curve_that_never_breaks_has_no_breakdown_point():
    assert breakdown_point(FRACTIONS, [0.90, 0.89, 0.85, 0.81, 0.805], reference=0.90) is None


def test_a_curve_broken_at_fraction_zero_breaks_there():
    assert breakdown_point(FRACTIONS, [0.70, 0.60, 0.5, 0.4, 0.3], reference=0.90) == 0.0


def test_the_breakdown_point_is_the_first_fraction_more_than_the_threshold_below():
    worst = [0.90, 0.85, 0.80, 0.79, 0.50]
    assert breakdown_point(FRACTIONS, worst, reference=0.90) == 0.3  # 0.80 is exactly 10 below
    assert breakdown_point(FRACTIONS, worst, reference=0.90, threshold=0.05) == 0.2
    # the order of the points does not matter; a recovery after breaking does not un-break it
    recovering = [0.9, 0.7, 0.9, 0.9, 0.5]
    assert breakdown_point(FRACTIONS[::-1], recovering[::-1], reference=0.9) == 0.1


def test_a_fraction_the_rule_cannot_run_at_counts_as_broken():
    assert breakdown_point(FRACTIONS, [0.9, 0.9, 0.9, None, None], reference=0.9) == 0.3
    assert asr_breakdown_point(FRACTIONS, [0.0, 0.1, None, 0.9, 1.0]) == 0.2


def test_the_backdoor_breakdown_point_is_where_asr_passes_the_level():
    asr = [0.0, 0.2, 0.5, 0.51, 0.9]
    assert asr_breakdown_point(FRACTIONS, asr) == 0.3  # 0.5 is not above 50 %
    assert asr_breakdown_point(FRACTIONS, asr, level=0.1) == 0.1
    assert asr_breakdown_point(FRACTIONS, [0.0] * 5) is None


def test_confidence_interval_against_a_hand_computed_case():
    # x = 0.80, 0.82, 0.90: mean 0.84, s = sqrt(0.0056 / 2) = 0.0529150,
    # t(0.975, 2) = 4.3026527, half-width = 4.3026527 * 0.0529150 / sqrt(3) = 0.1314473
    est = stats.mean_ci([0.80, 0.82, 0.90])
    assert est.mean == pytest.approx(0.84)
    assert est.half_width == pytest.approx(0.1314473, abs=1e-6)
    assert (est.low, est.high) == pytest.approx((0.84 - 0.1314473, 0.84 + 0.1314473), abs=1e-6)
    # two seeds: t(0.975, 1) = 12.7062047; x = 1, 3: s = sqrt(2), half-width = 12.706 * 1
    assert stats.mean_ci([1.0, 3.0]).half_width == pytest.approx(12.7062047, abs=1e-6)
    assert stats.mean_ci([0.5]) == stats.Estimate(0.5, 0.0, 1)
    assert stats.mean_ci([]) is None


def test_welch_test_against_a_hand_computed_case():
    # a = 1, 2, 3 (var 1), b = 4, 6, 8 (var 4): t = -4 / sqrt(1/3 + 4/3) = -3.0984,
    # Welch dof = (5/3)^2 / ((1/3)^2/2 + (4/3)^2/2) = 2.9412; two-sided p = 0.0548
    assert stats.welch_p([1, 2, 3], [4, 6, 8]) == pytest.approx(0.0548, abs=5e-4)
    assert stats.indistinguishable([1, 2, 3], [4, 6, 8]) is True
    assert stats.indistinguishable([1.0, 1.1, 0.9], [5.0, 5.1, 4.9]) is False
    assert stats.welch_p([0.5, 0.5], [0.5, 0.5]) == 1.0
    assert stats.welch_p([0.5, 0.5], [0.6, 0.6]) == 0.0
    assert stats.welch_p([0.5], [0.6, 0.7]) is None


# --- from cell records ---------------------------------------------------------------------------
def _cell(rule, attack, fraction, seed, acc, asr=None, f=None):
    entry = rule if f is None else {"name": rule, "f": "auto"}
    params = {} if f is None else {"f": f}
    label = rule if f is None else f"{rule}(f={f})"
    return {"id": f"{label}-{attack}-{fraction}-{seed}", "rule": label, "attack": attack,
            "axes": {"aggregator": entry, "malicious_fraction": fraction},
            "config": {"aggregator": rule, "aggregator_params": params, "attack": attack,
                       "malicious_fraction": fraction, "num_clients": 20, "seed": seed},
            "clean": attack == "none" or fraction == 0.0, "engine": "inline",
            "summary": {"final_accuracy": acc, "final_asr": asr}, "rounds": []}


KRUM_ALIE = {0.1: 0.83, 0.2: 0.68}


def _sweep():
    """Rule 'steady' never breaks; 'krum' (f follows the fraction) breaks at 0.2 under alie
    and cannot be configured at 0.3; 'weak' is below its reference by 20 points at 0.1."""
    cells = []
    for seed, noise in enumerate((-0.01, 0.0, 0.01)):
        for alpha in (0.0, 0.1, 0.2, 0.3):
            f = round(alpha * 20)
            cells.append(_cell("steady", "none", alpha, seed, 0.90 + noise))
            cells.append(_cell("weak", "none", alpha, seed, 0.92 + noise))
            if alpha < 0.3:
                cells.append(_cell("krum", "none", alpha, seed, 0.88 + noise, f=f))
            if alpha == 0.0:
                continue
            cells.append(_cell("steady", "alie", alpha, seed, 0.88 + noise))
            cells.append(_cell("steady", "backdoor", alpha, seed, 0.89, asr=0.1))
            cells.append(_cell("weak", "alie", alpha, seed, 0.72 + noise))
            cells.append(_cell("weak", "backdoor", alpha, seed, 0.9, asr=alpha * 3))
            if alpha < 0.3:
                cells.append(_cell("krum", "alie", alpha, seed, KRUM_ALIE[alpha] + noise, f=f))
    return cells


def test_curves_from_cells_rank_by_breakdown_point_then_worst_case_accuracy():
    ranked = breakdown.curves(_sweep())
    assert [c.rule for c in ranked] == ["steady", "krum(f=auto)", "weak"]
    steady, krum, weak = ranked
    assert steady.breakdown is None and steady.asr_breakdown is None
    assert steady.tolerated.worst.mean == pytest.approx(0.88)
    assert steady.tolerated.attack == "alie"
    # krum: reference 0.88; 0.83 at 0.1 is 5 below, 0.68 at 0.2 is 20 below
    assert krum.breakdown == 0.2 and not krum.breakdown_infeasible
    assert [p.runnable for p in krum.points] == [True, True, True, False]
    assert weak.breakdown == 0.1
    assert weak.asr_breakdown == 0.2  # ASR 0.3 at 0.1, 0.6 at 0.2
    ci = stats.mean_ci([0.71, 0.72, 0.73])
    assert weak.points[1].worst == ci


def test_a_rule_that_cannot_run_before_it_breaks_has_a_marked_breakdown_point():
    cells = [c for c in _sweep() if not (c["rule"].startswith("krum") and c["attack"] == "alie"
                                         and c["config"]["malicious_fraction"] == 0.2)]
    cells = [c if not c["rule"].startswith("krum") or c["attack"] != "alie" else
             {**c, "summary": {"final_accuracy": 0.88, "final_asr": None}} for c in cells]
    cells = [c for c in cells if not (c["rule"].startswith("krum")
                                      and c["config"]["malicious_fraction"] == 0.2)]
    krum = next(c for c in breakdown.curves(cells) if c.rule == "krum(f=auto)")
    assert krum.breakdown == 0.2 and krum.breakdown_infeasible


def test_rule_family_keeps_auto_f_unresolved():
    cell = _cell("krum", "alie", 0.2, 0, 0.5, f=4)
    assert cell["rule"] == "krum(f=4)" and rule_family(cell) == "krum(f=auto)"
    assert rule_family(_cell("median", "alie", 0.2, 0, 0.5)) == "median"
    assert rule_family({"rule": "x(f=2)"}) == "x(f=2)"  # no axis: its own label


def test_the_ranking_marks_neighbours_that_seeds_cannot_separate():
    cells = [_cell(rule, "alie", 0.2, seed, acc)
             for rule, values in (("a", (0.80, 0.85, 0.90)), ("b", (0.79, 0.84, 0.89)),
                                  ("c", (0.40, 0.41, 0.42)))
             for seed, acc in enumerate(values)]
    ranked = ranking(Grid(cells, summary_value("final_accuracy")))
    assert [(r.rule, r.tied_with_next) for r in ranked] == [("a", True), ("b", False),
                                                            ("c", None)]
    assert ranked[0].estimate == stats.mean_ci([0.80, 0.85, 0.90])
    text = Grid(cells, summary_value("final_accuracy")).cell_text("a", "alie", pct=True)
    assert text == f"85.0 ± {100 * stats.mean_ci([0.80, 0.85, 0.90]).half_width:.1f}"


# --- end to end ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_breakdown(tmp_path_factory):
    out = tmp_path_factory.mktemp("breakdown") / "results"
    code = main(["sweep", "breakdown", "--out", str(out), "--workers", "1",
                 "--set", "rounds=2", "--set", "seeds=[0,1]",
                 "--set", "malicious_fraction=[0.0,0.1,0.45]",
                 "--set", "aggregator=['median',{name='krum',f='auto'}]",
                 "--set", "attack=[none,signflip,backdoor-patch]"])
    assert code == 0
    return out


def test_leaderboard_of_a_real_breakdown_sweep(tiny_breakdown, tmp_path):
    assert main(["leaderboard", str(tiny_breakdown), "--out", str(tmp_path)]) == 0
    board = json.loads((tmp_path / "leaderboard.json").read_text())
    rules = {r["rule"]: r for r in board["groups"][0]["rules"]}
    assert set(rules) == {"median", "krum(f=auto)"}
    krum = rules["krum(f=auto)"]
    assert [p["runnable"] for p in krum["curve"]] == [True, True, False]  # n = 20 < 2·9 + 3
    assert krum["breakdown_point"] in (0.1, 0.45)
    assert krum["breakdown_infeasible"] == (krum["breakdown_point"] == 0.45)
    assert board["run_time"]["wall_seconds"] > 0 and board["cells"] == 2 * (2 + 2 * 2 * 3 - 3)
    alone = board["groups"][0]["per_attack"]
    assert set(alone) == {"signflip", "backdoor-patch"}
    assert alone["signflip"]["krum(f=auto)"]["breakdown_point"] in (0.1, 0.45)
    rows = list(csv.DictReader((tmp_path / "leaderboard.csv").open()))
    assert {(r["rule"], r["attack"], r["malicious_fraction"]) for r in rows} >= {
        ("median", "none", "0.0"), ("median", "signflip", "0.45"), ("krum(f=auto)", "none", "0.1")}
    assert all(int(r["seeds"]) == 2 for r in rows)
    text = (tmp_path / "leaderboard.md").read_text()
    assert "![breakdown curves](leaderboard.png)" in text and "95 % confidence interval" in text
    assert (tmp_path / "leaderboard.png").stat().st_size > 10_000
    # the report of the same store opens with the breakdown section
    report = (tiny_breakdown / "report.md").read_text()
    assert "## Breakdown points" in report and "plots/breakdown.png" in report
    assert (tiny_breakdown / "plots" / "breakdown.png").is_file()


def test_leaderboard_refuses_a_sweep_without_a_fraction_axis(tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["run", "smoke", "--out", str(out), "--workers", "1", "--set", "rounds=1",
                 "--no-report"]) == 0
    assert main(["leaderboard", str(out)]) == 2
    assert "do not vary the malicious fraction" in capsys.readouterr().err
    assert main(["leaderboard", str(tmp_path / "missing")]) == 2
    assert main(["leaderboard", str(out), "--threshold", "1.5"]) == 2


def test_student_t_quantiles_used_for_three_and_five_seeds():
    assert stats.t_quantile(0.975, 2) == pytest.approx(4.3026527, abs=1e-6)
    assert stats.t_quantile(0.975, 4) == pytest.approx(2.7764451, abs=1e-6)
    assert math.isclose(stats.LEVEL, 0.95)
