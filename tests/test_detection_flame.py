"""FLAME: majority cluster on cosine distances, median-norm clipping, noise of std λ·S."""

import math

import numpy as np
import pytest
import torch

from fedshield import aggregators
from fedshield.aggregators import AggregatorError
from fedshield.aggregators.kernels import cosine_similarity


def _five() -> torch.Tensor:
    # three updates along +e1 (different norms), two along −e1
    return torch.tensor([[1.0, 0.0], [2.0, 0.1], [3.0, -0.1], [-1.0, 0.0], [-1.0, 0.05]])


def test_hand_computed_majority_clip_and_mean():
    x = _five()
    agg = aggregators.create("flame", lam=0.0)(x)
    assert agg.accepted.tolist() == [True, True, True, False, False]
    norms = np.linalg.norm(x.numpy().astype(np.float64), axis=1)
    s = float(np.median(norms))  # 1.00125, the norm of client 4
    assert s == pytest.approx(math.hypot(1.0, 0.05))
    clipped = [x[0].numpy(), x[1].numpy() * s / norms[1], x[2].numpy() * s / norms[2]]
    np.testing.assert_allclose(agg.update.numpy(), np.mean(clipped, axis=0), rtol=1e-6)
    assert agg.weights.tolist() == pytest.approx([1 / 3, 1 / 3, 1 / 3, 0, 0])
    assert agg.diagnostics["clip_norm"] == pytest.approx(s)
    assert agg.diagnostics["clipped"] == 2


def test_even_count_median_norm_averages_middles():
    x = torch.tensor([[1.0, 0.0], [2.0, 0.0], [4.0, 0.0], [8.0, 0.0]])
    agg = aggregators.create("flame", lam=0.0)(x)
    assert agg.accepted.all()
    s = 3.0  # (2 + 4) / 2
    assert agg.update.tolist() == pytest.approx([(1 + 2 + 3 + 3) / 4, 0.0])
    assert agg.diagnostics["clip_norm"] == s


def test_backdoor_direction_rejected():
    # honest deltas share the descent direction; the backdoor's deltas share another one
    gen = torch.Generator().manual_seed(1)
    benign = torch.randn(300, generator=gen) + torch.randn(12, 300, generator=gen)
    direction = torch.randn(300, generator=gen)
    evil = direction + 0.05 * torch.randn(5, 300, generator=gen)
    agg = aggregators.create("flame", lam=0.0)(torch.cat([benign, evil]))
    assert not agg.accepted[12:].any()
    assert agg.accepted[:12].sum() >= 9  # the majority cluster holds ≥ ⌊17/2⌋ + 1 clients


def test_noise_std_is_lambda_times_median_norm():
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(7, 20_000, generator=gen)
    s = float(np.median(torch.linalg.vector_norm(x.double(), dim=1).numpy()))
    clean = aggregators.create("flame", lam=0.0)(x).update.double()
    rule = aggregators.create("flame", lam=0.01, seed=3)
    draws = [rule(x).update.double() - clean for _ in range(5)]
    for noise in draws:
        assert float(noise.mean()) == pytest.approx(0.0, abs=4 * 0.01 * s / math.sqrt(20_000))
        assert float(noise.std()) == pytest.approx(0.01 * s, rel=0.03)
    assert not torch.equal(draws[0], draws[1])  # a fresh draw per call
    assert rule(x).diagnostics["noise_std"] == pytest.approx(0.01 * s)


def test_seed_and_reset_reproduce_the_noise():
    x = torch.randn(6, 50, generator=torch.Generator().manual_seed(4))
    a = aggregators.create("flame", lam=0.1, seed=7)
    b = aggregators.create("flame", lam=0.1, seed=7)
    first = a(x).update
    assert torch.equal(first, b(x).update)
    a.reset()
    assert torch.equal(first, a(x).update)
    assert not torch.equal(first, aggregators.create("flame", lam=0.1, seed=8)(x).update)


def test_zero_updates_and_single_client_are_finite():
    agg = aggregators.create("flame")(torch.zeros(4, 3))
    assert torch.equal(agg.update, torch.zeros(3))
    one = aggregators.create("flame", lam=0.0)(torch.tensor([[1.0, 2.0]]))
    assert one.update.tolist() == [1.0, 2.0]
    assert one.accepted.tolist() == [True]


def test_cosine_similarity_matches_definition_and_zero_rows():
    x = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0], [-2.0, 0.0]])
    cos = cosine_similarity(x)
    expected = torch.tensor(
        [[1, 1 / math.sqrt(2), 0, -1], [1 / math.sqrt(2), 1, 0, -1 / math.sqrt(2)],
         [0, 0, 0, 0], [-1, -1 / math.sqrt(2), 0, 1]], dtype=torch.float64)
    torch.testing.assert_close(cos, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    ("params", "word"),
    [({"lam": -1.0}, "lam"), ({"lam": float("nan")}, "lam"), ({"min_cluster_size": 1},
     "min_cluster_size"), ({"seed": 1.5}, "seed"), ({"bogus": 1}, "bogus")],
)
def test_bad_parameters_are_named(params, word):
    with pytest.raises(AggregatorError, match=word):
        aggregators.create("flame", **params)


def test_bad_updates_rejected():
    with pytest.raises(AggregatorError):
        aggregators.create("flame")(torch.tensor([[1.0, float("nan")], [1.0, 2.0]]))
