"""A local Flower deployment with TLS and SuperNode authentication, on 127.0.0.1 only.

What :class:`LocalFederation` does (``server/deploy/start.sh`` and ``stop.sh`` wrap it):

1. ``server.deploy.credentials.generate``: CA, SuperLink certificate (SAN 127.0.0.1/localhost),
   one ECDSA P-384 key pair per SuperNode — offline, with the ``cryptography`` package;
2. a private ``FLWR_HOME`` whose ``config.toml`` names the connection ``fedshield-tls``
   (``address = "127.0.0.1:<port>"``, ``root-certificates = <ca.crt>``);
3. ``flower-superlink --host 127.0.0.1 --port P --ssl-ca-certfile ca.crt --ssl-certfile server.pem
   --ssl-keyfile server.key --enable-supernode-auth --disable-runtime-dependency-installation``;
4. ``flwr supernode register keys/supernode_credentials_<i>.pub fedshield-tls`` for each node;
5. ``flower-supernode --superlink 127.0.0.1:P --root-certificates ca.crt
   --auth-supernode-private-key keys/supernode_credentials_<i> --port Q_i
   --node-config "partition-id=<i-1> num-partitions=N [malicious=true]"``;
6. ``flwr run <app> fedshield-tls --stream --run-config "..."``.

Every process runs under ``timeout -k 5 <seconds>`` in its own process group
(``start_new_session``), listens on 127.0.0.1, logs to ``<workdir>/logs/``; and
:meth:`LocalFederation.stop` kills the groups (SIGTERM, then SIGKILL). The pids are also written
to ``<workdir>/pids`` for ``server/deploy/stop.sh``.

Environment given to every process: ``FLWR_HOME``,
``FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1``, ``FLWR_DISABLE_UPDATE_CHECK=1``,
``FLWR_TELEMETRY_ENABLED=0``, one thread per BLAS/OpenMP pool, and
``FLWR_SUPEREXEC_TASK_POLL_INTERVAL`` (default 0.2 s instead of 1 s: shorter rounds).

CLI::

    python -m server.deploy.local start WORKDIR --supernodes 3 [--malicious 2] [--seconds 900]
    python -m server.deploy.local run WORKDIR [APP_DIR] --run-config "aggregator='median' rounds=2"
    python -m server.deploy.local stop WORKDIR
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from fedshield.server.deploy.credentials import Credentials, generate, supernode_keypair

CONNECTION = "fedshield-tls"



class DeploymentError(RuntimeError):
    """A deployment step failed; the message names the step and points at its log."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def flwr_bin(name: str) -> str:
    """The Flower executable next to this interpreter (the venv's), else from PATH."""
    local = Path(sys.executable).with_name(name)
    return str(local) if local.exists() else name


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    log: Path

    def tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


