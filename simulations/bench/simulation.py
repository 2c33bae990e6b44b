"""``fedshield bench simulation``: the inline engine against Flower's Simulation Engine.

The same scenario (by default ``digits``, 100 clients, MLP, 20 rounds, FedAvg) runs once under the
inline engine (:func:`simulations.engine_inline.run_inline`, one process) and once under the Flower
Simulation Engine (:func:`simulations.engine_flower.run_flower`, ``flwr run`` + Ray), in the same
command, so that both see the same machine load. Printed per engine:

- start-up, for both engines: the wall time from the call until round 1 is over, minus one
  steady-state round (median). Inline: import of the engine, task set-up (data, partition, model)
  and first-call warm-ups (functorch's first vmap); Flower: the CLI, the SuperLink, the ServerApp
  process, Ray and its actors importing torch; round 1 is shown apart as well;
- wall time per round (median over rounds 2..R; round 1 is shown apart), rounds per second,
  client updates per second (clients per round / median round);
- the ratio inline / Flower of rounds per second (target >= 10x at 100 clients).

For the inline engine the round is split into phases by the explicit timing hooks of the engine
and the round core (``run_inline(cfg, hooks=probe)``, :class:`fedshield.server.round.Hooks`):
``train`` (local SGD of clients and FLTrust's root training), ``attack`` (the colluding adversary
stage), ``aggregate`` (the rule and the step), ``eval`` (test-set evaluation). ``other`` = round
wall − train − aggregate (it includes eval, the adversary and everything the engine does between:
parameter loading, bookkeeping). Target: other <= 10 % of the round.

``--rules all`` adds the aggregation-share table: every registered rule at the scenario, inline
engine, with aggregation time as a share of the round (target <= 10 %).

``--cnn`` measures instead the clients' part of a CNN round of the ``fltrust-mnist`` preset (MNIST,
100 clients, bias split q = 0.5, the conv30-conv50-fc100 CNN, one local step of batch 32; 1
thread), in the same run for:

- ``baseline``: the first wave's client step: a fresh NCHW model per client (``build_model``:
  seeded initialisation, then overwritten by ``load_vector``; ReLU before pooling), trained,
  flattened;
- ``current``: the inline engine's :func:`simulations.engine_inline.train_round` (one reused
  channels-last model per process; pooling before ReLU, the same function on 4x fewer values).

It prints the median round time of each (interleaved repeats), the ratio, the largest difference
between the two rounds' updates, the round's floating-point work (``torch.utils.flop_counter``:
forward and backward of every convolution and matrix product) and the compute floor = that work at
this machine's single-thread sgemm rate (a 512 × 512 matrix product), as a fraction of each round.

Timings are wall clock on a shared machine: read medians and the ratios measured in the same run.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

PHASES = ("train", "attack", "aggregate", "eval")

DEFAULT_SCENARIO: dict[str, Any] = {
    "dataset": "digits",
    "num_clients": 100,
    "rounds": 20,
    "model": "mlp",
    "aggregator": "fedavg",
}
QUICK_SCENARIO: dict[str, Any] = {"num_clients": 10, "rounds": 3}
CNN_SCENARIO: dict[str, Any] = {  # the clients' round of the fltrust-mnist preset
    "dataset": "mnist", "partition": "bias", "q": 0.5, "model": "cnn", "num_clients": 100,
    "rounds": 1, "local_steps": 1, "batch_size": 32, "lr": 0.01, "momentum": 0.0,
    "aggregator": "fedavg",
}
CNN_QUICK_SCENARIO: dict[str, Any] = {"dataset": "digits", "num_clients": 10}


class BenchError(ValueError):
    """A benchmark flag or scenario value is invalid; the message names it."""


# --------------------------------------------------------------------------------------------
# Phase probe: time the outermost calls of the project's work functions
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Event:
    phase: str
    start: float
    end: float
    cpu_start: float = 0.0  # process CPU time (all threads of this process)
    cpu_end: float = 0.0


@dataclass
class PhaseProbe:
    """The engine's timing hooks: records (phase, start, end) of every outermost ``phase``
    block (a phase opened inside another is part of the enclosing one, never counted twice)."""

    events: list[Event] = field(default_factory=list)
    _depth: int = 0
    clock: Callable[[], float] = time.perf_counter
    cpu_clock: Callable[[], float] = time.process_time

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        record = self._depth == 0
        self._depth += 1
        start, cpu_start = self.clock(), self.cpu_clock()
        try:
            yield
        finally:
            end, cpu_end = self.clock(), self.cpu_clock()
            self._depth -= 1
            if record:
                self.events.append(Event(name, start, end, cpu_start, cpu_end))


@dataclass(frozen=True)
class RoundTiming:
    wall: float
    phases: dict[str, float]
    cpu: float = 0.0
    cpu_phases: dict[str, float] = field(default_factory=dict)

    @property
    def cpu_other(self) -> float:
        busy = self.cpu_phases.get("train", 0.0) + self.cpu_phases.get("aggregate", 0.0)
        return max(0.0, self.cpu - busy)

    @property
    def other(self) -> float:
        busy = self.phases.get("train", 0.0) + self.phases.get("aggregate", 0.0)
        return max(0.0, self.wall - busy)


def split_rounds(events: Sequence[Event], end: float, cpu_end: float = 0.0
                 ) -> list[RoundTiming]:
    """Cut the event timeline into rounds: a round starts at the first ``train`` event after an
    ``aggregate`` event (or the first ``train`` event at all) and lasts until the next round's
    start, the last one until ``end``. Phase time inside each round is summed per phase, for
    the wall clock and for the process CPU clock (``cpu_end`` closes the last round)."""
    events = sorted(events, key=lambda e: e.start)
    starts: list[Event] = []
    after_aggregate = True
    for event in events:
        if event.phase == "train" and after_aggregate:
            starts.append(event)
            after_aggregate = False
        elif event.phase == "aggregate":
            after_aggregate = True
    bounds = [(e.start, e.cpu_start) for e in starts] + [(end, cpu_end)]
    rounds = []
    for (lo, cpu_lo), (hi, cpu_hi) in itertools.pairwise(bounds):
        phases = dict.fromkeys(PHASES, 0.0)
        cpu_phases = dict.fromkeys(PHASES, 0.0)
        for event in events:
            if lo <= event.start < hi:
                phases[event.phase] += event.end - event.start
                cpu_phases[event.phase] += event.cpu_end - event.cpu_start
        rounds.append(RoundTiming(hi - lo, phases, cpu_hi - cpu_lo, cpu_phases))
    return rounds


# --------------------------------------------------------------------------------------------
# Measurements
# --------------------------------------------------------------------------------------------
@dataclass
class EngineMeasurement:
    engine: str
    rule: str
    clients_per_round: int
    rounds: int
    total_wall: float  # from the call to its return (plus import for inline)
    startup: float
    round_walls: list[float]
    phase_shares: dict[str, float] = field(default_factory=dict)  # of the steady-state rounds
    phase_median: dict[str, float] = field(default_factory=dict)  # seconds per round
    cpu_shares: dict[str, float] = field(default_factory=dict)  # same, on process CPU time
    round_cpu_median: float = math.nan
    notes: list[str] = field(default_factory=list)

    @property
    def steady(self) -> list[float]:
        return self.round_walls[1:] if len(self.round_walls) > 1 else self.round_walls

    @property
    def round_median(self) -> float:
        return statistics.median(self.steady) if self.steady else math.nan

    @property
    def rounds_per_second(self) -> float:
        return 1.0 / self.round_median if self.round_median > 0 else math.nan

    @property
    def updates_per_second(self) -> float:
        return self.clients_per_round * self.rounds_per_second

    def summary(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(
            round_median=self.round_median,
            rounds_per_second=self.rounds_per_second,
            updates_per_second=self.updates_per_second,
        )
        return out


def clients_per_round(cfg: Any) -> int:
    return cfg.clients_per_round or cfg.num_clients


def measure_inline(cfg: Any) -> EngineMeasurement:
    """Run ``cfg`` under the inline engine with the phase probe on."""
    t_import = time.perf_counter()
    from fedshield.simulations.engine_inline import run_inline

    import_seconds = time.perf_counter() - t_import
    probe = PhaseProbe()
    t0 = time.perf_counter()
    run_inline(cfg, hooks=probe)
    t1, cpu1 = time.perf_counter(), time.process_time()
    rounds = split_rounds(probe.events, t1, cpu1)
    notes: list[str] = []
    if len(rounds) != cfg.rounds:
        notes.append(f"probe saw {len(rounds)} rounds for rounds={cfg.rounds}")
    first_train = min((e.start for e in probe.events if e.phase == "train"), default=t1)
    steady = rounds[1:] if len(rounds) > 1 else rounds
    phase_median = {p: _median([r.phases[p] for r in steady]) for p in PHASES}
    phase_median["other"] = _median([r.other for r in steady])
    total = sum(r.wall for r in steady) or math.nan
    shares = {p: sum(r.phases[p] for r in steady) / total for p in PHASES}
    shares["other"] = sum(r.other for r in steady) / total
    cpu_total = sum(r.cpu for r in steady) or math.nan
    cpu_shares = {p: sum(r.cpu_phases[p] for r in steady) / cpu_total for p in PHASES}
    cpu_shares["other"] = sum(r.cpu_other for r in steady) / cpu_total
    return EngineMeasurement(
        engine="inline",
        rule=cfg.aggregator,
        clients_per_round=clients_per_round(cfg),
        rounds=cfg.rounds,
        total_wall=import_seconds + (t1 - t0),
        # same definition as Flower's: until the end of round 1, minus one steady round
        startup=import_seconds + (first_train - t0)
        + (rounds[0].wall - _median([r.wall for r in steady]) if rounds else 0.0),
        round_walls=[r.wall for r in rounds],
        phase_shares=shares,
        phase_median=phase_median,
        cpu_shares=cpu_shares,
        round_cpu_median=_median([r.cpu for r in steady]),
        notes=notes,
    )


class RowWatcher(threading.Thread):
    """Polls a JSONL file and records the wall time at which each complete line appears."""

    def __init__(self, path: Path, interval: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.path, self.interval = path, interval
        self.times: list[float] = []
        self._stop_event = threading.Event()
        self._offset, self._partial = 0, b""

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.poll()
            self._stop_event.wait(self.interval)
        self.poll()

    def poll(self) -> None:
        try:
            with self.path.open("rb") as fh:
                fh.seek(self._offset)
                chunk = fh.read()
        except FileNotFoundError:
            return
        if not chunk:
            return
        now = time.perf_counter()
        self._offset += len(chunk)
        data = self._partial + chunk
        *lines, self._partial = data.split(b"\n")
        self.times.extend(now for line in lines if line.strip())

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=5)


def measure_flower(cfg: Any) -> EngineMeasurement:
    """Run ``cfg`` under the Flower Simulation Engine; per-round walls from the times at which
    the ServerApp's ``rounds.jsonl`` rows appear (polled every 20 ms)."""
    from fedshield.simulations.engine_flower import run_flower

    work = Path(tempfile.mkdtemp(prefix="fedshield-bench-flower-"))
    out_dir = Path(cfg.output_dir) if cfg.output_dir else work / "out"
    cfg = cfg.with_updates(output_dir=str(out_dir))
    watcher = RowWatcher(out_dir / "rounds.jsonl")
    watcher.start()
    t0 = time.perf_counter()
    try:
        run_flower(cfg)
    finally:
        t1 = time.perf_counter()
        watcher.stop()
    times, notes = watcher.times, [f"output_dir={out_dir}"]
    if len(times) != cfg.rounds:
        notes.append(f"saw {len(times)} rows appear for rounds={cfg.rounds}")
    rows = read_rows(out_dir / "rounds.jsonl")
    if rows and all(isinstance(r.get("round_seconds"), int | float) for r in rows):
        # the ServerApp's own clock: round 1 starts after its set-up (Flower's round-0 call)
        round_walls = [float(r["round_seconds"]) for r in rows]
        notes.append("round walls: rounds.jsonl round_seconds (ServerApp clock)")
    else:
        walls = [b - a for a, b in itertools.pairwise(times)]
        # round 1 cannot be told apart from start-up: charge it one steady round
        round_walls = [statistics.median(walls), *walls] if walls else []
        notes.append("round walls: arrival times of rounds.jsonl rows")
    first = (times[0] - t0) if times else math.nan
    if times:
        notes.append(f"teardown after the last row: {t1 - times[-1]:.2f} s")
    return EngineMeasurement(
        engine="flower",
        rule=cfg.aggregator,
        clients_per_round=clients_per_round(cfg),
        rounds=cfg.rounds,
        total_wall=t1 - t0,
        startup=first - _median(round_walls[1:] or round_walls) if round_walls else first,
        round_walls=round_walls,
        notes=notes,
    )


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The JSON rows of a JSONL file ([] when it does not exist)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else math.nan


