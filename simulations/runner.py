"""Run the cells of a sweep — in parallel worker processes — into a results store.

Workers are spawned (``concurrent.futures`` with the ``spawn`` context), each with one torch
thread and ``OMP_WAIT_POLICY=PASSIVE`` (measured here: two single-threaded processes beat
one two-threaded process on a shared 2-core machine, and active OpenMP waiting stalls for seconds
under contention). Only the parent writes to the store, one cell at a time, atomically, as each
cell finishes; cells already in the store are skipped.
"""

from __future__ import annotations

import hashlib
import os
import time
import traceback
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from fedshield.simulations.scenario import Cell, Scenario, cell_id, config_dict
from fedshield.simulations.store import ResultsStore
from fedshield.tasks.config import RunConfig
from fedshield.tasks.device import resolve_device

THREAD_ENV = {
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "OMP_WAIT_POLICY": "PASSIVE",
}


def limit_threads() -> None:
    """One intra-op thread for this process (call before any heavy torch work)."""
    for key, value in THREAD_ENV.items():
        os.environ.setdefault(key, value)
    import torch

    torch.set_num_threads(1)


def init_worker(parent: int | None = None) -> None:
    """Worker set-up: one thread; Ctrl-C ends the worker at once, without a traceback (the
    parent reports the interruption; the cell in flight is lost, as documented); and the worker
    dies with its parent, even when the parent is killed with SIGKILL (Linux:
    ``prctl(PR_SET_PDEATHSIG, SIGKILL)``; a parent already gone ends the worker at once)."""
    import signal

    limit_threads()
    signal.signal(signal.SIGINT, lambda *_: os._exit(130))
    die_with_parent(parent)


def die_with_parent(parent: int | None) -> None:
    import ctypes
    import signal
    import sys

    if not sys.platform.startswith("linux"):
        return
    pr_set_pdeathsig = 1
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
    if parent is not None and os.getppid() != parent:  # the parent died before the prctl
        os._exit(137)


def clean_key(cfg: RunConfig, engine: str) -> str:
    """Id of the attack-free twin of a config (adversary removed), for accuracy drops."""
    twin = cfg.with_updates(attack="none", attack_params={}, malicious_fraction=0.0,
                            num_malicious=-1)
    return cell_id(twin, engine)


def run_cell_safely(payload: dict[str, Any]) -> dict[str, Any]:
    """:func:`run_cell`, or a failure record (error and traceback) if the cell raises: one bad
    cell (a rule refusing the round's n, a diverging run, a bug) must not lose the sweep."""
    try:
        return run_cell(payload)
    except Exception as exc:  # reported per cell; the sweep goes on
        return failure_record(payload, exc, traceback.format_exc())


def failure_record(payload: dict[str, Any], exc: BaseException,
                   trace: str = "") -> dict[str, Any]:
    """The store record of a cell that failed with ``exc`` (saved to ``DIR/failed/``)."""
    cfg = payload["config"]
    return {**payload["meta"], "failed": True,
            "id": cell_id(RunConfig.from_dict(cfg), payload["engine"]),
            "engine": payload["engine"], "config": cfg,
            "error": f"{type(exc).__name__}: {exc}", "traceback": trace or repr(exc)}


def run_cell(payload: dict[str, Any]) -> dict[str, Any]:
    """Run one cell (in a worker or in-process) and return its store record."""
    limit_threads()
    from fedshield.simulations import metrics

    cfg = RunConfig.from_dict(payload["config"])
    engine = payload["engine"]
    started = datetime.now(UTC).isoformat(timespec="seconds")
    t0 = time.perf_counter()
    if engine == "flower":
        import shutil

        from fedshield.simulations.engine_flower import run_flower

        run_dir = payload.get("run_dir")
        if run_dir:  # ledger, checkpoints, rounds.jsonl of the ServerApp, kept with the results
            shutil.rmtree(run_dir, ignore_errors=True)  # a killed earlier attempt
            cfg = cfg.with_updates(output_dir=run_dir)
        result = run_flower(cfg)
    elif cfg.certify != "none":
        from fedshield.simulations.certify import run_certified

        result = run_certified(cfg)
    else:
        from fedshield.simulations.engine_inline import run_inline

        result = run_inline(cfg)
    final = result.final_vector.detach().to("cpu").contiguous().float().numpy().tobytes()
    return {
        **payload["meta"],
        "id": cell_id(cfg, engine),
        "engine": engine,
        "config": asdict(cfg),
        "clean": cfg.malicious_count == 0,
        "clean_key": clean_key(cfg, engine),
        "malicious_ids": result.malicious_ids,
        "summary": metrics.summarize(result.rounds, payload["target_accuracy"]),
        "rounds": result.rounds,
        "final_vector_blake2b": hashlib.blake2b(final, digest_size=16).hexdigest(),
        "started_at": started,
        "seconds": time.perf_counter() - t0,
        "device": str(resolve_device(cfg.device)),
    }


