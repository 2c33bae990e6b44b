"""The installed library: one ``fedshield`` namespace, the public API at the top, one-way
dependencies between its packages, no import cycle, lint clean."""

from __future__ import annotations

import ast
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("aggregators", "clients", "server", "simulations", "tasks")
# what each package may import of the project (DESIGN: simulations → server, clients → tasks;
# server → aggregators; aggregators imports nothing of the project)
ALLOWED = {
    "aggregators": set(),
    "tasks": set(),
    "clients": {"tasks"},
    "server": {"aggregators", "tasks", "clients"},  # clients: the simulation-only adversary, lazily
    "simulations": {"aggregators", "tasks", "clients", "server"},
}


def project_imports() -> dict[str, set[str]]:
    """module → the fedshield modules it imports (every import statement, lazy ones included)."""
    graph: dict[str, set[str]] = {}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            rel = path.relative_to(REPO).with_suffix("")
            parts = list(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
            module = ".".join(["fedshield", *parts])
            found: set[str] = set()
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and node.module:
                    names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
                elif isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                else:
                    continue
                found |= {n for n in names if n.split(".")[0] == "fedshield"}
            graph[module] = found
    return graph


def resolve(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """Edges between modules only (``from fedshield.x import name`` → fedshield.x)."""
    return {m: {n if n in graph else n.rsplit(".", 1)[0] for n in deps} & set(graph) - {m}
            for m, deps in graph.items()}


def test_no_generic_top_level_import_anywhere():
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    assert node.module.split(".")[0] not in PACKAGES, (path, node.module)
                if isinstance(node, ast.Import):
                    assert all(a.name.split(".")[0] not in PACKAGES for a in node.names), path


def test_dependencies_point_one_way():
    for module, deps in resolve(project_imports()).items():
        package = module.split(".")[1]
        for dep in deps:
            target = dep.split(".")[1]
            assert target == package or target in ALLOWED[package], f"{module} imports {dep}"


def test_no_import_cycle_among_modules():
    """Every import counts, the lazy ones inside functions too (a package's __init__ importing
    its own submodules aside)."""
    edges = resolve(project_imports())
    for package_init in [m for m in edges if m.count(".") == 1]:
        edges[package_init] -= {m for m in edges if m.startswith(package_init + ".")}
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in sorted(edges[node]):
            if state.get(dep) == 1:
                raise AssertionError(" -> ".join([*path[path.index(dep):], dep]))
            if dep not in state:
                visit(dep, [*path, dep])
        state[node] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])


def test_ruff_is_clean():
    ruff = pytest.importorskip("ruff", reason="ruff comes with the [dev] extra")
    del ruff
    done = subprocess.run([sys.executable, "-m", "ruff", "check", str(REPO)],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.slow
def test_the_wheel_installs_one_namespace_that_works_beside_a_users_own_packages(tmp_path):
    """``pip wheel .``: the only top-level name is ``fedshield`` (with its scenarios, vendored
    MNIST and deployment scripts); installed, it imports from a directory that holds a user's own
    ``server.py`` and ``tasks/`` package."""
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "-q",
                    "-w", str(wheels)], check=True, capture_output=True)
    (wheel,) = wheels.glob("fedshield-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"fedshield", wheel.name.split("-py3")[0]
                                                + ".dist-info"}
    for data in ("fedshield/simulations/scenarios/default.toml",
                 "fedshield/tasks/data/mnist/train-images-idx3-ubyte.gz",
                 "fedshield/server/deploy/start.sh"):
        assert data in names
    assert not [n for n in names if n.startswith("fedshield/tests/")]
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target",
                    str(target), str(wheel)], check=True, capture_output=True)
    user = tmp_path / "user_app"
    (user / "tasks").mkdir(parents=True)
    (user / "tasks" / "__init__.py").write_text("raise ImportError('the user tasks package')\n")
    (user / "server.py").write_text("raise ImportError('the user server module')\n")
    code = ("import fedshield, fedshield.server.strategy; "
            "from fedshield import RobustStrategy, create, available; "
            f"assert fedshield.__file__.startswith({str(target)!r}), fedshield.__file__; "
            "RobustStrategy(create('median')); print(len(available()))")
    env = {"PYTHONPATH": f"{user}:{target}", "PATH": "/usr/bin"}
    done = subprocess.run([sys.executable, "-c", code], cwd=user, capture_output=True,
                          text=True, env=env, check=False)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout.strip()) >= 16
