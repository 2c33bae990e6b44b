"""DnC: spectral outlier scores, removal of a planted direction, intersection over iterations."""

import pytest
import torch

from fedshield import aggregators
from fedshield.aggregators import AggregatorError
from fedshield.aggregators.dnc import keep_lowest, outlier_scores


def test_scores_equal_projection_on_top_singular_vector():
    x = torch.randn(9, 40, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    centred = x - x.mean(dim=0)
    v = torch.linalg.svd(centred, full_matrices=False).Vh[0]
    torch.testing.assert_close(outlier_scores(x), (centred @ v) ** 2)


def test_hand_computed_small_case():
    # mean is 0; the top direction is e1; scores 4, 1, 1, 0 → drop client 0
    x = torch.tensor([[2.0, 0.0], [-1.0, 0.0], [-1.0, 0.0], [0.0, 0.0]])
    torch.testing.assert_close(outlier_scores(x), torch.tensor([4.0, 1.0, 1.0, 0.0],
                                                               dtype=torch.float64))
    agg = aggregators.create("dnc", f=1, niters=3)(x)
    assert agg.accepted.tolist() == [False, True, True, True]
    torch.testing.assert_close(agg.update, torch.tensor([-2 / 3, 0.0]))
    assert agg.weights.tolist() == pytest.approx([0, 1 / 3, 1 / 3, 1 / 3])
    assert agg.diagnostics["votes"] == [0, 3, 3, 3]


def test_keep_lowest_is_stable_on_ties():
    assert keep_lowest(torch.tensor([1.0, 0.0, 1.0, 1.0]), 2).tolist() == [True, True, False, False]


def test_removes_a_planted_direction():
    gen = torch.Generator().manual_seed(1)
    d, n, f = 2_000, 20, 4
    honest = 0.5 * torch.randn(d, generator=gen) + torch.randn(n - f, d, generator=gen)
    planted = torch.nn.functional.normalize(torch.randn(d, generator=gen), dim=0)
    # ALIE-like: the colluders sit at the honest mean shifted by about one honest std per
    # coordinate (norm √d ≈ 45, the size of an honest update), all along one planted direction
    evil = honest.mean(dim=0) + 45.0 * planted + 0.1 * torch.randn(f, d, generator=gen)
    x = torch.cat([honest, evil])
    agg = aggregators.create("dnc", f=f, b=500, niters=5, seed=2)(x)
    assert not agg.accepted[n - f:].any()
    assert int(agg.accepted.sum()) >= n - 2 * f
    assert torch.linalg.vector_norm(agg.update - honest[agg.accepted[: n - f]].mean(dim=0)) < 1e-4


@pytest.mark.parametrize("seed", range(5))
def test_selection_invariant_to_global_scale(seed):
    x = torch.randn(10, 50, generator=torch.Generator().manual_seed(seed))
    ref = aggregators.create("dnc", f=3, b=20, seed=seed)(x).accepted
    for scale in (1e-6, 1e-3, 7.0, 1e6):
        assert torch.equal(aggregators.create("dnc", f=3, b=20, seed=seed)(x * scale).accepted, ref)


def test_c_scales_the_removal_and_min_clients():
    rule = aggregators.create("dnc", f=2, c=1.5)
    assert rule.min_clients() == 4
    x = torch.randn(5, 10, generator=torch.Generator().manual_seed(3))
    assert int(rule(x).accepted.sum()) <= 2
    with pytest.raises(AggregatorError, match="at least"):
        rule(x[:3])


def test_subsample_seeded_and_reset():
    x = torch.randn(12, 3_000, generator=torch.Generator().manual_seed(4))
    a = aggregators.create("dnc", f=3, b=50, seed=9)
    b = aggregators.create("dnc", f=3, b=50, seed=9)
    first = a(x)
    assert first.diagnostics["votes"] == b(x).diagnostics["votes"]
    a.reset()
    assert torch.equal(a(x).update, first.update)
    assert first.diagnostics["subsample"] == 50


def test_disjoint_iterations_fall_back_to_most_votes():
    # b = 1 coordinate per iteration, f large: each iteration removes a different half
    x = torch.tensor([[10.0, 0.0], [0.0, 10.0], [-10.0, 0.0], [0.0, -10.0]])
    agg = aggregators.create("dnc", f=2, b=1, niters=8, seed=0)(x)
    assert agg.accepted.any()
    assert torch.isfinite(agg.update).all()


@pytest.mark.parametrize(
    ("params", "word"),
    [({"f": -1}, "f"), ({"c": 0}, "c"), ({"niters": 0}, "niters"), ({"b": 0}, "b"),
     ({"seed": "x"}, "seed"), ({"f": True}, "f")],
)
def test_bad_parameters_are_named(params, word):
    with pytest.raises(AggregatorError, match=word):
        aggregators.create("dnc", **params)


def test_outlier_scores_fall_back_to_svd_when_eigh_does_not_converge(monkeypatch):
    from fedshield.aggregators.dnc import outlier_scores

    sub = torch.randn(7, 50, generator=torch.Generator().manual_seed(3))
    expected = outlier_scores(sub)

    def failing_eigh(*args, **kwargs):
        raise torch.linalg.LinAlgError("linalg.eigh: The algorithm failed to converge")

    monkeypatch.setattr(torch.linalg, "eigh", failing_eigh)
    # the eigh path forms the Gram in float32: agreement to float32 precision of the largest score
    scale = float(expected.max())
    torch.testing.assert_close(outlier_scores(sub), expected, rtol=1e-5, atol=1e-6 * scale)
