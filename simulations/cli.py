"""``fedshield``: run the default benchmark, scenarios and sweeps; report; list; bench; ledger.

Imports are lazy so that ``fedshield --help`` answers without importing torch or flwr.
User errors (``ValueError`` subclasses raised by fedshield's packages) print
``error: <message>`` and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

DEFAULT_OUT = Path("results")
BENCHES = {
    "aggregators": "fedshield.simulations.bench.aggregators",  # each module has main(argv) -> int
    "simulation": "fedshield.simulations.bench.simulation",
    "scaling": "fedshield.simulations.bench.scaling",
    "training": "fedshield.simulations.bench.training",
    "sweep": "fedshield.simulations.bench.sweep",
    "memory": "fedshield.simulations.bench.memory",
}

EPILOG = """examples:
  fedshield                                   the default benchmark (rules x attacks), ~minutes
  fedshield run smoke --set rounds=3          a preset (or a .toml path) with overrides
  fedshield sweep my.toml --set aggregator=[krum,median] --workers 2
  fedshield report results/default            Markdown + PNG plots
  fedshield leaderboard results/breakdown     breakdown points: Markdown, PNG, CSV, JSON
  fedshield list attacks
  fedshield sweep breakdown --ray auto        cells as tasks on a Ray cluster
  fedshield bench aggregators                 (also: simulation, scaling, training, sweep, memory)
  fedshield findings fltrust results/fltrust-mnist
  fedshield ledger verify run/ledger.jsonl
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fedshield", description="Poisoning-resilient aggregation for federated learning: "
        "run the default rule x attack benchmark (no arguments), or a subcommand.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engine", choices=("inline", "flower"), default=None,
                        help="engine for the default benchmark (default: inline)")
    parser.add_argument("--out", type=Path, default=None,
                        help="results directory of the default benchmark (results/default)")
    parser.add_argument("--workers", type=int, default=None, help="parallel cell processes")
    parser.add_argument("--ray", default=None, metavar="auto|ADDRESS|local",
                        help="run the cells on a Ray cluster (see `fedshield sweep --help`)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override a key of the default benchmark")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    for name, text in (("run", "run a scenario (a preset name or a TOML file); every list is a "
                        "sweep axis"),
                       ("sweep", "run a sweep (same as run; writes the report at the end)")):
        p = sub.add_parser(name, help=text, description=text)
        p.add_argument("scenario", help="TOML file or preset name (see `fedshield list "
                       "scenarios`)")
        # SUPPRESS: the same options given before the subcommand (fedshield --engine flower run
        # ...) are kept instead of being reset to the subparser's default; --set lists add up.
        p.add_argument("--set", dest="sub_overrides", action="append", default=[],
                       metavar="KEY=VALUE", help="override a key; a list value (a=[1,2] or "
                       "a=x,y) makes it a sweep axis; dict keys as table.key=value")
        p.add_argument("--engine", choices=("inline", "flower"), default=argparse.SUPPRESS)
        p.add_argument("--out", type=Path, default=argparse.SUPPRESS,
                       help="results directory (default: results/<scenario name>)")
        p.add_argument("--workers", type=int, default=argparse.SUPPRESS,
                       help="parallel cell processes")
        p.add_argument("--ray", default=argparse.SUPPRESS, metavar="auto|ADDRESS|local",
                       help="run the cells as tasks on a Ray cluster (auto: the one this "
                       "machine joined; HOST:PORT: a head; local: a private one for this sweep)")
        p.add_argument("--no-report", action="store_true", help="do not write the report")
        p.add_argument("--dry-run", action="store_true",
                       help="list the cells the scenario expands to and exit")

    p = sub.add_parser("report", help="write report.md and plots/ for a results directory")
    p.add_argument("directory", type=Path)
    p.add_argument("--out", type=Path, default=None, help="report path (default DIR/report.md)")

    p = sub.add_parser("leaderboard", help="breakdown points and curves of a sweep over the "
                       "malicious fraction: leaderboard.{md,png,csv,json}")
    p.add_argument("directory", type=Path)
    p.add_argument("--out", type=Path, default=None, help="output directory (default DIR)")
    p.add_argument("--threshold", type=float, default=0.10, help="accuracy loss (fraction, "
                   "default 0.10 = 10 points) below the rule's own accuracy without attack "
                   "that counts as broken")
    p.add_argument("--asr-level", type=float, default=0.5, help="backdoor ASR that counts as "
                   "broken (default 0.5)")

    p = sub.add_parser("list", help="rules, detectors, attacks, datasets, partitions, models, "
                                    "scenarios")
    p.add_argument("what", nargs="?", default="all",
                   choices=("all", *LIST_SECTIONS))

    p = sub.add_parser("bench", help="benchmarks: aggregators | simulation | scaling | "
                       "training | sweep | memory")
    p.add_argument("target", choices=tuple(BENCHES))
    p.add_argument("args", nargs=argparse.REMAINDER, help="arguments passed to the benchmark")

    p = sub.add_parser("findings", help="check a results directory against a paper's findings "
                       "(fltrust, bucketing, alie-ipm); see simulations/findings/")
    p.add_argument("args", nargs=argparse.REMAINDER, help="e.g. fltrust results/fltrust-mnist")

    p = sub.add_parser("ledger", help="round ledger tools")
    lsub = p.add_subparsers(dest="ledger_command", metavar="COMMAND", required=True)
    from fedshield.server.ledger import add_verify_arguments

    add_verify_arguments(lsub.add_parser(
        "verify", help="check a ledger's chain, signatures and model history; print its head"))
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    if argv[:1] == ["findings"]:  # its own parser, --help included
        args = argparse.Namespace(command="findings", args=argv[1:])
    else:
        args = parser.parse_args(argv)
    try:
        return dispatch(args)
    except ValueError as exc:
        if not _is_ours(exc):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `fedshield list | head`
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print("interrupted: finished cells are saved; run the same command again to resume",
              file=sys.stderr)
        return 130


