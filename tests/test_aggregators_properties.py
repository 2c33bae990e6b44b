"""Properties: permutation invariance, robustness to f huge outliers, never NaN/Inf."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from fedshield.aggregators import create

ROBUST = [("krum", {"f": 4}), ("multikrum", {"f": 4}), ("median", {}),
          ("trimmedmean", {"f": 4}), ("bulyan", {"f": 4}), ("geomed", {}),
          ("centeredclip", {"tau": 1.0, "iterations": 3}), ("normclip", {"bound": "median"}),
          ("fltrust", {})]
SYMMETRIC = [("fedavg", {}), *ROBUST]


def honest_and_outliers(seed: int, n: int = 20, f: int = 4, d: int = 50,
                        norm: float = 1e6) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    centre = torch.randn(d, generator=gen)
    honest = centre + 0.1 * torch.randn(n - f, d, generator=gen)
    direction = torch.randn(f, d, generator=gen)
    outliers = norm * direction / direction.norm(dim=1, keepdim=True)
    return torch.cat([outliers, honest]), honest


def _context(name: str, honest: torch.Tensor) -> dict:
    return {"reference": honest.mean(0)} if name == "fltrust" else {}


@pytest.mark.parametrize(("name", "params"), SYMMETRIC)
def test_permutation_invariance(name: str, params: dict) -> None:
    x, honest = honest_and_outliers(0)
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(1))
    a = create(name, **params)(x, **_context(name, honest))
    b = create(name, **params)(x[perm], **_context(name, honest))
    assert torch.allclose(a.update, b.update, rtol=1e-5, atol=1e-4)
    if a.accepted is not None:
        assert torch.equal(a.accepted[perm], b.accepted)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize(("name", "params"), ROBUST)
def test_robust_rules_contain_outliers_of_norm_1e6(name: str, params: dict, seed: int) -> None:
    x, honest = honest_and_outliers(seed)
    mean = honest.mean(0)
    spread = float((honest - mean).norm(dim=1).max())
    rule = create(name, **params)
    if name == "centeredclip":  # its state starts at 0 and moves <= τ per iteration: warm it up
        for _ in range(5):
            rule(honest)
    agg = rule(x, **_context(name, honest))
    bound = 2 * spread
    if name == "normclip":  # bounded influence, not a filter: each outlier moves it <= B / n
        bound += 4 * agg.diagnostics["bound"] / x.shape[0]
    assert float((agg.update - mean).norm()) <= bound
    if agg.accepted is not None and name != "fltrust":
        assert not agg.accepted[:4].any(), "an outlier was selected"


def test_fedavg_is_not_robust() -> None:
    x, honest = honest_and_outliers(0)
    agg = create("fedavg")(x)
    spread = float((honest - honest.mean(0)).norm(dim=1).max())
    assert float((agg.update - honest.mean(0)).norm()) > 1e4 * spread


ALL = [("fedavg", {}), ("fedavg", {"weighted": True}), ("krum", {"f": 1}),
       ("multikrum", {"f": 1}), ("median", {}), ("trimmedmean", {"f": 1}),
       ("trimmedmean", {"beta": 0.25}), ("fltrust", {}), ("bulyan", {"f": 1}),
       ("bulyan", {"f": 0}), ("geomed", {}), ("geomed", {"weighted": True}),
       ("centeredclip", {"tau": 1e-3}), ("normclip", {}), ("normclip", {"bound": 1e-30}),
       ("krum", {"f": 0}), ("median", {})]

values = st.one_of(
    st.floats(-1e6, 1e6, width=32),
    st.sampled_from([0.0, -0.0, 1e-38, -1e-38, 3e38, -3e38, 1e-45, 1.0]),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rule=st.sampled_from(ALL),
    data=st.data(),
)
def test_never_nan_or_inf(rule: tuple[str, dict], data: st.DataObject) -> None:
    name, params = rule
    agg_rule = create(name, **params)
    low = agg_rule.min_clients()
    n = data.draw(st.integers(low, low + 5), label="n")
    d = data.draw(st.integers(1, 6), label="d")
    pattern = data.draw(st.sampled_from(["random", "identical", "zeros", "ties"]))
    if pattern == "random":
        x = data.draw(arrays(np.float32, (n, d), elements=values))
    elif pattern == "identical":
        row = data.draw(arrays(np.float32, (1, d), elements=values))
        x = np.repeat(row, n, axis=0)
    elif pattern == "zeros":
        x = np.zeros((n, d), np.float32)
    else:
        x = data.draw(arrays(np.float32, (n, d), elements=st.sampled_from([-1.0, 0.0, 1.0])))
    ctx: dict = {}
    if name == "fltrust":
        ctx["reference"] = torch.from_numpy(
            data.draw(arrays(np.float32, (d,), elements=values)))
    if params.get("weighted"):
        ctx["weights"] = data.draw(st.lists(st.integers(0, 10**6), min_size=n, max_size=n))
    agg = agg_rule(torch.from_numpy(x), **ctx)
    assert agg.update.shape == (d,)
    assert bool(torch.isfinite(agg.update).all()), (pattern, x)
    if agg.weights is not None:
        assert bool(torch.isfinite(agg.weights).all())
    if pattern == "identical" and name not in ("fltrust", "centeredclip", "normclip"):
        assert torch.allclose(agg.update, torch.from_numpy(x[0]), rtol=1e-5)
    if pattern == "zeros":
        assert not bool(agg.update.any())


@pytest.mark.parametrize(("name", "params"), [(n, p) for n, p in ALL if n != "fltrust"])
def test_single_client_where_allowed(name: str, params: dict) -> None:
    rule = create(name, **params)
    if rule.min_clients() > 1:
        pytest.skip("the rule needs more than one client")
    x = torch.tensor([[0.5, -2.0]])
    ctx = {"weights": [3]} if params.get("weighted") else {}
    agg = rule(x, **ctx)
    assert bool(torch.isfinite(agg.update).all())
    if name not in ("centeredclip", "normclip"):
        assert torch.allclose(agg.update, x[0])
