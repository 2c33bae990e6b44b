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
from collections import defaultdict
from dataclasses import asdict
from functools import cache
from pathlib import Path
from typing import Any

from fedshield.simulations import metrics
from fedshield.simulations.store import ResultsStore, atomic_write
from fedshield.simulations.tables import Grid, ranking, summary_table, summary_value
from fedshield.tasks.config import RunConfig

IGNORED_AXES = {"aggregator", "aggregator_params", "attack", "attack_params", "seed", "output_dir"}


class ReportError(ValueError):
    """The results directory cannot be reported on (missing, empty)."""


# --- grouping ------------------------------------------------------------------------------------
@cache
def _config_defaults() -> dict[str, Any]:
    return asdict(RunConfig())


def cell_config(cell: dict[str, Any]) -> dict[str, Any]:
    """A stored cell's config with every RunConfig field: keys the cell lacks (written before the
    field was added) take the RunConfig default. The one place the report reads a config."""
    return {**_config_defaults(), **cell["config"]}




def varying_keys(cells: list[dict[str, Any]]) -> list[str]:
    """Config keys (besides rule, attack and seed) that differ between cells."""
    if not cells:
        return []
    configs = [cell_config(c) for c in cells]
    keys = [k for k in configs[0] if k not in IGNORED_AXES]
    return [k for k in keys if len({repr(c[k]) for c in configs}) > 1]


def groups(cells: list[dict[str, Any]]) -> list[tuple[str, list[dict[str, Any]]]]:
    """[(section title, cells)] — one section per combination of the other varying keys."""
    keys = varying_keys(cells)
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for cell in cells:
        config = cell_config(cell)
        title = ", ".join(f"{k}={config[k]}" for k in keys) or "all cells"
        out[title].append(cell)
    return list(out.items())












def section_markdown(title: str, cells: list[dict[str, Any]], plots: dict[str, str]) -> str:
    drops = metrics.accuracy_drops(cells)
    acc = Grid(cells, summary_value("final_accuracy"))
    table, order = summary_table(cells)
    parts = [f"## {title}", "", f"{len(cells)} cells.", "",
             "### Final clean accuracy (%), rules ranked by worst case over attacks", "", table,
             "", "### Ranking by worst-case accuracy", "",
             "| rank | rule | worst-case acc | worst attack | acc without attack |",
             "|---:|---|---:|---|---:|"]
    for i, (rule, w, attack, clean) in enumerate(ranking(acc), 1):
        clean_text = "—" if clean is None else f"{clean:.3f}"
        parts.append(f"| {i} | {rule} | {w:.3f} | {attack} | {clean_text} |")
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


def scenario_notes(cells: list[dict[str, Any]]) -> str:
    cfg = cell_config(cells[0])
    seeds = sorted({cell_config(c)["seed"] for c in cells})
    mal = cfg.get("num_malicious", -1)
    mal_text = str(mal) if mal >= 0 else f"{cfg.get('malicious_fraction', 0):.0%}"
    return (f"dataset **{cfg['dataset']}**, model **{cfg['model']}**, partition "
            f"**{cfg['partition']}** (α={cfg['alpha']}, q={cfg['q']}), {cfg['num_clients']} "
            f"clients ({cfg['clients_per_round'] or 'all'} per round), {cfg['rounds']} rounds, "
            f"malicious {mal_text}, seeds {seeds}, engine {cells[0]['engine']}.")


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