def _is_ours(exc: BaseException) -> bool:
    return type(exc).__module__.split(".")[0] == "fedshield"


def dispatch(args: argparse.Namespace) -> int:
    command = args.command
    if command is None:
        return cmd_run("default", args.overrides, args.engine, args.out, args.workers,
                       report=True, ray=args.ray)
    if command in ("run", "sweep"):
        args.overrides = [*args.overrides, *args.sub_overrides]
        if args.dry_run:
            return cmd_dry_run(args.scenario, args.overrides, args.engine)
        return cmd_run(args.scenario, args.overrides, args.engine, args.out, args.workers,
                       report=not args.no_report, ray=args.ray)
    if command == "report":
        from fedshield.simulations.report import write_report

        path = write_report(args.directory, args.out)
        print(f"report: {path}")
        return 0
    if command == "leaderboard":
        from fedshield.simulations.leaderboard import write_leaderboard

        for path in write_leaderboard(args.directory, args.out, threshold=args.threshold,
                                      asr_level=args.asr_level):
            print(f"leaderboard: {path}")
        return 0
    if command == "list":
        return cmd_list(args.what)
    if command == "bench":
        import importlib

        return int(importlib.import_module(BENCHES[args.target]).main(args.args) or 0)
    if command == "findings":
        from fedshield.simulations.findings import main as findings_main

        return int(findings_main(args.args) or 0)
    if command == "ledger":
        from fedshield.server.ledger import report

        return report(args)
    raise AssertionError(command)


