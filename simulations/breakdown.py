"""Empirical breakdown curves and points of a sweep over the malicious fraction.

For a rule r and a malicious fraction α, the *worst-case accuracy* is the lowest mean (over
seeds) final accuracy over the attacks of the sweep, W_r(α) = min_a mean_s acc(r, a, α, s); at a
fraction without attacked cells (α = 0) it is the accuracy without attack. With the rule's own
accuracy without attack A_r (its attack-free cells at the smallest fraction swept) and a
threshold τ (10 points by default), the **empirical breakdown point** is

    α*_r = min { α : W_r(α) < A_r − τ }        (None: the rule never broke in the sweep)

and the **backdoor breakdown point** the smallest α at which the highest mean ASR over the
targeted attacks passes a level (50 %). A fraction at which the rule cannot be configured at all
(Krum needs n ≥ 2f + 3: the sweep leaves those cells out) counts as broken there, and is marked.
This is the empirical counterpart of the breakdown point of robust statistics (Hampel 1971):
the fraction of adversarial inputs an estimator tolerates before its output can be driven
arbitrarily far — here, before the trained model loses τ of accuracy to the worst known attack.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

from fedshield.simulations.stats import Estimate, indistinguishable, mean_ci
from fedshield.simulations.tables import cell_config, malicious_fraction, rule_family

THRESHOLD = 0.10
ASR_LEVEL = 0.5


# --- the definitions, on plain curves ---------------------------------------------------------
def breakdown_point(fractions: Sequence[float], worst: Sequence[float | None], reference: float,
                    threshold: float = THRESHOLD) -> float | None:
    """The first fraction (in increasing order) whose worst-case accuracy is more than
    ``threshold`` below ``reference``; a missing value (the rule cannot run there) counts as
    broken. None when the curve never breaks."""
    return first_fraction(fractions, worst, lambda w: w < reference - threshold)


def asr_breakdown_point(fractions: Sequence[float], asr: Sequence[float | None],
                        level: float = ASR_LEVEL) -> float | None:
    """The first fraction whose highest backdoor ASR passes ``level`` (None: never)."""
    return first_fraction(fractions, asr, lambda a: a > level)


def first_fraction(fractions: Sequence[float], values: Sequence[float | None],
                   broken: Any) -> float | None:
    for alpha, value in sorted(zip(fractions, values, strict=True), key=lambda p: p[0]):
        if value is None or broken(value):
            return alpha
    return None


# --- from a results store ----------------------------------------------------------------------
@dataclass
class Point:
    """One fraction of a rule's curve."""

    fraction: float
    runnable: bool
    worst: Estimate | None = None  # accuracy under the worst attack (mean ± CI over seeds)
    worst_seeds: tuple[float, ...] = ()
    attack: str = ""  # that attack ("none" where nothing attacks)
    clean: Estimate | None = None  # accuracy without attack at this fraction's defender
    asr: Estimate | None = None  # the highest final ASR over the targeted attacks
    asr_attack: str = ""


@dataclass
class Curve:
    rule: str
    reference: Estimate | None  # accuracy without attack at the smallest fraction
    points: list[Point] = field(default_factory=list)
    breakdown: float | None = None
    breakdown_infeasible: bool = False  # the breakdown point is where the rule cannot run
    asr_breakdown: float | None = None
    has_asr: bool = False

    @property
    def tolerated(self) -> Point | None:
        """The point of lowest worst-case accuracy among the fractions below the breakdown
        point (all of them when the rule never broke): the accuracy the rule guarantees over the
        range it tolerates. None when it broke at the first fraction."""
        limit = math.inf if self.breakdown is None else self.breakdown
        kept = [p for p in self.points if p.worst is not None and p.fraction < limit]
        return min(kept, key=lambda p: p.worst.mean) if kept else None


