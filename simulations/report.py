"""``fedshield report DIR``: Markdown tables and PNG plots from a results store.

Tables (rule × attack, mean over seeds, ``± std`` when there are several): final clean accuracy,
accuracy drop against the attack-free twin, final attack success rate, detection recall and
false-positive rate (rules that accept/reject clients), malicious share of the aggregate; rules
ranked by their worst-case accuracy over the attacks. When a sweep varies other keys as well
(``alpha``, ``malicious_fraction``, ...), there is one section per combination of them.

A cell whose run diverged (``summary.diverged``: the global model became non-finite, see
:mod:`simulations.engine_inline`) is kept: its values are those of the last finite model and
every table marks it ``(div k/n)`` — k of the slot's n seeds diverged — or shows ``div`` when
the metric has no value. Stored cells are read through :func:`cell_config` (RunConfig defaults
for keys written before a field existed).

Plots (matplotlib, Agg): accuracy per round per rule under each attack; a rule × attack heatmap
of final accuracy; ASR bars; malicious share of the aggregate over rounds.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from fedshield.simulations import metrics
from fedshield.simulations.store import ResultsStore, atomic_write
from fedshield.simulations.tables import (  # noqa: F401  (cell_config, varying_keys: re-exported)
    Grid,
    ReportError,
    cell_config,
    groups,
    ranking_markdown,
    scenario_notes,
    summary_table,
    summary_value,
    uncertainty_note,
    varying_keys,
)


def section_markdown(title: str, cells: list[dict[str, Any]], plots: dict[str, str]) -> str:
    drops = metrics.accuracy_drops(cells)
    acc = Grid(cells, summary_value("final_accuracy"))
    table, order = summary_table(cells)
    parts = [f"## {title}", "", f"{len(cells)} cells. {uncertainty_note(cells)}".strip(), "",
             "### Final clean accuracy (%), rules ranked by worst case over attacks", "", table,
             "", "### Ranking by worst-case accuracy", "",
             "The worst case is the attack with the lowest mean; *≈* marks a rule that Welch's "
             "t-test cannot separate from the next one down (p ≥ 0.05).", "",
             ranking_markdown(acc)]
    drop = Grid(cells, lambda c: drops.get(c["id"]))
    best = Grid(cells, summary_value("best_accuracy"))
    target = Grid(cells, summary_value("rounds_to_target"))
    tgt = cells[0]["summary"].get("target_accuracy")
    sections = [
        ("Accuracy drop vs the same scenario without attack (points of %)", drop, True),
        ("Best accuracy over rounds", best, False),
        (f"Rounds to reach accuracy {tgt} (— = never)", target, False),
    ]
    asr = Grid(cells, summary_value("final_asr"))
    if asr.stats:
        sections.append(("Attack success rate at the last round (%, targeted attacks)", asr, True))
    for name, key in (("Detection recall (mean over rounds; rules that reject clients)", "recall"),
                      ("Detection false-positive rate (mean over rounds)", "fpr"),
                      ("Detection precision (mean over rounds)", "precision"),
                      ("Malicious share of the aggregate (mean over rounds)", "malicious_share")):
        grid = Grid([c for c in cells if not c.get("clean")], summary_value(key))
        if grid.stats:
            sections.append((name, grid, False))
    stop = Grid(cells, summary_value("asr_at_stop"))
    if stop.stats:
        sections.append(("Durability: ASR at the round the attackers stopped (%)", stop, True))
        sections.append(("Durability: evaluated rounds after the stop whose ASR is still at "
                         "least half of that", Grid(cells, summary_value("durable_rounds")),
                         False))
    sections.append(("Aggregation time per round (ms)", Grid(
        cells, lambda c: None if c["summary"].get("aggregation_seconds") is None
        else 1000 * c["summary"]["aggregation_seconds"]), False))
    for name, grid, pct in sections:
        parts += ["", f"### {name}", "", grid.markdown(pct=pct, rules=order)]
    certified = certified_table(cells)
    if certified:
        parts += ["", "### Certified accuracy (%): correct and certified at x (FLCert: any m "
                  "malicious clients; CRFL: any backdoor of magnitude up to the radius)", "",
                  certified]
    if plots:
        parts += ["", "### Plots", ""]
        parts += [f"![{name}]({path})" for name, path in plots.items()]
    return "\n".join(parts)


def certified_table(cells: list[dict[str, Any]]) -> str:
    """Certified accuracy (%) per rule × attack at up to 11 points of its x axis (FLCert: m
    malicious clients, the first point is the ensemble's accuracy; CRFL: the radius, the first
    point the smoothed model's accuracy); '' without certified cells."""
    from fedshield.simulations.plots import certified_means

    lines = []
    for name, (axis, xs, ys) in certified_means(cells).items():
        step = max(1, math.ceil((len(xs) - 1) / 10))
        picks = sorted(set(range(0, len(xs), step)) | {len(xs) - 1})
        lines += ["", f"{name} ({axis})", "",
                  "| " + " | ".join(f"{xs[i]:.4g}" for i in picks) + " |",
                  "|" + "---:|" * len(picks),
                  "| " + " | ".join(f"{100 * ys[i]:.1f}" for i in picks) + " |"]
    return "\n".join(lines).strip()


def breakdown_section(cells: list[dict[str, Any]], plot_dir: Path, base: Path) -> list[str]:
    """When the cells sweep the malicious fraction: the breakdown curves and points (the
    leaderboard's tables, :mod:`simulations.leaderboard`); [] otherwise."""
    from fedshield.simulations import leaderboard

    if not leaderboard.breakdown_groups(cells):
        return []
    board = leaderboard.build(cells)
    plots = leaderboard.draw(cells, board, plot_dir, "breakdown")
    parts = ["## Breakdown points", "", leaderboard.DEFINITION.format(
        threshold=100 * board["threshold"]), ""]
    for group, plot in zip(board["groups"], plots, strict=True):
        rel = None if plot is None else str((plot_dir / plot).relative_to(base))
        if len(board["groups"]) > 1:
            parts += [f"### {group['title']}", ""]
        parts += [*leaderboard.group_markdown(group, board, rel), ""]
    return parts


# --- entry point ----------------------------------------------------------------------------------
def write_report(directory: str | Path, out: str | Path | None = None) -> Path:
    """Write ``report.md`` and ``plots/*.png`` for the results in ``directory``."""
    store = ResultsStore(directory)
    if not Path(directory).is_dir():
        raise ReportError(f"results directory {str(directory)!r} does not exist")
    cells = store.load_cells()
    if not cells:
        raise ReportError(f"no finished cells in {str(directory)!r} (expected cells/*.json)")
    out_path = Path(out) if out else store.root / "report.md"
    plot_dir = out_path.parent / "plots"
    from fedshield.simulations import plots as plotting

    parts = ["# fedshield report", "", scenario_notes(cells), ""]
    parts += breakdown_section(cells, plot_dir, out_path.parent)
    all_groups = groups(cells)
    for index, (title, members) in enumerate(all_groups):
        suffix = "" if len(all_groups) == 1 else f"_{index + 1}"
        files = plotting.draw_all(members, plot_dir, suffix)
        rel = {name: str(path.relative_to(out_path.parent)) for name, path in files.items()}
        parts += [section_markdown(title, members, rel), ""]
    parts += ["", "Definitions: accuracy on the clean test set; ASR = share of triggered "
              "(or source-class) test inputs classified as the attacker's target; detection "
              "treats a rejected client as flagged (positive = malicious); malicious share = "
              "weight of malicious clients in the aggregate (coordinate share for median / "
              "trimmed mean; see simulations/metrics.py); (div k/n) = k of the n seeds "
              "diverged (non-finite global model): their values are the last finite model's."]
    atomic_write(out_path, "\n".join(parts) + "\n")
    return out_path
