"""``fedshield findings {fltrust,bucketing,alie-ipm,detection,attacks} DIR``: check the published
qualitative findings against a results directory, and print the measured tables beside the
published values.

One module per reproduction, each with its paper, its pass criteria and its published table:
:mod:`.fltrust` (preset ``fltrust-mnist``), :mod:`.bucketing` (``bucketing-mnist``) and
:mod:`.alie_ipm` (``alie-ipm``), :mod:`.detection` (``detection``, ``detection-mnist``: the
detecting defences and their papers' claims), :mod:`.attacks` (``attacks``, ``durability`` and
their MNIST twins: which rule each new attack breaks); :mod:`.results` reads the cells.

Results are read from the store's finished-cell records (``DIR/cells/<id>.json``: resolved
config, summary, wall time). Every value is the mean over the seeds present. A finding whose
cells are missing is reported as "missing" (never as passed). ``main`` returns 0 when every
finding holds, 1 when one does not, 2 when cells are missing or the directory cannot be read.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from fedshield.simulations.findings.alie_ipm import check_alie_ipm, error_table
from fedshield.simulations.findings.attacks import breaks_table, check_attacks
from fedshield.simulations.findings.bucketing import (
    BUCKETING_PUBLISHED,
    bucketing_table,
    check_bucketing,
)
from fedshield.simulations.findings.detection import check_detection, detection_table
from fedshield.simulations.findings.fltrust import (
    FLTRUST_ATTACKS,
    FLTRUST_RULES,
    check_fltrust,
    fltrust_table,
)
from fedshield.simulations.findings.results import (
    Cell,
    Finding,
    FindingsError,
    Results,
    load_cells,
)

__all__ = ["BUCKETING_PUBLISHED", "FLTRUST_ATTACKS", "FLTRUST_RULES", "REPRODUCTIONS", "Cell",
           "Finding", "FindingsError", "Results", "bucketing_table", "check_alie_ipm",
           "check_bucketing", "check_fltrust", "error_table", "exit_code", "fltrust_table",
           "load_cells", "main"]

# --------------------------------------------------------------------------------------------
# Grouping over seeds
# --------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------
# Published values and the measured tables beside them
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reproduction:
    check: Callable[[Results], list[Finding]]
    table: Callable[[Results], str]
    caption: str


REPRODUCTIONS: dict[str, Reproduction] = {
    "fltrust": Reproduction(
        check_fltrust,
        fltrust_table,
        "Test error (Scaling: error / ASR); published MNIST-0.5 value in parentheses with its "
        "confidence flag (c confident, ~ approximate, ? not recalled: the PDF was not available).",
    ),
    "bucketing": Reproduction(
        check_bucketing,
        bucketing_table,
        "Test accuracy %, no attack; published: Karimireddy et al. ICLR'22 exp1 (verified).",
    ),
    "alie-ipm": Reproduction(
        check_alie_ipm,
        error_table,
        "Test error; the papers give no directly comparable cells (qualitative anchors only).",
    ),
    "attacks": Reproduction(
        check_attacks,
        breaks_table,
        "A rule is broken by an untargeted attack when it loses more than 10 points of accuracy "
        "against its own no-attack run, by a backdoor when the final ASR is at least 50 % "
        "(means over seeds).",
    ),
    "detection": Reproduction(
        check_detection,
        detection_table,
        "Mean ± std over seeds: worst final accuracy over the attacks (that attack), the "
        "targeted attacks' ASR, the FPR without attack; then recall, FPR and precision of the "
        "rule's per-client decisions per attack (each a mean over the cell's rounds).",
    ),
}


# --------------------------------------------------------------------------------------------
# Report and CLI
# --------------------------------------------------------------------------------------------


def findings_markdown(findings: Sequence[Finding]) -> str:
    lines = ["| finding | status | measured | source |", "|---|---|---|---|"]
    lines += [f"| {f.claim} | **{f.status}** | {f.detail} | {f.source} |" for f in findings]
    return "\n".join(lines)


def render(name: str, results: Results, findings: Sequence[Finding], *, markdown: bool) -> str:
    repro = REPRODUCTIONS[name]
    wall = results.wall_seconds()
    meta = (
        f"{len(results.cells)} cells; rounds {results.rounds()}; seeds {results.seeds()}; "
        f"wall time {'unknown' if wall is None else f'{wall / 60:.1f} min (sum of cells)'}"
    )
    if markdown:
        return "\n\n".join([meta, repro.caption, repro.table(results), findings_markdown(findings)])
    width = max(len(f.key) for f in findings)
    body = [f"{f.status:>7}  {f.key:<{width}}  {f.detail}" for f in findings]
    return "\n".join([meta, "", repro.table(results), "", *body])


def exit_code(findings: Sequence[Finding]) -> int:
    if any(f.holds is None for f in findings):
        return 2
    return 0 if all(f.holds for f in findings) else 1


def build_parser(prog: str = "fedshield findings") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Check the published qualitative findings against a results directory and "
        "print the measured table beside the published values. Exit status: 0 every finding "
        "holds, 1 one does not, 2 cells missing or unreadable results.",
    )
    parser.add_argument("reproduction", choices=sorted(REPRODUCTIONS))
    parser.add_argument("results", help="results directory of the preset (fedshield sweep --out)")
    parser.add_argument("--scenario", help="only the cells of this scenario name")
    parser.add_argument("--markdown", action="store_true", help="print Markdown tables")
    parser.add_argument("--json", action="store_true", help="print the findings as JSON")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        results = Results(load_cells(args.results, scenario=args.scenario))
    except FindingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    findings = REPRODUCTIONS[args.reproduction].check(results)
    if args.json:
        rows = [{**f.__dict__, "status": f.status} for f in findings]
        print(json.dumps(rows, indent=2, ensure_ascii=False))
    else:
        print(render(args.reproduction, results, findings, markdown=args.markdown))
    return exit_code(findings)


if __name__ == "__main__":
    raise SystemExit(main())