# --------------------------------------------------------------------------------------------
# CNN round: the clients' training against the first wave's fresh-model-per-client step
# --------------------------------------------------------------------------------------------
@dataclass
class CnnMeasurement:
    """Seconds per round of the baseline and the current client step."""

    clients: int
    baseline_seconds: list[float]
    current_seconds: list[float]
    max_abs_diff: float
    gflop: float
    sgemm_gflops: float

    @property
    def baseline(self) -> float:
        return statistics.median(self.baseline_seconds)

    @property
    def current(self) -> float:
        return statistics.median(self.current_seconds)

    @property
    def ratio(self) -> float:
        return self.baseline / self.current

    @property
    def floor(self) -> float:
        """Seconds the round's work takes at the single-thread sgemm rate."""
        return self.gflop / self.sgemm_gflops

    def summary(self) -> dict[str, Any]:
        return {**asdict(self), "baseline_median": self.baseline,
                "current_median": self.current, "ratio": self.ratio, "floor_seconds": self.floor}


def fresh_model_round(task: Any, pids: Sequence[int], global_vec: Any, rnd: int,
                      cfg: Any) -> Any:
    """The first wave's client step, the baseline: per client a freshly built and initialised
    NCHW model (the CNN with ReLU before pooling, as then), loaded with ``global_vec``,
    trained, flattened; (K, d) deltas."""
    import torch

    from fedshield.tasks.models import CNN, build_model

    class FirstWaveCNN(CNN):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = torch.max_pool2d(torch.relu(self.conv1(x)), 2)
            x = torch.max_pool2d(torch.relu(self.conv2(x)), 2)
            return self.fc2(torch.relu(self.fc1(x.flatten(1))))

    from fedshield.tasks.params import flatten, load_vector
    from fedshield.tasks.seeding import torch_generator
    from fedshield.tasks.training import train

    ds, deltas = task.core.dataset, []
    for pid in pids:
        x, y = task.client_data(pid)
        model = build_model(task.core.model_name, ds.input_shape, ds.num_classes,
                            seed=task.core.init_seed).to(memory_format=torch.contiguous_format)
        if type(model) is CNN:
            model.__class__ = FirstWaveCNN  # same parameters, the first wave's forward
        load_vector(model, global_vec)
        train(model, x, y, task.train_config,
              generator=torch_generator(cfg.seed, "client", pid, rnd))
        deltas.append(flatten(model) - global_vec)
    return torch.stack(deltas)


