"""The Flower engine: one run under the Flower Simulation Engine (``flwr run``, Ray backend) with
fedshield's ServerApp (``server.server_app``) and ClientApp (``clients.client_app``).

``run_flower(cfg)``:

1. makes a private ``FLWR_HOME`` (a temp dir) and picks free 127.0.0.1 ports for the managed
   local SuperLink (``FLWR_LOCAL_SUPERLINK_HTTP_API_PORT``, ``FLWR_LOCAL_CONTROL_API_PORT``), so
   that it never reuses a SuperLink somebody else started;
2. writes the run config (``RunConfig.to_flower()``, kebab-case, with an absolute
   ``output-dir``) to a TOML file and runs::

       flwr run <app dir> --stream --run-config run_config.toml \\
           --federation-config "num-supernodes=N client-resources-num-cpus=1 \\
                                client-resources-num-gpus=0.0 init-args-num-cpus=C"

   (without ``init-args-num-cpus`` when ``RAY_ADDRESS`` names an existing Ray cluster to join)

   with ``FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 FLWR_DISABLE_UPDATE_CHECK=1
   FLWR_TELEMETRY_ENABLED=0``, one torch/BLAS thread per process and ``OMP_WAIT_POLICY=PASSIVE``;
3. reads ``output_dir/rounds.jsonl`` (the ServerApp's per-round rows) and ``output_dir/final.pt``;
4. stops every process of the run — the detached SuperLink the CLI spawned, its ServerApp and
   simulation subprocesses and Ray — identified by the private ``FLWR_HOME`` in their
   environment (never by a process name).

The app dir is, by default, a Flower app the engine writes into the private ``FLWR_HOME``: a
``pyproject.toml`` naming the installed package's components and declaring every RunConfig key
(:func:`write_app`), so the engine runs from an installed wheel as well as from a checkout.
Every key of the run config must be declared in the app's ``[tool.flwr.app.config]`` (the
SuperLink refuses override keys it does not know); a missing key is a clear error.
The rows are the ServerApp's ``rounds.jsonl`` rows: the round core's rows, the same the inline
engine yields.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Any

import torch

from fedshield.server.deploy.local import free_port
from fedshield.server.server_app import write_app
from fedshield.simulations.engine_inline import RunResult
from fedshield.tasks.config import RunConfig

FLOWER_ENV = {
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_TELEMETRY_ENABLED": "0",
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "OMP_WAIT_POLICY": "PASSIVE",
    "RAY_DEDUP_LOGS": "0",
}


class FlowerEngineError(ValueError):
    """``flwr run`` failed, timed out, or left no results; the message says where to look."""


def declared_config_keys(app_dir: Path) -> set[str]:
    data = tomllib.loads((app_dir / "pyproject.toml").read_text())
    return set(data.get("tool", {}).get("flwr", {}).get("app", {}).get("config", {}))


def run_config_toml(cfg: RunConfig) -> str:
    """The run config as the TOML ``flwr run --run-config FILE`` reads (flat, kebab-case)."""
    import tomli_w

    return tomli_w.dumps(cfg.to_flower())


def run_flower(cfg: RunConfig, *, timeout: float = 3600.0, cpus: int | None = None,
               log_path: str | Path | None = None, app_dir: str | Path | None = None,
               flwr_home: str | Path | None = None) -> RunResult:
    """Run ``cfg`` under ``flwr run`` and return its rounds and final vector.

    ``app_dir`` is the Flower app (a directory with pyproject.toml; default: :func:`write_app`
    in the private FLWR_HOME); ``log_path`` receives the CLI output and the SuperLink log;
    ``flwr_home`` is the private FLWR_HOME to use (kept afterwards; default: a temp dir, removed).
    """
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fedshield-flwr-") as tmp:
        home = Path(flwr_home).resolve() if flwr_home else Path(tmp)
        home.mkdir(parents=True, exist_ok=True)
        app_dir = Path(app_dir).resolve() if app_dir else write_app(home / "app")
        missing = sorted(set(cfg.to_flower()) - declared_config_keys(app_dir))
        if missing:
            raise FlowerEngineError(
                f"{app_dir / 'pyproject.toml'} [tool.flwr.app.config] does not declare "
                f"{missing}: the SuperLink refuses run-config keys that the app does not declare"
            )
        out_dir = Path(cfg.output_dir).resolve() if cfg.output_dir else home / "out"
        run_cfg = cfg.with_updates(output_dir=str(out_dir))
        config_file = home / "run_config.toml"
        config_file.write_text(run_config_toml(run_cfg))
        federation = federation_config(cfg.num_clients, cpus, cfg.device)
        flwr = Path(sys.executable).with_name("flwr")
        cmd = [str(flwr), "run", str(app_dir), "--stream", "--run-config", str(config_file),
               "--federation-config", federation]
        ray_tmp = Path(tempfile.mkdtemp(prefix="fsray-", dir="/tmp"))  # AF_UNIX paths ≤ 107 B
        env = flower_env(home, ray_tmp)
        output = ""
        try:
            proc = subprocess.run(cmd, env=env, cwd=home, capture_output=True, text=True,
                                  timeout=timeout, check=False)
            output = proc.stdout + proc.stderr
        except subprocess.TimeoutExpired as exc:
            output = _text(exc.stdout) + _text(exc.stderr)
            raise FlowerEngineError(f"flwr run timed out after {timeout:.0f} s: "
                                    f"{output[-2000:]}") from None
        finally:
            stop_processes(home)
            shutil.rmtree(ray_tmp, ignore_errors=True)
            if log_path is not None:
                Path(log_path).write_text(output + _superlink_log(home))
        final_path = out_dir / "final.pt"
        if proc.returncode != 0 or not final_path.exists():
            raise FlowerEngineError(
                f"flwr run exited with {proc.returncode} and "
                f"{'a' if final_path.exists() else 'no'} final.pt; output tail:\n"
                f"{output[-3000:]}\nSuperLink log tail:\n{_superlink_log(home)[-3000:]}"
            )
        rows = [json.loads(line) for line in (out_dir / "rounds.jsonl").read_text().splitlines()
                if line.strip()]
        final = torch.load(final_path, weights_only=True)
    return RunResult(rounds=rows, final_vector=final, malicious_ids=attacker_ids(cfg),
                     seconds=time.perf_counter() - start)


def attacker_ids(cfg: RunConfig) -> list[int]:
    """The malicious clients' ids: compromised partitions, or MPAF's fake clients' ids."""
    from fedshield.clients.attacks.base import registry
    from fedshield.server.round import FAKE_FIRST_ID

    if not cfg.malicious_count:
        return []
    if getattr(registry().get(cfg.attack), "fake", False):
        return list(range(FAKE_FIRST_ID, FAKE_FIRST_ID + cfg.malicious_count))
    return cfg.malicious_ids()


