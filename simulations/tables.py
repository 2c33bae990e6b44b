"""The tables of the harness, shared by the report and the plots: rule × attack grids of one
metric over seeds (mean ± the half-width of its 95 % Student's t confidence interval, diverged
runs marked), the ranking by worst-case accuracy with the neighbours that seeds cannot tell
apart, and the headline table the CLI prints."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Collection, Iterable
from dataclasses import asdict, dataclass
from functools import cache
from typing import Any

from fedshield.simulations import metrics
from fedshield.simulations.stats import Estimate, indistinguishable, mean_ci
from fedshield.tasks.config import RunConfig

IGNORED_AXES = {"aggregator", "aggregator_params", "attack", "attack_params", "seed", "output_dir"}


class ReportError(ValueError):
    """The results directory cannot be reported on (missing, empty)."""


def ordered(values: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(values))


# --- reading stored cells and grouping them -----------------------------------------------------
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


def groups(cells: list[dict[str, Any]],
           ignore: Collection[str] = ()) -> list[tuple[str, list[dict[str, Any]]]]:
    """[(section title, cells)] — one section per combination of the other varying keys (those
    in ``ignore`` left inside the sections)."""
    keys = [k for k in varying_keys(cells) if k not in ignore]
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for cell in cells:
        config = cell_config(cell)
        title = ", ".join(f"{k}={config[k]}" for k in keys) or "all cells"
        out[title].append(cell)
    return list(out.items())


def malicious_fraction(config: dict[str, Any]) -> float:
    """A cell's malicious fraction: ``malicious_fraction``, or ``num_malicious / num_clients``."""
    if config.get("num_malicious", -1) >= 0:
        return round(config["num_malicious"] / config["num_clients"], 6)
    return float(config.get("malicious_fraction", 0.0))


def rule_family(cell: dict[str, Any]) -> str:
    """The rule as the sweep names it, ``f = "auto"`` unresolved (``krum(f=auto)``): one rule
    across a breakdown sweep although its resolved f changes with the malicious fraction. From
    the cell's ``aggregator`` axis value; a cell whose rule is not an axis keeps its label."""
    from fedshield.simulations.scenario import label

    entry = cell.get("axes", {}).get("aggregator")
    if isinstance(entry, str):
        return entry
    if isinstance(entry, dict) and "name" in entry:
        return label(entry["name"], {k: v for k, v in entry.items() if k != "name"})
    return cell["rule"]


def scenario_notes(cells: list[dict[str, Any]]) -> str:
    cfg = cell_config(cells[0])
    seeds = sorted({cell_config(c)["seed"] for c in cells})
    fractions = sorted({malicious_fraction(cell_config(c)) for c in cells})
    mal = cfg.get("num_malicious", -1)
    if len(fractions) > 1:
        mal_text = f"fraction {fractions[0]:g}–{fractions[-1]:g} ({len(fractions)} steps)"
    else:
        mal_text = str(mal) if mal >= 0 else f"{cfg.get('malicious_fraction', 0):.0%}"
    defender = cfg.get("defender_fraction", -1.0)
    f_text = ("the defender's f follows it" if defender < 0
              else f"the defender's f fixed for fraction {defender:g}")
    return (f"dataset **{cfg['dataset']}**, model **{cfg['model']}**, partition "
            f"**{cfg['partition']}** (α={cfg['alpha']}, q={cfg['q']}), {cfg['num_clients']} "
            f"clients ({cfg['clients_per_round'] or 'all'} per round), {cfg['rounds']} rounds, "
            f"malicious {mal_text} ({f_text}), seeds {seeds}, engine {cells[0]['engine']}.")


class Grid:
    """Values of one metric over (rule, attack), aggregated over seeds."""

    def __init__(self, cells: list[dict[str, Any]], value: Callable[[dict[str, Any]], Any]):
        self.rules = ordered(c["rule"] for c in cells)
        self.attacks = ordered(c["attack"] for c in cells)
        raw: dict[tuple[str, str], list[float]] = defaultdict(list)
        self.cells: dict[tuple[str, str], int] = defaultdict(int)
        self.diverged: dict[tuple[str, str], int] = defaultdict(int)
        for cell in cells:
            key = (cell["rule"], cell["attack"])
            self.cells[key] += 1
            self.diverged[key] += bool(cell.get("summary", {}).get("diverged"))
            v = value(cell)
            if v is not None:
                raw[key].append(float(v))
        self.values = dict(raw)  # per-seed values, for tests between rules
        self.stats: dict[tuple[str, str], Estimate] = {
            k: e for k, v in raw.items() if (e := mean_ci(v)) is not None}

    def _shown(self, rule: str, attack: str) -> bool:
        return (rule, attack) in self.stats or self.diverged.get((rule, attack), 0) > 0

    def mean(self, rule: str, attack: str) -> float | None:
        s = self.stats.get((rule, attack))
        return None if s is None else s.mean

    def cell_text(self, rule: str, attack: str, pct: bool = False) -> str:
        s = self.stats.get((rule, attack))
        diverged = self.diverged.get((rule, attack), 0)
        if s is None:
            return "div" if diverged else "—"
        text = format_estimate(s, pct)
        if diverged:
            text += f" (div {diverged}/{self.cells[(rule, attack)]})"
        return text

    def markdown(self, pct: bool = False, rules: list[str] | None = None) -> str:
        """Rule × attack table; rows and columns without any value are left out."""
        rules = [r for r in (rules or self.rules)
                 if any(self._shown(r, a) for a in self.attacks)]
        attacks = [a for a in self.attacks if any(self._shown(r, a) for r in self.rules)]
        head = "| rule | " + " | ".join(attacks) + " |"
        sep = "|---|" + "---:|" * len(attacks)
        body = ["| " + r + " | " + " | ".join(self.cell_text(r, a, pct) for a in attacks)
                + " |" for r in rules]
        return "\n".join([head, sep, *body])


