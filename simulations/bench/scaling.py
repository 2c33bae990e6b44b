"""``fedshield bench scaling``: time per round and peak memory as clients and model grow, per rule.

Two parts (``--part``):

``aggregation``
    The server step alone (:func:`server.aggregation.robust_step`, i.e. the shared Gram matrix
    when the rule needs it, the rule, the global update) on a synthetic (n, d) float32 matrix of
    deltas: n grows (``--clients``, default 10 → 1000) at fixed d (``--fixed-d``), and d grows
    (``--dims``, default 1e4 → 1e6) at fixed n (``--fixed-n``). Median of ``--repeats`` calls.
``engine``
    Whole inline rounds (:func:`simulations.engine_inline.run_inline`) as the number of clients
    grows (MNIST, MLP, IID, 2 local steps per client so that the work per client is fixed) and
    across the task's models (logreg, mlp, cnn: d ≈ 8e3 → 1.2e5), with the round split into
    train / aggregate / other by the phase probe of :mod:`simulations.bench.simulation`.

Growth exponents: the slope k of the least-squares line log t = k log x + c over the sizes
measured, printed per rule (k ≈ 1: linear; Krum's Gram matrix is O(n² d), so k_n → 2 for large n).

Memory (method). Allocations of torch's CPU allocator are invisible to ``tracemalloc``, so two
independent measures are used, both after every timing is done (so that they do not perturb it):

- peak: the process's resident high-water mark. ``mallopt(M_MMAP_THRESHOLD, 128 KiB)`` makes every
  buffer ≥ 128 KiB an ``mmap`` that returns to the OS when freed, then ``/proc/self/clear_refs``
  ← ``5`` resets ``VmHWM`` to the current RSS; the peak is ``VmHWM`` after the measured call minus
  RSS before it. A calibration (allocate and free k known (n, d) buffers) is printed with it.
- held: a census of the live torch tensors (``gc.get_objects()``, storages de-duplicated by data
  pointer) at the entry of ``robust_step`` minus the census at the start of round 1 (before any
  update exists): the bytes the engine holds for the round's updates when aggregation starts.
  One (n, d) float32 matrix is ratio 1.0; per-client deltas kept alongside the stacked matrix
  is ratio 2.0. For the engine, the peak is over round 2 relative to the RSS at the start of
  round 1, so it includes what the engine still holds of round 1 while round 2 trains.

Both are reported as multiples of n·d·4 bytes.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fedshield.simulations.bench.simulation import (
    BenchError,
    measure_inline,
    rule_params_for,
    table,
)

DEFAULT_CLIENTS = (10, 30, 100, 300, 1000)
DEFAULT_DIMS = (10_000, 30_000, 100_000, 300_000, 1_000_000)
DEFAULT_AGG_RULES = "all"
DEFAULT_ENGINE_RULES = "fedavg,median,krum"
DEFAULT_MODELS = "logreg,mlp,cnn"
MMAP_THRESHOLD = 128 * 1024
M_MMAP_THRESHOLD = -3  # glibc mallopt parameter


# --------------------------------------------------------------------------------------------
# Memory probes
# --------------------------------------------------------------------------------------------
def proc_status() -> dict[str, int]:
    """VmRSS and VmHWM of this process (bytes), from ``/proc/self/status``."""
    out = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, value = line.split(":")
                out[key] = int(value.split()[0]) * 1024
    return out


def memory_supported() -> bool:
    """True where the RSS high-water mark can be reset (Linux with glibc)."""
    try:
        reset_peak()
        ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return True


def fix_mmap_threshold(threshold: int = MMAP_THRESHOLD) -> bool:
    """Make glibc serve every allocation >= ``threshold`` by mmap (returned to the OS on free),
    so that RSS follows the live large buffers. Returns False when mallopt is unavailable."""
    try:
        return bool(ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, threshold))
    except (OSError, AttributeError):
        return False


def reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")


@contextlib.contextmanager
def peak_rss() -> Iterator[dict[str, int]]:
    """Yields a dict that holds ``peak`` = VmHWM after the block − VmRSS before it (bytes)."""
    out: dict[str, int] = {}
    gc.collect()
    reset_peak()
    before = proc_status()["VmRSS"]
    yield out
    out["peak"] = proc_status()["VmHWM"] - before


def live_tensor_bytes() -> int:
    """Bytes of the storages of every live torch tensor reachable by the garbage collector."""
    import torch

    seen: dict[int, int] = {}
    for obj in gc.get_objects():
        if issubclass(type(obj), torch.Tensor) and obj.device.type == "cpu":
            with contextlib.suppress(RuntimeError):
                storage = obj.untyped_storage()
                seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


def calibrate(n: int, d: int, copies: int = 2) -> float:
    """Peak of allocating ``copies`` (n, d) float32 buffers, in units of n·d·4 (expect ≈ copies)."""
    import torch

    with peak_rss() as mem:
        bufs = [torch.ones(n, d) for _ in range(copies)]
        del bufs
    return mem["peak"] / (n * d * 4)


@dataclass
class MemoryProbe:
    """Timing hooks that measure memory (``run_inline(cfg, hooks=probe)``). At the start of round
    1 (its first ``train`` phase) it takes the baseline: a tensor census and the RSS, before any
    update of the run exists. At the start of every round it resets the RSS high-water mark; when
    the ``aggregate`` phase starts it takes the census again (``held`` = census − baseline: the
    bytes held for the round's updates when aggregation starts); when it ends it reads the
    high-water mark (``peak`` = VmHWM − baseline RSS: the most the round needed on top of the
    baseline, including what it still holds of the previous round). One record per round."""

    records: list[dict[str, int]] = field(default_factory=list)
    _baseline: dict[str, int] = field(default_factory=dict)
    _after_aggregate: bool = True

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        if name == "train" and self._after_aggregate:
            self._after_aggregate = False
            if not self._baseline:
                gc.collect()
                self._baseline = {"census": live_tensor_bytes(), "rss": proc_status()["VmRSS"]}
            reset_peak()
        if name != "aggregate":
            yield
            return
        held = live_tensor_bytes() - self._baseline.get("census", 0)
        yield
        peak = proc_status()["VmHWM"] - self._baseline.get("rss", 0)
        self.records.append({"held": held, "peak": peak})
        self._after_aggregate = True


# --------------------------------------------------------------------------------------------
# Aggregation part
# --------------------------------------------------------------------------------------------
@dataclass
class AggPoint:
    rule: str
    sweep: str  # "n" or "d"
    n: int
    d: int
    seconds: float
    peak_ratio: float = math.nan
    skipped: str = ""


def synthetic_updates(n: int, d: int, seed: int = 0) -> Any:
    """(n, d) float32 deltas: a common direction plus per-client noise (like honest updates)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    common = torch.randn(d, generator=gen) * 0.01
    updates = torch.randn(n, d, generator=gen).mul_(0.01).add_(common)
    return updates.contiguous()


def _step_call(rule_name: str, n: int, d: int, updates: Any) -> Callable[[], Any]:
    import torch

    from fedshield import aggregators
    from fedshield.server.aggregation import robust_step

    rule = aggregators.create(rule_name, **rule_params_for(rule_name, n))
    global_vec = torch.zeros(d)
    reference = updates.mean(0) if getattr(rule, "needs_reference", False) else None
    weights = torch.ones(n)
    ids = list(range(n))

    def call() -> Any:
        rule.reset()
        return robust_step(global_vec, updates, rule, server_lr=1.0, reference=reference,
                           weights=weights, client_ids=ids)

    return call


def _grid(clients: Sequence[int], dims: Sequence[int], fixed_n: int, fixed_d: int
          ) -> list[tuple[str, int, int]]:
    return [("n", n, fixed_d) for n in clients] + [("d", fixed_n, d) for d in dims]


def time_aggregation(rules: Sequence[str], grid: Sequence[tuple[str, int, int]], repeats: int,
                     budget: float, log: Callable[[str], None]) -> list[AggPoint]:
    """Median wall time of ``robust_step`` per (rule, n, d); a rule whose call exceeds
    ``budget`` seconds skips the larger sizes of that sweep."""
    points: list[AggPoint] = []
    for sweep, n, d in grid:
        updates = synthetic_updates(n, d)
        for rule in rules:
            if any(p.rule == rule and p.sweep == sweep and p.skipped.startswith("budget")
                   and p.n <= n and p.d <= d for p in points):
                points.append(AggPoint(rule, sweep, n, d, math.nan, skipped="budget"))
                continue
            try:
                call = _step_call(rule, n, d, updates)
                start = time.perf_counter()
                call()  # warm-up (and validation)
                warm = time.perf_counter() - start
            except ValueError as exc:
                points.append(AggPoint(rule, sweep, n, d, math.nan, skipped=f"error: {exc}"))
                continue
            times = []
            for _ in range(repeats if warm < 2.0 else 1):  # slow calls: one timed repeat
                start = time.perf_counter()
                call()
                times.append(time.perf_counter() - start)
            seconds = statistics.median(times)
            point = AggPoint(rule, sweep, n, d, seconds)
            if seconds > budget:
                point.skipped = f"budget ({seconds:.1f} s > {budget:.0f} s): larger sizes skipped"
            points.append(point)
            log(f"  {rule:12s} n={n:<5d} d={d:<8d} {seconds * 1e3:9.2f} ms")
        del updates
    return points


def measure_aggregation_memory(points: Sequence[AggPoint], log: Callable[[str], None]) -> None:
    """Fill ``peak_ratio`` = peak extra RSS of one ``robust_step`` / (n·d·4) for the points whose
    n·d·4 is at least 4 MiB (below that the page-granular RSS is noise)."""
    for point in points:
        if math.isnan(point.seconds) or point.n * point.d * 4 < 4 * 2**20:
            continue
        updates = synthetic_updates(point.n, point.d)
        call = _step_call(point.rule, point.n, point.d, updates)
        call()
        with peak_rss() as mem:
            call()
        point.peak_ratio = mem["peak"] / (point.n * point.d * 4)
        log(f"  {point.rule:12s} n={point.n:<5d} d={point.d:<8d} peak {point.peak_ratio:.2f}")
        del updates, call


def fit_exponent(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Slope k of the least-squares fit log y = k log x + c (NaN with fewer than 2 points)."""
    pairs = [(math.log(x), math.log(y)) for x, y in zip(xs, ys, strict=True)
             if x > 0 and y > 0 and math.isfinite(y)]
    if len(pairs) < 2:
        return math.nan
    mx = sum(p[0] for p in pairs) / len(pairs)
    my = sum(p[1] for p in pairs) / len(pairs)
    sxx = sum((p[0] - mx) ** 2 for p in pairs)
    if sxx == 0:
        return math.nan
    return sum((p[0] - mx) * (p[1] - my) for p in pairs) / sxx


def aggregation_tables(points: Sequence[AggPoint], clients: Sequence[int],
                       dims: Sequence[int], fixed_n: int, fixed_d: int) -> str:
    rules = list(dict.fromkeys(p.rule for p in points))
    by = {(p.rule, p.sweep, p.n if p.sweep == "n" else p.d): p for p in points}
    out = []
    for sweep, sizes, fixed in (("n", clients, f"d = {fixed_d}"), ("d", dims, f"n = {fixed_n}")):
        rows = []
        for rule in rules:
            ms = [by[(rule, sweep, s)].seconds * 1e3 if (rule, sweep, s) in by else math.nan
                  for s in sizes]
            k = fit_exponent(sizes, ms)
            peaks = [by[(rule, sweep, s)].peak_ratio for s in sizes if (rule, sweep, s) in by]
            peak = max((p for p in peaks if math.isfinite(p)), default=math.nan)
            rows.append((rule, *ms, k, peak))
        out.append(f"### server step time (ms) as {sweep} grows, {fixed}\n")
        out.append(table(["rule", *(f"{sweep}={s:g}" for s in sizes), f"exponent k_{sweep}",
                          "max peak / (n·d·4)"], rows))
        out.append("")
    return "\n".join(out)


# --------------------------------------------------------------------------------------------
# Engine part
# --------------------------------------------------------------------------------------------
@dataclass
class EnginePoint:
    rule: str
    sweep: str  # "n" or "model"
    n: int
    model: str
    d: int
    round_median: float
    train: float
    aggregate: float
    other: float
    held_ratio: float = math.nan
    peak_ratio: float = math.nan
    error: str = ""
    eval: float = math.nan  # median eval seconds per round (part of "other")


def engine_config(base: dict[str, Any], **changes: Any) -> Any:
    from fedshield.tasks.config import RunConfig

    values = {**base, **changes}
    n = values["num_clients"]
    values["aggregator_params"] = rule_params_for(values["aggregator"], n)
    return RunConfig.from_dict(values)


def model_dim(cfg: Any) -> int:
    from fedshield.tasks.task import get_task

    return int(get_task(cfg).layout.numel)


def time_engine(base: dict[str, Any], rules: Sequence[str], clients: Sequence[int],
                models: Sequence[str], model_n: int, log: Callable[[str], None]
                ) -> list[EnginePoint]:
    from fedshield.simulations.engine_inline import run_inline

    # absorb the process's first-call costs (functorch's first vmap: ~1-2 s) before timing
    run_inline(engine_config(base, num_clients=min(clients), rounds=1))
    points = []
    grid = [("n", n, base["model"]) for n in clients] + [("model", model_n, m) for m in models]
    for sweep, n, model in grid:
        for rule in rules:
            try:
                cfg = engine_config(base, num_clients=n, model=model, aggregator=rule)
                m = measure_inline(cfg)
                d = model_dim(cfg)
            except ValueError as exc:
                points.append(EnginePoint(rule, sweep, n, model, 0, *[math.nan] * 4,
                                          error=str(exc)))
                log(f"  {rule:10s} n={n:<5d} {model}: error {exc}")
                continue
            pm = m.phase_median
            points.append(EnginePoint(rule, sweep, n, model, d, m.round_median, pm["train"],
                                      pm["aggregate"], pm["other"], eval=pm["eval"]))
            log(f"  {rule:10s} n={n:<5d} {model:6s} d={d:<7d} round {m.round_median * 1e3:8.1f} ms"
                f"  other {100 * m.phase_shares['other']:.1f} %")
    return points


def warm_task_caches(cfg: Any) -> None:
    """Fill the Task's per-process caches (template model, every partition, the root set) so
    the memory probe's round-1 baseline already holds them."""
    from fedshield.tasks.task import get_task

    task = get_task(cfg)
    task.template_model()
    for pid in range(task.num_clients):
        task.client_data(pid)
    if len(task.split.root):
        task.root_data()


def measure_engine_memory(base: dict[str, Any], points: Sequence[EnginePoint],
                          log: Callable[[str], None]) -> None:
    """Held and peak bytes of round 2 for the first rule of each size, in units of n·d·4."""
    from fedshield.simulations.engine_inline import run_inline

    done: set[tuple[str, int, str]] = set()
    for point in points:
        key = (point.sweep, point.n, point.model)
        if point.error or key in done or point.n * point.d * 4 < 4 * 2**20:
            continue  # below 4 MiB the page-granular RSS is noise
        done.add(key)
        cfg = engine_config(base, num_clients=point.n, model=point.model, aggregator=point.rule,
                            rounds=2, eval_every=2)
        warm_task_caches(cfg)  # the Task's per-process data cache is not a round's memory
        probe = MemoryProbe()
        run_inline(cfg, hooks=probe)
        if len(probe.records) < 2:
            continue
        unit = point.n * point.d * 4
        rec = probe.records[1]
        for p in points:
            if (p.sweep, p.n, p.model) == key:
                p.held_ratio, p.peak_ratio = rec["held"] / unit, rec["peak"] / unit
        log(f"  n={point.n:<5d} {point.model:6s} held {rec['held'] / unit:.2f} "
            f"peak {rec['peak'] / unit:.2f}  (n·d·4 = {unit / 2**20:.1f} MiB)")


def engine_tables(points: Sequence[EnginePoint]) -> str:
    rows = [(p.sweep, p.rule, p.n, p.model, p.d, p.round_median * 1e3, p.train * 1e3,
             p.aggregate * 1e3, p.other * 1e3, p.eval * 1e3,
             100 * p.other / p.round_median if p.round_median else math.nan,
             p.n * p.d * 4 / 2**20, p.held_ratio, p.peak_ratio, p.error[:40])
            for p in points]
    out = [table(["sweep", "rule", "n", "model", "d", "round ms", "train ms", "aggregate ms",
                  "other ms", "of which eval ms", "other %", "n·d·4 MiB", "held / n·d·4",
                  "peak / n·d·4", "error"],
                 rows)]
    exps = []
    for rule in dict.fromkeys(p.rule for p in points):
        pts = [p for p in points if p.rule == rule and p.sweep == "n" and not p.error]
        exps.append((rule, fit_exponent([p.n for p in pts], [p.round_median for p in pts]),
                     fit_exponent([p.n for p in pts], [p.aggregate for p in pts])))
    out.append("\n### fitted exponents of the inline round in n\n")
    out.append(table(["rule", "k_n round", "k_n aggregate"], exps))
    return "\n".join(out)


# --------------------------------------------------------------------------------------------
# Plot
# --------------------------------------------------------------------------------------------
def plot(agg: Sequence[AggPoint], eng: Sequence[EnginePoint], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys([*(p.rule for p in agg), *(p.rule for p in eng)]))
    cmap = plt.get_cmap("tab20")
    style = {r: {"color": cmap(i % 20), "marker": "os^Dv<>p"[i % 8]} for i, r in enumerate(names)}
    fig, axes = plt.subplots(2, 2, figsize=(13, 10))
    panels = [
        (axes[0][0], "server step time vs n (fixed d)", "n clients", "n"),
        (axes[0][1], "server step time vs d (fixed n)", "d parameters", "d"),
    ]
    for ax, title, xlabel, sweep in panels:
        for rule in dict.fromkeys(p.rule for p in agg):
            pts = [p for p in agg if p.rule == rule and p.sweep == sweep and
                   math.isfinite(p.seconds)]
            if pts:
                xs = [p.n if sweep == "n" else p.d for p in pts]
                ax.plot(xs, [p.seconds for p in pts], label=rule, **style[rule])
        _loglog(ax, title, xlabel, "seconds per call")
    ax = axes[1][0]
    for rule in dict.fromkeys(p.rule for p in eng):
        pts = [p for p in eng if p.rule == rule and p.sweep == "n" and not p.error]
        if pts:
            ax.plot([p.n for p in pts], [p.round_median for p in pts], label=f"{rule} round",
                    **style[rule])
            ax.plot([p.n for p in pts], [p.aggregate for p in pts], ls="--",
                    label=f"{rule} aggregate", **style[rule])
    _loglog(ax, "inline engine: time per round vs n", "n clients", "seconds per round")
    ax = axes[1][1]
    rules = list(dict.fromkeys(p.rule for p in agg))
    for rule in rules:
        pts = [p for p in agg if p.rule == rule and p.sweep == "d" and math.isfinite(p.peak_ratio)]
        if pts:
            ax.plot([p.d for p in pts], [p.peak_ratio for p in pts], label=rule, **style[rule])
    eng_mem = [p for p in eng if p.sweep == "n" and math.isfinite(p.held_ratio)]
    if eng_mem:
        ax.plot([p.n * p.d for p in eng_mem], [p.held_ratio for p in eng_mem], "k*-", ms=12,
                label="engine held at aggregation (x = n·d)")
    ax.set_xscale("log")
    ax.set_title("peak extra memory / (n·d·4 bytes)")
    ax.set_xlabel("d (server step, fixed n) or n·d (engine)")
    ax.set_ylabel("multiples of the (n, d) float32 matrix")
    ax.axhline(1.0, color="grey", lw=0.8)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, ncol=2)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _loglog(ax: Any, title: str, xlabel: str, ylabel: str) -> None:
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, which="both", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, ncol=2)


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------
def _ints(spec: str, flag: str) -> list[int]:
    try:
        values = [int(float(v)) for v in spec.split(",") if v.strip()]
    except ValueError:
        raise BenchError(f"{flag}: expected a comma list of numbers, got {spec!r}") from None
    if not values or min(values) < 1:
        raise BenchError(f"{flag}: expected positive sizes, got {spec!r}")
    return values


