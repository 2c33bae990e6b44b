"""The attack frontier (presets ``attacks``, ``attacks-mnist``, ``durability``,
``durability-mnist``): which rule each attack breaks, beside the papers' claims.

A rule is **broken** by an untargeted attack when its final accuracy (mean over seeds) is more
than 10 points below its own accuracy without attack, and by a targeted attack (a backdoor) when
the final attack success rate is at least 50 %.

Claims checked:

- (T1) PoisonedFL (Xie et al. 2024, abstract): it breaks eight defences — here, at least 8
  robust rules broken;
- (T2) MPAF (Cao & Gong, CVPR-W'22): fake clients cut trimmed mean's accuracy by 32 points (10 %
  fake clients) — here, by at least 20;
- (T3) DBA (Xie et al. ICLR'20): the distributed trigger is at least as effective as the
  centralised one — DBA's ASR on FedAvg ≥ the patch backdoor's;
- (T4) A3FL (Zhang et al. NeurIPS'23): its adaptive trigger beats a fixed one under defences —
  A3FL's ASR ≥ the patch backdoor's under most robust rules;
- (T5) edge-case (Wang et al. NeurIPS'20): tail backdoors pass the robust rules that select
  updates — its ASR on Krum is at least 50 % (the paper's Krum and Multi-Krum fail);
- (T6) FLTrust (Cao et al. NDSS'21): FLTrust withstands its adaptive attack — within 5 points of
  its accuracy without attack;
- (T7) Neurotoxin (Zhang et al. ICML'22): more durable than the baseline backdoor — more
  evaluated rounds after the stop at ≥ half its ASR than the patch backdoor, on FedAvg.
"""

from __future__ import annotations

from fedshield.simulations.findings.results import (
    Cell,
    Finding,
    Missing,
    Results,
    Stat,
    finding,
    ordered,
)

TARGETED = ("backdoor-patch", "dba", "a3fl", "edge-case", "neurotoxin")
NOT_ROBUST = ("fedavg", "foolsgold")  # rules that do not claim bounded influence
ATTACK_ORDER = ("poisonedfl", "mpaf", "adaptive", "fltrust-adaptive", "backdoor-patch", "dba",
                "a3fl", "edge-case", "neurotoxin")


def _mean(cells: list[Cell], key: str) -> float | None:
    values = [getattr(c, key) for c in cells if getattr(c, key) is not None]
    return Stat.of(values).mean if values else None


def _group(results: Results, rule: str, attack: str) -> list[Cell]:
    return [c for c in results.cells if c.rule == rule and c.attack == attack]


def _need(value: float | None, what: str) -> float:
    if value is None:
        raise Missing(what)
    return value


def broken(results: Results, rule: str, attack: str) -> bool | None:
    """Whether ``attack`` breaks ``rule`` (module docstring); None without the cells."""
    cells = _group(results, rule, attack)
    if not cells:
        return None
    if attack in TARGETED:
        asr = _mean(cells, "asr")
        return None if asr is None else asr >= 0.5
    clean = _mean(_group(results, rule, "none"), "accuracy")
    attacked = _mean(cells, "accuracy")
    return None if clean is None or attacked is None else attacked < clean - 0.10


def rules_of(results: Results) -> list[str]:
    return ordered({c.rule for c in results.cells}, ())


def breaks_table(results: Results) -> str:
    """One row per attack: the rules it breaks and the robust rules it does not."""
    rules = rules_of(results)
    attacks = [a for a in ordered(results.attacks(), ATTACK_ORDER) if a != "none"]
    lines = ["| attack | breaks | holds |", "|---|---|---|"]
    for attack in attacks:
        verdict = {r: broken(results, r, attack) for r in rules}
        hit = [r for r, v in verdict.items() if v]
        held = [r for r, v in verdict.items() if v is False]
        lines.append(f"| {attack} | {', '.join(hit) or '—'} ({len(hit)}) | "
                     f"{', '.join(held) or '—'} ({len(held)}) |")
    return "\n".join(lines)


