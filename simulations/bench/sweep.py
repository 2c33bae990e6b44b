"""``fedshield bench sweep``: the same sweep on local worker processes and on Ray, in one run.

    fedshield bench sweep                         # the default preset, one seed (63 cells)
    fedshield bench sweep --scenario smoke --workers 2
    fedshield bench sweep --ray 10.0.0.5:6379     # an existing cluster instead of a local head

The scenario's cells run twice into two temporary results stores: first on ``--workers`` local
processes (:func:`simulations.runner.run_sweep`, the baseline), then as Ray tasks
(``run_sweep(..., execute=ray_executor(ADDRESS))``) on a head this command starts on this machine
with as many CPUs as workers (``ray_sweep.local_head``; its start-up is timed apart) unless
``--ray`` names one.
Printed per path: cells, wall time, cells per minute, the time until the first cell's record
(start-up: worker processes or Ray tasks importing torch and loading data), and the steady
rate after it; then the ratio Ray / local and whether both paths stored the same final models.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class SweepTiming:
    path: str
    cells: int = 0
    wall: float = 0.0
    arrivals: list[float] = field(default_factory=list)  # seconds from the start
    vectors: dict[str, str] = field(default_factory=dict)  # cell id -> final model hash

    @property
    def cells_per_minute(self) -> float:
        return 60 * self.cells / self.wall if self.wall > 0 else float("nan")

    @property
    def first_cell(self) -> float:
        return self.arrivals[0] if self.arrivals else float("nan")

    @property
    def steady_per_minute(self) -> float:
        if len(self.arrivals) < 2 or self.arrivals[-1] <= self.arrivals[0]:
            return float("nan")
        return 60 * (len(self.arrivals) - 1) / (self.arrivals[-1] - self.arrivals[0])


def time_sweep(path: str, scenario: Any, cells: list[Any], *, workers: int,
               ray: str | None) -> SweepTiming:
    """Run ``cells`` into a fresh temporary store and time it."""
    from fedshield.simulations.ray_sweep import ray_executor
    from fedshield.simulations.runner import run_sweep
    from fedshield.simulations.store import ResultsStore

    root = Path(tempfile.mkdtemp(prefix=f"fedshield-bench-sweep-{path}-"))
    try:
        store = ResultsStore(root)
        store.prepare()
        timing = SweepTiming(path)
        t0 = time.perf_counter()

        def on_cell(record: dict[str, Any]) -> None:
            timing.arrivals.append(time.perf_counter() - t0)
            if not record.get("failed"):
                timing.vectors[record["id"]] = record["final_vector_blake2b"]

        run_sweep(scenario, cells, store, workers=workers,
                  execute=ray_executor(ray) if ray else None, on_cell=on_cell)
        timing.wall = time.perf_counter() - t0
        timing.cells = len(timing.vectors)
        return timing
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="fedshield bench sweep", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", default="default", help="preset or TOML (default: default)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="scenario override (default: seeds=[0])")
    parser.add_argument("--workers", type=int, default=2, help="local processes, and the local "
                        "head's CPUs (default 2)")
    parser.add_argument("--ray", default=None, metavar="ADDRESS",
                        help="an existing Ray cluster (default: start a local head)")
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error("--workers must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    from fedshield.simulations import ray_sweep
    from fedshield.simulations import scenario as sc
    from fedshield.simulations.bench.simulation import table

    args = _parse(argv)
    scenario = sc.load(args.scenario, args.set or ["seeds=[0]"])
    cells = sc.expand(scenario)
    skipped = sc.validate_components(cells, scenario.infeasible)
    cells = [c for c in cells if c.id not in skipped]
    print(f"# bench sweep  ({time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}, load "
          f"average {os.getloadavg()[0]:.2f}, {os.cpu_count()} CPUs): scenario {scenario.name}, "
          f"{len(cells)} cells, {args.workers} workers")
    local = time_sweep("local", scenario, cells, workers=args.workers, ray=None)
    head_start = float("nan")
    if args.ray:
        remote = time_sweep("ray", scenario, cells, workers=args.workers, ray=args.ray)
    else:
        t0 = time.perf_counter()
        with ray_sweep.local_head(num_cpus=args.workers) as head:
            head_start = time.perf_counter() - t0
            remote = time_sweep("ray", scenario, cells, workers=args.workers, ray=head.address)
    rows = [(t.path, t.cells, t.wall, t.cells_per_minute, t.first_cell, t.steady_per_minute)
            for t in (local, remote)]
    print()
    print(table(["path", "cells", "wall s", "cells/min", "first cell s", "steady cells/min"],
                rows))
    same = local.vectors == remote.vectors and len(local.vectors) == len(cells)
    print(f"\nray / local cells per minute: {remote.cells_per_minute / local.cells_per_minute:.2f}x"
          f"; steady: {remote.steady_per_minute / local.steady_per_minute:.2f}x; ray wall − local "
          f"wall {remote.wall - local.wall:+.1f} s against ray's extra start-up "
          f"{remote.first_cell - local.first_cell:+.1f} s"
          + (f" (local head started in {head_start:.1f} s, not counted)" if args.ray is None
             else ""))
    print(f"same final models on both paths: {'yes' if same else 'NO'}")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
