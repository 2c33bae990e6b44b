"""The results store: one directory per sweep (or several sweeps sharing cells).

Layout::

    DIR/cells/<id>.json   one file per finished cell — the source of truth: resolved config,
                          engine, labels, summary, per-round rows, malicious ids, timings.
                          Written atomically (temp file, fsync, os.replace) when the cell ends.
    DIR/runs/<id>/        flower engine only: the ServerApp's ledger.jsonl, checkpoints/,
                          rounds.jsonl and final.pt of that cell
    DIR/failed/<id>.json  cells that raised (error, traceback); retried by the next run
    DIR/cells.jsonl       index: one summary row per cell (appended and fsync'd after each
                          cell; rebuilt atomically from cells/ at the start and end of a run)
    DIR/rounds.jsonl      one row per (cell, round) (same)
    DIR/cells.csv         the index as CSV, for spreadsheets (written by ``rebuild_indexes``)
    DIR/scenario.toml     the scenario of the last sweep, as resolved from file + overrides
    DIR/environment.json  Python, torch, flwr, numpy versions, platform, CPU count, git commit

A kill at any moment loses only the cells in flight: every finished cell is already in
``cells/``, and the indexes are derived from it (``rebuild_indexes``, run by ``prepare``).
Running the same sweep again skips the ids found in ``cells/``.
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
    "malicious_share", "aggregation_seconds", "seconds", "diverged", "diverged_round",
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


class StoreError(ValueError):
    """The results directory cannot be written; the message names it and why."""


class ResultsStore:
    """Read and write a results directory (see the module docstring for the layout)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.cells_dir = self.root / "cells"

    # --- writing -------------------------------------------------------------------------
    def prepare(self, scenario_toml: str | None = None) -> None:
        """Create the directory, record the environment (and scenario), and rebuild the
        indexes from ``cells/`` (which also repairs a torn last line left by a kill)."""
        try:
            self.cells_dir.mkdir(parents=True, exist_ok=True)
            atomic_write(self.root / "environment.json", json.dumps(environment(), indent=2))
            if scenario_toml is not None:
                atomic_write(self.root / "scenario.toml", scenario_toml)
            self.rebuild_indexes()
        except OSError as exc:
            raise StoreError(f"cannot write the results store at {str(self.root)!r}: "
                             f"{exc.strerror or exc}") from None

    def save_cell(self, record: dict[str, Any]) -> None:
        """Persist one finished cell atomically, then append it to the indexes (fsync'd).

        The appended index row has no accuracy drop yet when its attack-free twin has not
        finished; :meth:`rebuild_indexes` (end of a sweep, next start) fills it in."""
        atomic_write(self.cells_dir / f"{record['id']}.json", json.dumps(record, default=_json))
        (self.root / "failed" / f"{record['id']}.json").unlink(missing_ok=True)
        from fedshield.simulations.metrics import accuracy_drops

        drop = accuracy_drops([*self._baselines(record), record]).get(record["id"])
        _append(self.root / "cells.jsonl",
                json.dumps(index_row(record, drop), default=_json) + "\n")
        _append(self.root / "rounds.jsonl", "".join(
            json.dumps({"cell": record["id"], "rule": record["rule"],
                        "attack": record["attack"], **row}, default=_json) + "\n"
            for row in record["rounds"]))

    def _baselines(self, record: dict[str, Any]) -> list[dict[str, Any]]:
        """Attack-free twins of ``record`` already in the index (as minimal cell dicts)."""
        path = self.root / "cells.jsonl"
        if not path.exists():
            return []
        out = []
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if row.get("clean") and row.get("clean_key") == record["clean_key"]:
                out.append({"id": row["id"], "clean": True, "clean_key": row["clean_key"],
                            "summary": {"final_accuracy": row.get("final_accuracy")}})
        return out

    def save_failure(self, record: dict[str, Any]) -> None:
        """Record a failed cell (error + traceback) in ``DIR/failed/``; it is not "finished"."""
        atomic_write(self.root / "failed" / f"{record['id']}.json",
                     json.dumps(record, default=_json, indent=1))

    def failures(self) -> list[dict[str, Any]]:
        folder = self.root / "failed"
        return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))] \
            if folder.is_dir() else []

    def rebuild_indexes(self) -> None:
        from fedshield.simulations.metrics import accuracy_drops

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
        return {cell["id"] for cell in self.load_cells()}

    def load_cells(self, *, quarantine: bool = True) -> list[dict[str, Any]]:
        """Every finished cell, in sweep order (scenario, then position in its sweep).

        Each file is parsed on its own: one that is not a cell record (torn, edited, another
        program's) is named on stderr and, with ``quarantine``, moved to ``DIR/corrupt/`` — so
        the sweep runs that cell again and nothing else is lost."""
        if not self.cells_dir.is_dir():
            return []
        cells = []
        for path in sorted(self.cells_dir.glob("*.json")):
            problem, cell = read_cell(path)
            if cell is not None:
                cells.append(cell)
                continue
            moved = ""
            if quarantine:
                target = self.root / "corrupt" / path.name
                target.parent.mkdir(exist_ok=True)
                os.replace(path, target)
                moved = f"; moved to {target}, the cell will run again"
            print(f"warning: results store: {path}: {problem}{moved}", file=sys.stderr)
        cells.sort(key=lambda c: (c.get("scenario", ""), c.get("order", 0), c["id"]))
        return cells


CELL_KEYS = {"id": str, "rule": str, "attack": str, "config": dict, "summary": dict,
             "rounds": list}


def read_cell(path: Path) -> tuple[str, dict[str, Any] | None]:
    """("", record) for a valid finished-cell file, else (what is wrong with it, None)."""
    try:
        record = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return f"unreadable ({type(exc).__name__}: {exc})", None
    if not isinstance(record, dict):
        return "not a JSON object", None
    for key, kind in CELL_KEYS.items():
        if not isinstance(record.get(key), kind):
            return f"no {kind.__name__} {key!r}", None
    if record["id"] != path.stem:
        return f"holds cell {record['id']!r}, not {path.stem!r}", None
    return "", record


def _append(path: Path, text: str) -> None:
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def index_row(cell: dict[str, Any], drop: float | None) -> dict[str, Any]:
    summary = cell["summary"]
    row = {"id": cell["id"], "scenario": cell.get("scenario"), "engine": cell["engine"],
           "rule": cell["rule"], "attack": cell["attack"], "seed": cell["config"]["seed"],
           "accuracy_drop": drop, "seconds": cell.get("seconds"), "clean": cell.get("clean"),
           "clean_key": cell.get("clean_key")}
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
