"""Bucketing and NNM: bucket/neighbour means, composition with krum/median, weights mapped back."""

import pytest
import torch

from fedshield import aggregators
from fedshield.aggregators import AggregatorError
from fedshield.aggregators.kernels import pairwise_sq_distances
from fedshield.aggregators.nnm import mixing_matrix


def _honest_and_outliers(n=14, f=2, d=30, seed=0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    honest = 1.0 + 0.1 * torch.randn(n - f, d, generator=gen)
    return torch.cat([honest, torch.full((f, d), -40.0)])


# ---------------------------------------------------------------- bucketing


def test_bucket_means_follow_the_seeded_permutation():
    x = torch.arange(10, dtype=torch.float32)[:, None] * torch.ones(1, 3)
    rule = aggregators.create("bucketing", s=3, inner="median", seed=4)
    agg = rule(x)
    buckets = torch.tensor(agg.diagnostics["buckets"])
    assert sorted(torch.bincount(buckets).tolist()) == [1, 3, 3, 3]  # ⌈10/3⌉ buckets
    perm = torch.randperm(10, generator=torch.Generator().manual_seed(4))
    assert buckets[perm].tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3]
    means = torch.stack([x[buckets == k].mean(dim=0) for k in range(4)])
    # the median of 4 bucket means averages the two middle ones
    torch.testing.assert_close(agg.update, means.double().quantile(0.5, dim=0).float())


def test_composes_with_krum_by_name_or_instance():
    x = _honest_and_outliers()
    by_name = aggregators.create("bucketing", s=2, inner="krum", inner_params={"f": 2}, seed=1)
    by_rule = aggregators.create("bucketing", s=2, inner=aggregators.create("krum", f=2), seed=1)
    a, b = by_name(x), by_rule(x)
    assert torch.equal(a.update, b.update)
    assert by_name.params() == by_rule.params() == {
        "s": 2, "inner": "krum", "inner_params": {"f": 2}, "seed": 1}
    # krum picks one bucket of two honest clients: each gets half its weight
    assert not a.accepted[12:].any()
    assert int(a.accepted.sum()) == 2
    assert sorted(a.weights.tolist())[-2:] == [0.5, 0.5]
    assert float(a.weights.sum()) == pytest.approx(1.0)
    assert float(a.update.mean()) == pytest.approx(1.0, abs=0.1)


def test_bucketing_median_resists_outliers():
    x = _honest_and_outliers()
    agg = aggregators.create("bucketing", s=2, inner="median")(x)
    assert float(agg.update.mean()) == pytest.approx(1.0, abs=0.3)


def test_bucketing_min_clients_counts_buckets():
    rule = aggregators.create("bucketing", s=2, inner="krum", inner_params={"f": 1})
    inner_min = aggregators.create("krum", f=1).min_clients()
    assert rule.min_clients() == (inner_min - 1) * 2 + 1
    with pytest.raises(AggregatorError):
        rule(torch.ones(rule.min_clients() - 1, 3))


def test_bucketing_sums_sample_counts_per_bucket():
    seen = {}

    class Spy(aggregators.Rule):
        name = "spy-bucketing"

        def __call__(self, updates, **context):
            seen.update(context)
            return aggregators.Aggregation(update=updates.mean(dim=0))

    aggregators.create("bucketing", s=2, inner=Spy())(
        torch.ones(4, 2), weights=torch.tensor([1.0, 2.0, 3.0, 4.0]),
        client_ids=["a", "b", "c", "d"], gram=torch.zeros(4, 4))
    assert sorted(seen) == ["weights"]  # no ids, no stale gram
    assert float(seen["weights"].sum()) == 10.0


# ---------------------------------------------------------------- NNM


def test_nnm_hand_computed_mixing():
    x = torch.tensor([[0.0], [1.0], [10.0]])
    mixing = mixing_matrix(pairwise_sq_distances(x), 2)
    torch.testing.assert_close(mixing, torch.tensor(
        [[0.5, 0.5, 0.0], [0.5, 0.5, 0.0], [0.0, 0.5, 0.5]], dtype=torch.float64))
    agg = aggregators.create("nnm", f=1, inner="median")(x)
    assert agg.update.tolist() == [0.5]  # median of the mixed 0.5, 0.5, 5.5