def sgemm_gflops(size: int = 512, repeats: int = 20) -> float:
    """This process's float32 matrix-product rate (GFLOP/s, best of ``repeats``)."""
    import torch

    a, b = torch.rand(size, size), torch.rand(size, size)
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def measure_cnn_round(cfg: Any, repeats: int = 5) -> CnnMeasurement:
    """Baseline and current client rounds of ``cfg`` (see the module docstring), interleaved,
    after one warm-up of each."""
    from torch.utils.flop_counter import FlopCounterMode

    from fedshield.simulations.engine_inline import train_round
    from fedshield.tasks.task import get_task

    task = get_task(cfg)
    global_vec = task.initial_vector()
    pids = list(range(cfg.num_clients))

    def baseline() -> Any:
        return fresh_model_round(task, pids, global_vec, 1, cfg)

    def current() -> Any:
        return train_round(task, pids, global_vec, 1, cfg, {}).updates

    diff = float((baseline() - current()).abs().max())
    counter = FlopCounterMode(display=False)
    with counter:
        current()
    baseline_seconds, current_seconds = [], []
    for _ in range(repeats):
        baseline_seconds.append(_seconds(baseline))
        current_seconds.append(_seconds(current))
    return CnnMeasurement(
        clients=len(pids), baseline_seconds=baseline_seconds, current_seconds=current_seconds,
        max_abs_diff=diff, gflop=counter.get_total_flops() / 1e9, sgemm_gflops=sgemm_gflops(),
    )