# --- run / sweep ----------------------------------------------------------------------------------
def _load(spec: str, overrides: list[str], engine: str | None) -> Any:
    from fedshield.simulations import scenario as sc

    if engine is not None:
        overrides = [*overrides, f"engine='{engine}'"]
    scenario = sc.load(spec, overrides)
    cells = sc.expand(scenario)
    skipped = sc.validate_components(cells, scenario.infeasible)
    if skipped:
        reasons: dict[str, int] = {}
        for reason in skipped.values():
            reasons[reason] = reasons.get(reason, 0) + 1
        print(f"infeasible = 'skip': {len(skipped)} cells left out", file=sys.stderr)
        for reason, count in reasons.items():
            print(f"  {count} x {reason}", file=sys.stderr)
    return scenario, [c for c in cells if c.id not in skipped]


def cmd_dry_run(spec: str, overrides: list[str], engine: str | None) -> int:
    scenario, cells = _load(spec, overrides, engine)
    print(f"scenario {scenario.name}: {len(cells)} cells, axes {scenario.axes}")
    for cell in cells:
        print(f"  {cell.id}  {cell.rule_label:<28} {cell.attack_label:<24} "
              + " ".join(f"{k}={v}" for k, v in cell.axes.items()
                         if k not in ("aggregator", "attack")))
    return 0


def cmd_run(spec: str, overrides: list[str], engine: str | None, out: Path | None,
            workers: int | None, *, report: bool, ray: str | None = None) -> int:
    import tomli_w
    from rich.console import Console

    from fedshield.simulations.runner import run_sweep
    from fedshield.simulations.store import ResultsStore

    console = Console()
    scenario, cells = _load(spec, overrides, engine)
    out = out or DEFAULT_OUT / scenario.name
    store = ResultsStore(out)
    store.prepare(tomli_w.dumps(scenario.to_dict()))
    t0 = time.perf_counter()
    progress, hooks = _progress(console, scenario, workers)
    with progress:
        run_sweep(scenario, cells, store, workers=workers, execute=_executor(ray), **hooks)
    wall = time.perf_counter() - t0
    ids = {c.id for c in cells}
    records = [c for c in store.load_cells() if c["id"] in ids]
    console.print(f"[bold]{scenario.name}[/]: {len(records)} cells in {wall:.1f} s -> {out}")
    if len(records) == 1:
        _print_rounds(console, records[0])
    else:
        from fedshield.simulations.tables import summary_table

        table, order = summary_table(records)
        console.print("Final clean accuracy (%), ranked by worst case over attacks:")
        console.print(table, markup=False, highlight=False, soft_wrap=True)
        from fedshield.simulations.tables import Grid, summary_value

        asr = Grid(records, summary_value("final_asr"))
        if asr.stats:
            console.print("Attack success rate at the last round (%), targeted attacks:")
            console.print(asr.markdown(pct=True, rules=order), markup=False, highlight=False,
                          soft_wrap=True)
    if report and records:
        from fedshield.simulations.report import write_report

        console.print(f"report: {write_report(out)}")
    failed = [f for f in store.failures() if f["id"] in ids]
    if failed:
        console.print(f"[red]{len(failed)} cells failed[/] (details in {out / 'failed'}); "
                      "run the same command again to retry them")
        return 1
    return 0


def _executor(ray: str | None) -> Any:
    if not ray:
        return None
    from fedshield.simulations.ray_sweep import ray_executor

    return ray_executor(ray)


def _progress(console: Any, scenario: Any, workers: int | None) -> tuple[Any, dict[str, Any]]:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                        MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
                        console=console, transient=False)
    state: dict[str, Any] = {}

    def on_start(todo: int, skipped: int) -> None:
        if skipped:
            console.print(f"resuming: {skipped} finished cells skipped")
        state["task"] = progress.add_task(f"{scenario.name} cells", total=todo)

    def on_cell(record: dict[str, Any]) -> None:
        if record.get("failed"):
            progress.console.print(f"  [red]FAILED[/] {record['rule']:<26} {record['attack']:<22}"
                                   f" {record['error']}", highlight=False)
            progress.advance(state["task"])
            return
        s = record["summary"]
        acc = "—" if s["final_accuracy"] is None else f"{100 * s['final_accuracy']:.1f}%"
        asr = "" if s.get("final_asr") is None else f"  asr {100 * s['final_asr']:.1f}%"
        progress.console.print(f"  {record['rule']:<26} {record['attack']:<22} acc {acc}{asr}"
                               f"  ({record['seconds']:.1f} s)", highlight=False)
        progress.advance(state["task"])

    return progress, {"on_start": on_start, "on_cell": on_cell}


