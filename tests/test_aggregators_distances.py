"""The shared pairwise-distance kernel: exact, non-negative, precise under a common offset."""

from __future__ import annotations

import pytest
import torch

from fedshield.aggregators import AggregatorError, create
from fedshield.aggregators.kernels import pairwise_sq_distances


def exact(x: torch.Tensor) -> torch.Tensor:
    x = x.double()
    return ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)


def test_matches_float64_direct_differences() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(12, 5000, generator=gen)
    dist = pairwise_sq_distances(x)
    assert dist.dtype == torch.float64 and dist.shape == (12, 12)
    assert torch.allclose(dist, exact(x), rtol=1e-6)
    assert torch.equal(dist, dist.T)
    assert bool((dist.diagonal() == 0).all())


def test_several_column_blocks() -> None:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(3, 700_000, generator=gen)  # > one block of 2^20 / 3 columns
    assert torch.allclose(pairwise_sq_distances(x), exact(x), rtol=1e-6)


def test_precise_under_a_large_common_offset() -> None:
    # raw float32 weights ≈ 1000 differing by ~1e-3: the textbook float32 Gram trick is garbage
    gen = torch.Generator().manual_seed(2)
    x = 1000.0 + 1e-3 * torch.randn(10, 100_000, generator=gen)
    truth = exact(x)
    dist = pairwise_sq_distances(x)
    off = ~torch.eye(10, dtype=torch.bool)
    rel = ((dist - truth).abs()[off] / truth[off]).max()
    assert rel < 1e-5
    sq = (x * x).sum(1)
    naive = sq[:, None] + sq[None, :] - 2 * x @ x.T  # what Flower's compute_distances does
    naive_rel = ((naive.double() - truth).abs()[off] / truth[off]).max()
    assert naive_rel > 10  # > 1000 % error: cancellation destroyed every digit


def test_identical_rows_zero_distance_and_never_negative() -> None:
    row = torch.randn(1, 1000)
    x = torch.cat([row, row, row + 1e-7, 50 * row])
    dist = pairwise_sq_distances(x)
    assert dist[0, 1] == 0.0
    assert bool((dist >= 0).all())


def test_float32_overflow_is_redone_in_float64() -> None:
    x = torch.zeros(3, 4)
    x[0] = 3e19  # ‖x_0‖² = 3.6e39 overflows float32 but is a finite input
    dist = pairwise_sq_distances(x)
    assert bool(torch.isfinite(dist).all())
    assert dist[0, 1].item() == pytest.approx(4 * 9e38, rel=1e-6)


def test_rejects_non_finite_and_bad_shapes() -> None:
    x = torch.randn(4, 3)
    x[2, 0] = float("nan")
    with pytest.raises(AggregatorError, match=r"NaN/Inf in rows \[2\]"):
        pairwise_sq_distances(x)
    with pytest.raises(AggregatorError, match="2-D"):
        pairwise_sq_distances(torch.ones(3))
    with pytest.raises(AggregatorError, match="empty"):
        pairwise_sq_distances(torch.ones(0, 3))


def test_rules_use_the_gram_context() -> None:
    # a gram that says client 4 is the centre of everything makes Krum pick client 4
    x = torch.randn(5, 3)
    gram = torch.full((5, 5), 100.0)
    gram[4, :] = gram[:, 4] = 1.0
    gram.fill_diagonal_(0.0)
    assert create("krum", f=1)(x, gram=gram).diagnostics["selected"] == [4]
    true = pairwise_sq_distances(x)
    a = create("multikrum", f=1)(x, gram=true)
    b = create("multikrum", f=1)(x)
    assert torch.equal(a.update, b.update)
    # with a gram given, the input itself is still checked for NaN
    x[0, 0] = float("inf")
    with pytest.raises(AggregatorError, match="NaN/Inf"):
        create("krum", f=1)(x, gram=gram)


def test_cosines_stream_the_unit_rows_and_equal_the_materialised_ones_bit_for_bit():
    from fedshield.aggregators.kernels import (
        UnitRows,
        cosine_similarity,
        pairwise_sq_distances,
        row_norms,
    )

    gen = torch.Generator().manual_seed(1)
    x = torch.randn(12, 20_000, generator=gen)  # several column blocks
    x[1] = 0.0
    x[2] = x[2].sign() * 3e38  # norm beyond float32's range: divided by its largest entry first
    x[3] = x[3].sign() * 1e-40  # subnormal entries
    rows = UnitRows(x, row_norms(x))
    unit, nonzero = rows.columns(0, x.shape[1]), rows.nonzero  # the copy the stream avoids
    cos = (1.0 - pairwise_sq_distances(unit) / 2.0).clamp(-1.0, 1.0)
    cos = torch.where(cos.abs() > 1.0 - 1e-6, cos.sign(), cos)
    cos = torch.where(nonzero[:, None] & nonzero[None, :], cos, torch.zeros_like(cos))
    assert torch.equal(cosine_similarity(x), cos)
    assert torch.allclose(unit.norm(dim=1)[nonzero], torch.ones(11), atol=1e-6)
