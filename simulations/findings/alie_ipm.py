"""A Little Is Enough (Baruch et al., NeurIPS 2019) and Fall of Empires (Xie et al., UAI 2019):
the small, in-distribution attacks hurt the classic robust rules more than plain averaging;
preset ``alie-ipm``. With Δ(r, a) = err(r, a) − err(r, none):

(A1) Δ(r, alie) > Δ(fedavg, alie)  for r ∈ {krum, median, trimmedmean, bulyan}
(A2) Δ(r, ipm)  > Δ(fedavg, ipm)   for r ∈ {krum, median}
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from fedshield.simulations.findings.results import (
    Finding,
    Results,
    finding,
    need,
    ordered,
)

ALIE_SOURCE = "Baruch et al. NeurIPS'19"


IPM_SOURCE = "Xie et al. UAI'19"


def check_alie_ipm(results: Results) -> list[Finding]:
    """(A1)–(A2) of the module docstring: Δ = error under the attack − error without it."""
    r = results

    def hurts_more(attack: str, rules: Sequence[str]) -> Callable[[], tuple[bool, str]]:
        def check() -> tuple[bool, str]:
            def delta(rule: str) -> float:
                attacked = need(r.error(rule, attack), f"{rule} × {attack}")
                return attacked - need(r.error(rule, "none"), f"{rule} × none")

            base = delta("fedavg")
            deltas = {rule: delta(rule) for rule in rules}
            detail = f"Δ fedavg {base:+.3f}; " + ", ".join(
                f"{rule} {d:+.3f}" for rule, d in deltas.items()
            )
            return all(d > base for d in deltas.values()), detail

        return check

    return [
        finding(
            "alie-breaks-classics",
            "ALIE raises the error of Krum, median, trimmed mean and Bulyan more than FedAvg's",
            ALIE_SOURCE,
            hurts_more("alie", ("krum", "median", "trimmedmean", "bulyan")),
        ),
        finding(
            "ipm-breaks-classics",
            "IPM (ε = 0.1) raises the error of Krum and median more than FedAvg's",
            IPM_SOURCE,
            hurts_more("ipm", ("krum", "median")),
        ),
    ]


def error_table(results: Results) -> str:
    """Markdown: measured test error, rule × attack (no published cells exist for alie-ipm)."""
    rules = ordered({c.aggregator for c in results.cells}, ("fedavg",))
    attacks = results.attacks()
    lines = ["| rule | " + " | ".join(attacks) + " |", "|---|" + "---|" * len(attacks)]
    for rule in rules:
        row = []
        for attack in attacks:
            err = results.error(rule, attack)
            row.append("—" if err is None else err.fmt())
        lines.append(f"| {rule} | " + " | ".join(row) + " |")
    return "\n".join(lines)
