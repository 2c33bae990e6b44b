"""Sweep cells as Ray tasks: ``fedshield sweep SCENARIO --ray auto|ADDRESS|local``.

Each cell not yet in the results store becomes one Ray task (``num_cpus=1``; the worker pins
torch to one thread, as the local process pool does) running
:func:`simulations.runner.run_cell_safely`. Records flow back to the driver, which alone writes
the store (atomic, as with local workers); the driver keeps at most two tasks per cluster CPU in
flight, so a killed driver loses only those, and the same command run again skips every finished
cell. A task that dies with its worker (out of memory, a lost node) is recorded as a failed cell,
retried by the next run, like a cell that raises.

``address``: ``"auto"`` joins the cluster this machine belongs to (``ray start`` ran here, or
``RAY_ADDRESS``); ``"HOST:PORT"`` a head's GCS address; ``"local"`` starts a private one-machine
Ray instance for this sweep and stops it at the end. On a cluster every node needs the same
fedshield install and the scenario's datasets at the same paths (digits and MNIST ship with the
package; Fashion-MNIST is the Debian package; a ``root=`` directory must exist on every node):
tasks import the package and load data on the node that runs them.

:func:`local_head` starts a head with ``ray start --head --block`` in its own process group and
stops it by that group's id (tests and ``fedshield bench sweep`` use it).
"""

from __future__ import annotations

import contextlib
import functools
import os
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedshield.server.deploy.local import flwr_bin, free_port, kill_trees
from fedshield.simulations.runner import THREAD_ENV, drain, run_cell_safely

QUIET_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_DEDUP_LOGS": "0",
    "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_TELEMETRY_ENABLED": "0",
}


class RaySweepError(ValueError):
    """The Ray cluster cannot be reached or cannot run the sweep (the message says why)."""


Finish = Callable[[dict[str, Any]], None]


def ray_executor(address: str) -> Callable[[list[dict[str, Any]], Finish], None]:
    """``run_sweep(..., execute=ray_executor(address))``: the cells as Ray tasks."""
    return functools.partial(run_on_ray, address=address)


def run_on_ray(todo: list[dict[str, Any]], finish: Finish, *, address: str) -> None:
    """Run every payload of ``todo`` as a Ray task on the cluster at ``address``; ``finish``
    is called on the driver with each record as it arrives."""
    flower = [p for p in todo if p["engine"] != "inline"]
    if flower:
        raise RaySweepError("--ray runs inline cells only: the Flower engine already runs its "
                            f"clients on Ray ({len(flower)} Flower cells)")
    if not todo:
        return
    import ray

    env = {**THREAD_ENV, **QUIET_ENV}
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    try:
        ray.init(address=None if address == "local" else address,
                 runtime_env={"env_vars": env}, log_to_driver=False, logging_level="ERROR",
                 include_dashboard=False if address == "local" else None)
    except ConnectionError as exc:
        raise RaySweepError(f"no Ray cluster at {address!r} ({exc}); start one with "
                            "`ray start --head`, or pass --ray local") from exc
    try:
        _drain(ray, todo, finish)
    finally:
        ray.shutdown()


def _drain(ray: Any, todo: list[dict[str, Any]], finish: Finish) -> None:
    cell_task = ray.remote(num_cpus=1, max_retries=0)(run_cell_safely)
    in_flight = max(1, 2 * int(ray.cluster_resources().get("CPU", 1)))
    drain(todo, lambda payload: cell_task.remote(payload).future(), in_flight, finish,
          lost=(ray.exceptions.RayError,))  # the worker died: a failed cell


@dataclass(frozen=True)
class RayHead:
    address: str  # 127.0.0.1:PORT, for --ray
    pid: int  # of `ray start`, the leader of the head's process group


@contextlib.contextmanager
def local_head(num_cpus: int = 2, *, timeout: float = 60.0) -> Iterator[RayHead]:
    """A Ray head on this machine for the duration of the block. Started with
    ``ray start --head --block`` as the leader of a new process group, in a private temporary
    directory; stopped by signalling that group and its descendants (SIGTERM, then SIGKILL after
    20 s), so no other Ray instance on the machine is touched."""
    port = free_port()
    temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short: Ray's socket paths
    command = [flwr_bin("ray"), "start", "--head", "--block", f"--port={port}",
               f"--num-cpus={num_cpus}", "--num-gpus=0", f"--temp-dir={temp_dir}",
               "--include-dashboard=false", "--disable-usage-stats",
               "--node-ip-address=127.0.0.1"]
    log = open(Path(temp_dir) / "head.log", "wb")  # noqa: SIM115 (closed below)
    head = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, **QUIET_ENV, **THREAD_ENV},
                            start_new_session=True)
    address = f"127.0.0.1:{port}"
    try:
        _wait_for_head(head, port, timeout, Path(temp_dir) / "head.log")
        yield RayHead(address, head.pid)
    finally:
        stop_group(head)
        log.close()


def _wait_for_head(head: subprocess.Popen[bytes], port: int, timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if head.poll() is not None:
            raise RaySweepError(f"ray start exited with {head.returncode}: "
                                f"{log.read_text(errors='replace')[-2000:]}")
        if "Ray runtime started" in log.read_text(errors="replace"):
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                return
        time.sleep(0.2)
    raise RaySweepError(f"the Ray head did not start within {timeout:.0f} s "
                        f"({log.read_text(errors='replace')[-2000:]})")


def stop_group(process: subprocess.Popen[bytes], grace: float = 20.0) -> None:
    """Stop the process tree led by ``process`` (``server.deploy.local.kill_trees``: its group
    and every descendant, SIGTERM, then SIGKILL after ``grace``), reap it, and wait up to 5 s for
    the group's last members to be reaped by their new parent."""
    kill_trees([process.pid], grace=grace)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=5)
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline and group_alive(process.pid):
        time.sleep(0.1)


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True