def _seconds(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def cnn_table(m: CnnMeasurement) -> str:
    rows = [
        ("baseline: fresh NCHW model per client", m.baseline * 1e3, 1.0, m.floor / m.baseline),
        ("current: reused channels-last model (train_round)", m.current * 1e3, m.ratio,
         m.floor / m.current),
    ]
    return table(["client step", "round median ms", "speed-up vs baseline",
                  "compute floor / round"], rows)


def build_cnn_config(args: argparse.Namespace) -> Any:
    from fedshield.tasks.config import RunConfig

    values = dict(CNN_SCENARIO)
    if args.quick:
        values.update(CNN_QUICK_SCENARIO)
    for key, flag in (("num_clients", "clients"), ("dataset", "dataset"), ("seed", "seed")):
        if getattr(args, flag) is not None:
            values[key] = getattr(args, flag)
    values.update(parse_set(args.set))
    return RunConfig.from_dict(values)


def cnn_main(args: argparse.Namespace) -> int:
    import torch

    cfg = build_cnn_config(args)
    torch.set_num_threads(1)
    print(f"# bench simulation --cnn  ({time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}, "
          f"load average {os.getloadavg()[0]:.2f}, 1 thread)")
    print(f"scenario: dataset={cfg.dataset} model={cfg.model} clients={cfg.num_clients} "
          f"partition={cfg.partition} local_steps={cfg.local_steps} batch={cfg.batch_size}")
    m = measure_cnn_round(cfg, repeats=args.repeats)
    print()
    print(cnn_table(m))
    print(f"\nbaseline / current: {m.ratio:.2f}x; work per round {m.gflop:.2f} GFLOP; "
          f"single-thread sgemm {m.sgemm_gflops:.1f} GFLOP/s, so a compute floor of "
          f"{m.floor * 1e3:.0f} ms ({100 * m.floor / m.current:.0f} % of the current round); "
          f"max |baseline − current| update difference {m.max_abs_diff:.1e}")
    if args.json:
        args.json.write_text(json.dumps({"scenario": asdict(cfg), "cnn": m.summary()}, indent=2,
                                        default=str))
        print(f"wrote {args.json}")
    return 0


# --------------------------------------------------------------------------------------------
# CPU vs GPU
# --------------------------------------------------------------------------------------------
def gpu_table(cpu: EngineMeasurement, gpu: EngineMeasurement | None) -> str:
    def cell(m: EngineMeasurement | None, value: Callable[[EngineMeasurement], float]) -> Any:
        return "no GPU" if m is None else value(m)

    rows = [
        ("round median ms", cpu.round_median * 1e3, cell(gpu, lambda m: m.round_median * 1e3)),
        ("train ms", cpu.phase_median["train"] * 1e3,
         cell(gpu, lambda m: m.phase_median["train"] * 1e3)),
        ("aggregate ms", cpu.phase_median["aggregate"] * 1e3,
         cell(gpu, lambda m: m.phase_median["aggregate"] * 1e3)),
        ("eval ms", cpu.phase_median["eval"] * 1e3,
         cell(gpu, lambda m: m.phase_median["eval"] * 1e3)),
        ("client updates/s", cpu.updates_per_second, cell(gpu, lambda m: m.updates_per_second)),
    ]
    return table(["inline engine", "cpu", "cuda"], rows)


# The rules whose sorts or Gram products go to the device, at the size where a server feels them.
DEVICE_RULES = ("median", "trimmedmean", "krum", "bulyan", "flame")
DEVICE_SIZE = (100, 1_000_000)
QUICK_DEVICE_SIZE = (20, 10_000)


def aggregation_seconds(device: Any, size: tuple[int, int] = DEVICE_SIZE,
                        repeats: int = 3) -> dict[str, float]:
    """Median seconds of one call of each of :data:`DEVICE_RULES` on the same (n, d) matrix
    with its kernels on ``device`` (None: the CPU path), after one warm-up call."""
    import torch

    from fedshield import aggregators
    from fedshield.aggregators.kernels import kernel_device

    n, d = size
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(0))
    times = {}
    for name in DEVICE_RULES:
        rule = aggregators.create(name, **rule_params_for(name, n))
        with kernel_device(device):
            rule(x)
            times[name] = statistics.median(_seconds(lambda r=rule: r(x)) for _ in range(repeats))
    return times


