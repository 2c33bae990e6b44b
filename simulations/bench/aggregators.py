"""``fedshield bench aggregators``: every rule against Flower 1.42's built-ins and two floors.

For each size (n clients, d parameters) one matrix of float32 deltas X (n, d) is drawn, and from it
n Flower reply Messages carrying the *same* clients' full weights w_0 + x_i (one ArrayRecord, a
``num-examples`` MetricRecord, explicit Metadata). Timed, in the same
process and the same run:

- floors: one pass ``X.sum(0)`` (any rule reads every value once) and one Gram product ``X @ X.T``
  (what any pairwise-distance rule must pay);
- every fedshield rule on X (f = n // 5 where the rule takes f; FLTrust gets a fixed reference),
  the detecting defences included (FLAME, FoolsGold from an empty history, DnC with its default
  b = 10,000 sampled coordinates, SignGuard, bucketing s = 2 + median, NNM + Krum) and the
  2022–2025 defences (ARC + median; FLDetector + median timed in its steady state, with its
  history of earlier calls; FreqFed + median), which have no Flower counterpart ('—' in the
  Flower columns);
- ``stack`` = turning the replies into X once per round (shared by all rules, paid by the server);
- Flower's ``Krum``, ``MultiKrum`` (m = n − f), ``FedMedian``, ``FedTrimmedAvg`` (β = f/n, the same
  trimming), ``Bulyan`` through their ``aggregate_train`` on fresh copies of the replies (they pop
  the arrays out of the replies they are given).

Each cell is the median of ``--repeats`` calls (after one warm-up for fedshield rules). Printed per
size: ms, the ratio to the relevant floor (Gram for distance rules, pass for the others), Flower's
ms, Flower/ours, and the largest absolute difference between the two results (the Krum family and
Bulyan may legitimately differ: Flower computes float32 distances on raw weights and selects
Bulyan's set in one shot). Timings are wall clock on a shared machine: compare ratios from the
same run. BLAS threads: run with ``OPENBLAS_NUM_THREADS=1`` (set before numpy is imported:
Flower's numpy strategies otherwise use every BLAS thread); torch uses ``--threads`` (default 1).
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

import argparse
import gc
import logging
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from fedshield import aggregators

FULL_SIZES = [(20, 100_000), (100, 100_000), (20, 1_000_000), (100, 1_000_000)]
QUICK_SIZES = [(20, 20_000)]

#: fedshield rule -> (parameters given f, floor it is compared with, Flower counterpart)
RULES: dict[str, tuple[Callable[[int, int], dict[str, Any]], str, str | None]] = {
    "fedavg": (lambda n, f: {}, "pass", None),
    "krum": (lambda n, f: {"f": f}, "gram", "Krum"),
    "multikrum": (lambda n, f: {"f": f}, "gram", "MultiKrum"),
    "median": (lambda n, f: {}, "pass", "FedMedian"),
    "trimmedmean": (lambda n, f: {"f": f}, "pass", "FedTrimmedAvg"),
    "bulyan": (lambda n, f: {"f": f}, "gram", "Bulyan"),
    "geomed": (lambda n, f: {}, "gram", None),
    "fltrust": (lambda n, f: {}, "pass", None),
    "centeredclip": (lambda n, f: {"tau": 1.0}, "pass", None),
    "normclip": (lambda n, f: {"bound": "median"}, "pass", None),
    # detecting defences and pre-aggregators (issue 9): no Flower 1.42 counterpart
    "flame": (lambda n, f: {}, "gram", None),
    "foolsgold": (lambda n, f: {}, "gram", None),
    "dnc": (lambda n, f: {"f": f}, "pass", None),
    "signguard": (lambda n, f: {}, "pass", None),
    "bucketing": (lambda n, f: {"s": 2, "inner": "median"}, "pass", None),
    "nnm": (lambda n, f: {"f": f, "inner": "krum", "inner_params": {"f": f}}, "gram", None),
    # the 2022-2025 defences (issue 15): ARC, and detectors in front of the median
    "arc": (lambda n, f: {"f": f, "inner": "median"}, "pass", None),
    "detect/fldetector": (lambda n, f: {"detector": "fldetector", "detector_params": {
        "warmup": 0}, "inner": "median"}, "pass", None),
    "detect/freqfed": (lambda n, f: {"detector": "freqfed", "inner": "median"}, "pass", None),
}
#: rules timed in their steady state (their per-client history built up), not after reset()
STEADY = {"detect/fldetector"}


def _median_ms(fn: Callable[[], Any], repeats: int, *, warmup: bool,
               setup: Callable[[], Any] | None = None) -> tuple[float, Any]:
    """Median wall time of ``fn(setup())`` in ms (setup is not timed); also the last result.

    The garbage collector is disabled while timing, as ``timeit`` does (a collection costs up to
    a second in a process holding torch, Flower and hypothesis); Flower's own explicit
    ``gc.collect()`` calls inside its strategies still run and are part of its cost.
    """
    if warmup:
        fn(setup()) if setup else fn()
    times, result = [], None
    for _ in range(repeats):
        arg = setup() if setup else None
        gc.disable()
        try:
            start = time.perf_counter()
            result = fn(arg) if setup else fn()
            times.append(time.perf_counter() - start)
        finally:
            gc.enable()
        del arg
    return 1e3 * statistics.median(times), result


def _replies(weights: np.ndarray, num_examples: int = 10) -> list[Any]:
    """n Flower train replies with explicit Metadata (no running SuperLink needed)."""
    from flwr.app import (
        Array,
        ArrayRecord,
        Message,
        MessageType,
        Metadata,
        MetricRecord,
        RecordDict,
    )

    out = []
    for i, row in enumerate(weights):
        md = Metadata(run_id=1, message_id=f"reply-{i}", src_node_id=1000 + i, dst_node_id=0,
                      reply_to_message_id=f"ins-{i}", group_id="1", created_at=time.time(),
                      ttl=3600.0, message_type=MessageType.TRAIN)
        content = RecordDict({
            "arrays": ArrayRecord(array_dict={"w": Array(np.array(row))}),
            "metrics": MetricRecord({"num-examples": num_examples}),
        })
        out.append(Message(content=content, metadata=md))
    return out


def _flower_strategy(name: str, n: int, f: int) -> Any:
    from flwr.serverapp import strategy as fs

    common = {"fraction_train": 1.0, "fraction_evaluate": 0.0}
    if name == "Krum":
        return fs.Krum(num_malicious_nodes=f, **common)
    if name == "MultiKrum":
        return fs.MultiKrum(num_malicious_nodes=f, num_nodes_to_select=n - f, **common)
    if name == "FedMedian":
        return fs.FedMedian(**common)
    if name == "FedTrimmedAvg":
        return fs.FedTrimmedAvg(beta=f / n, **common)
    if name == "Bulyan":
        return fs.Bulyan(num_malicious_nodes=f, **common)
    raise KeyError(name)


def _stack(replies: list[Any]) -> torch.Tensor:
    """What the server does once per round: replies -> one contiguous (n, d) float32 matrix."""
    first = replies[0].content["arrays"]["w"].numpy()
    out = np.empty((len(replies), first.size), dtype=np.float32)
    for i, msg in enumerate(replies):
        out[i] = msg.content["arrays"]["w"].numpy().ravel()
    return torch.from_numpy(out)


@dataclass
class SizeResult:
    n: int
    d: int
    f: int
    floors: dict[str, float] = field(default_factory=dict)
    ours: dict[str, float] = field(default_factory=dict)
    flower: dict[str, float] = field(default_factory=dict)
    diff: dict[str, float] = field(default_factory=dict)


def bench_size(n: int, d: int, *, repeats: int, flower_repeats: int, flower: bool,
               seed: int) -> SizeResult:
    gen = torch.Generator().manual_seed(seed)
    x = (0.01 * torch.randn(n, d, generator=gen)).contiguous()
    f = n // 5
    res = SizeResult(n=n, d=d, f=f)
    floor_pass: list[float] = []
    floor_gram: list[float] = []

    def floors() -> None:
        floor_pass.append(_median_ms(lambda: x.sum(0), repeats, warmup=True)[0])
        floor_gram.append(_median_ms(lambda: x @ x.T, repeats, warmup=True)[0])

    floors()
    reference = x[f:].mean(0)
    results: dict[str, torch.Tensor] = {}
    for name, (params, _, _) in RULES.items():
        rule = aggregators.create(name.split("/")[0], **params(n, f))
        ctx = {"reference": reference} if rule.needs_reference else {}

        def call(rule: aggregators.Rule = rule, ctx: dict[str, Any] = ctx,
                 steady: bool = name in STEADY) -> torch.Tensor:
            if not steady:
                rule.reset()
            return rule(x, **ctx).update

        res.ours[name], results[name] = _median_ms(call, repeats, warmup=True)
    floors()
    res.floors = {"pass": statistics.median(floor_pass), "gram": statistics.median(floor_gram)}
    if flower:
        w0 = (0.05 * torch.randn(d, generator=gen)).numpy()
        weights = x.numpy() + w0
        res.ours["stack"], _ = _median_ms(_stack, repeats, warmup=False,
                                          setup=lambda: _replies(weights))
        for name, (_, _, fl_name) in RULES.items():
            if fl_name is None:
                continue
            strategy = _flower_strategy(fl_name, n, f)
            ms, out = _median_ms(lambda replies, s=strategy: s.aggregate_train(1, replies),
                                 flower_repeats, warmup=False, setup=lambda: _replies(weights))
            res.flower[name] = ms
            arrays = out[0]
            if arrays is not None:
                flat = arrays["w"].numpy().astype(np.float64) - w0
                res.diff[name] = float(np.abs(flat - results[name].double().numpy()).max())
    return res


def _fmt_ms(ms: float | None) -> str:
    if ms is None:
        return "–"
    return f"{ms:.1f}" if ms < 1000 else f"{ms:,.0f}"


def format_size(res: SizeResult) -> str:
    lines = [
        f"n = {res.n}, d = {res.d:.0e} (f = {res.f})".replace("e+0", "e"),
        "",
        "| rule | ms | × floor | Flower 1.42 | Flower ms | Flower / ours | max abs diff |",
        "|---|---:|---:|---|---:|---:|---:|",
        f"| floor: one pass X.sum(0) | {_fmt_ms(res.floors['pass'])} | 1 | | | | |",
        f"| floor: one Gram X@X.T | {_fmt_ms(res.floors['gram'])} | 1 | | | | |",
    ]
    for name, (_, floor, fl_name) in RULES.items():
        ms = res.ours[name]
        ratio = ms / res.floors[floor]
        fl = res.flower.get(name)
        speed = f"{fl / ms:.1f}×" if fl else ""
        diff = f"{res.diff[name]:.1e}" if name in res.diff else ""
        if fl_name is None:  # no Flower counterpart
            fl_cols = "— | — | — | —"
        else:
            fl_cols = f"{fl_name} | {_fmt_ms(fl) if fl else ''} | {speed} | {diff}"
        lines.append(f"| {name} | {_fmt_ms(ms)} | {ratio:.2f} ({floor}) | {fl_cols} |")
    if "stack" in res.ours:
        lines.append(f"| (server) replies → X, once per round | {_fmt_ms(res.ours['stack'])} "
                     "| | | | | |")
    return "\n".join(lines)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="fedshield bench aggregators", description=__doc__.split(
        "\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="one small size (n = 20, d = 2e4), one call per Flower strategy: a smoke "
                   "run in seconds")
    p.add_argument("--sizes", nargs="+", metavar="NxD",
                   help="sizes to run, e.g. 20x100000 100x1000000 (default: the four of the issue)")
    p.add_argument("--repeats", type=int, default=3, help="timed calls per cell (median)")
    p.add_argument("--flower-repeats", type=int, default=None,
                   help="timed calls per Flower strategy (default: --repeats; 1 with --quick)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--no-flower", action="store_true", help="skip Flower's built-ins")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.flower_repeats is None:
        args.flower_repeats = 1 if args.quick else args.repeats
    if args.repeats < 1 or args.flower_repeats < 1:
        p.error("--repeats and --flower-repeats must be >= 1")
    if args.threads < 1:
        p.error("--threads must be >= 1")
    try:
        args.sizes = ([tuple(int(v) for v in s.lower().split("x")) for s in args.sizes]
                      if args.sizes else (QUICK_SIZES if args.quick else FULL_SIZES))
    except ValueError:
        p.error("--sizes takes NxD pairs such as 20x100000")
    for n, d in args.sizes:
        if n < 7 or d < 1:
            p.error(f"size {n}x{d}: need n >= 7 (Bulyan with f = n // 5) and d >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    torch.set_num_threads(args.threads)
    print(f"# fedshield bench aggregators — torch {torch.__version__}, numpy {np.__version__}, "
          f"torch threads {torch.get_num_threads()}, OPENBLAS_NUM_THREADS="
          f"{os.environ.get('OPENBLAS_NUM_THREADS')}, {platform.processor() or platform.machine()}"
          f", median of {args.repeats} calls ({args.flower_repeats} for Flower), float32 deltas "
          "~ N(0, 0.01²)")
    if not args.no_flower:
        import flwr

        logging.getLogger("flwr").setLevel(logging.ERROR)  # after flwr configured its logger
        print(f"# Flower {flwr.__version__}: aggregate_train on replies of full weights w0 + x_i")
    print("# × floor: ours / floor of the same run; Flower / ours > 1 means fedshield is faster\n")
    for n, d in args.sizes:
        res = bench_size(n, d, repeats=args.repeats, flower_repeats=args.flower_repeats,
                         flower=not args.no_flower, seed=args.seed)
        print(format_size(res), "\n", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
