"""Run a ServerApp in this process and SIGKILL it at one step of one round (crash tests).

    python helpers_crash.py RUN_CONFIG_JSON STEP ROUND

STEP: "aggregated" (the round is aggregated, nothing of it written), "ledger" (after its ledger
row), "metrics" (after its rounds.jsonl row), "checkpoint" (after its checkpoint). The process
kills itself with SIGKILL, as an out-of-memory killer or a power cut would: no cleanup runs.
"""

from __future__ import annotations

import json
import os
import signal
import sys

from helpers_flower import InProcessGrid

from fedshield.server import checkpoint, ledger, strategy
from fedshield.server.server_app import run_server
from fedshield.tasks.config import RunConfig


def kill_after(owner, name, step, when):
    real = getattr(owner, name)

    def wrapped(self, *args, **kwargs):
        out = real(self, *args, **kwargs)
        if when(self, args, out):
            os.kill(os.getpid(), signal.SIGKILL)
        return out

    setattr(owner, name, wrapped)


def main(config: str, step: str, rnd: int) -> None:
    cfg = RunConfig.from_dict(json.loads(config))
    if step == "aggregated":
        kill_after(strategy.RobustStrategy, "aggregate_train", step,
                   lambda s, a, out: a[0] + s.round_offset == rnd)
    elif step == "ledger":
        kill_after(ledger.Ledger, "append", step,
                   lambda s, a, out: a[0].get("kind") == "round" and a[0]["round"] == rnd)
    elif step == "metrics":
        kill_after(checkpoint.RowLog, "append", step, lambda s, a, out: a[0]["round"] == rnd)
    elif step == "checkpoint":
        kill_after(checkpoint.CheckpointStore, "save", step, lambda s, a, out: a[0].round == rnd)
    run_server(InProcessGrid(cfg.to_flower(), cfg.num_clients), cfg, resume=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
