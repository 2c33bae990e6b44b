"""The rule contract, checked on every registered rule with each of its declared examples.

A rule that ships without examples fails here; a rule added later is covered without a line of
test code. Checks: declared parameters (round trip, unknown and bad values refused), input errors,
``min_clients``, finite output on degenerate and extreme input, permutation invariance, state
round trip through ``torch.save``/``torch.load(weights_only=True)``, and bounded influence of f
rows at any finite scale for every rule that claims robustness.
"""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from conftest import example_id, rule_context, rule_examples
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from fedshield import aggregators
from fedshield.aggregators import AggregatorError, create

CASES = rule_examples()
IDS = [example_id(c) for c in CASES]
F32_MAX = float(torch.finfo(torch.float32).max)


def size(rule, at_least: int = 9) -> int:
    return max(rule.min_clients(), at_least)


def honest_rows(n: int, d: int = 20, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(d, generator=gen) + 0.5 * torch.randn(n, d, generator=gen)


def test_every_registered_rule_declares_examples():
    missing = [name for name in aggregators.available()
               if not aggregators.rule_class(name).examples]
    assert not missing, f"rules without examples for the contract suite: {missing}"



def aggregate_or_refused(rule, x, ctx):
    """The rule's aggregation, or None when a detector composition refuses the round: a
    detector may flag rows, and it then refuses (fail closed) rather than hand its inner rule
    fewer rows than that rule needs; every other rule must aggregate."""
    try:
        return rule(x, **ctx)
    except AggregatorError as exc:
        assert rule.name == "detect" and "round refused" in str(exc), exc
        return None

@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_parameters_are_declared_stored_and_round_trip(case):
    name, params = case
    rule = create(name, **params)
    cls = aggregators.rule_class(name)
    assert set(rule.params()) == set(cls.parameters)
    again = create(name, **rule.params())
    assert again.params() == rule.params()
    assert repr(again) == repr(rule)
    with pytest.raises(AggregatorError, match=f"{name}: unknown parameter"):
        create(name, **params, no_such_parameter=1)
    with pytest.raises(TypeError):
        cls(1)  # keyword-only


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_bad_input_is_refused_with_a_clear_error(case):
    name, params = case
    rule = create(name, **params)
    n = size(rule)
    x = honest_rows(n)
    ctx = rule_context(rule, x)
    bad = x.clone()
    bad[1, 3] = math.nan
    with pytest.raises(AggregatorError, match=r"NaN/Inf in rows \[1\]"):
        rule(bad, **ctx)
    with pytest.raises(AggregatorError, match="2-D"):
        rule(x[0], **ctx)
    with pytest.raises(AggregatorError, match="float32 or float64"):
        rule(x.to(torch.int64), **ctx)
    with pytest.raises(AggregatorError, match="unknown context keys"):
        rule(x, **ctx, colour="red")
    with pytest.raises(AggregatorError, match="'client_ids' has"):
        rule(x, **{**ctx, "client_ids": list(range(n + 1))})
    with pytest.raises(AggregatorError, match="'weights' must be >= 0"):
        rule(x, **{**ctx, "weights": -torch.ones(n)})


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_min_clients_is_exact(case):
    name, params = case
    rule = create(name, **params)
    low = rule.min_clients()
    x = honest_rows(low)
    agg = aggregate_or_refused(create(name, **params), x, rule_context(rule, x))
    assert agg is None or agg.update.shape == (x.shape[1],)
    if low > 1:
        y = x[: low - 1]
        with pytest.raises(AggregatorError, match=f"needs at least {low} clients"):
            create(name, **params)(y, **rule_context(rule, y))


@pytest.mark.parametrize("case", CASES, ids=IDS)
@pytest.mark.parametrize("pattern", ["zeros", "identical", "tiny", "huge", "float32-max"])
def test_finite_output_on_degenerate_and_extreme_input(case, pattern):
    name, params = case
    rule = create(name, **params)
    n, d = size(rule), 6
    x = honest_rows(n, d)
    if pattern == "zeros":
        x = torch.zeros(n, d)
    elif pattern == "identical":
        x = x[:1].repeat(n, 1)
    elif pattern == "tiny":
        x = x * 1e-38
    elif pattern == "huge":
        x = x / x.abs().max() * 1e30
    else:
        x = torch.full((n, d), F32_MAX)
    agg = rule(x, **rule_context(rule, x))
    assert agg.update.shape == (d,) and bool(torch.isfinite(agg.update).all())
    if agg.weights is not None:
        assert agg.weights.shape == (n,) and bool(torch.isfinite(agg.weights).all())
    if agg.accepted is not None:
        assert agg.accepted.shape == (n,) and agg.accepted.dtype == torch.bool
    if pattern == "zeros" and name != "flame":  # FLAME's noise scale is the median norm: 0 here
        assert not bool(agg.update.any())


@pytest.mark.parametrize("case", [c for c in CASES
                                  if aggregators.rule_class(c[0]).permutation_invariant],
                         ids=[example_id(c) for c in CASES
                              if aggregators.rule_class(c[0]).permutation_invariant])
def test_permutation_invariance(case):
    name, params = case
    rule = create(name, **params)
    n = size(rule, 11)
    x = honest_rows(n, seed=3)
    x[:2] *= 30.0  # two outliers, so that selections are not trivial
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(1))
    ctx = rule_context(rule, x)
    a = create(name, **params)(x, **ctx)
    b = create(name, **params)(x[perm], **{**ctx, "client_ids": [ctx["client_ids"][i]
                                                                  for i in perm.tolist()]})
    torch.testing.assert_close(a.update, b.update, rtol=1e-5, atol=1e-4)
    if a.accepted is not None:
        assert torch.equal(a.accepted[perm], b.accepted)


