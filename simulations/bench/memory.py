"""``fedshield bench memory``: the server's peak memory in one Flower-path aggregation round.

    fedshield bench memory                                  # n = 100, d = 10^7 (4 GB of replies)
    fedshield bench memory --rules fedavg,median,krum --params 1000000

For each rule, a fresh child process builds a ``RobustStrategy``, the round's global model (one
float32 layer of d values) and n train replies as Flower ``Message``s (each delta an
independent N(0, 1) draw, seeded), then resets the kernel's peak-RSS counter
(``/proc/self/clear_refs``) and runs ``aggregate_train`` once. Printed: the round's peak resident
memory above the process before the replies existed, as a ratio to the replies' own size
(n · d · 4 bytes), twice in the same run — with the strategy keeping every reply whole while it
aggregates (``release_replies=False``, the baseline: Flower's messages plus the decoded (n, d)
matrix) and releasing each reply's decoded arrays as soon as its row is written (the default).
Target: <= 1.15 for every rule that can stream.

Linux only (``/proc``). A child needs the replies' size times its "keep replies" figure of free
memory (2–4× for most rules, 4.1× for FoolsGold, whose float64 per-client history is 2× the
replies by design; a child killed by the kernel is reported as an error row).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any

TARGET = 1.15


def child(rule: str, clients: int, params: int, release: bool, seed: int = 0) -> dict[str, Any]:
    """One measurement, in this process (see the module docstring)."""
    import gc

    import numpy as np
    import torch
    from flwr.app import (
        Array,
        ArrayRecord,
        ConfigRecord,
        Message,
        MessageType,
        Metadata,
        MetricRecord,
        RecordDict,
    )

    from fedshield import aggregators
    from fedshield.server.strategy import RobustStrategy
    from fedshield.server.validation import return_freed_memory
    from fedshield.simulations.bench.scaling import proc_status, reset_peak
    from fedshield.simulations.bench.simulation import rule_params_for

    torch.set_num_threads(1)
    aggregator = aggregators.create(rule, **rule_params_for(rule, clients))
    reference = None
    if aggregator.needs_reference:
        ref = torch.from_numpy(np.random.default_rng(seed + 1).standard_normal(
            params, dtype=np.float32))

        def reference(rnd: int, theta: torch.Tensor) -> torch.Tensor:
            return ref

    strategy = RobustStrategy(aggregator, reference_fn=reference, release_replies=release)
    global_arrays = ArrayRecord({"w": Array(np.zeros(params, dtype=np.float32))})
    strategy.begin_round(global_arrays, sent_nodes=list(range(1, clients + 1)))
    gc.collect()
    before = proc_status()["VmRSS"]
    rng = np.random.default_rng(seed)
    replies = []
    for node in range(1, clients + 1):
        content = RecordDict({
            "arrays": ArrayRecord({"w": Array(rng.standard_normal(params, dtype=np.float32))}),
            "metrics": MetricRecord({"num-examples": 10, "train_loss": 0.5}),
            "meta": ConfigRecord({"partition-id": node - 1, "malicious": False}),
        })
        meta = Metadata(run_id=1, message_id=f"r{node}", src_node_id=node, dst_node_id=0,
                        reply_to_message_id="m1", group_id="1", created_at=time.time(),
                        ttl=3600.0, message_type=MessageType.TRAIN)
        replies.append(Message(content=content, metadata=meta))
    gc.collect()
    return_freed_memory()  # the generator's temporaries: not the round's memory
    with_replies = proc_status()["VmRSS"]
    reset_peak()
    t0 = time.perf_counter()
    new, _ = strategy.aggregate_train(1, replies)
    seconds = time.perf_counter() - t0
    peak = proc_status()["VmHWM"]
    replies_bytes = clients * params * 4
    assert new is not None
    return {"rule": rule, "release": release, "clients": clients, "params": params,
            "replies_bytes": replies_bytes, "rss_before": before, "rss_with_replies": with_replies,
            "peak": peak, "ratio": (peak - before) / replies_bytes, "seconds": seconds}


def measure(rule: str, clients: int, params: int, release: bool) -> dict[str, Any]:
    """:func:`child` in a fresh process (its own peak counter and allocator)."""
    command = [sys.executable, "-m", "fedshield.simulations.bench.memory", "--child", rule,
               "--clients", str(clients), "--params", str(params)]
    if not release:
        command.append("--keep-replies")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
           "MKL_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        return {"rule": rule, "release": release, "error": done.stderr.strip().splitlines()[-1]
                if done.stderr.strip() else f"exit {done.returncode}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="fedshield bench memory", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--params", type=int, default=10_000_000)
    parser.add_argument("--rules", default="all", help="comma list, or all (default)")
    parser.add_argument("--json", help="also write the measurements to this file")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--keep-replies", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.clients < 1 or args.params < 1:
        parser.error("--clients and --params must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    from fedshield import aggregators
    from fedshield.simulations.bench.simulation import table

    args = _parse(argv)
    if args.child:
        print(json.dumps(child(args.child, args.clients, args.params, not args.keep_replies)))
        return 0
    rules = aggregators.available() if args.rules == "all" else args.rules.split(",")
    unknown = sorted(set(rules) - set(aggregators.available()))
    if unknown:
        print(f"error: unknown rules {unknown}", file=sys.stderr)
        return 2
    size = args.clients * args.params * 4
    print(f"# bench memory  ({time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}): n = "
          f"{args.clients}, d = {args.params}, replies {size / 1e9:.2f} GB; peak RSS of one "
          "aggregate_train above the process without replies, / replies' size")
    rows, results = [], []
    for rule in rules:
        kept, released = (measure(rule, args.clients, args.params, r) for r in (False, True))
        results += [kept, released]
        if "error" in kept or "error" in released:
            rows.append((rule, kept.get("ratio", "error"), released.get("ratio", "error"), "–",
                         kept.get("error") or released.get("error")))
            continue
        rows.append((rule, kept["ratio"], released["ratio"],
                     "yes" if released["ratio"] <= TARGET else "NO", f"{released['seconds']:.1f}"))
        print(f"  {rule}: {kept['ratio']:.2f} -> {released['ratio']:.2f}", flush=True)
    print()
    print(table(["rule", "keep replies ×", "release replies ×", f"≤ {TARGET}", "round s"], rows))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