def aggregation_device_table(cpu: dict[str, float], gpu: dict[str, float] | None,
                             size: tuple[int, int] = DEVICE_SIZE) -> str:
    rows = [(name, cpu[name] * 1e3, "no GPU" if gpu is None else gpu[name] * 1e3,
             "–" if gpu is None else cpu[name] / gpu[name]) for name in DEVICE_RULES]
    n, d = size
    return table([f"rule call, n = {n}, d = {d}", "cpu ms", "cuda ms", "cpu / cuda"], rows)


def gpu_main(args: argparse.Namespace) -> int:
    import torch

    try:
        cfg = build_config(args)
    except (BenchError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    has_gpu = torch.cuda.is_available()
    print(f"# bench simulation --gpu  ({time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}, "
          f"{torch.cuda.get_device_name(0) if has_gpu else 'no GPU'})")
    print(f"scenario: dataset={cfg.dataset} model={cfg.model} clients={cfg.num_clients} "
          f"rounds={cfg.rounds} rule={cfg.aggregator}")
    cpu = measure_inline(cfg.with_updates(device="cpu"))
    gpu = measure_inline(cfg.with_updates(device="cuda")) if has_gpu else None
    print()
    print(gpu_table(cpu, gpu))
    if gpu is not None:
        print(f"\ncpu / cuda round time: {cpu.round_median / gpu.round_median:.2f}x")
    size = QUICK_DEVICE_SIZE if args.quick else DEVICE_SIZE
    print()
    print(aggregation_device_table(
        aggregation_seconds(None, size, args.repeats),
        aggregation_seconds(torch.device("cuda"), size, args.repeats) if has_gpu else None,
        size))
    return 0


# --------------------------------------------------------------------------------------------
# Scenario
# --------------------------------------------------------------------------------------------
def parse_set(items: Sequence[str]) -> dict[str, Any]:
    """``key=value`` pairs; values parsed as JSON when they parse, else kept as strings."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise BenchError(f"--set expects key=value, got {item!r}")
        try:
            out[key.strip().replace("-", "_")] = json.loads(raw)
        except json.JSONDecodeError:
            out[key.strip().replace("-", "_")] = raw
    return out


def rule_params_for(rule: str, num_clients: int, given: dict[str, Any] | None = None) -> dict:
    """Parameters for ``rule`` at ``num_clients``: ``given`` wins; otherwise ``f`` = n // 10
    (at least 1) when the rule takes ``f``, lowered until the rule accepts n clients."""
    from fedshield import aggregators
    if given:
        return dict(given)
    try:
        takes_f = "f" in aggregators.create(rule).params()
    except aggregators.AggregatorError:
        takes_f = True  # f is a required parameter
    if not takes_f:
        return {}
    f = max(1, num_clients // 10)
    while f > 0:
        try:
            if aggregators.create(rule, f=f).min_clients() <= num_clients:
                return {"f": f}
        except aggregators.AggregatorError:
            pass
        f -= 1
    return {"f": 0}


def build_config(args: argparse.Namespace, rule: str | None = None) -> Any:
    from fedshield.tasks.config import RunConfig

    values = dict(DEFAULT_SCENARIO)
    if args.quick:
        values.update(QUICK_SCENARIO)
    for key, flag in (("num_clients", "clients"), ("rounds", "rounds"), ("dataset", "dataset"),
                      ("model", "model"), ("seed", "seed")):
        if getattr(args, flag) is not None:
            values[key] = getattr(args, flag)
    overrides = parse_set(args.set)
    values.update(overrides)
    n = values.get("clients_per_round") or values["num_clients"]
    if rule is not None:
        values["aggregator"] = rule
        values["aggregator_params"] = rule_params_for(rule, n)
    else:
        values["aggregator"] = args.rule or values["aggregator"]
        if "aggregator_params" not in overrides:
            given = json.loads(args.rule_params) if args.rule_params else None
            values["aggregator_params"] = rule_params_for(values["aggregator"], n, given)
    return RunConfig.from_dict(values)


# --------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------
def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-markdown table (pasted as is into simulations/PERFORMANCE.md)."""

    def cell(value: Any) -> str:
        if isinstance(value, float):
            if math.isnan(value):
                return "–"
            return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
        return str(value)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def engine_table(results: Sequence[EngineMeasurement]) -> str:
    rows = [
        (
            m.engine, m.rule, m.clients_per_round, m.rounds, m.startup,
            m.round_walls[0] if m.round_walls else math.nan, m.round_median,
            m.rounds_per_second, m.updates_per_second, m.total_wall,
        )
        for m in results
    ]
    return table(
        ["engine", "rule", "clients/round", "rounds", "start-up s", "round 1 s",
         "round median s", "rounds/s", "client updates/s", "total wall s"],
        rows,
    )


def phase_table(results: Sequence[EngineMeasurement]) -> str:
    rows = []
    for m in results:
        share = m.phase_shares
        rows.append(
            (
                m.rule, m.round_median * 1e3,
                *(m.phase_median.get(p, math.nan) * 1e3
                  for p in ("train", "attack", "aggregate", "eval", "other")),
                100 * share.get("train", math.nan), 100 * share.get("aggregate", math.nan),
                100 * share.get("other", math.nan),
                100 * m.cpu_shares.get("aggregate", math.nan),
                100 * m.cpu_shares.get("other", math.nan),
                _verdict(share.get("aggregate", math.nan) <= 0.10),
                _verdict(share.get("other", math.nan) <= 0.10),
            )
        )
    return table(
        ["rule", "round ms", "train ms", "attack ms", "aggregate ms", "eval ms",
         "other ms", "train %",
         "aggregate %", "other %", "aggregate % (CPU)", "other % (CPU)", "aggregate ≤ 10 %",
         "other ≤ 10 %"],
        rows,
    )


def _verdict(ok: bool) -> str:
    return "yes" if ok else "NO"


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------
def build_parser(prog: str = "fedshield bench simulation") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Inline engine vs Flower Simulation Engine on the same scenario, in one run; "
        "phase split of the inline round; aggregation share per rule.",
    )
    parser.add_argument("--clients", type=int, help="num_clients (default 100; --quick: 10)")
    parser.add_argument("--rounds", type=int, help="rounds (default 20; --quick: 3)")
    parser.add_argument("--dataset", help="dataset (default digits)")
    parser.add_argument("--model", help="model (default mlp)")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--rule", help="aggregator of the engine comparison (default fedavg)")
    parser.add_argument("--rule-params", help="JSON object of the rule's parameters")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE",
        help="any RunConfig field, e.g. --set local_steps=2 --set partition=iid (repeatable)",
    )
    parser.add_argument(
        "--engines", default="inline,flower",
        help="comma list of engines to compare: inline, flower (default both)",
    )
    parser.add_argument(
        "--rules", default="",
        help="aggregation-share table: comma list of rules, or 'all' (inline engine only)",
    )
    parser.add_argument("--quick", action="store_true",
                        help="10 clients, 3 rounds (--cnn: digits, 10 clients)")
    parser.add_argument("--cnn", action="store_true",
                        help="the fltrust-mnist CNN round's client step: the fresh-model "
                        "baseline vs the current one, and the compute floor")
    parser.add_argument("--repeats", type=int, default=5,
                        help="--cnn, --gpu: timed repeats of each")
    parser.add_argument("--gpu", action="store_true",
                        help="the inline engine on device=cpu and device=cuda, same scenario, "
                        "then the heavy rules' calls with their kernels on each (the GPU column "
                        "says 'no GPU' without one)")
    parser.add_argument("--json", type=Path, help="also write every measurement to this file")
    return parser