def _rule_list(spec: str) -> list[str]:
    from fedshield import aggregators
    names = aggregators.available() if spec == "all" else [r.strip() for r in spec.split(",")]
    unknown = sorted(set(names) - set(aggregators.available()))
    if unknown or not names:
        raise BenchError(f"unknown rule(s) {unknown}; available: {aggregators.available()}")
    return names


def build_parser(prog: str = "fedshield bench scaling") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", choices=("aggregation", "engine", "all"), default="all")
    p.add_argument("--rules", default=DEFAULT_AGG_RULES,
                   help="rules of the aggregation part: comma list or 'all' (default all)")
    p.add_argument("--engine-rules", default=DEFAULT_ENGINE_RULES,
                   help=f"rules of the engine part (default {DEFAULT_ENGINE_RULES})")
    p.add_argument("--clients", default=",".join(map(str, DEFAULT_CLIENTS)),
                   help="client counts n (default 10,30,100,300,1000)")
    p.add_argument("--dims", default="1e4,3e4,1e5,3e5,1e6", help="model sizes d (server step)")
    p.add_argument("--fixed-d", type=int, default=50_000, help="d of the n sweep (default 5e4)")
    p.add_argument("--fixed-n", type=int, default=100, help="n of the d sweep (default 100)")
    p.add_argument("--models", default=DEFAULT_MODELS, help="models of the engine model sweep")
    p.add_argument("--model-clients", type=int, default=100, help="n of the model sweep")
    p.add_argument("--dataset", default="mnist", help="dataset of the engine part")
    p.add_argument("--rounds", type=int, default=3, help="rounds per engine run (default 3)")
    p.add_argument("--local-steps", type=int, default=2, help="local steps per client")
    p.add_argument("--repeats", type=int, default=3, help="calls per server-step timing")
    p.add_argument("--budget", type=float, default=20.0,
                   help="seconds: a rule slower than this skips the larger sizes")
    p.add_argument("--no-memory", action="store_true", help="skip the memory measurements")
    p.add_argument("--quick", action="store_true",
                   help="tiny sizes: n 10,30; d 1e4,3e4; digits; models logreg,mlp; 2 rounds")
    p.add_argument("--plot", type=Path, default=Path("bench/scaling.png"), help="PNG output")
    p.add_argument("--json", type=Path, help="also write every point to this file")
    p.add_argument("--from-json", type=Path,
                   help="take the timings from a previous --json file (re-measure memory only, "
                   "unless --no-memory; redraw the tables and the plot)")
    return p