def curves(cells: list[dict[str, Any]], threshold: float = THRESHOLD,
           asr_level: float = ASR_LEVEL) -> list[Curve]:
    """One curve per rule of the cells (which share every other setting), ranked: the latest
    breakdown first (never broken before everything), then the higher worst-case accuracy."""
    fractions = sorted({malicious_fraction(cell_config(c)) for c in cells})
    by_rule: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for cell in cells:
        by_rule[rule_family(cell)].append(cell)
    out = [_curve(rule, members, fractions, threshold, asr_level)
           for rule, members in by_rule.items()]
    return rank(out)


def _curve(rule: str, cells: list[dict[str, Any]], fractions: list[float], threshold: float,
           asr_level: float) -> Curve:
    acc: dict[tuple[float, str], list[float]] = defaultdict(list)
    asr: dict[tuple[float, str], list[float]] = defaultdict(list)
    clean: dict[float, list[float]] = defaultdict(list)
    present: set[float] = set()
    for cell in cells:
        alpha = malicious_fraction(cell_config(cell))
        present.add(alpha)
        summary = cell["summary"]
        if summary.get("final_accuracy") is None:
            continue
        if cell.get("clean"):
            clean[alpha].append(summary["final_accuracy"])
        else:
            acc[(alpha, cell["attack"])].append(summary["final_accuracy"])
            if summary.get("final_asr") is not None:
                asr[(alpha, cell["attack"])].append(summary["final_asr"])
    reference = mean_ci(clean[min(clean)]) if clean else None
    curve = Curve(rule, reference, has_asr=bool(asr))
    for alpha in fractions:
        point = Point(alpha, runnable=alpha in present, clean=mean_ci(clean.get(alpha, [])))
        attacked = {a: v for (f, a), v in acc.items() if f == alpha}
        if attacked:
            point.attack = min(attacked, key=lambda a: _mean(attacked[a]))
            point.worst_seeds = tuple(attacked[point.attack])
        elif clean.get(alpha):
            point.attack, point.worst_seeds = "none", tuple(clean[alpha])
        point.worst = mean_ci(point.worst_seeds)
        targeted = {a: v for (f, a), v in asr.items() if f == alpha}
        if targeted:
            point.asr_attack = max(targeted, key=lambda a: _mean(targeted[a]))
            point.asr = mean_ci(targeted[point.asr_attack])
        curve.points.append(point)
    xs = [p.fraction for p in curve.points]
    if reference is not None:
        curve.breakdown = breakdown_point(
            xs, [None if p.worst is None else p.worst.mean for p in curve.points],
            reference.mean, threshold)
        at = next((p for p in curve.points if p.fraction == curve.breakdown), None)
        curve.breakdown_infeasible = at is not None and not at.runnable
    if curve.has_asr:
        curve.asr_breakdown = asr_breakdown_point(
            xs, [_asr_value(p) for p in curve.points], asr_level)
    return curve


def _asr_value(point: Point) -> float | None:
    if not point.runnable:
        return None  # cannot be configured: broken
    return 0.0 if point.asr is None else point.asr.mean  # fraction 0: nothing to trigger


def _mean(values: list[float]) -> float:
    return math.fsum(values) / len(values)


def rank(found: list[Curve]) -> list[Curve]:
    """Latest breakdown first (never broken ranks above any fraction), then the higher
    worst-case accuracy over the tolerated range."""
    def key(c: Curve) -> tuple[float, float]:
        point = c.breakdown if c.breakdown is not None else math.inf
        kept = c.tolerated
        return (-point, -(kept.worst.mean if kept and kept.worst else -math.inf))
    return sorted(found, key=key)


def tied_with_next(ranked: list[Curve]) -> list[bool | None]:
    """Per rule: True when it shares its breakdown point with the next rule down and Welch's
    test cannot separate their worst-case accuracies over the tolerated range (p ≥ 0.05);
    None when untestable."""
    out: list[bool | None] = []
    for a, b in pairwise(ranked):
        wa, wb = a.tolerated, b.tolerated
        if a.breakdown != b.breakdown:
            out.append(False)
        elif wa is None or wb is None:
            out.append(None)
        else:
            out.append(indistinguishable(wa.worst_seeds, wb.worst_seeds))
    return [*out, None] if ranked else []
