"""Shared test setup: deterministic single-threaded torch, no network for Flower."""

import os
import tempfile

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, "1")
os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
# the server's ledger key of the test session: outside every output directory, never the user's
os.environ.setdefault("FEDSHIELD_LEDGER_KEY",
                      os.path.join(tempfile.mkdtemp(prefix="fedshield-key-"), "ledger-key.pem"))

import torch  # noqa: E402
from hypothesis import settings  # noqa: E402

torch.set_num_threads(1)

# CI replays the same examples every run (a red CI names a reproducible input); local runs explore.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


# --- row parity across engines -----------------------------------------------------------------
TIMING_KEYS = {"aggregation_seconds", "round_seconds", "train_seconds"}


def assert_same_rows(ours: list[dict], theirs: list[dict], *, atol: float = 1e-4,
                     ignore: set[str] = frozenset()) -> None:
    """Two engines' per-round rows agree key by key: the same keys (wall-clock keys aside, and
    the model hash, which float rounding of θ_t + Δ − θ_t changes), equal values, floats to
    ``atol``. Fails naming the round and the key."""
    import math

    skip = TIMING_KEYS | {"model_hash"} | set(ignore)
    assert len(ours) == len(theirs), (len(ours), len(theirs))
    for a, b in zip(ours, theirs, strict=True):
        keys_a, keys_b = set(a) - skip, set(b) - skip
        assert keys_a == keys_b, (a.get("round"), keys_a ^ keys_b)
        for key in sorted(keys_a):
            _assert_value(a[key], b[key], atol, f"round {a.get('round')} key {key!r}", math)


def _assert_value(x, y, atol, where, math):
    if isinstance(x, float) or isinstance(y, float):
        assert x is not None and y is not None, (where, x, y)
        assert math.isclose(float(x), float(y), rel_tol=0, abs_tol=atol), (where, x, y)
    elif isinstance(x, list) and isinstance(y, list):
        assert len(x) == len(y), (where, x, y)
        for u, v in zip(x, y, strict=True):
            _assert_value(u, v, atol, where, math)
    elif isinstance(x, dict) and isinstance(y, dict):
        assert x.keys() == y.keys(), (where, x, y)
        for k in x:
            _assert_value(x[k], y[k], atol, where, math)
    else:
        assert x == y, (where, x, y)


# --- every registered rule, with its declared example parameters ---------------------------------
def rule_examples() -> list[tuple[str, dict]]:
    """(name, params) for every example of every registered rule (the contract suite's cases)."""
    from fedshield import aggregators

    return [(name, dict(params)) for name in aggregators.available()
            for params in aggregators.rule_class(name).examples]


def example_id(case: tuple[str, dict]) -> str:
    name, params = case
    return name + ("(" + ",".join(f"{k}={v}" for k, v in params.items()) + ")" if params else "")


def rule_context(rule, x, honest=None) -> dict:
    """The context a round passes: sample counts, client ids, the server's reference (the honest
    mean) for rules that need one."""
    n = x.shape[0]
    ctx = {"weights": torch.full((n,), 10.0), "client_ids": list(range(n))}
    if rule.needs_reference:
        ctx["reference"] = (honest if honest is not None else x).double().mean(0).float()
    return ctx
