"""The detection sweep (presets ``detection`` on digits and ``detection-mnist``): what each
detecting defence catches and misses, and the papers' own claims checked against it.

The table, per rule (mean ± std over the seeds): the worst final accuracy over the attacks (the
mean over seeds of each attack, then the worst attack), the attack success rate of the patch
backdoor and of FLTrust's scaling attack, and for each attack recall / FPR of the rule's per-client
decisions (means over the rounds of a cell, then over seeds; "—" for rules that decide nothing
per client). FLDetector's rounds before its first flag count, as they do for a deployed server.

Claims checked (from the papers' abstracts and evaluation sections):

- (D1) FreqFed (Fereidooni et al., NDSS'24): backdoors are mitigated — ASR ≤ 0.05 under the patch
  backdoor and the scaling attack;
- (D2) FLDetector (Zhang et al., KDD'22): malicious clients are detected — recall ≥ 0.9 with
  FPR ≤ 0.1 under the scaling attack and under an untargeted model-poisoning attack (Min-Max
  here; the paper uses Trim and Krum attacks);
- (D3) the detecting defences keep a model that works under every attack: worst accuracy within
  5 points of FedAvg's accuracy without attack (the common claim of FLAME, FreqFed, FLDetector);
- (D4) BackdoorIndicator (Li & Dai, USENIX Sec'24): backdoors are detected — patch-backdoor and
  scaling ASR ≤ 0.05.

A claim whose rule is not in the results directory is reported as missing.
"""

from __future__ import annotations

from collections.abc import Callable

from fedshield.simulations.findings.results import (
    Cell,
    Finding,
    Results,
    Stat,
    finding,
    need,
    ordered,
)

DETECTION_RULES = ("fedavg", "flame", "foolsgold", "dnc", "signguard", "bucketing+median",
                   "nnm+krum", "arc+median", "fldetector+median", "freqfed+fedavg",
                   "backdoor-indicator+fedavg")
DETECTION_ATTACKS = ("none", "alie", "ipm", "backdoor-patch", "scaling", "minmax")
FREQFED_SOURCE = "Fereidooni et al. NDSS'24"
FLDETECTOR_SOURCE = "Zhang et al. KDD'22"
INDICATOR_SOURCE = "Li & Dai USENIX Sec'24"


def _cells(results: Results, rule: str, attack: str) -> list[Cell]:
    return [c for c in results.cells if c.rule == rule and c.attack == attack]


def _stat(cells: list[Cell], value: Callable[[Cell], float | None]) -> Stat | None:
    values = [v for v in (value(c) for c in cells) if v is not None]
    return Stat.of(values) if values else None


def worst_accuracy(results: Results, rule: str) -> tuple[Stat, str] | None:
    """(the seeds' accuracy under the worst attack, that attack) for ``rule``."""
    stats = {a: _stat(_cells(results, rule, a), lambda c: c.accuracy)
             for a in results.attacks()}
    stats = {a: s for a, s in stats.items() if s is not None}
    if not stats:
        return None
    attack = min(stats, key=lambda a: stats[a].mean)
    return stats[attack], attack


def rules(results: Results) -> list[str]:
    return ordered({c.rule for c in results.cells}, DETECTION_RULES)


