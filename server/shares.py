"""Malicious share of the aggregate: how much of one round's aggregate came from the clients
flagged malicious. Used by the ServerApp (``rounds.jsonl``) and the inline engine
(``simulations.metrics``), so that both engines report the same figure.

Defined for every rule (:func:`malicious_share`), with M the malicious rows:

- rules returning ``weights`` w (n,): ``Σ_{i∈M} |w_i| / Σ_i |w_i|``;
- rules returning only ``accepted``: each accepted client weighs 1/|accepted|, so the share is
  ``|accepted ∩ M| / |accepted|``;
- coordinate-wise order-statistic rules (median, trimmed mean) with neither: the **coordinate
  share**. For coordinate j, sort the n values; the rule's value is the mean of the values at a
  set of sorted positions S (median: the middle one for odd n, the two middle ones for even n;
  trimmed mean with f per side: positions f … n−f−1). The share of coordinate j is
  ``|{i ∈ M : rank_j(i) ∈ S}| / |S|`` and the rule's share is its mean over the d coordinates —
  the fraction of the aggregate's value mass that came from malicious clients, if each selected
  value counts equally. Ties are broken by the stable sort (lower client index first).
- anything else (no weights, no accepted, not coordinate-wise): None.

Also here, the other per-round measures of the round core (``fedshield.server.round``): detection
(:func:`detection`: precision, recall and FPR of the rule's rejections against the known malicious
clients) and the update norms (:func:`row_norms`, :func:`norm_summary`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch


def coordinate_positions(rule_name: str, n: int, params: dict[str, Any]) -> list[int] | None:
    """Sorted positions whose mean is the value of a coordinate-wise rule, or None (also for
    the weighted variants, whose positions depend on each coordinate's order)."""
    if params.get("weighted"):
        return None
    if rule_name == "median":
        return [(n - 1) // 2] if n % 2 else [n // 2 - 1, n // 2]
    if rule_name == "trimmedmean":
        f = trimmed_count(n, params)
        if n - 2 * f < 1:
            return None
        return list(range(f, n - f))
    return None


def trimmed_count(n: int, params: dict[str, Any]) -> int:
    """Values trimmed per side by trimmed mean: ``f``, or ``floor(beta · n)`` if given (with the
    rule's 1e-9 guard, ``aggregators.coordinate.TrimmedMean.trim_count``)."""
    if params.get("f") is not None:
        return int(params["f"])
    if params.get("beta") is not None:
        return math.floor(float(params["beta"]) * n + 1e-9)
    return 0


def coordinate_share(updates: torch.Tensor, malicious: torch.Tensor,
                     positions: Sequence[int]) -> float:
    """Mean over coordinates of the malicious fraction of the values at sorted ``positions``
    (ranks of the stable sort: ties go to the lower client index first).

    0.0 at once when no client is malicious. Otherwise, for contiguous positions lo … hi (every
    rule here), no full sort: ``np.partition`` gives the lo-th and hi-th values a_j ≤ b_j of
    each coordinate, and client i's value v is at a selected rank iff a_j < v < b_j, or v equals
    a_j or b_j and its stable rank ``#(values < v) + #(lower-index clients with value v)`` lies
    in lo … hi (computed only for the coordinates where a_j ≤ v ≤ b_j holds for more than
    hi − lo + 1 clients, i.e. where a bound is tied). That is the stable sort's answer exactly
    (same float result); matrices with NaN, and non-contiguous positions, take the sort.
    """
    mal = torch.as_tensor(malicious, dtype=torch.bool)
    positions = list(positions)
    if not bool(mal.any()) or not positions:
        return 0.0
    lo, hi = min(positions), max(positions)
    if (positions != list(range(lo, hi + 1)) or updates.shape[1] == 0
            or bool(torch.isnan(updates).any())):
        order = torch.sort(updates, dim=0, stable=True).indices  # (n, d): client index per rank
        return float(mal[order[positions]].double().mean())
    x = updates.detach().cpu().numpy()
    kth = np.partition(x, [lo, hi], axis=0)
    a, b = kth[lo], kth[hi]  # (d,) the lo-th and hi-th smallest values of each coordinate
    selected = (x >= a) & (x <= b)
    tied = np.flatnonzero(selected.sum(axis=0) != hi - lo + 1)  # ties at a bound: resolve them
    if len(tied):
        xt, at, bt = x[:, tied], a[tied], b[tied]
        sel = (xt > at) & (xt < bt)
        for bound in (at, bt) if hi > lo else (at,):
            eq = xt == bound
            rank = (xt < bound).sum(axis=0) + np.cumsum(eq, axis=0) - 1  # stable rank where eq
            sel |= eq & (rank >= lo) & (rank <= hi)
        selected[:, tied] = sel
    count = int(selected[mal.numpy()].sum())
    return count / (len(positions) * x.shape[1])


def malicious_share(aggregation: Any, updates: torch.Tensor, malicious: torch.Tensor,
                    rule_name: str, params: dict[str, Any]) -> tuple[float | None, str]:
    """(share of the aggregate attributable to malicious clients, how it was computed).

    The second element is "weights", "accepted", "coordinates" or "none"; see the module doc.
    """
    mal = torch.as_tensor(malicious, dtype=torch.bool)
    weights = getattr(aggregation, "weights", None)
    accepted = getattr(aggregation, "accepted", None)
    if weights is not None:
        w = torch.as_tensor(weights, dtype=torch.float64).abs()
        total = float(w.sum())
        return (float(w[mal].sum()) / total if total > 0 else None), "weights"
    if accepted is not None:
        acc = torch.as_tensor(accepted, dtype=torch.bool)
        k = int(acc.sum())
        return (int((acc & mal).sum()) / k if k else None), "accepted"
    positions = coordinate_positions(rule_name, updates.shape[0], params)
    if positions is not None:
        return coordinate_share(updates, mal, positions), "coordinates"
    return None, "none"


def detection(accepted: torch.Tensor | Sequence[bool] | None,
              malicious: torch.Tensor | Sequence[bool]) -> dict[str, float | int | None]:
    """Confusion counts and precision/recall/FPR of rejecting the malicious clients."""
    if accepted is None:
        return {"tp": None, "fp": None, "fn": None, "tn": None,
                "precision": None, "recall": None, "fpr": None}
    acc = torch.as_tensor(accepted, dtype=torch.bool).flatten()
    mal = torch.as_tensor(malicious, dtype=torch.bool).flatten()
    if acc.shape != mal.shape:
        raise ValueError(f"accepted has {acc.numel()} entries, malicious {mal.numel()}")
    flagged = ~acc
    tp = int((flagged & mal).sum())
    fp = int((flagged & ~mal).sum())
    fn = int((acc & mal).sum())
    tn = int((acc & ~mal).sum())
    return {
        "tp": tp, "fp": fp, "fn": fn, "tn": tn,
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
        "fpr": _ratio(fp, fp + tn),
    }


def _ratio(num: int, den: int) -> float | None:
    return num / den if den else None


_NORM_SAFE = (1e-14, 1e18)  # float32 sums of squares neither underflow nor overflow in here


def row_norms(updates: torch.Tensor) -> torch.Tensor:
    """(n,) float64 L2 norms of the rows, safe at any finite scale.

    Computed on the matrix in its own dtype (no float64 copy of the (n, d) updates; relative
    difference to a float64 computation ~1e-6 in float32); only rows whose norm leaves the range
    where float32 squares are exact enough (< 1e-14, > 1e18, inf, NaN) are redone in float64."""
    norms = torch.linalg.vector_norm(updates, dim=1).double()
    redo = ~((norms >= _NORM_SAFE[0]) & (norms <= _NORM_SAFE[1]))
    if bool(redo.any()):
        norms[redo] = torch.linalg.vector_norm(updates[redo].double(), dim=1)
    return norms


def norm_stats(updates: torch.Tensor, malicious: torch.Tensor) -> dict[str, float | None]:
    """Mean L2 norm of benign and of malicious updates (after the attack), and the max."""
    return norm_summary(row_norms(updates), malicious)


def norm_summary(norms: torch.Tensor, malicious: torch.Tensor) -> dict[str, float | None]:
    """``norm_benign`` / ``norm_malicious`` (means) and ``norm_max`` of per-client update norms."""
    mal = torch.as_tensor(malicious, dtype=torch.bool)
    norms = torch.as_tensor(norms, dtype=torch.float64)
    return {
        "norm_benign": float(norms[~mal].mean()) if bool((~mal).any()) else None,
        "norm_malicious": float(norms[mal].mean()) if bool(mal.any()) else None,
        "norm_max": float(norms.max()) if norms.numel() else None,
    }