def _engines(spec: str) -> list[str]:
    engines = [e.strip() for e in spec.split(",") if e.strip()]
    bad = sorted(set(engines) - {"inline", "flower"})
    if bad or not engines:
        raise BenchError(f"--engines: unknown {bad or spec!r}; allowed: inline, flower")
    return engines


def _rules(spec: str) -> list[str]:
    from fedshield import aggregators
    if not spec:
        return []
    names = aggregators.available() if spec == "all" else [r.strip() for r in spec.split(",")]
    unknown = sorted(set(names) - set(aggregators.available()))
    if unknown:
        raise BenchError(f"--rules: unknown {unknown}; available: {aggregators.available()}")
    return names


def comparison(results: Sequence[EngineMeasurement]) -> dict[str, float]:
    by = {m.engine: m for m in results}
    if "inline" not in by or "flower" not in by:
        return {}
    inline, flower = by["inline"], by["flower"]
    return {
        "rounds_per_second_ratio": inline.rounds_per_second / flower.rounds_per_second,
        "updates_per_second_ratio": inline.updates_per_second / flower.updates_per_second,
        "total_wall_ratio": flower.total_wall / inline.total_wall,
        "startup_ratio": flower.startup / inline.startup,
    }


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.cnn:
        if args.repeats < 1:
            print("error: --repeats must be >= 1", file=sys.stderr)
            return 2
        return cnn_main(args)
    if args.gpu:
        return gpu_main(args)
    try:
        engines = _engines(args.engines)
        rules = _rules(args.rules)
        cfg = build_config(args)
    except (BenchError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"# bench simulation  ({time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}, "
          f"load average {os.getloadavg()[0]:.2f}, {os.cpu_count()} CPUs)")
    print(f"scenario: dataset={cfg.dataset} model={cfg.model} clients={cfg.num_clients} "
          f"clients/round={clients_per_round(cfg)} rounds={cfg.rounds} rule={cfg.aggregator} "
          f"{cfg.aggregator_params} partition={cfg.partition} local_epochs={cfg.local_epochs} "
          f"local_steps={cfg.local_steps} batch={cfg.batch_size} eval_every={cfg.eval_every}")
    results: list[EngineMeasurement] = []
    for engine in engines:
        print(f"running {engine} ...", flush=True)
        results.append(measure_inline(cfg) if engine == "inline" else measure_flower(cfg))
    print("\n## Engines\n")
    print(engine_table(results))
    ratios = comparison(results)
    if ratios:
        print(
            f"\ninline / flower rounds per second: {ratios['rounds_per_second_ratio']:.1f}x "
            f"(target >= 10x: {_verdict(ratios['rounds_per_second_ratio'] >= 10)}); "
            f"whole run wall flower / inline: {ratios['total_wall_ratio']:.1f}x; "
            f"start-up flower / inline: {ratios['startup_ratio']:.1f}x"
        )
    inline_results = [m for m in results if m.engine == "inline"]
    share_results = list(inline_results)
    for rule in rules:
        if rule == cfg.aggregator and inline_results:
            continue
        print(f"running inline, rule {rule} ...", flush=True)
        share_results.append(measure_inline(build_config(args, rule=rule)))
    if share_results:
        print("\n## Inline round split (medians of rounds 2..R)\n")
        print(phase_table(share_results))
    printed: set[str] = set()
    for m in results + share_results[len(inline_results):]:
        for note in m.notes:
            if note and note not in printed:
                printed.add(note)
                print(f"note [{m.engine}/{m.rule}]: {note}")
    if args.json:
        payload = {
            "scenario": asdict(cfg),
            "engines": [m.summary() for m in results],
            "ratios": ratios,
            "rules": [m.summary() for m in share_results],
            "load_average": os.getloadavg(),
        }
        args.json.write_text(json.dumps(payload, indent=2, default=str))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