@dataclass
class LocalFederation:
    """A SuperLink + SuperNodes with TLS and SuperNode authentication (see module docstring)."""

    workdir: Path
    num_supernodes: int = 3
    seconds: float = 900.0  # hard lifetime of every process (``timeout``)
    poll_interval: float = 0.2
    port: int = 0
    procs: list[Proc] = field(default_factory=list)
    creds: Credentials | None = None

    def __post_init__(self) -> None:
        self.workdir = Path(self.workdir).resolve()
        self.home = self.workdir / "flwr_home"
        self.logs = self.workdir / "logs"
        self.port = self.port or free_port()

    # --- environment -------------------------------------------------------------------------
    @property
    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update({
            "FLWR_HOME": str(self.home),
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
            "FLWR_DISABLE_UPDATE_CHECK": "1",
            "FLWR_TELEMETRY_ENABLED": "0",
            "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": str(self.poll_interval),
            "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
            "PYTHONUNBUFFERED": "1",
            # Flower spawns flower-superexec / flwr-serverapp / flwr-clientapp by name
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        })
        return env

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def prepare(self) -> Credentials:
        """Credentials and FLWR_HOME/config.toml (idempotent for a given workdir)."""
        self.logs.mkdir(parents=True, exist_ok=True)
        self.home.mkdir(parents=True, exist_ok=True)
        self.creds = generate(self.workdir, self.num_supernodes)
        (self.home / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n'
            f'[superlink.{CONNECTION}]\naddress = "{self.address}"\n'
            f'root-certificates = "{self.creds.ca_cert}"\n', encoding="utf-8")
        return self.creds

    # --- processes ---------------------------------------------------------------------------
    def _spawn(self, name: str, argv: list[str]) -> Proc:
        log = self.logs / f"{name}.log"
        fh = open(log, "ab")  # noqa: SIM115 - owned by the child for its lifetime
        popen = subprocess.Popen(
            ["timeout", "-k", "5", str(int(self.seconds)), *argv], stdout=fh,
            stderr=subprocess.STDOUT, env=self.env, cwd=self.workdir, start_new_session=True,
        )
        fh.close()
        proc = Proc(name, popen, log)
        self.procs.append(proc)
        with open(self.workdir / "pids", "a", encoding="utf-8") as pids:
            pids.write(f"{popen.pid} {name}\n")
        return proc

    def start_superlink(self) -> Proc:
        assert self.creds is not None, "call prepare() first"
        proc = self._spawn("superlink", [
            flwr_bin("flower-superlink"), "--host", "127.0.0.1", "--port", str(self.port),
            "--ssl-ca-certfile", str(self.creds.ca_cert),
            "--ssl-certfile", str(self.creds.server_cert),
            "--ssl-keyfile", str(self.creds.server_key),
            "--enable-supernode-auth", "--disable-runtime-dependency-installation",
            "--database", str(self.workdir / "superlink_state.db"),
        ])
        self._wait_listening(proc, self.port)
        return proc

    def register(self, private_key: Path) -> str:
        """``flwr supernode register <key>.pub``; returns the CLI's output."""
        result = subprocess.run(
            ["timeout", "-k", "5", "60", flwr_bin("flwr"), "supernode", "register",
             f"{private_key}.pub", CONNECTION], capture_output=True, text=True, env=self.env,
            cwd=self.workdir, check=False,
        )
        if result.returncode != 0:
            raise DeploymentError(f"flwr supernode register {private_key}.pub failed "
                                  f"(rc {result.returncode}): {result.stdout}{result.stderr}")
        return result.stdout

    def start_supernode(self, index: int, private_key: Path, *, malicious: bool | None = None,
                        name: str | None = None) -> Proc:
        """SuperNode for partition ``index`` (0-based) with ``private_key``."""
        assert self.creds is not None, "call prepare() first"
        node_config = f"partition-id={index} num-partitions={self.num_supernodes}"
        if malicious is not None:
            node_config += f" malicious={'true' if malicious else 'false'}"
        return self._spawn(name or f"supernode-{index}", [
            flwr_bin("flower-supernode"), "--superlink", self.address,
            "--root-certificates", str(self.creds.ca_cert),
            "--auth-supernode-private-key", str(private_key),
            "--port", str(free_port()), "--node-config", node_config,
        ])

    def start(self, *, malicious: tuple[int, ...] = ()) -> None:
        """Credentials, SuperLink, registration, and one SuperNode per key."""
        creds = self.prepare()
        self.start_superlink()
        for index, key in enumerate(creds.supernode_keys):
            self.register(key)
            self.start_supernode(index, key, malicious=True if index in malicious else None)

    def unregistered_supernode(self, *, wait: float = 60.0) -> tuple[int | None, str]:
        """Start a SuperNode with a fresh key that was never registered; return its exit code
        (None if it still runs after ``wait`` s) and its log tail."""
        key = supernode_keypair(self.workdir / "keys" / "intruder")
        proc = self.start_supernode(0, key, name="intruder")
        try:
            code = proc.popen.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            code = None
        return code, proc.tail()

    def run(self, app_dir: str | Path | None = None, run_config: str = "", *,
            timeout: float = 600.0) -> subprocess.CompletedProcess:
        """``flwr run <app_dir> fedshield-tls --stream [--run-config ...]`` (blocking). The
        default app is the installed package's (``server_app.write_app`` in WORKDIR/app)."""
        if app_dir is None:
            from fedshield.server.server_app import write_app

            app_dir = write_app(self.workdir / "app")
        argv = ["timeout", "-k", "5", str(int(timeout)), flwr_bin("flwr"), "run",
                str(app_dir), CONNECTION, "--stream"]
        if run_config:
            argv += ["--run-config", run_config]
        with open(self.logs / "flwr-run.log", "ab") as log:
            result = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                    cwd=str(app_dir), check=False)
        return result

    def stop(self) -> None:
        """Kill every process this federation started, with their descendants (Flower detaches
        its SuperExec/app processes into new sessions): SIGTERM, 5 s grace, then SIGKILL."""
        kill_trees([p.popen.pid for p in self.procs])
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.popen.wait(timeout=5)
        self.procs.clear()
        (self.workdir / "pids").unlink(missing_ok=True)

    def __enter__(self) -> LocalFederation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _wait_listening(self, proc: Proc, port: int, wait: float = 60.0) -> None:
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if proc.popen.poll() is not None:
                raise DeploymentError(f"{proc.name} exited (rc {proc.popen.returncode}):\n"
                                      f"{proc.tail()}")
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    return
            time.sleep(0.2)
        raise DeploymentError(f"{proc.name} not listening on 127.0.0.1:{port} after {wait} s:\n"
                              f"{proc.tail()}")


