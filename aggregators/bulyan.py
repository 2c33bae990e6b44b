"""Bulyan (El Mhamdi, Guerraoui, Rouault, ICML 2018, "The Hidden Vulnerability of Distributed
Learning in Byzantium")."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch

from fedshield.aggregators.base import REQUIRED, Aggregation, Context, Param, Rule, register
from fedshield.aggregators.kernels import coordinatewise, krum_scores, lowest, resolve_distances
from fedshield.aggregators.validation import choice, non_negative_int

SELECTIONS = ("recursive", "oneshot")


def recursive_krum(dist: torch.Tensor, f: int, theta: int) -> list[int]:
    """Bulyan's selection: θ times, pick Krum's choice among the remaining updates, remove it.

    Each step scores the r remaining updates with max(1, r − f − 2) neighbours (the set shrinks
    below Krum's own n > 2f + 2 bound near the end, as in the paper and Flower's legacy Bulyan).
    With one neighbour every mutual nearest pair ties, so ties are broken by the sum of squared
    distances to all remaining updates (then the lowest index): the selection does not depend on
    the order of the rows. The θ steps run in numpy on the small float64 (n, n) matrix:
    per step one partition of an (r, r) block, where torch's per-call overhead dominated.
    """
    d = dist.numpy().astype(np.float64, copy=True)
    np.fill_diagonal(d, np.inf)
    remaining = np.arange(d.shape[0])
    chosen: list[int] = []
    for _ in range(theta):
        r = remaining.size
        if r == 1:
            chosen.append(int(remaining[0]))
            break
        k = max(1, r - f - 2)
        block = d[np.ix_(remaining, remaining)]
        scores = np.partition(block, k - 1, axis=1)[:, :k].sum(axis=1)
        tied = np.flatnonzero(scores <= scores.min())
        if tied.size > 1:
            spread = np.where(np.isinf(block), 0.0, block)[tied].sum(axis=1)
            tied = tied[spread <= spread.min()]
        best = int(tied[0])  # remaining is ascending: the lowest index among exact ties
        chosen.append(int(remaining[best]))
        remaining = np.delete(remaining, best)
    return chosen


def beta_closest_mean(block: np.ndarray, beta: int) -> np.ndarray:
    """Per row of a row-sorted (c, θ) block: the mean of the β values closest to the row median.

    In sorted order the β nearest values to the median m form a window [s, s + β) with
    0 <= s <= θ − β; the window of least radius max(m − v_s, v_{s+β−1} − m) is taken (ties: the
    lowest s). The 2f + 1 candidate windows are scanned on the transposed (θ, c) block, so every
    step is one contiguous vector operation over the c coordinates, with the window sum slid in
    float64.
    """
    t = np.ascontiguousarray(block.T)
    theta = t.shape[0]
    med = t[theta // 2] if theta % 2 else 0.5 * t[theta // 2 - 1] + 0.5 * t[theta // 2]
    window = t[:beta].sum(axis=0, dtype=np.float64)
    best_sum = window.copy()
    with np.errstate(over="ignore"):  # ±Inf radii of near-float32-max values still order right
        best_radius = np.maximum(med - t[0], t[beta - 1] - med)
        for s in range(1, theta - beta + 1):
            window += t[s + beta - 1]
            window -= t[s - 1]
            radius = np.maximum(med - t[s], t[s + beta - 1] - med)
            better = radius < best_radius
            np.copyto(best_radius, radius, where=better)
            np.copyto(best_sum, window, where=better)
    return best_sum / beta


@register
class Bulyan(Rule):
    """Bulyan: θ = n − 2f updates selected by repeated Krum, then a trimmed coordinate-wise step.

        S  = ∅;  θ times: S ← S ∪ {Krum(X \\ S)}                 (selection, θ = n − 2f)
        update_j = mean of the β = θ − 2f values of {x_ij : i ∈ S} closest to median_{i∈S} x_ij

    El Mhamdi et al. 2018, Alg. 1 with A = Krum; requires n >= 4f + 3. The selection is
    *recursive* — Krum re-run on the shrinking set — as in the paper, Flower's legacy Bulyan and
    the NDSS'21 code. ``selection="oneshot"`` instead takes the θ lowest Krum scores of the full
    set at once, which is what Flower 1.42's Message-API ``Bulyan`` does (it selects a different
    set in 30 of 30 random trials); it is offered only to reproduce Flower. ``accepted`` marks
    S.
    """

    name: ClassVar[str] = "bulyan"
    requirement: ClassVar[str] = "n >= 4f + 3"
    parameters: ClassVar[dict[str, Param]] = {
        "f": Param(REQUIRED, non_negative_int),
        "selection": Param("recursive", choice(*SELECTIONS)),
    }
    examples: ClassVar[tuple[dict[str, Any], ...]] = ({"f": 1}, {"f": 1, "selection": "oneshot"})

    def min_clients(self) -> int:
        return 4 * self.f + 3

    def aggregate(self, x: torch.Tensor, ctx: Context) -> Aggregation:
        n = x.shape[0]
        theta = n - 2 * self.f
        beta = theta - 2 * self.f
        dist = resolve_distances(self.name, x, ctx.gram)
        if self.selection == "recursive":
            chosen = recursive_krum(dist, self.f, theta)
        else:
            chosen = lowest(krum_scores(dist, self.f), theta).tolist()
        accepted = torch.zeros(n, dtype=torch.bool)
        accepted[chosen] = True
        update = coordinatewise(x, lambda block: beta_closest_mean(block, beta),
                                rule=self.name, rows=chosen)
        return Aggregation(update=update, accepted=accepted,
                           diagnostics={"selected": chosen, "theta": theta, "beta": beta})
