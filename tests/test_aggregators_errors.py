"""Impossible configurations and bad input raise AggregatorError naming what was wrong."""

from __future__ import annotations

import math

import pytest
import torch

from fedshield.aggregators import AggregatorError, create

ALL = [("fedavg", {}), ("krum", {"f": 1}), ("multikrum", {"f": 1}), ("median", {}),
       ("trimmedmean", {"f": 1}), ("fltrust", {}), ("bulyan", {"f": 1}), ("geomed", {}),
       ("centeredclip", {}), ("normclip", {})]


def _ctx(name: str, d: int) -> dict:
    return {"reference": torch.ones(d)} if name == "fltrust" else {}


@pytest.mark.parametrize(("name", "n", "f"), [("krum", 4, 1), ("krum", 6, 2), ("multikrum", 4, 1),
                                               ("bulyan", 6, 1), ("bulyan", 10, 2),
                                               ("trimmedmean", 2, 1)])
def test_too_few_clients_for_f(name: str, n: int, f: int) -> None:
    rule = create(name, f=f)
    with pytest.raises(AggregatorError, match=rf"needs at least {rule.min_clients()} clients"):
        rule(torch.randn(n, 3))
    rule(torch.randn(rule.min_clients(), 3))  # the bound itself is accepted


def test_min_clients_are_the_papers_bounds() -> None:
    assert create("krum", f=2).min_clients() == 7  # n > 2f + 2
    assert create("multikrum", f=2).min_clients() == 7
    assert create("multikrum", f=0, m=5).min_clients() == 5
    assert create("bulyan", f=2).min_clients() == 11  # n >= 4f + 3
    assert create("trimmedmean", f=2).min_clients() == 5  # n > 2f
    assert create("median").min_clients() == 1


@pytest.mark.parametrize("name", ["krum", "multikrum", "bulyan", "trimmedmean"])
@pytest.mark.parametrize("f", [-1, 1.5, "2", True, None])
def test_bad_f(name: str, f: object) -> None:
    # trimmedmean's f=None means "use beta": without beta it is the either/or error
    match = "give exactly one of f" if name == "trimmedmean" and f is None else "f must be"
    with pytest.raises(AggregatorError, match=match):
        create(name, f=f)


@pytest.mark.parametrize(("name", "params"), ALL)
def test_bad_updates(name: str, params: dict) -> None:
    rule = create(name, **params)
    n = max(rule.min_clients(), 2)
    with pytest.raises(AggregatorError, match="no updates"):
        rule(torch.empty(0, 3), **_ctx(name, 3))
    with pytest.raises(AggregatorError, match="d = 0"):
        rule(torch.empty(n, 0), **_ctx(name, 0))
    with pytest.raises(AggregatorError, match="2-D"):
        rule(torch.ones(3), **_ctx(name, 3))
    with pytest.raises(AggregatorError, match="float32 or float64"):
        rule(torch.ones(n, 3, dtype=torch.int64), **_ctx(name, 3))
    with pytest.raises(AggregatorError, match=r"torch\.Tensor"):
        rule([[1.0, 2.0]] * n, **_ctx(name, 2))
    for bad in (math.nan, math.inf, -math.inf):
        x = torch.randn(n, 3)
        x[n - 1, 1] = bad
        with pytest.raises(AggregatorError, match=rf"NaN/Inf in rows \[{n - 1}\]"):
            rule(x, **_ctx(name, 3))


@pytest.mark.parametrize(("name", "params"), ALL)
def test_bad_context(name: str, params: dict) -> None:
    rule = create(name, **params)
    n = rule.min_clients()
    x = torch.randn(n, 4)
    ctx = _ctx(name, 4)
    with pytest.raises(AggregatorError, match="unknown context keys"):
        rule(x, referense=torch.ones(4), **ctx)
    with pytest.raises(AggregatorError, match="'reference' must have shape"):
        rule(x, reference=torch.ones(5))
    with pytest.raises(AggregatorError, match="'weights' must have shape"):
        rule(x, weights=torch.ones(n + 1), **ctx)
    with pytest.raises(AggregatorError, match="'weights' must be >= 0"):
        rule(x, weights=-torch.ones(n), **ctx)
    with pytest.raises(AggregatorError, match="'gram' must have shape"):
        rule(x, gram=torch.zeros(n + 1, n + 1), **ctx)
    with pytest.raises(AggregatorError, match="'client_ids' has"):
        rule(x, client_ids=list(range(n + 1)), **ctx)
    with pytest.raises(AggregatorError, match="'reference' contains NaN"):
        rule(x, reference=torch.full((4,), math.nan))


def test_gram_must_be_distances() -> None:
    x = torch.randn(5, 3)
    with pytest.raises(AggregatorError, match="symmetric"):
        create("krum", f=1)(x, gram=torch.triu(torch.ones(5, 5), 1))
    with pytest.raises(AggregatorError, match=">= 0"):
        create("krum", f=1)(x, gram=-torch.ones(5, 5))


@pytest.mark.parametrize(("name", "params", "match"), [
    ("nosuchrule", {}, "unknown aggregator"),
    ("krum", {"f": 1, "alpha": 2}, r"krum: unknown parameter\(s\) alpha; valid: f"),
    ("krum", {}, "krum: parameter 'f' is required"),
    ("multikrum", {"f": 1, "m": 0}, "m must be > 0"),
    ("bulyan", {"f": 1, "selection": "greedy"}, "selection='greedy' is not allowed; allowed"),
    ("trimmedmean", {"beta": -0.1}, "beta must be in"),
    ("geomed", {"nu": 0}, "nu must be > 0"),
    ("geomed", {"max_iter": 0}, "max_iter must be > 0"),
    ("geomed", {"tol": -1}, "tol must be >= 0"),
    ("centeredclip", {"tau": -1}, "tau must be > 0"),
    ("centeredclip", {"iterations": 1.5}, "iterations must be an int"),
    ("normclip", {"bound": "mean"}, "'median'"),
    ("normclip", {"bound": 0}, "bound must be > 0"),
    ("fedavg", {"weighted": "yes"}, "weighted must be True or False"),
    ("fedavg", {"max_weight_ratio": 0.5}, "max_weight_ratio must be >= 1"),
])
def test_bad_parameters(name: str, params: dict, match: str) -> None:
    with pytest.raises(AggregatorError, match=match):
        create(name, **params)


def test_multikrum_m_larger_than_n() -> None:
    with pytest.raises(AggregatorError, match="needs at least 8"):
        create("multikrum", f=1, m=8)(torch.randn(6, 2))


def test_trimmedmean_beta_that_trims_nothing_raises() -> None:
    x = torch.tensor([[1e6], [0.0], [0.1], [-0.1]])
    with pytest.raises(AggregatorError, match=r"needs at least 5 clients \(floor\(beta \* n\)"):
        create("trimmedmean", beta=0.2)(x)
    assert create("trimmedmean", beta=0.2).min_clients() == 5
    assert create("trimmedmean", beta=0.1).min_clients() == 10
    assert create("trimmedmean", beta=0.0)(x).update.item() == pytest.approx(1e6 / 4)
