"""Results of a preset's sweep as the findings read them: cells, per-group statistics over seeds,
and the finding record every paper module returns."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class FindingsError(ValueError):
    """The results directory or a row in it cannot be used; the message says what is wrong."""


@dataclass(frozen=True)
class Cell:
    """One finished cell (one RunConfig, one seed) of a results store."""

    aggregator: str
    attack: str
    partition: str
    seed: int
    accuracy: float  # final clean test accuracy
    asr: float | None = None  # final attack success rate, when the attack has a target
    rounds: int = 0
    seconds: float | None = None  # wall time of the cell
    config: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    # detection, mean over the cell's rounds (None for rules that decide nothing per client)
    precision: float | None = None
    recall: float | None = None
    fpr: float | None = None
    # durability (runs whose attackers stop): ASR at the stop, evaluated rounds it stays >= half
    asr_at_stop: float | None = None
    durable_rounds: int | None = None

    @property
    def error(self) -> float:
        return 1.0 - self.accuracy

    @property
    def rule(self) -> str:
        """A short name of the rule with its composition: ``fldetector+median``,
        ``arc+median``, ``nnm+krum``; the registered name otherwise."""
        params = self.config.get("aggregator_params") or {}
        if self.aggregator == "detect":
            return f"{params.get('detector', 'fldetector')}+{params.get('inner', 'median')}"
        if "inner" in params or self.aggregator in ("arc", "bucketing", "nnm"):
            return f"{self.aggregator}+{params.get('inner', 'median')}"
        return self.aggregator


def cell_from_record(record: dict[str, Any]) -> Cell:
    """Build a :class:`Cell` from one finished-cell record of the results store
    (``DIR/cells/<id>.json``, :mod:`simulations.store`): its resolved ``config`` (RunConfig
    fields), ``summary`` (:func:`simulations.metrics.summarize`) and ``seconds``."""
    if not isinstance(record, dict):
        raise FindingsError(f"a cell record must be a JSON object, got {type(record).__name__}")
    config, summary = record.get("config"), record.get("summary")
    if not isinstance(config, dict) or not isinstance(summary, dict):
        raise FindingsError(
            f"cell {record.get('id')!r}: a record needs 'config' and 'summary' objects, "
            f"has keys {sorted(record)}"
        )
    missing = [k for k in ("aggregator", "attack", "seed") if k not in config]
    if missing:
        raise FindingsError(f"cell {record.get('id')!r}: config lacks {missing}")
    accuracy = summary.get("final_accuracy")
    if accuracy is None:
        raise FindingsError(f"cell {record.get('id')!r}: no final accuracy (never evaluated)")
    asr, seconds = summary.get("final_asr"), record.get("seconds")
    return Cell(
        aggregator=str(config["aggregator"]),
        attack=str(config["attack"]),
        partition=str(config.get("partition", "")),
        seed=int(config["seed"]),
        accuracy=float(accuracy),
        asr=None if asr is None else float(asr),
        rounds=int(config.get("rounds", summary.get("rounds", 0))),
        seconds=None if seconds is None else float(seconds),
        config=dict(config),
        **{key: None if summary.get(key) is None else float(summary[key])
           for key in ("precision", "recall", "fpr", "asr_at_stop")},
        durable_rounds=summary.get("durable_rounds"),
    )


def load_cells(directory: str | Path, *, scenario: str | None = None) -> list[Cell]:
    """Every finished cell of a results directory (``DIR/cells/*.json``), optionally only those
    of one scenario name."""
    root = Path(directory)
    cells_dir = root / "cells"
    if not cells_dir.is_dir():
        raise FindingsError(f"no results store at {str(root)!r}: expected a directory {cells_dir}")
    from fedshield.simulations.store import ResultsStore

    cells = [cell_from_record(record)
             for record in ResultsStore(root).load_cells(quarantine=False)
             if scenario is None or record.get("scenario") == scenario]
    if not cells:
        which = "" if scenario is None else f" of scenario {scenario!r}"
        raise FindingsError(f"{cells_dir} holds no finished cell{which}")
    return cells


@dataclass(frozen=True)
class Stat:
    """Mean and (sample) standard deviation of one quantity over the seeds of a group."""

    mean: float
    std: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Stat:
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        return cls(statistics.fmean(values), std, len(values))

    def fmt(self, digits: int = 3, scale: float = 1.0) -> str:
        if self.n > 1:
            return f"{self.mean * scale:.{digits}f} ± {self.std * scale:.{digits}f}"
        return f"{self.mean * scale:.{digits}f}"


class Results:
    """Cells grouped by (aggregator, attack, partition class), averaged over seeds."""

    def __init__(self, cells: Iterable[Cell], *, noniid: Callable[[Cell], bool] | None = None):
        self.cells = list(cells)
        self._noniid = noniid or (lambda c: c.partition != "iid")

    def group(
        self, aggregator: str, attack: str = "none", *, iid: bool | None = None
    ) -> list[Cell]:
        return [
            c
            for c in self.cells
            if c.aggregator == aggregator
            and c.attack == attack
            and (iid is None or self._noniid(c) != iid)
        ]

    def error(self, aggregator: str, attack: str = "none", **kw: Any) -> Stat | None:
        cells = self.group(aggregator, attack, **kw)
        return Stat.of([c.error for c in cells]) if cells else None

    def accuracy(self, aggregator: str, attack: str = "none", **kw: Any) -> Stat | None:
        cells = self.group(aggregator, attack, **kw)
        return Stat.of([c.accuracy for c in cells]) if cells else None

    def asr(self, aggregator: str, attack: str) -> Stat | None:
        values = [c.asr for c in self.group(aggregator, attack) if c.asr is not None]
        return Stat.of(values) if values else None

    def attacks(self) -> list[str]:
        return sorted({c.attack for c in self.cells}, key=lambda a: (a != "none", a))

    def seeds(self) -> list[int]:
        return sorted({c.seed for c in self.cells})

    def rounds(self) -> list[int]:
        return sorted({c.rounds for c in self.cells})

    def wall_seconds(self) -> float | None:
        times = [c.seconds for c in self.cells if c.seconds is not None]
        return sum(times) if times else None


@dataclass(frozen=True)
class Finding:
    """One qualitative claim, checked: ``holds`` is None when a cell it needs is missing."""

    key: str
    claim: str
    holds: bool | None
    detail: str
    source: str

    @property
    def status(self) -> str:
        return {True: "holds", False: "FAILS", None: "missing"}[self.holds]


EPS = 1e-9  # accuracies are counts over a test set: compare bounds up to float rounding


class Missing(Exception):
    def __init__(self, what: str):
        super().__init__(what)
        self.what = what


def need(value: Stat | None, what: str) -> float:
    if value is None:
        raise Missing(what)
    return value.mean


def finding(key: str, claim: str, source: str, check: Callable[[], tuple[bool, str]]) -> Finding:
    try:
        holds, detail = check()
    except Missing as missing:
        return Finding(key, claim, None, f"no cell for {missing.what}", source)
    return Finding(key, claim, holds, detail, source)


def ordered(present: Iterable[str], preferred: Sequence[str]) -> list[str]:
    present = set(present)
    return [x for x in preferred if x in present] + sorted(present - set(preferred))
