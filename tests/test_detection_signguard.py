"""SignGuard: norm band around the median, sign-statistics clustering, clipped mean."""

import pytest
import torch

from fedshield import aggregators
from fedshield.aggregators import AggregatorError
from fedshield.aggregators.signguard import sign_features


def _hand_case() -> torch.Tensor:
    ones = torch.ones(4)
    # norms 2, 4, 3, 2, 200 → M = 3, band [0.3, 9]: client 4 out by norm, client 3 by sign
    return torch.stack([ones, 2 * ones, 1.5 * ones, -ones, 100 * ones])


@pytest.mark.parametrize("clustering", ["meanshift", "kmeans", "dbscan"])
def test_hand_computed(clustering):
    agg = aggregators.create("signguard", fraction=1.0, clustering=clustering)(_hand_case())
    assert agg.accepted.tolist() == [True, True, True, False, False]
    # clip to M = 3: [1]*4 stays (norm 2), [2]*4 → [1.5]*4, [1.5]*4 stays (norm 3)
    torch.testing.assert_close(agg.update, torch.full((4,), (1 + 1.5 + 1.5) / 3))
    assert agg.diagnostics["clip_norm"] == 3.0
    assert agg.diagnostics["norm_rejected"] == 1
    assert agg.diagnostics["sign_rejected"] == 1


def test_sign_features_fractions_over_column_max():
    x = torch.tensor([[1.0, -1.0, 0.0, 2.0], [1.0, 1.0, 1.0, 1.0]])
    # positive 2/4, 4/4; zero 1/4, 0; negative 1/4, 0 → divided by the column maxima
    assert sign_features(x).tolist() == [[0.5, 1.0, 1.0], [1.0, 0.0, 0.0]]


def test_drops_sign_flipped_and_huge_norm_updates():
    gen = torch.Generator().manual_seed(0)
    d = 5_000
    # honest deltas share a descent direction: about 70% of their coordinates are positive
    honest = 0.5 + torch.randn(14, d, generator=gen)
    flipped = -honest[:3]
    huge = 50.0 * honest[3:5]
    x = torch.cat([honest, flipped, huge])
    for clustering in ("meanshift", "kmeans", "dbscan"):
        agg = aggregators.create("signguard", clustering=clustering, seed=1)(x)
        assert not agg.accepted[14:].any(), clustering
        assert int(agg.accepted[:14].sum()) >= 12, clustering
        assert float(agg.update.mean()) > 0.3


def test_subset_seeded_and_reset():
    x = 0.2 + torch.randn(10, 1_000, generator=torch.Generator().manual_seed(2))
    rule = aggregators.create("signguard", seed=5)
    first = rule(x)
    rule.reset()
    assert torch.equal(rule(x).update, first.update)


def test_all_zero_and_all_identical_are_finite():
    zero = aggregators.create("signguard")(torch.zeros(5, 8))
    assert torch.equal(zero.update, torch.zeros(8))
    same = aggregators.create("signguard")(torch.ones(5, 8))
    assert same.accepted.all()
    assert torch.equal(same.update, torch.ones(8))


def test_empty_band_falls_back_to_everyone():
    # lower = upper = 1 and an even count: no norm equals M = 1.5
    x = torch.tensor([[1.0, 0.0], [2.0, 0.0]])
    agg = aggregators.create("signguard", lower=1.0, upper=1.0, fraction=1.0)(x)
    assert agg.accepted.all()
    assert agg.diagnostics["empty_intersection"]
    torch.testing.assert_close(agg.update, torch.tensor([1.25, 0.0]))


@pytest.mark.parametrize(
    ("params", "word"),
    [({"lower": -0.1}, "lower"), ({"upper": 0.5}, "upper"), ({"fraction": 0}, "fraction"),
     ({"fraction": 1.5}, "fraction"), ({"clustering": "hdbscan"}, "meanshift, kmeans, dbscan"),
     ({"eps": 0}, "eps"), ({"min_samples": 0}, "min_samples"), ({"seed": None}, "seed")],
)
def test_bad_parameters_are_named(params, word):
    with pytest.raises(AggregatorError, match=word):
        aggregators.create("signguard", **params)


def test_sign_features_count_column_blocks_without_copying_the_sample():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 800_000, generator=gen)  # more columns than one block of 3 rows
    x[x.abs() < 0.2] = 0.0
    cols = torch.randperm(800_000, generator=gen)[:500_000].sort().values
    expected = sign_features(x.index_select(1, cols))  # the same columns, gathered first
    assert (sign_features(x, cols) == expected).all()
    rows = [(x.index_select(1, cols)[i] > 0).double().mean() for i in range(3)]
    top = max(rows)
    assert sign_features(x, cols)[:, 0].tolist() == [float(r / top) for r in rows]