def format_estimate(s: Estimate, pct: bool = False) -> str:
    """``81.0 ± 1.4`` (percent, one decimal) or ``0.810 ± 0.014``; no ± for one seed."""
    scale, digits = (100.0, 1) if pct else (1.0, 3)
    text = f"{s.mean * scale:.{digits}f}"
    if s.n > 1:
        text += f" ± {s.half_width * scale:.{digits}f}"
    return text


def uncertainty_note(cells: list[dict[str, Any]]) -> str:
    """What ± means in a table of these cells ('' for one seed)."""
    seeds = len({c.get("config", {}).get("seed") for c in cells})
    if seeds < 2:
        return ""
    return (f"Mean over {seeds} seeds ± the half-width of its 95 % confidence interval "
            "(Student's t).")


def summary_value(key: str) -> Callable[[dict[str, Any]], Any]:
    """The getter of a cell's summary value ``key`` (a Grid's ``value``)."""
    return lambda cell: cell["summary"].get(key)


# --- tables -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Ranked:
    """A rule's place in the ranking by worst-case accuracy (the attack with the lowest mean)."""

    rule: str
    worst: float
    attack: str
    clean: float | None
    estimate: Estimate  # the worst attack's mean ± CI over seeds
    seeds: tuple[float, ...]  # its per-seed values
    #: Welch's test against the next rule down: True = the seeds cannot tell them apart
    tied_with_next: bool | None = None


def ranking(acc: Grid) -> list[Ranked]:
    """Rules best first by worst-case accuracy over the attacks, each marked when Welch's test
    cannot separate it from the next one down (p ≥ 0.05)."""
    worst = metrics.worst_case({(r, a): acc.mean(r, a) for r in acc.rules for a in acc.attacks})
    rows = sorted(((rule, w, attack) for rule, (w, attack) in worst.items()),
                  key=lambda r: -r[1])
    seeds = [tuple(acc.values[(rule, attack)]) for rule, _, attack in rows]
    return [Ranked(rule, w, attack, acc.mean(rule, "none"), acc.stats[(rule, attack)], seeds[i],
                   indistinguishable(seeds[i], seeds[i + 1]) if i + 1 < len(rows) else None)
            for i, (rule, w, attack) in enumerate(rows)]


def ranking_markdown(acc: Grid) -> str:
    """The ranking table: worst-case accuracy ± CI, the worst attack, and whether the next rule
    down is statistically indistinguishable (Welch, p ≥ 0.05)."""
    ranked = ranking(acc)
    lines = ["| rank | rule | worst-case acc (%) | worst attack | acc without attack (%) | "
             "vs next |", "|---:|---|---:|---|---:|---|"]
    for i, r in enumerate(ranked, 1):
        clean = "—" if r.clean is None else f"{100 * r.clean:.1f}"
        tie = {True: "≈ (p ≥ 0.05)", False: "better", None: ""}[r.tied_with_next]
        if r.tied_with_next is None and i < len(ranked):
            tie = "too few seeds"
        lines.append(f"| {i} | {r.rule} | {format_estimate(r.estimate, pct=True)} | {r.attack} | "
                     f"{clean} | {tie} |")
    return "\n".join(lines)


def summary_table(cells: list[dict[str, Any]]) -> tuple[str, list[str]]:
    """The headline table printed by the CLI: accuracy % (rule × attack) + worst case, ranked."""
    acc = Grid(cells, summary_value("final_accuracy"))
    ranked = {r.rule: r for r in ranking(acc)}
    order = list(ranked) + [r for r in acc.rules if r not in ranked]
    head = "| rule | " + " | ".join(acc.attacks) + " | worst |"
    sep = "|---|" + "---:|" * (len(acc.attacks) + 1)
    body = []
    for rule in order:
        w = format_estimate(ranked[rule].estimate, pct=True) if rule in ranked else "—"
        body.append("| " + rule + " | " + " | ".join(acc.cell_text(rule, a, pct=True)
                                                    for a in acc.attacks) + f" | {w} |")
    return "\n".join([head, sep, *body]), order