def _children() -> dict[int, list[int]]:
    """{ppid: [pid, ...]} of every process, from /proc."""
    tree: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            tree.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    return tree


def descendants(pids: list[int]) -> list[int]:
    """``pids`` and all their descendants (a snapshot)."""
    tree, out, todo = _children(), [], list(pids)
    while todo:
        pid = todo.pop()
        if pid not in out:
            out.append(pid)
            todo.extend(tree.get(pid, []))
    return out


def kill_trees(pids: list[int], grace: float = 5.0) -> None:
    """SIGTERM ``pids``, their process groups and descendants; SIGKILL what is left after
    ``grace`` seconds. Only processes descending from ``pids`` are touched."""
    victims = descendants(pids)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        victims = sorted(set(victims) | set(descendants(victims)))
        for pid in victims:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        for pid in pids:  # each started process leads its own group
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, sig)
        deadline = time.monotonic() + (grace if sig == signal.SIGTERM else 0)
        while time.monotonic() < deadline and any(is_alive(p) for p in victims):
            time.sleep(0.1)


def is_alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def stop_from_pids(workdir: Path) -> int:
    """Kill the process trees listed in ``workdir/pids`` (for ``server/deploy/stop.sh``)."""
    path = Path(workdir) / "pids"
    if not path.exists():
        return 0
    pids = [int(line.split()[0]) for line in path.read_text().splitlines() if line.strip()]
    kill_trees(pids)
    path.unlink()
    return len(pids)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m server.deploy.local",
                                     description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    start = sub.add_parser("start")
    start.add_argument("workdir")
    start.add_argument("--supernodes", type=int, default=3)
    start.add_argument("--malicious", type=int, action="append", default=[],
                       help="partition id of a SuperNode started with node-config malicious=true")
    start.add_argument("--seconds", type=float, default=900.0)
    start.add_argument("--port", type=int, default=0)
    run = sub.add_parser("run")
    run.add_argument("workdir")
    run.add_argument("app_dir", nargs="?", default=None,
                     help="a Flower app directory (default: the installed fedshield's app)")
    run.add_argument("--run-config", default="")
    stop = sub.add_parser("stop")
    stop.add_argument("workdir")
    args = parser.parse_args(argv)
    workdir = Path(args.workdir).resolve()
    if args.command == "start":
        fed = LocalFederation(workdir, args.supernodes, args.seconds, port=args.port)
        fed.start(malicious=tuple(args.malicious))
        (workdir / "address").write_text(fed.address)
        print(f"SuperLink {fed.address} (TLS, SuperNode auth), {args.supernodes} SuperNodes; "
              f"FLWR_HOME={fed.home}; logs in {fed.logs}")
        return 0
    if args.command == "run":
        port = int((workdir / "address").read_text().rsplit(":", 1)[1])
        fed = LocalFederation(workdir, port=port)
        result = fed.run(args.app_dir, args.run_config)
        print((fed.logs / "flwr-run.log").read_text(errors="replace")[-4000:])
        return result.returncode
    print(f"stopped {stop_from_pids(workdir)} process groups")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