def _print_rounds(console: Any, record: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(title=f"{record['rule']} vs {record['attack']}")
    cols = ("round", "accuracy", "loss", "asr", "malicious_share", "recall", "fpr",
            "aggregation_seconds")
    for col in cols:
        table.add_column(col, justify="right")
    for row in record["rounds"]:
        table.add_row(*(_fmt(row.get(c)) for c in cols))
    console.print(table)


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


# --- list / ledger --------------------------------------------------------------------------------
LIST_SECTIONS = ("rules", "detectors", "attacks", "datasets", "partitions", "models", "scenarios")


def cmd_list(what: str) -> int:
    from rich.console import Console

    console = Console()
    for section in LIST_SECTIONS if what == "all" else (what,):
        console.print(f"[bold]{section}[/]")
        for name, detail in _listing(section):
            console.print(f"  {name:<18} {detail}", highlight=False, markup=False,
                          soft_wrap=True)
    return 0


def _listing(section: str) -> list[tuple[str, str]]:
    if section == "rules":
        from fedshield import aggregators
        out = []
        for name in aggregators.available():
            try:
                detail = _params_text(aggregators.create(name).params())
            except ValueError:  # f is required (Krum, Bulyan, trimmed mean, ...)
                params = aggregators.create(name, f=1).params()
                detail = _params_text({**params, "f": "<required>"})
            out.append((name, detail))
        return out
    if section == "detectors":
        from fedshield import aggregators

        return [(name, _params_text(aggregators.create_detector(name).params())
                 + " — compose: {name = 'detect', detector = '" + name + "', inner = <rule>}")
                for name in aggregators.available_detectors()]
    if section == "attacks":
        from fedshield.clients.attacks import available_attacks

        return [(n, f"[{d.get('kind')}; knowledge {'/'.join(d.get('knowledge', []))}; observes "
                 f"{d.get('observes')}] "
                 f"{_params_text(d.get('params', {}))} — {d.get('summary', '')}")
                for n, d in available_attacks().items()]
    if section == "scenarios":
        from fedshield.simulations.scenario import PRESETS_DIR, available_presets

        return [(n, _first_doc_line(PRESETS_DIR / f"{n}.toml")) for n in available_presets()]
    module, func = {
        "datasets": ("fedshield.tasks.datasets", "available_datasets"),
        "partitions": ("fedshield.tasks.partition", "available_partitions"),
        "models": ("fedshield.tasks.models", "available_models"),
    }[section]
    items = getattr(__import__(module, fromlist=[func]), func)()
    if isinstance(items, dict):
        return [(n, _describe(d)) for n, d in items.items()]
    return [(n, "") for n in items]


def _describe(detail: Any) -> str:
    if isinstance(detail, dict):
        return "  ".join(f"{k}={_params_text(v) if isinstance(v, dict) else v}"
                         for k, v in detail.items())
    return str(detail)


def _params_text(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in params.items()) or "(no parameters)"


def _first_doc_line(path: Path) -> str:
    """The preset's ``description``, else the first comment line."""
    import tomllib

    try:
        description = tomllib.loads(path.read_text()).get("description")
    except tomllib.TOMLDecodeError:
        description = None
    if description:
        return str(description)
    for line in path.read_text().splitlines():
        text = line.lstrip("# ").strip()
        if line.startswith("#") and text:
            return text
    return ""


if __name__ == "__main__":
    sys.exit(main())