COORDINATEWISE = [c for c in CASES if aggregators.rule_class(c[0]).coordinatewise]


def test_the_coordinate_wise_rules_are_declared():
    assert {name for name, _ in COORDINATEWISE} == {"fedavg", "median", "trimmedmean"}


@pytest.mark.parametrize("case", COORDINATEWISE, ids=[example_id(c) for c in COORDINATEWISE])
def test_a_coordinate_wise_rule_on_column_blocks_is_the_rule_on_the_matrix(case):
    """What a caller that streams column blocks relies on (ARC): the blocks' updates concatenate
    to the whole update; accepted / weights / diagnostics do not depend on the columns."""
    name, params = case
    rule = create(name, **params)
    assert not rule.stateful
    n = size(rule, 11)
    x = honest_rows(n, d=1000, seed=5)
    x[:2] *= 1e4
    ctx = rule_context(rule, x)
    whole = rule(x, **ctx)
    parts = [rule(x[:, s:e], **ctx) for s, e in ((0, 1), (1, 333), (333, 1000))]
    torch.testing.assert_close(torch.cat([p.update for p in parts]), whole.update,
                               rtol=1e-6, atol=0)
    for part in parts:
        for key in ("accepted", "weights"):
            a, b = getattr(part, key), getattr(whole, key)
            assert (a is None and b is None) or torch.equal(a, b)
        assert part.diagnostics == whole.diagnostics


STREAMED = [(pre, extra, inner, inner_params)
            for pre, extra in (("arc", {"f": 2}), ("bucketing", {"s": 2}), ("nnm", {"f": 2}),
                               ("detect", {"detector": "dnc", "detector_params": {"f": 2}}))
            for inner, inner_params in (("median", None), ("median", {"weighted": True}),
                                        ("trimmedmean", {"f": 1}), ("fedavg", None))
            if not (pre == "nnm" and inner_params == {"weighted": True})]  # NNM drops weights


@pytest.mark.parametrize(("pre", "extra", "inner", "inner_params"), STREAMED,
                         ids=[f"{p}-{i}-{ip}" for p, _, i, ip in STREAMED])
