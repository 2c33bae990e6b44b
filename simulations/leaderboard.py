"""``fedshield leaderboard DIR``: the rule × attack × malicious-fraction summary of a breakdown
sweep, as a researcher would paste it into a paper.

Writes, next to the results (or into ``--out``):

- ``leaderboard.md`` — the setup and the run time on top, then the rules ranked by empirical
  breakdown point and then by their worst-case accuracy over the fractions they tolerate (mean ±
  95 % CI over seeds; *≈* where Welch's test cannot separate a rule from the next one down), the
  worst-case accuracy and its attack at every fraction, and the highest backdoor ASR;
- ``leaderboard.png`` — the breakdown curves (worst-case accuracy and backdoor ASR against the
  malicious fraction, 95 % CI bands);
- ``leaderboard.csv`` — one row per rule × attack × fraction (mean, CI half-width and seeds of
  accuracy and ASR), for one's own plotting;
- ``leaderboard.json`` — all of the above, with every curve.

The definitions are in :mod:`simulations.breakdown`.
"""

from __future__ import annotations

import csv
import io
import json
from collections import defaultdict
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from fedshield.simulations import breakdown
from fedshield.simulations.breakdown import Curve
from fedshield.simulations.stats import Estimate, mean_ci
from fedshield.simulations.store import ResultsStore, atomic_write
from fedshield.simulations.tables import (
    ReportError,
    cell_config,
    format_estimate,
    groups,
    malicious_fraction,
    rule_family,
    scenario_notes,
    uncertainty_note,
)

FRACTION_KEYS = {"malicious_fraction", "num_malicious"}
DEFINITION = (
    "Breakdown point: the smallest malicious fraction at which a rule's worst-case accuracy over "
    "the attacks falls more than {threshold:.0f} points below its own accuracy without attack "
    "(† = the rule cannot be configured for that fraction, e.g. Krum needs n ≥ 2f + 3; > x = "
    "never within the sweep). Rules are ranked by it, then by their worst-case accuracy over the "
    "fractions they tolerate; ≈ = Welch's t-test cannot separate the rule from the next one "
    "down (p ≥ 0.05).")


def breakdown_groups(cells: list[dict[str, Any]]) -> list[tuple[str, list[dict[str, Any]]]]:
    """[(title, cells)]: one group per combination of the varying keys other than the
    malicious fraction (e.g. ``defender_fraction``, ``dataset``); [] when the fraction does not
    vary (no curve to draw)."""
    if len({malicious_fraction(cell_config(c)) for c in cells}) < 2:
        return []
    return groups(cells, ignore=FRACTION_KEYS)


def run_time(cells: list[dict[str, Any]]) -> dict[str, Any]:
    """Cell time (the sum of the cells' own seconds) and the wall time from the first cell's
    start to the last cell's end (over the runs that wrote the store)."""
    starts = [(datetime.fromisoformat(c["started_at"]), float(c.get("seconds", 0.0)))
              for c in cells if c.get("started_at")]
    wall = None
    if starts:
        first = min(s for s, _ in starts)
        last = max(s + timedelta(seconds=d) for s, d in starts)
        wall = (last - first).total_seconds()
    return {"cell_seconds": sum(float(c.get("seconds", 0.0)) for c in cells),
            "wall_seconds": wall}


# --- building -------------------------------------------------------------------------------------
def _estimate(e: Estimate | None) -> dict[str, Any] | None:
    return None if e is None else {"mean": e.mean, "ci95": e.half_width, "seeds": e.n}


def curve_record(curve: Curve, rank: int, tied: bool | None) -> dict[str, Any]:
    kept = curve.tolerated
    return {
        "rank": rank, "rule": curve.rule, "breakdown_point": curve.breakdown,
        "breakdown_infeasible": curve.breakdown_infeasible,
        "asr_breakdown_point": curve.asr_breakdown if curve.has_asr else None,
        "accuracy_without_attack": _estimate(curve.reference),
        "tolerated_worst": None if kept is None else {
            "fraction": kept.fraction, "attack": kept.attack, **_estimate(kept.worst)},
        "indistinguishable_from_next": tied,
        "curve": [{"fraction": p.fraction, "runnable": p.runnable, "attack": p.attack,
                   "worst_accuracy": _estimate(p.worst), "clean_accuracy": _estimate(p.clean),
                   "asr_attack": p.asr_attack or None, "max_asr": _estimate(p.asr)}
                  for p in curve.points],
    }


