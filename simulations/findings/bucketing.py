"""Bucketing (Karimireddy, He, Jaggi, ICLR 2022), experiment 1: MNIST, 24 workers, no attack;
preset ``bucketing-mnist``. With acc the final test accuracy:

(B1) IID: |acc(r) − acc(fedavg)| ≤ 0.02 for every rule r
(B2) non-IID: acc(fedavg) − acc(r) ≥ 0.05 for r ∈ {krum, median, geomed}
(B3) non-IID: acc(fedavg) − acc(centeredclip) ≤ 0.02
(B4) acc(fedavg, non-IID) ≥ acc(fedavg, IID) − 0.02

(published gaps: B1 ≤ 1.02 points, B2 ≥ 14.1 points, B3 0.69 points, B4 0; the published table
was checked against the authors' code.)
"""

from __future__ import annotations

from fedshield.simulations.findings.results import (
    EPS,
    Finding,
    Results,
    finding,
    need,
    ordered,
)

BUCKETING_SOURCE = "Karimireddy et al. ICLR'22 exp1 (verified table)"


def check_bucketing(results: Results, *, close: float = 0.02, gap: float = 0.05) -> list[Finding]:
    """(B1)–(B4) of the module docstring, on final test accuracy without attack."""
    r = results
    rules = sorted({c.aggregator for c in r.cells} - {"fedavg"})

    def iid_close() -> tuple[bool, str]:
        base = need(r.accuracy("fedavg", iid=True), "fedavg × IID")
        parts, ok = [], True
        for rule in rules:
            acc = need(r.accuracy(rule, iid=True), f"{rule} × IID")
            ok &= abs(acc - base) <= close + EPS
            parts.append(f"{rule} {acc - base:+.3f}")
        return ok and bool(rules), f"fedavg {base:.3f}; gaps " + ", ".join(parts)

    def noniid_hurts() -> tuple[bool, str]:
        base = need(r.accuracy("fedavg", iid=False), "fedavg × non-IID")
        parts, ok = [], True
        for rule in ("krum", "median", "geomed"):
            acc = need(r.accuracy(rule, iid=False), f"{rule} × non-IID")
            ok &= base - acc >= gap - EPS
            parts.append(f"{rule} {acc - base:+.3f}")
        return ok, f"fedavg {base:.3f}; gaps " + ", ".join(parts) + f" (needs ≤ −{gap})"

    def cclip_holds() -> tuple[bool, str]:
        base = need(r.accuracy("fedavg", iid=False), "fedavg × non-IID")
        acc = need(r.accuracy("centeredclip", iid=False), "centeredclip × non-IID")
        return (
            base - acc <= close + EPS,
            f"fedavg {base:.3f}, centeredclip {acc:.3f} (gap ≤ {close})",
        )

    def avg_unaffected() -> tuple[bool, str]:
        iid = need(r.accuracy("fedavg", iid=True), "fedavg × IID")
        non = need(r.accuracy("fedavg", iid=False), "fedavg × non-IID")
        return non >= iid - close - EPS, f"fedavg IID {iid:.3f}, non-IID {non:.3f}"

    return [
        finding(
            "iid-all-close",
            f"IID: every rule within {close} of FedAvg's accuracy",
            BUCKETING_SOURCE,
            iid_close,
        ),
        finding(
            "noniid-classic-rules-lose",
            f"non-IID: Krum, median and geometric median ≥ {gap} below FedAvg",
            BUCKETING_SOURCE,
            noniid_hurts,
        ),
        finding(
            "noniid-cclip-holds",
            f"non-IID: centered clipping within {close} of FedAvg",
            BUCKETING_SOURCE,
            cclip_holds,
        ),
        finding(
            "fedavg-split-insensitive",
            f"FedAvg loses at most {close} from IID to non-IID",
            BUCKETING_SOURCE,
            avg_unaffected,
        ),
    ]


# Karimireddy et al. ICLR'22 exp1, test accuracy % (mean ± std, 3 seeds): verified.
BUCKETING_PUBLISHED: dict[str, tuple[str, str]] = {
    "fedavg": ("98.84 ± 0.08", "98.84 ± 0.07"),
    "krum": ("98.10 ± 0.14", "82.97 ± 3.64"),
    "median": ("97.82 ± 0.20", "80.36 ± 0.04"),
    "geomed": ("98.72 ± 0.11", "84.76 ± 0.83"),
    "centeredclip": ("98.76 ± 0.10", "98.15 ± 0.19"),
}


def bucketing_table(results: Results) -> str:
    """Markdown: measured test accuracy % | published %, rule × {IID, non-IID}."""
    rules = ordered({c.aggregator for c in results.cells}, tuple(BUCKETING_PUBLISHED))
    lines = [
        "| rule | IID measured | IID published | non-IID measured | non-IID published |",
        "|---|---|---|---|---|",
    ]
    for rule in rules:
        cells = []
        for iid in (True, False):
            acc = results.accuracy(rule, iid=iid)
            cells.append("—" if acc is None else acc.fmt(2, 100.0))
        pub = BUCKETING_PUBLISHED.get(rule, ("—", "—"))
        lines.append(f"| {rule} | {cells[0]} | {pub[0]} | {cells[1]} | {pub[1]} |")
    return "\n".join(lines)