def payloads(scenario: Scenario, cells: list[Cell]) -> list[dict[str, Any]]:
    out = []
    for order, cell in enumerate(cells):
        out.append({
            "config": config_dict(cell.config),
            "engine": cell.engine,
            "target_accuracy": scenario.target_accuracy,
            "meta": {"scenario": scenario.name, "order": order, "rule": cell.rule_label,
                     "attack": cell.attack_label, "axes": cell.axes},
        })
    return out


def run_sweep(scenario: Scenario, cells: list[Cell], store: ResultsStore, *,
              workers: int | None = None,
              execute: Callable[[list[dict[str, Any]], Callable[[dict[str, Any]], None]], None]
              | None = None,
              on_start: Callable[[int, int], None] | None = None,
              on_cell: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """Run every cell not yet in ``store``; return the records of the cells run now.

    ``on_start(todo, skipped)`` is called once, ``on_cell(record)`` after each saved cell
    (also for failed cells: ``record["failed"]`` is then True, with ``error`` and
    ``traceback``; they go to ``DIR/failed/`` and are retried by the next run).
    The Flower engine runs one cell at a time (each run already uses both cores).
    ``execute(todo, finish)``: runs the payloads elsewhere instead of on ``workers`` local
    processes, calling ``finish(record)`` in this process for each
    (``simulations.ray_sweep.ray_executor``: Ray tasks).
    """
    done = store.finished()
    todo = [p for p, c in zip(payloads(scenario, cells), cells, strict=True) if c.id not in done]
    for payload in todo:
        if payload["engine"] == "flower":
            cid = cell_id(RunConfig.from_dict(payload["config"]), "flower")
            payload["run_dir"] = str((store.root / "runs" / cid).resolve())
    if on_start is not None:
        on_start(len(todo), len(cells) - len(todo))
    workers = scenario.workers if workers is None else workers
    if scenario.engine == "flower":
        workers = 1
    workers = max(1, min(workers, len(todo)))
    records: list[dict[str, Any]] = []

    def finish(record: dict[str, Any]) -> None:
        if record.get("failed"):
            store.save_failure(record)
        else:
            store.save_cell(record)
        records.append(record)
        if on_cell is not None:
            on_cell(record)

    try:
        if execute is not None:
            execute(todo, finish)
        else:
            _run(todo, workers, finish)
    finally:
        store.rebuild_indexes()  # accuracy drops need every twin; drop torn appends
    return records


def _run(todo: list[dict[str, Any]], workers: int,
         finish: Callable[[dict[str, Any]], None]) -> None:
    if workers == 1:
        for payload in todo:
            finish(run_cell_safely(payload))
        return
    for key, value in THREAD_ENV.items():  # inherited by the spawned workers
        os.environ.setdefault(key, value)
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=init_worker,
                             initargs=(os.getpid(),)) as pool:
        try:
            drain(todo, lambda payload: pool.submit(run_cell_safely, payload), workers * 2,
                  finish)
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise


def drain(todo: list[dict[str, Any]],
          submit: Callable[[dict[str, Any]], Future[dict[str, Any]]], in_flight: int,
          finish: Callable[[dict[str, Any]], None],
          lost: tuple[type[BaseException], ...] = ()) -> None:
    """Submit the payloads with at most ``in_flight`` pending, and ``finish`` each record as it
    arrives; a future that raises one of ``lost`` (its worker died) becomes a failed cell."""
    queue = list(todo)
    pending: dict[Future[dict[str, Any]], dict[str, Any]] = {}
    while queue or pending:
        while queue and len(pending) < in_flight:
            payload = queue.pop(0)
            pending[submit(payload)] = payload
        finished, _ = wait(pending, return_when=FIRST_COMPLETED)
        for future in finished:
            payload = pending.pop(future)
            try:
                record = future.result()
            except lost as exc:
                record = failure_record(payload, exc)
            finish(record)