def test_a_pre_aggregator_streams_a_coordinate_wise_inner_rule_to_the_same_result(
        pre, extra, inner, inner_params):
    """ARC, bucketing, NNM and detect (with rows flagged) hand a coordinate-wise inner rule one
    transformed column block at a time (kernels.inner_on_columns); the result is the whole
    transformed matrix's, bit for bit, on a matrix of several blocks ending in a partial one."""
    from fedshield.aggregators import kernels

    n = 16
    d = kernels._SORT_BLOCKS_PER_STREAM_BLOCK * kernels.sort_block_columns(n // 2) * 2 + 777
    x = honest_rows(n, d=d, seed=8)
    x[:2] *= torch.tensor([80.0, 1e5])[:, None]
    ctx = {"weights": torch.arange(1.0, n + 1, dtype=torch.float64),
           "client_ids": list(range(n))}
    params = {**extra, "inner": inner, "inner_params": inner_params}

    def counted(rule):
        calls = []
        real = rule._inner.aggregate
        rule._inner.aggregate = lambda m, c: calls.append(m.shape) or real(m, c)
        return rule, calls

    streamed_rule, streamed_calls = counted(create(pre, **params))
    streamed = streamed_rule(x, **ctx)
    whole_rule, whole_calls = counted(create(pre, **params))
    whole_rule._inner.coordinatewise = False  # the same call without streaming
    whole = whole_rule(x, **ctx)
    rows = whole_calls[0][0]  # the inner rule's input: clipped, mixed, kept rows, bucket means
    assert rows < n if pre == "detect" else rows == (n // 2 if pre == "bucketing" else n)
    width = kernels._SORT_BLOCKS_PER_STREAM_BLOCK * kernels.sort_block_columns(rows)
    assert [shape[1] for shape in streamed_calls] == [width] * (d // width) + [d % width]
    assert len(whole_calls) == 1 and whole_calls[0][1] == d
    assert torch.equal(streamed.update, whole.update)
    for key in ("accepted", "weights"):
        a, b = getattr(streamed, key), getattr(whole, key)
        assert (a is None and b is None) or torch.equal(a, b)
    assert streamed.diagnostics == whole.diagnostics


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_state_round_trips_as_plain_data(case):
    name, params = case
    first, second = create(name, **params), create(name, **params)
    n = size(first)
    rounds = [honest_rows(n, seed=s) for s in range(3)]
    for x in rounds[:2]:
        first(x, **rule_context(first, x))
    buf = io.BytesIO()
    torch.save(first.state_dict(), buf)
    buf.seek(0)
    second.load_state_dict(torch.load(buf, weights_only=True))  # data, never code
    x = rounds[2]
    a, b = first(x, **rule_context(first, x)), second(x, **rule_context(second, x))
    torch.testing.assert_close(a.update, b.update, rtol=0, atol=0)
    with pytest.raises(AggregatorError, match="unknown key"):
        second.load_state_dict({"no_such_state": 1})


# --- bounded influence --------------------------------------------------------------------------
ROBUST = [c for c in CASES if aggregators.rule_class(c[0]).robust]


def byzantine(rule) -> int:
    """How many arbitrary rows the configured rule tolerates in the test: its f (at least 1)."""
    return max(1, int(rule.params().get("f") or 0))


@pytest.mark.parametrize("case", ROBUST, ids=[example_id(c) for c in ROBUST])
@pytest.mark.parametrize("scale", [1e3, 1e10, 1e20, 1e30, F32_MAX])
@pytest.mark.parametrize("spread", [False, True])
def test_bounded_influence_of_f_rows_at_any_scale(case, scale, spread):
    """f rows at any finite scale, in one direction or spread, leave the output finite and
    within a fixed radius of the honest rows (the radius does not grow with the scale)."""
    name, params = case
    rule = create(name, **params)
    f = byzantine(rule)
    n = max(rule.min_clients(), 4 * f + 3, 9)
    honest = honest_rows(n - f, seed=7)
    centre = honest.mean(0)
    radius = float((honest - centre).norm(dim=1).max())
    gen = torch.Generator().manual_seed(11)
    direction = (torch.randn(f, honest.shape[1], generator=gen) if spread
                 else torch.randn(1, honest.shape[1], generator=gen).repeat(f, 1))
    evil = (direction / direction.abs().amax(dim=1, keepdim=True) * scale).float()
    x = torch.cat([evil, honest])
    agg = rule(x, **rule_context(rule, x, honest))
    assert bool(torch.isfinite(agg.update).all())
    # centred clipping starts from 0 and moves at most τ per iteration toward the data
    slack = params.get("tau", 10.0) * params.get("iterations", 3) if name == "centeredclip" else 0
    assert float((agg.update.double() - centre.double()).norm()) <= 3 * radius + slack, \
        (name, scale, spread)


def test_non_robust_rules_are_declared_so():
    """The property above would fail for them: one row at scale moves the result with it."""
    for name in ("fedavg", "foolsgold"):
        rule = create(name)
        honest = honest_rows(8)
        lone = torch.randn(1, honest.shape[1], generator=torch.Generator().manual_seed(5))
        x = torch.cat([lone * 1e6, honest])
        agg = rule(x, **rule_context(rule, x))
        assert float(agg.update.norm()) > 1e3
        assert not aggregators.rule_class(name).robust


# --- arbitrary finite input ---------------------------------------------------------------------
values = st.one_of(
    st.floats(-1e6, 1e6, width=32),
    st.sampled_from([0.0, -0.0, 1e-38, -1e-38, 3e38, -3e38, 1e-45, 1.0]),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=st.sampled_from(CASES), data=st.data())
def test_never_nan_or_inf_on_arbitrary_finite_input(case, data):
    name, params = case
    rule = create(name, **params)
    low = rule.min_clients()
    n = data.draw(st.integers(low, low + 4), label="n")
    d = data.draw(st.integers(1, 6), label="d")
    x = torch.from_numpy(data.draw(arrays(np.float32, (n, d), elements=values)))
    ctx = rule_context(rule, x)
    if rule.needs_reference:
        ctx["reference"] = torch.from_numpy(data.draw(arrays(np.float32, (d,), elements=values)))
    agg = aggregate_or_refused(rule, x, ctx)
    if agg is None:
        return
    assert bool(torch.isfinite(agg.update).all())
    if agg.weights is not None:
        assert bool(torch.isfinite(agg.weights).all())