def run_memory_child(base: dict[str, Any], agg: list[AggPoint], eng: list[EnginePoint],
                     calibration: tuple[int, int]) -> None:
    """Measure memory in a fresh interpreter: in this one, freed heap memory of the timings is
    resident and would be reused without raising RSS, hiding allocations. The child has the
    mmap threshold fixed from its start, so every buffer >= 128 KiB is its own mapping."""
    with tempfile.TemporaryDirectory(prefix="fedshield-bench-mem-") as tmp:
        path = Path(tmp) / "points.json"
        path.write_text(json.dumps({"base": base, "calibration": calibration,
                                    "aggregation": [asdict(p) for p in agg],
                                    "engine": [asdict(p) for p in eng]}))
        env = dict(os.environ, MALLOC_MMAP_THRESHOLD_=str(MMAP_THRESHOLD))
        subprocess.run([sys.executable, "-m", "fedshield.simulations.bench.scaling",
                        "--memory-child", str(path)], env=env, check=True)
        data = json.loads(path.read_text())
    for point, done in zip(agg, data["aggregation"], strict=True):
        point.peak_ratio = done["peak_ratio"]
    for point, done in zip(eng, data["engine"], strict=True):
        point.held_ratio, point.peak_ratio = done["held_ratio"], done["peak_ratio"]


