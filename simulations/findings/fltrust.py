"""FLTrust (Cao, Fang, Liu, Gong, NDSS 2021, Table II, MNIST-0.5) and the ordering of Fang et al.
(USENIX Security 2020, §3.2); preset ``fltrust-mnist`` (+ ``-smoke``). With err the final test
error and Δ(r, a) = err(r, a) − err(r, none):

(i)   err(fltrust, a) ≤ err(fedavg, none) + 0.04        for every attack a
(ii)  err(krum, fang-krum) > 0.5
(iii) err(r, fang-trim) ≥ 2 · err(r, none)               for r ∈ {trimmedmean, median}
(iv)  ASR(fedavg, scaling) ≥ 0.9  and  ASR(fltrust, scaling) ≤ 0.05
(v)   Δ(krum, fang-krum) > Δ(trimmedmean, fang-trim) > Δ(median, fang-trim)
"""

from __future__ import annotations

import math

from fedshield.simulations.findings.results import (
    EPS,
    Finding,
    Results,
    finding,
    need,
    ordered,
)

FLTRUST_SOURCE = "Cao et al. NDSS'21 Table II (MNIST-0.5)"


FANG_SOURCE = "Fang et al. USENIX Sec'20 §3.2 (ordering only; numbers unverified)"


def check_fltrust(results: Results, *, margin: float = 0.04) -> list[Finding]:
    """The four pass criteria and Fang et al.'s ordering (module docstring)."""
    r = results

    def fltrust_everywhere() -> tuple[bool, str]:
        base = need(r.error("fedavg", "none"), "fedavg × none")
        attacks = [a for a in r.attacks() if a != "none"] or ["(no attack in results)"]
        worst, parts = -math.inf, []
        for attack in attacks:
            err = need(r.error("fltrust", attack), f"fltrust × {attack}")
            worst = max(worst, err)
            parts.append(f"{attack} {err:.3f}")
        detail = f"fedavg/none {base:.3f} + {margin}; fltrust: " + ", ".join(parts)
        return worst <= base + margin + EPS, detail

    def krum_broken() -> tuple[bool, str]:
        err = need(r.error("krum", "fang-krum"), "krum × fang-krum")
        return err > 0.5, f"krum/fang-krum error {err:.3f} (needs > 0.5)"

    def trim_doubles() -> tuple[bool, str]:
        ok, parts = True, []
        for rule in ("trimmedmean", "median"):
            clean = need(r.error(rule, "none"), f"{rule} × none")
            attacked = need(r.error(rule, "fang-trim"), f"{rule} × fang-trim")
            ok &= attacked >= 2 * clean - EPS
            ratio = attacked / clean if clean > 0 else math.inf
            parts.append(f"{rule} {clean:.3f} → {attacked:.3f} (×{ratio:.2f})")
        return ok, "; ".join(parts) + " (needs ×2)"

    def scaling() -> tuple[bool, str]:
        on_avg = need(r.asr("fedavg", "scaling"), "ASR of fedavg × scaling")
        on_trust = need(r.asr("fltrust", "scaling"), "ASR of fltrust × scaling")
        detail = f"ASR fedavg {on_avg:.3f} (needs ≥ 0.9), fltrust {on_trust:.3f} (needs ≤ 0.05)"
        return on_avg >= 0.9 - EPS and on_trust <= 0.05 + EPS, detail

    def fang_ordering() -> tuple[bool, str]:
        def delta(rule: str, attack: str) -> float:
            return need(r.error(rule, attack), f"{rule} × {attack}") - need(
                r.error(rule, "none"), f"{rule} × none"
            )

        d_krum = delta("krum", "fang-krum")
        d_trim = delta("trimmedmean", "fang-trim")
        d_med = delta("median", "fang-trim")
        detail = f"Δ krum {d_krum:+.3f}, trimmedmean {d_trim:+.3f}, median {d_med:+.3f}"
        return d_krum > d_trim > d_med, detail

    return [
        finding(
            "fltrust-within-0.04",
            f"FLTrust's error under every attack ≤ FedAvg's error without attack + {margin}",
            FLTRUST_SOURCE,
            fltrust_everywhere,
        ),
        finding(
            "krum-attack-breaks-krum",
            "Fang's Krum attack raises Krum's error above 0.5",
            FLTRUST_SOURCE,
            krum_broken,
        ),
        finding(
            "trim-attack-doubles",
            "Fang's trim attack at least doubles trimmed mean's and median's error",
            FLTRUST_SOURCE,
            trim_doubles,
        ),
        finding(
            "scaling-backdoor",
            "Scaling backdoor: ASR ≥ 0.9 on FedAvg and ≤ 0.05 on FLTrust",
            FLTRUST_SOURCE,
            scaling,
        ),
        finding(
            "fang-ordering",
            "Tailored attacks: error increase Krum > trimmed mean > median",
            FANG_SOURCE,
            fang_ordering,
        ),
    ]


# FLTrust Table II, MNIST-0.5: the team's recollection, NOT read from the PDF.
# Flags: c confident, ~ approximate (±0.02–0.05), ? not recalled. Scaling: "error / ASR".
FLTRUST_PUBLISHED: dict[str, dict[str, str]] = {
    "fedavg": {
        "none": "0.04 c",
        "labelflip": "0.06 ~",
        "fang-krum": "0.10 ~",
        "fang-trim": "0.28 ~",
        "scaling": "? / ≈1.00 ~",
    },
    "krum": {
        "none": "0.10 c",
        "labelflip": "0.10 ~",
        "fang-krum": "≈0.9 ~",
        "fang-trim": "≈0.10 ?",
        "scaling": "0.10 / ≈0.00 ~",
    },
    "trimmedmean": {
        "none": "0.06 ~",
        "labelflip": "0.06 ~",
        "fang-krum": "≈0.07 ?",
        "fang-trim": "≈0.13–0.4 ?",
        "scaling": "0.06 / ?",
    },
    "median": {
        "none": "0.06 ~",
        "labelflip": "0.06 ~",
        "fang-krum": "≈0.06 ?",
        "fang-trim": "≈0.1–0.3 ?",
        "scaling": "0.06 / ?",
    },
    "fltrust": {
        "none": "0.05 c",
        "labelflip": "0.05 c",
        "fang-krum": "0.05 c",
        "fang-trim": "0.05 c",
        "scaling": "0.05 / 0.00 c",
    },
}


FLTRUST_RULES = ("fedavg", "krum", "trimmedmean", "median", "fltrust")


FLTRUST_ATTACKS = ("none", "labelflip", "fang-krum", "fang-trim", "scaling")


def fltrust_table(results: Results) -> str:
    """Markdown: measured test error (scaling: error / ASR) | published, rule × attack."""
    rules = ordered({c.aggregator for c in results.cells}, FLTRUST_RULES)
    attacks = ordered({c.attack for c in results.cells}, FLTRUST_ATTACKS)
    lines = [
        "| rule | " + " | ".join(attacks) + " |",
        "|---|" + "---|" * len(attacks),
    ]
    for rule in rules:
        row = []
        for attack in attacks:
            err = results.error(rule, attack)
            measured = "—" if err is None else err.fmt()
            asr = results.asr(rule, attack)
            if asr is not None and attack == "scaling":
                measured += f" / {asr.fmt()}"
            published = FLTRUST_PUBLISHED.get(rule, {}).get(attack)
            row.append(measured if published is None else f"{measured} ({published})")
        lines.append(f"| {rule} | " + " | ".join(row) + " |")
    return "\n".join(lines)