def test_nnm_krum_weights_go_back_through_the_mixing_matrix():
    x = torch.tensor([[0.0], [1.0], [10.0], [11.0], [0.5]])
    agg = aggregators.create("nnm", f=1, inner="krum", inner_params={"f": 1})(x)
    mixing = mixing_matrix(pairwise_sq_distances(x), 4)
    chosen = int(torch.nonzero(mixing.to(torch.float32) @ x == agg.update)[0, 0])
    torch.testing.assert_close(agg.update, (mixing[chosen].to(torch.float32) @ x))
    # krum's one-hot weight e_chosen maps to Aᵀ e_chosen: the chosen row of the mixing matrix
    torch.testing.assert_close(agg.weights, mixing[chosen])
    assert agg.accepted.tolist() == (mixing[chosen] > 0).tolist()


def test_nnm_composes_with_median_and_resists_outliers():
    x = _honest_and_outliers()
    agg = aggregators.create("nnm", f=2, inner=aggregators.create("median"))(x)
    assert float(agg.update.mean()) == pytest.approx(1.0, abs=0.05)


def test_nnm_uses_the_context_gram():
    x = torch.tensor([[0.0], [1.0], [10.0]])
    fake = torch.tensor([[0.0, 9.0, 1.0], [9.0, 0.0, 1.0], [1.0, 1.0, 0.0]], dtype=torch.float64)
    agg = aggregators.create("nnm", f=1, inner="median")(x, gram=fake)
    # mixed: 0→{0,2}: 5, 1→{1,2}: 5.5, 2→{2,0}: 5 → median 5
    assert agg.update.tolist() == [5.0]
    with pytest.raises(AggregatorError, match="gram"):
        aggregators.create("nnm", f=1, inner="median")(x, gram=torch.zeros(2, 2))


def test_nnm_passes_only_the_reference_to_the_inner_rule():
    seen = {}

    class Spy(aggregators.Rule):
        name = "spy-nnm"

        def __call__(self, updates, **context):
            seen.update(context)
            return aggregators.Aggregation(update=updates.mean(dim=0))

    x = torch.tensor([[0.0, 1.0], [1.0, 0.0], [2.0, 2.0]])
    aggregators.create("nnm", f=1, inner=Spy())(
        x, reference=torch.ones(2), weights=torch.tensor([1.0, 2.0, 3.0]),
        client_ids=["a", "b", "c"])
    assert sorted(seen) == ["reference"]
    assert seen["reference"].tolist() == [1.0, 1.0]


def test_nnm_min_clients():
    assert aggregators.create("nnm", f=3, inner="median").min_clients() == 4
    krum = aggregators.create("krum", f=2)
    assert aggregators.create("nnm", f=2, inner=krum).min_clients() == krum.min_clients()


@pytest.mark.parametrize(("name", "params"), [("bucketing", {"s": 2}), ("nnm", {"f": 1})])
def test_wrapped_fltrust_still_asks_for_the_reference(name, params):
    wrapped = aggregators.create(name, inner="fltrust", **params)
    assert wrapped.needs_reference
    assert not aggregators.create(name, inner="median", **params).needs_reference
    x = torch.tensor([[1.0, 0.0], [0.9, 0.1], [1.1, -0.1], [-5.0, 0.0]])
    agg = wrapped(x, reference=torch.tensor([1.0, 0.0]))
    assert bool(torch.isfinite(agg.update).all())
    with pytest.raises(AggregatorError, match="reference"):
        wrapped(x)


# ---------------------------------------------------------------- shared validation


@pytest.mark.parametrize("name", ["bucketing", "nnm"])
def test_inner_errors_are_named(name):
    with pytest.raises(AggregatorError, match="inner"):
        aggregators.create(name, inner=3)
    with pytest.raises(AggregatorError, match="unknown aggregator"):
        aggregators.create(name, inner="nope")
    with pytest.raises(AggregatorError, match="inner_params"):
        aggregators.create(name, inner=aggregators.create("median"), inner_params={"f": 1})
    with pytest.raises(AggregatorError, match="stateful"):
        aggregators.create(name, inner="foolsgold")


@pytest.mark.parametrize(
    ("name", "params", "word"),
    [("bucketing", {"s": 0}, "s"), ("bucketing", {"seed": 1.0}, "seed"), ("nnm", {"f": -1}, "f")],
)
def test_bad_parameters_are_named(name, params, word):
    with pytest.raises(AggregatorError, match=word):
        aggregators.create(name, **params)
