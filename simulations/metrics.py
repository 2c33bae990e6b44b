"""Metrics of the harness: detection, malicious share of the aggregate, per-cell summaries and
per-rule worst cases.

Detection (rules that decide per client, i.e. return ``accepted``). The positive class is
"malicious"; a client is *flagged* when the rule rejects it::

    TP = |flagged ∩ M|   FP = |flagged ∖ M|   FN = |accepted ∩ M|   TN = |accepted ∖ M|
    precision = TP / (TP + FP)     (None when nothing is flagged)
    recall    = TP / (TP + FN)     (None when no malicious client took part)
    FPR       = FP / (FP + TN)     (None when no benign client took part)

Malicious share of the aggregate (``malicious_share``, ``coordinate_share``,
``coordinate_positions``, ``trimmed_count``): defined in :mod:`server.shares`, the one place both
engines import it from (the ServerApp writes it into ``rounds.jsonl``); re-exported here.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from fedshield.server.shares import (  # noqa: F401  (re-exported: the harness's metrics live here)
    coordinate_positions,
    coordinate_share,
    detection,
    malicious_share,
    norm_stats,
    norm_summary,
    trimmed_count,
)


# --- per cell ------------------------------------------------------------------------------------
def _series(rows: Iterable[dict[str, Any]], key: str) -> list[tuple[int, float]]:
    return [(int(r["round"]), float(r[key])) for r in rows if r.get(key) is not None]


def _mean(values: Iterable[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


def summarize(rows: list[dict[str, Any]], target_accuracy: float) -> dict[str, Any]:
    """Per-cell summary of its per-round rows (rounds in order; evaluation may be sparse).

    final_* is the last evaluated round; rounds_to_target the first round whose accuracy
    reaches ``target_accuracy`` (None if never); detection and share are means over rounds.
    ``diverged`` is True when a row says the run diverged (``diverged_round``: its round); the
    final_* values are then those of the last finite model, evaluated in that row.
    """
    acc = _series(rows, "accuracy")
    loss = _series(rows, "loss")
    asr = _series(rows, "asr")
    reached = [r for r, a in acc if a >= target_accuracy]
    diverged = [int(r["round"]) for r in rows if r.get("diverged")]
    return {
        "final_accuracy": acc[-1][1] if acc else None,
        "best_accuracy": max(a for _, a in acc) if acc else None,
        "final_loss": loss[-1][1] if loss else None,
        "final_asr": asr[-1][1] if asr else None,
        "max_asr": max(a for _, a in asr) if asr else None,
        "rounds_to_target": reached[0] if reached else None,
        "target_accuracy": target_accuracy,
        "precision": _mean(r.get("precision") for r in rows),
        "recall": _mean(r.get("recall") for r in rows),
        "fpr": _mean(r.get("fpr") for r in rows),
        "malicious_share": _mean(r.get("malicious_share") for r in rows),
        "aggregation_seconds": _mean(r.get("aggregation_seconds") for r in rows),
        "rounds": len(rows),
        "diverged": bool(diverged),
        "diverged_round": diverged[0] if diverged else None,
        "certified": next((r["certified"] for r in reversed(rows)
                           if r.get("certified") is not None), None),
        **durability(rows),
    }


def durability(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """For runs whose attackers stop (rows with ``attack_active``): the ASR of the last round
    they attacked, and the number of evaluated rounds after it whose ASR is still at least half
    of that ({} otherwise)."""
    if not any("attack_active" in r for r in rows):
        return {}
    during = [r for r in rows if r.get("attack_active") and r.get("asr") is not None]
    after = [r for r in rows if r.get("attack_active") is False and r.get("asr") is not None]
    at_stop = during[-1]["asr"] if during else None
    lasting = (None if at_stop is None else
               sum(1 for r in after if r["asr"] >= 0.5 * at_stop))
    return {"asr_at_stop": at_stop, "rounds_after_stop": len(after),
            "durable_rounds": lasting}


def accuracy_drops(cells: list[dict[str, Any]]) -> dict[str, float | None]:
    """cell id → final accuracy of its attack-free twin minus its own (None if no twin).

    The twin is the cell with the same ``clean_key`` (the config with the adversary removed)
    whose adversary is empty (attack "none" or no malicious client).
    """
    baseline: dict[str, float] = {}
    for cell in cells:
        if cell.get("clean") and cell["summary"].get("final_accuracy") is not None:
            baseline.setdefault(cell["clean_key"], cell["summary"]["final_accuracy"])
    out: dict[str, float | None] = {}
    for cell in cells:
        base = baseline.get(cell["clean_key"])
        acc = cell["summary"].get("final_accuracy")
        out[cell["id"]] = None if base is None or acc is None else base - acc
    return out


def worst_case(table: dict[tuple[str, str], float | None]) -> dict[str, tuple[float, str]]:
    """rule → (worst accuracy over the attacks, that attack) from {(rule, attack): accuracy}."""
    out: dict[str, tuple[float, str]] = {}
    for (rule, attack), acc in table.items():
        if acc is None:
            continue
        if rule not in out or acc < out[rule][0]:
            out[rule] = (acc, attack)
    return out