def cell_rows(cells: list[dict[str, Any]], group: str) -> list[dict[str, Any]]:
    """One row per rule × attack × fraction: accuracy and ASR over the seeds."""
    acc: dict[tuple[str, str, float], list[float]] = defaultdict(list)
    asr: dict[tuple[str, str, float], list[float]] = defaultdict(list)
    for cell in cells:
        key = (rule_family(cell), cell["attack"], malicious_fraction(cell_config(cell)))
        summary = cell["summary"]
        if summary.get("final_accuracy") is not None:
            acc[key].append(summary["final_accuracy"])
        if summary.get("final_asr") is not None:
            asr[key].append(summary["final_asr"])
    rows = []
    for (rule, attack, alpha), values in acc.items():
        a, s = mean_ci(values), mean_ci(asr.get((rule, attack, alpha), []))
        rows.append({"group": group, "rule": rule, "attack": attack, "malicious_fraction": alpha,
                     "seeds": len(values), "accuracy_mean": a.mean, "accuracy_ci95": a.half_width,
                     "asr_mean": None if s is None else s.mean,
                     "asr_ci95": None if s is None else s.half_width})
    return sorted(rows, key=lambda r: (r["rule"], r["malicious_fraction"], r["attack"]))


def per_attack(cells: list[dict[str, Any]], threshold: float) -> dict[str, dict[str, Any]]:
    """attack → rule → {breakdown_point, breakdown_infeasible}: each attack alone as the suite
    (how far one attack, e.g. ALIE, moves a rule's breakdown point)."""
    attacks = sorted({c["attack"] for c in cells if not c.get("clean")})
    out: dict[str, dict[str, Any]] = {}
    for attack in attacks:
        alone = [c for c in cells if c.get("clean") or c["attack"] == attack]
        out[attack] = {c.rule: {"breakdown_point": c.breakdown,
                                "breakdown_infeasible": c.breakdown_infeasible}
                       for c in breakdown.curves(alone, threshold)}
    return out


def build(cells: list[dict[str, Any]], threshold: float = breakdown.THRESHOLD,
          asr_level: float = breakdown.ASR_LEVEL) -> dict[str, Any]:
    groups = breakdown_groups(cells)
    if not groups:
        raise ReportError("the cells do not vary the malicious fraction: a leaderboard needs a "
                          "breakdown sweep (e.g. `fedshield sweep breakdown`)")
    out_groups = []
    for title, members in groups:
        ranked = breakdown.curves(members, threshold, asr_level)
        ties = breakdown.tied_with_next(ranked)
        out_groups.append({
            "title": title, "cells": len(members),
            "rules": [curve_record(c, i + 1, t)
                      for i, (c, t) in enumerate(zip(ranked, ties, strict=True))],
            "per_attack": per_attack(members, threshold),
            "rows": cell_rows(members, title),
        })
    return {"setup": scenario_notes(cells), "scenario": cells[0].get("scenario"),
            "cells": len(cells), "uncertainty": uncertainty_note(cells),
            "run_time": run_time(cells), "threshold": threshold, "asr_level": asr_level,
            "groups": out_groups}


# --- writing --------------------------------------------------------------------------------------
def _pct(e: dict[str, Any] | None) -> str:
    if e is None:
        return "—"
    return format_estimate(Estimate(e["mean"], e["ci95"], e["seeds"]), pct=True)


def _alpha(value: float | None, infeasible: bool = False, *, never: str) -> str:
    if value is None:
        return never
    return f"{value:.2f}" + (" †" if infeasible else "")