def flower_env(home: Path, ray_tmp: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(FLOWER_ENV)
    env["FLWR_HOME"] = str(home)
    env["RAY_TMPDIR"] = str(ray_tmp)
    env["FLWR_LOCAL_SUPERLINK_HTTP_API_PORT"] = str(free_port())
    env["FLWR_LOCAL_CONTROL_API_PORT"] = str(free_port())
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    return env


def _text(value: Any) -> str:
    if value is None:
        return ""
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _superlink_log(home: Path) -> str:
    path = home / "local-superlink" / "superlink.log"
    return path.read_text(errors="replace") if path.exists() else ""


# --- process clean-up ---------------------------------------------------------------------------
def processes_of(home: Path) -> list[int]:
    """Pids of this user's processes whose environment holds ``FLWR_HOME=<home>``."""
    marker = f"FLWR_HOME={home}".encode()
    own = os.getpid()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == own:
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if marker in environ.split(b"\0"):
            found.append(int(entry.name))
    return found


def stop_processes(home: Path, grace: float = 5.0) -> list[int]:
    """SIGTERM, then SIGKILL after ``grace`` seconds, every process of the run in ``home``."""
    pids = processes_of(home)
    for pid in pids:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.1)
    for pid in processes_of(home):
        _signal(pid, signal.SIGKILL)
    return pids


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except OSError:
        return False
    return state != "Z"


# --- rows -----------------------------------------------------------------------------------------
def gpus_per_client(device: str, concurrent_clients: int) -> float:
    """Flower's ``client-resources-num-gpus`` for a run on ``device``: 0 on the CPU; on CUDA the
    machine's GPUs shared by the clients that run at once (at most one GPU each)."""
    from fedshield.tasks.device import resolve_device

    if resolve_device(device).type != "cuda":
        return 0.0
    import torch

    return min(1.0, torch.cuda.device_count() / max(1, concurrent_clients))


def federation_config(num_supernodes: int, cpus: int | None = None,
                      device: str = "cpu") -> str:
    """``--federation-config`` of a run: one CPU per ClientApp (and its share of a GPU on a CUDA
    ``device``, :func:`gpus_per_client`), and Ray started with ``cpus`` CPUs (default: up to
    2) — unless ``RAY_ADDRESS`` names an existing Ray cluster, which Ray's ``init`` then joins
    and which refuses a CPU count (its own resources decide)."""
    cpus = cpus or min(2, os.cpu_count() or 1)
    federation = (f"num-supernodes={num_supernodes} client-resources-num-cpus=1 "
                  f"client-resources-num-gpus={gpus_per_client(device, cpus)}")
    if os.environ.get("RAY_ADDRESS"):
        return federation
    return f"{federation} init-args-num-cpus={cpus}"