def detection_table(results: Results) -> str:
    """Four tables: per rule the worst accuracy, the targeted attacks' ASR and the FPR without
    attack; then recall, FPR and precision per rule × attack (mean ± std over seeds)."""
    attacks = [a for a in ordered(results.attacks(), DETECTION_ATTACKS) if a != "none"]
    targeted = [a for a in ("backdoor-patch", "scaling") if a in attacks]
    head = ["rule", "worst accuracy %", *(f"{a} ASR %" for a in targeted), "FPR, no attack"]
    lines = [_row(head), "|" + "---|" * len(head)]
    for rule in rules(results):
        worst = worst_accuracy(results, rule)
        row = [rule, "—" if worst is None else f"{worst[0].fmt(1, 100)} ({worst[1]})"]
        for attack in targeted:
            row.append(_fmt(_stat(_cells(results, rule, attack), lambda c: c.asr), 1, 100))
        row.append(_fmt(_stat(_cells(results, rule, "none"), lambda c: c.fpr), 2))
        lines.append(_row(row))
    parts = ["\n".join(lines)]
    for title, key in (("recall", "recall"), ("false-positive rate", "fpr"),
                       ("precision", "precision")):
        table = [f"Detection {title} per attack (mean over rounds; — for rules that decide "
                 "nothing per client)", "", _row(["rule", *attacks]),
                 "|" + "---|" * (len(attacks) + 1)]
        for rule in rules(results):
            stats = [_stat(_cells(results, rule, a), lambda c, k=key: getattr(c, k))
                     for a in attacks]
            if all(st is None for st in stats):
                continue
            table.append(_row([rule, *(_fmt(st, 2) for st in stats)]))
        parts.append("\n".join(table))
    return "\n\n".join(parts)


def _fmt(stat: Stat | None, digits: int, scale: float = 1.0) -> str:
    return "—" if stat is None else stat.fmt(digits, scale)


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def check_detection(results: Results) -> list[Finding]:
    """(D1)–(D3) of the module docstring."""
    r = results

    def stops_backdoors(rule: str) -> Callable[[], tuple[bool, str]]:
        def check() -> tuple[bool, str]:
            asr = {a: need(_stat(_cells(r, rule, a), lambda c: c.asr), f"{rule} × {a}")
                   for a in ("backdoor-patch", "scaling")}
            return all(v <= 0.05 for v in asr.values()), ", ".join(
                f"{a} ASR {v:.3f}" for a, v in asr.items())

        return check

    def fldetector_detects() -> tuple[bool, str]:
        parts, ok = [], True
        for attack in ("scaling", "minmax"):
            cells = _cells(r, "fldetector+median", attack)
            recall = need(_stat(cells, lambda c: c.recall), f"fldetector × {attack} recall")
            fpr = need(_stat(cells, lambda c: c.fpr), f"fldetector × {attack} FPR")
            ok = ok and recall >= 0.9 and fpr <= 0.1
            parts.append(f"{attack}: recall {recall:.2f}, FPR {fpr:.2f}")
        return ok, "; ".join(parts)

    def accuracy_kept() -> tuple[bool, str]:
        base = need(_stat(_cells(r, "fedavg", "none"), lambda c: c.accuracy), "fedavg × none")
        detectors = [x for x in rules(r) if x not in ("fedavg", "bucketing+median", "nnm+krum",
                                                     "arc+median")]
        short = []
        for rule in detectors:
            worst = worst_accuracy(r, rule)
            if worst is not None and worst[0].mean < base - 0.05:
                short.append(f"{rule} {worst[0].mean * 100:.1f} ({worst[1]})")
        detail = (f"FedAvg without attack {base * 100:.1f}; below it by > 5 points: "
                  + (", ".join(short) or "none"))
        return not short, detail

    return [
        finding("freqfed-stops-backdoors", "FreqFed: patch-backdoor and scaling ASR ≤ 0.05",
                FREQFED_SOURCE, stops_backdoors("freqfed+fedavg")),
        finding("fldetector-detects", "FLDetector: recall ≥ 0.9, FPR ≤ 0.1 under scaling and "
                "an untargeted attack (Min-Max)", FLDETECTOR_SOURCE, fldetector_detects),
        finding("detectors-keep-accuracy", "every detector's worst accuracy within 5 points of "
                "FedAvg without attack", "FLAME, FreqFed, FLDetector papers", accuracy_kept),
        finding("indicator-stops-backdoors", "BackdoorIndicator: patch-backdoor and scaling ASR "
                "≤ 0.05", INDICATOR_SOURCE, stops_backdoors("backdoor-indicator+fedavg")),
    ]