def group_markdown(group: dict[str, Any], board: dict[str, Any], plot: str | None) -> list[str]:
    rules = group["rules"]
    top = max((p["fraction"] for r in rules for p in r["curve"]), default=0.0)
    never = f"> {top:.2f}"
    lines = []
    if plot:
        lines += [f"![breakdown curves]({plot})", ""]
    lines += ["| rank | rule | breakdown point | backdoor breakdown (ASR > "
              f"{100 * board['asr_level']:.0f} %) | acc without attack (%) | worst-case acc "
              "below its breakdown (%) | at fraction, attack | vs next |",
              "|---:|---|---:|---:|---:|---:|---|---|"]
    for r in rules:
        kept = r["tolerated_worst"]
        where = "—" if kept is None else f"{kept['fraction']:.2f}, {kept['attack']}"
        tie = {True: "≈", False: "", None: ""}[r["indistinguishable_from_next"]]
        has_asr = any(p["max_asr"] for p in r["curve"])
        asr_point = _alpha(r["asr_breakdown_point"], never=never) if has_asr else "—"
        lines.append(
            f"| {r['rank']} | {r['rule']} | "
            f"{_alpha(r['breakdown_point'], r['breakdown_infeasible'], never=never)} | "
            f"{asr_point} | {_pct(r['accuracy_without_attack'])} | {_pct(kept)} | {where} | "
            f"{tie} |")
    fractions = [p["fraction"] for p in rules[0]["curve"]] if rules else []
    lines += ["", "Worst-case accuracy (%) at each malicious fraction, and the attack that "
              "achieves it (— = the rule cannot be configured for that fraction):", "",
              "| rule | " + " | ".join(f"{a:.2f}" for a in fractions) + " |",
              "|---|" + "---:|" * len(fractions)]
    for r in rules:
        cells = [("—" if not p["runnable"] else f"{_pct(p['worst_accuracy'])} {p['attack']}")
                 for p in r["curve"]]
        lines.append(f"| {r['rule']} | " + " | ".join(cells) + " |")
    attacks = list(group["per_attack"])
    if len(attacks) > 1:
        lines += ["", "Breakdown point against each attack alone:", "",
                  "| rule | " + " | ".join(attacks) + " |", "|---|" + "---:|" * len(attacks)]
        for r in rules:
            points = [group["per_attack"][a].get(r["rule"]) for a in attacks]
            lines.append(f"| {r['rule']} | " + " | ".join(
                "—" if p is None else _alpha(p["breakdown_point"], p["breakdown_infeasible"],
                                             never=never) for p in points) + " |")
    if any(p["max_asr"] for r in rules for p in r["curve"]):
        lines += ["", "Highest backdoor ASR (%) at each malicious fraction:", "",
                  "| rule | " + " | ".join(f"{a:.2f}" for a in fractions) + " |",
                  "|---|" + "---:|" * len(fractions)]
        for r in rules:
            cells = [("—" if not p["runnable"] else _pct(p["max_asr"]) if p["max_asr"] else "0")
                     for p in r["curve"]]
            lines.append(f"| {r['rule']} | " + " | ".join(cells) + " |")
    return lines


def markdown(board: dict[str, Any], plots: list[str | None]) -> str:
    t = board["run_time"]
    wall = "—" if t["wall_seconds"] is None else f"{t['wall_seconds'] / 60:.1f} min"
    parts = ["# fedshield leaderboard", "", board["setup"], "",
             f"{board['cells']} cells; run time: {wall} wall, "
             f"{t['cell_seconds'] / 60:.1f} min of cell time. {board['uncertainty']}".strip(), "",
             DEFINITION.format(threshold=100 * board["threshold"])]
    for group, plot in zip(board["groups"], plots, strict=True):
        if len(board["groups"]) > 1:
            parts += ["", f"## {group['title']}"]
        parts += ["", *group_markdown(group, board, plot)]
    return "\n".join(parts) + "\n"


def csv_text(board: dict[str, Any]) -> str:
    rows = [r for g in board["groups"] for r in g["rows"]]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def write_leaderboard(directory: str | Path, out: str | Path | None = None, *,
                      threshold: float = breakdown.THRESHOLD,
                      asr_level: float = breakdown.ASR_LEVEL) -> list[Path]:
    """Write leaderboard.{md,png,csv,json} for the breakdown sweep in ``directory``."""
    if not Path(directory).is_dir():
        raise ReportError(f"results directory {str(directory)!r} does not exist")
    if not 0.0 < threshold < 1.0 or not 0.0 < asr_level < 1.0:
        raise ReportError(f"threshold and ASR level must be in (0, 1), got {threshold!r} and "
                          f"{asr_level!r}")
    cells = ResultsStore(directory).load_cells()
    if not cells:
        raise ReportError(f"no finished cells in {str(directory)!r} (expected cells/*.json)")
    board = build(cells, threshold, asr_level)
    target = Path(out) if out else Path(directory)
    plots = draw(cells, board, target, "leaderboard")
    paths = [target / "leaderboard.md", target / "leaderboard.csv", target / "leaderboard.json"]
    atomic_write(paths[0], markdown(board, plots))
    atomic_write(paths[1], csv_text(board))
    atomic_write(paths[2], json.dumps(board, indent=1) + "\n")
    return [*paths, *(target / p for p in plots if p)]


def draw(cells: list[dict[str, Any]], board: dict[str, Any], target: Path,
         stem: str) -> list[str | None]:
    """One PNG of breakdown curves per group of ``board`` into ``target``; their file names."""
    from fedshield.simulations.plots import breakdown_curves

    target.mkdir(parents=True, exist_ok=True)
    many = len(board["groups"]) > 1
    plots: list[str | None] = []
    for index, (title, members) in enumerate(breakdown_groups(cells)):
        name = f"{stem}_{index + 1}.png" if many else f"{stem}.png"
        ranked = breakdown.curves(members, board["threshold"], board["asr_level"])
        drawn = breakdown_curves(ranked, target / name, title if many else board["setup"])
        plots.append(name if drawn else None)
    return plots
