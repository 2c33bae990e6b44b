"""The tables of the harness, shared by the report and the plots: rule × attack grids of one
metric over seeds (mean ± std, diverged runs marked), the ranking by worst-case accuracy, and the
headline table the CLI prints."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

from fedshield.simulations import metrics


def ordered(values: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(values))


def mean_std(values: list[float]) -> tuple[float, float] | None:
    if not values:
        return None
    mean = sum(values) / len(values)
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1) if len(values) > 1 else 0.0
    return mean, math.sqrt(var)


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
        self.stats = {k: mean_std(v) for k, v in raw.items()}

    def _shown(self, rule: str, attack: str) -> bool:
        return (rule, attack) in self.stats or self.diverged.get((rule, attack), 0) > 0

    def mean(self, rule: str, attack: str) -> float | None:
        s = self.stats.get((rule, attack))
        return None if s is None else s[0]

    def cell_text(self, rule: str, attack: str, pct: bool = False) -> str:
        s = self.stats.get((rule, attack))
        diverged = self.diverged.get((rule, attack), 0)
        if s is None:
            return "div" if diverged else "—"
        scale = 100.0 if pct else 1.0
        text = f"{s[0] * scale:.1f}" if pct else f"{s[0]:.3f}"
        if s[1] > 0:
            text += f" ± {s[1] * scale:.1f}" if pct else f" ± {s[1]:.3f}"
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


def summary_value(key: str) -> Callable[[dict[str, Any]], Any]:
    """The getter of a cell's summary value ``key`` (a Grid's ``value``)."""
    return lambda cell: cell["summary"].get(key)


# --- tables -------------------------------------------------------------------------------------
def ranking(acc: Grid) -> list[tuple[str, float, str, float | None]]:
    """[(rule, worst-case accuracy, worst attack, clean accuracy)] best first."""
    worst = metrics.worst_case({(r, a): acc.mean(r, a) for r in acc.rules for a in acc.attacks})
    rows = [(rule, w, attack, acc.mean(rule, "none")) for rule, (w, attack) in worst.items()]
    return sorted(rows, key=lambda r: -r[1])


def summary_table(cells: list[dict[str, Any]]) -> tuple[str, list[str]]:
    """The headline table printed by the CLI: accuracy % (rule × attack) + worst case, ranked."""
    acc = Grid(cells, summary_value("final_accuracy"))
    ranked = ranking(acc)
    order = [r[0] for r in ranked] + [r for r in acc.rules if r not in {x[0] for x in ranked}]
    head = "| rule | " + " | ".join(acc.attacks) + " | worst |"
    sep = "|---|" + "---:|" * (len(acc.attacks) + 1)
    worst = {r[0]: r[1] for r in ranked}
    body = []
    for rule in order:
        w = f"{100 * worst[rule]:.1f}" if rule in worst else "—"
        body.append("| " + rule + " | " + " | ".join(acc.cell_text(rule, a, pct=True)
                                                    for a in acc.attacks) + f" | {w} |")
    return "\n".join([head, sep, *body]), order