def check_attacks(results: Results) -> list[Finding]:
    """(T1)–(T7) of the module docstring."""
    r = results
    robust = [x for x in rules_of(r) if x not in NOT_ROBUST]

    def poisonedfl() -> tuple[bool, str]:
        hit = [x for x in robust if broken(r, x, "poisonedfl")]
        if not _group(r, "fedavg", "poisonedfl"):
            raise Missing("poisonedfl cells")
        return len(hit) >= 8, f"{len(hit)} robust rules broken: {', '.join(hit) or 'none'}"

    def mpaf() -> tuple[bool, str]:
        clean = _need(_mean(_group(r, "trimmedmean", "none"), "accuracy"), "trimmedmean × none")
        hit = _need(_mean(_group(r, "trimmedmean", "mpaf"), "accuracy"), "trimmedmean × mpaf")
        return clean - hit >= 0.20, f"trimmed mean {100 * clean:.1f} → {100 * hit:.1f} %"

    def asr(rule: str, attack: str) -> float:
        return _need(_mean(_group(r, rule, attack), "asr"), f"{rule} × {attack}")

    def dba() -> tuple[bool, str]:
        d, p = asr("fedavg", "dba"), asr("fedavg", "backdoor-patch")
        return d >= p, f"FedAvg ASR: DBA {100 * d:.1f} %, patch {100 * p:.1f} %"

    def a3fl() -> tuple[bool, str]:
        wins = [x for x in robust if _group(r, x, "a3fl") and _group(r, x, "backdoor-patch")
                and asr(x, "a3fl") >= asr(x, "backdoor-patch")]
        compared = [x for x in robust if _group(r, x, "a3fl") and _group(r, x, "backdoor-patch")]
        if not compared:
            raise Missing("a3fl and backdoor-patch cells of robust rules")
        return 2 * len(wins) > len(compared), (f"A3FL ≥ patch under {len(wins)} of "
                                               f"{len(compared)} robust rules")

    def edge() -> tuple[bool, str]:
        krum, base = asr("krum", "edge-case"), asr("fedavg", "edge-case")
        return krum >= 0.5, f"ASR on Krum {100 * krum:.1f} %, on FedAvg {100 * base:.1f} %"

    def fltrust() -> tuple[bool, str]:
        clean = _need(_mean(_group(r, "fltrust", "none"), "accuracy"), "fltrust × none")
        hit = _need(_mean(_group(r, "fltrust", "fltrust-adaptive"), "accuracy"),
                    "fltrust × fltrust-adaptive")
        return clean - hit <= 0.05, f"FLTrust {100 * clean:.1f} → {100 * hit:.1f} %"

    def neurotoxin() -> tuple[bool, str]:
        n = _need(_mean(_group(r, "fedavg", "neurotoxin"), "durable_rounds"), "neurotoxin")
        p = _need(_mean(_group(r, "fedavg", "backdoor-patch"), "durable_rounds"), "patch")
        return n > p, f"FedAvg rounds at ≥ half the ASR after the stop: Neurotoxin {n:.1f}, " \
                      f"patch {p:.1f}"

    sources = {"poisonedfl": "Xie et al. 2024", "mpaf": "Cao & Gong CVPR-W'22",
               "dba": "Xie et al. ICLR'20", "a3fl": "Zhang et al. NeurIPS'23",
               "edge": "Wang et al. NeurIPS'20", "fltrust": "Cao et al. NDSS'21",
               "neurotoxin": "Zhang et al. ICML'22"}
    return [
        finding("poisonedfl-breaks-eight", "PoisonedFL breaks ≥ 8 robust rules",
                sources["poisonedfl"], poisonedfl),
        finding("mpaf-trimmed-mean", "MPAF cuts trimmed mean by ≥ 20 points",
                sources["mpaf"], mpaf),
        finding("dba-beats-centralised", "DBA's ASR on FedAvg ≥ the patch backdoor's",
                sources["dba"], dba),
        finding("a3fl-beats-fixed", "A3FL's ASR ≥ the patch backdoor's under most robust rules",
                sources["a3fl"], a3fl),
        finding("edge-case-passes", "the edge-case backdoor passes Krum (ASR ≥ 50 %)",
                sources["edge"], edge),
        finding("fltrust-withstands-adaptive", "FLTrust within 5 points under its adaptive "
                "attack", sources["fltrust"], fltrust),
        finding("neurotoxin-durable", "Neurotoxin outlasts the patch backdoor on FedAvg",
                sources["neurotoxin"], neurotoxin),
    ]