def memory_child(path: Path) -> int:
    """The child side of :func:`run_memory_child`: fill the ratios into the points file."""
    fix_mmap_threshold()
    data = json.loads(path.read_text())
    agg = [AggPoint(**p) for p in data["aggregation"]]
    eng = [EnginePoint(**p) for p in data["engine"]]
    n, d = data["calibration"]
    print(f"calibration: 2 buffers of ({n}, {d}) float32 -> peak {calibrate(n, d):.2f} x n·d·4 "
          "(expected 2.00)", flush=True)

    def log(msg: str) -> None:
        print(msg, flush=True)

    measure_aggregation_memory(agg, log)
    if eng:
        measure_engine_memory(data["base"], eng, log)
    data["aggregation"] = [asdict(p) for p in agg]
    data["engine"] = [asdict(p) for p in eng]
    path.write_text(json.dumps(data, default=str))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--memory-child"] and len(argv) == 2:
        return memory_child(Path(argv[1]))
    args = build_parser().parse_args(argv)
    if args.quick:
        args.clients, args.dims, args.fixed_d, args.fixed_n = "10,30", "1e4,3e4", 10_000, 10
        args.dataset, args.models, args.model_clients, args.rounds = "digits", "logreg,mlp", 10, 2
        args.repeats = 1
    try:
        clients = _ints(args.clients, "--clients")
        dims = _ints(args.dims, "--dims")
        rules = _rule_list(args.rules) if args.part != "engine" else []
        engine_rules = _rule_list(args.engine_rules) if args.part != "aggregation" else []
        models = [m.strip() for m in args.models.split(",") if m.strip()]
        if args.rounds < 2:
            raise BenchError("--rounds must be >= 2 (round 1 is warm-up)")
    except (BenchError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    def log(msg: str) -> None:
        print(msg, flush=True)

    print(f"# bench scaling  ({time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}, "
          f"load average {os.getloadavg()[0]:.2f}, {os.cpu_count()} CPUs)")
    agg_points: list[AggPoint] = []
    eng_points: list[EnginePoint] = []
    base = {"dataset": args.dataset, "model": "mlp", "partition": "iid", "rounds": args.rounds,
            "local_steps": args.local_steps, "eval_every": args.rounds, "min_partition_size": 1,
            "aggregator": "fedavg"}
    if args.from_json:
        saved = json.loads(args.from_json.read_text())
        agg_points = [AggPoint(**p) for p in saved.get("aggregation", [])]
        eng_points = [EnginePoint(**p) for p in saved.get("engine", [])]
        clients = sorted({p.n for p in agg_points if p.sweep == "n"}) or clients
        dims = sorted({p.d for p in agg_points if p.sweep == "d"}) or dims
        log(f"## timings from {args.from_json} (not re-measured)")
    if rules and not args.from_json:
        log("## timing the server step")
        agg_points = time_aggregation(rules, _grid(clients, dims, args.fixed_n, args.fixed_d),
                                      args.repeats, args.budget, log)
    if engine_rules and not args.from_json:
        log("## timing inline rounds")
        eng_points = time_engine(base, engine_rules, clients, models, args.model_clients, log)
    if not args.no_memory and memory_supported():
        log("## memory (fresh process, MALLOC_MMAP_THRESHOLD_=128 KiB from its start)")
        run_memory_child(base, agg_points, eng_points, (args.fixed_n, max(dims)))
    elif not args.no_memory:
        log("memory: not measured (needs Linux /proc/self/clear_refs and glibc mallopt)")
    if agg_points:
        print("\n" + aggregation_tables(agg_points, clients, dims, args.fixed_n, args.fixed_d))
        for p in agg_points:
            if p.skipped.startswith("error"):
                print(f"note: {p.rule} n={p.n} d={p.d}: {p.skipped}")
    if eng_points:
        print("\n### inline engine rounds (median of rounds 2..R)\n")
        print(engine_tables(eng_points))
    if agg_points or eng_points:
        plot(agg_points, eng_points, args.plot)
        print(f"\nplot: {args.plot}")
    if args.json:
        args.json.write_text(json.dumps({"aggregation": [asdict(p) for p in agg_points],
                                         "engine": [asdict(p) for p in eng_points]},
                                        indent=2, default=str))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
