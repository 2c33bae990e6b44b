"""The results store: one directory per sweep (or several sweeps sharing cells).

Layout::

    DIR/cells/<id>.json   one file per finished cell — the source of truth: resolved config,
                          engine, labels, summary, per-round rows, malicious ids, timings.
                          Written atomically (temp file, fsync, os.replace) when the cell ends.
    DIR/runs/<id>/        flower engine only: the ServerApp's ledger.jsonl, checkpoints/,
                          rounds.jsonl and final.pt of that cell
    DIR/failed/<id>.json  cells that raised (error, traceback); retried by the next run
    DIR/cells.jsonl       index: one summary row per cell (rebuilt atomically after each cell)
    DIR/rounds.jsonl      one row per (cell, round) (rebuilt atomically after each cell)
    DIR/cells.csv         the index as CSV, for spreadsheets
    DIR/scenario.toml     the scenario of the last sweep, as resolved from file + overrides
    DIR/environment.json  Python, torch, flwr, numpy versions, platform, CPU count, git commit

A kill at any moment loses only the cells in flight: every finished cell is already in
``cells/``, and the indexes are derived from it (``rebuild_indexes``). Running the same sweep
again skips the ids found in ``cells/``.
"""

from __future__ import annotations

import csv
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

INDEX_FIELDS = (
    "id", "scenario", "engine", "rule", "attack", "seed", "final_accuracy", "best_accuracy",
    "final_asr", "accuracy_drop", "rounds_to_target", "precision", "recall", "fpr",
    "malicious_share", "aggregation_seconds", "seconds",
)


_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see the old or the new file, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; results are meant to be shared
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class ResultsStore:
    """Read and write a results directory (see the module docstring for the layout)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.cells_dir = self.root / "cells"

    # --- writing -------------------------------------------------------------------------
    def prepare(self, scenario_toml: str | None = None) -> None:
        self.cells_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(self.root / "environment.json", json.dumps(environment(), indent=2))
        if scenario_toml is not None:
            atomic_write(self.root / "scenario.toml", scenario_toml)

    def save_cell(self, record: dict[str, Any]) -> None:
        """Persist one finished cell atomically, then refresh the indexes."""
        atomic_write(self.cells_dir / f"{record['id']}.json", json.dumps(record, default=_json))
        (self.root / "failed" / f"{record['id']}.json").unlink(missing_ok=True)
        self.rebuild_indexes()

    def save_failure(self, record: dict[str, Any]) -> None:
        """Record a failed cell (error + traceback) in ``DIR/failed/``; it is not "finished"."""
        atomic_write(self.root / "failed" / f"{record['id']}.json",
                     json.dumps(record, default=_json, indent=1))

    def failures(self) -> list[dict[str, Any]]:
        folder = self.root / "failed"
        return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))] \
            if folder.is_dir() else []

    def rebuild_indexes(self) -> None:
        from simulations.metrics import accuracy_drops

        cells = self.load_cells()
        drops = accuracy_drops(cells)
        index, rounds = io.StringIO(), io.StringIO()
        for cell in cells:
            index.write(json.dumps(index_row(cell, drops.get(cell["id"])), default=_json) + "\n")
            for row in cell["rounds"]:
                rounds.write(json.dumps({"cell": cell["id"], "rule": cell["rule"],
                                         "attack": cell["attack"], **row}, default=_json) + "\n")
        atomic_write(self.root / "cells.jsonl", index.getvalue())
        atomic_write(self.root / "rounds.jsonl", rounds.getvalue())
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=INDEX_FIELDS, extrasaction="ignore")
        writer.writeheader()
        for cell in cells:
            writer.writerow(index_row(cell, drops.get(cell["id"])))
        atomic_write(self.root / "cells.csv", out.getvalue())

    # --- reading -------------------------------------------------------------------------
    def finished(self) -> set[str]:
        if not self.cells_dir.is_dir():
            return set()
        return {p.stem for p in self.cells_dir.glob("*.json")}

    def load_cells(self) -> list[dict[str, Any]]:
        """Every finished cell, in sweep order (scenario, then position in its sweep)."""
        if not self.cells_dir.is_dir():
            return []
        cells = [json.loads(p.read_text()) for p in self.cells_dir.glob("*.json")]
        cells.sort(key=lambda c: (c.get("scenario", ""), c.get("order", 0), c["id"]))
        return cells


def index_row(cell: dict[str, Any], drop: float | None) -> dict[str, Any]:
    summary = cell["summary"]
    row = {"id": cell["id"], "scenario": cell.get("scenario"), "engine": cell["engine"],
           "rule": cell["rule"], "attack": cell["attack"], "seed": cell["config"]["seed"],
           "accuracy_drop": drop, "seconds": cell.get("seconds")}
    row.update({k: summary.get(k) for k in INDEX_FIELDS if k in summary})
    return row


def _json(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def environment() -> dict[str, Any]:
    """Versions and machine facts recorded with every results directory."""
    info: dict[str, Any] = {
        "written_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "argv": sys.argv,
    }
    for module in ("torch", "numpy", "flwr", "sklearn", "matplotlib"):
        try:
            info[module] = __import__(module).__version__
        except Exception:
            info[module] = None
    try:
        info["git_commit"] = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
            text=True, timeout=5, check=False,
        ).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        info["git_commit"] = None
    for var in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS"):
        info[var] = os.environ.get(var)
    return info
