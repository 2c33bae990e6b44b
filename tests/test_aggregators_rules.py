"""Every rule against a small hand-computed case (values worked out in the comments)."""

from __future__ import annotations

import math

import pytest
import torch

from fedshield import aggregators
from fedshield.aggregators import AggregatorError, create


def t(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


def test_every_contract_name_is_registered() -> None:
    names = {"fedavg", "krum", "multikrum", "median", "trimmedmean", "fltrust", "bulyan",
             "geomed", "centeredclip", "normclip"}
    assert names <= set(aggregators.available())
    assert create("fltrust").needs_reference is True
    assert create("krum", f=1).needs_reference is False
    assert create("centeredclip").stateful is True


def test_fedavg_uniform_and_capped_weights() -> None:
    x = t([[1, 2], [3, 4], [5, 9]])
    assert create("fedavg")(x).update.tolist() == [3.0, 5.0]
    # counts 1, 1, 2 uncapped: (1·[1,2] + 1·[3,4] + 2·[5,9]) / 4 = [3.5, 6]
    agg = create("fedavg", weighted=True, max_weight_ratio=math.inf)(x, weights=[1, 1, 2])
    assert torch.allclose(agg.update, torch.tensor([3.5, 6.0]))
    assert torch.allclose(agg.weights, torch.tensor([0.25, 0.25, 0.5]))
    # counts 1, 1, 100 with cap 10·median = 10: (1·[1,2] + [3,4] + 10·[5,9]) / 12 = [4.5, 8]
    agg = create("fedavg", weighted=True)(x, weights=[1, 1, 100])
    assert torch.allclose(agg.update, torch.tensor([4.5, 8.0]))
    assert agg.diagnostics["capped_clients"] == 1
    # the unweighted default ignores client-reported counts entirely
    assert create("fedavg")(x, weights=[1, 1, 100]).update.tolist() == [3.0, 5.0]


def test_fedavg_weighted_needs_weights_and_falls_back_on_zero_counts() -> None:
    x = t([[1.0], [3.0]])
    with pytest.raises(AggregatorError, match="weights"):
        create("fedavg", weighted=True)(x)
    agg = create("fedavg", weighted=True)(x, weights=[0, 0])
    assert agg.update.tolist() == [2.0] and "fallback" in agg.diagnostics


# Points 0, 1, 3, 4, 10 on a line, f = 1: each score sums the n − f − 2 = 2 smallest squared
# distances: 0 → 1+9 = 10, 1 → 1+4 = 5, 3 → 4+1 = 5, 4 → 1+9 = 10, 10 → 36+49 = 85.
LINE = t([[0, 0], [1, 0], [3, 0], [4, 0], [10, 0]])


def test_krum_hand_computed_scores_and_tie_to_lowest_index() -> None:
    agg = create("krum", f=1)(LINE)
    assert agg.diagnostics["scores"] == [10.0, 5.0, 5.0, 10.0, 85.0]
    assert agg.update.tolist() == [1.0, 0.0]  # tie 1 vs 3 → lower index
    assert agg.accepted.tolist() == [False, True, False, False, False]
    assert agg.weights.tolist() == [0.0, 1.0, 0.0, 0.0, 0.0]


def test_multikrum_hand_computed() -> None:
    # default m = n − f = 4: scores 5, 5, 10, 10 → clients 1, 2, 0, 3 → mean of 0, 1, 3, 4 = 2
    agg = create("multikrum", f=1)(LINE)
    assert agg.update.tolist() == [2.0, 0.0]
    assert agg.accepted.tolist() == [True, True, True, True, False]
    assert torch.allclose(agg.weights, torch.tensor([0.25, 0.25, 0.25, 0.25, 0.0]))
    # m = 3: clients 1, 2 and then 0 (stable tie with 3) → mean(1, 3, 0) = 4/3
    agg = create("multikrum", f=1, m=3)(LINE)
    assert agg.update[0].item() == pytest.approx(4 / 3)


def test_median_even_averages_the_two_middles() -> None:
    assert create("median")(t([[1], [5], [2], [8]])).update.tolist() == [3.5]
    assert create("median")(t([[1], [5], [2]])).update.tolist() == [2.0]
    # per coordinate independently
    x = t([[1, 10], [2, -10], [3, 0], [100, 5]])
    assert create("median")(x).update.tolist() == [2.5, 2.5]


def test_trimmedmean_f_and_beta() -> None:
    x = t([[1], [2], [5], [8], [100]])
    assert create("trimmedmean", f=1)(x).update.tolist() == [5.0]  # (2 + 5 + 8) / 3
    assert create("trimmedmean", beta=0.2)(x).update.tolist() == [5.0]  # ⌊0.2·5⌋ = 1
    assert create("trimmedmean", f=2)(x).update.tolist() == [5.0]
    assert create("trimmedmean", f=0)(x).update.item() == pytest.approx(116 / 5)
    # ⌊0.29·100⌋ must be 29 although 0.29·100 = 28.999999999999996 in floating point
    assert create("trimmedmean", beta=0.29).trim_count(100) == 29


def test_trimmedmean_f_xor_beta() -> None:
    with pytest.raises(AggregatorError, match="exactly one of f"):
        create("trimmedmean", f=1, beta=0.1)
    with pytest.raises(AggregatorError, match="exactly one of f"):
        create("trimmedmean")
    with pytest.raises(AggregatorError, match="beta must be in"):
        create("trimmedmean", beta=0.5)


# Bulyan, points 0, 1, 2, 3, 4, 5, 100, f = 1: θ = 5, β = 3; Krum repeated on the shrinking set
# with k = max(1, r − 3) neighbours: r=7 scores (30, 15, 10, 10, 15, 30, …) → 2 (tie with 3);
# r=6 {0,1,3,4,5,100}: (26, 14, 9, 11, 21, …) → 3; r=5 {0,1,4,5,100}: (17, 10, 10, 17, …) → 1;
# r=4 {0,4,5,100}: (16, 1, 1, …) → 4; r=3 {0,5,100}: (25, 25, …) → 0.
# S = {2, 3, 1, 4, 0}; per coordinate: median 2, the β = 3 closest {1, 2, 3} → 2.
def test_bulyan_hand_computed_recursive_selection() -> None:
    # step 1 (k = 4): 2 and 3 tie at 1+1+4+4 = 10; the tie goes to the smaller sum of squared
    # distances to all remaining (3: 97² + 31 < 2: 98² + 31). Then 2 (9), then 1 and 4 tie at 10
    # (4 wins: 96² < 99²), then 0 and 1 tie at 1 (1 wins), then 0 and 5 tie at 25 (5 wins).
    x = t([[0], [1], [2], [3], [4], [5], [100]])
    agg = create("bulyan", f=1)(x)
    assert agg.diagnostics["selected"] == [3, 2, 4, 1, 5]
    assert agg.accepted.tolist() == [False] + [True] * 5 + [False]
    assert agg.update.tolist() == [3.0]  # the β = 3 values closest to the median 3: {2, 3, 4}
    assert agg.diagnostics["theta"] == 5 and agg.diagnostics["beta"] == 3


def test_bulyan_coordinate_step_takes_the_beta_closest_to_the_median() -> None:
    # f = 1, n = 7: the recursion keeps {0.1, 0.2, 3.0, 3.1, 3.2} (drops 0 and 1e6); their
    # median is 3.0 and the β = 3 values closest to it are {3.0, 3.1, 3.2} → 3.1 (an asymmetric
    # window: the plain trimmed mean of the five would be (0.2 + 3.0 + 3.1) / 3 = 2.1).
    x = t([[0, 0.0], [0, 0.1], [0, 0.2], [0, 3.0], [0, 3.1], [0, 3.2], [0, 1e6]])
    agg = create("bulyan", f=1)(x)
    assert agg.accepted.tolist() == [False] + [True] * 5 + [False]
    assert agg.update[1].item() == pytest.approx(3.1, abs=1e-6)


def test_geomed_hand_computed() -> None:
    # 1-D: the geometric median of {0, 1, 10} is the median 1
    agg = create("geomed")(t([[0], [1], [10]]))
    assert agg.update.item() == pytest.approx(1.0, abs=1e-4)
    # the four corners of a square plus its centre twice: the centre
    sq = t([[0, 0], [2, 0], [0, 2], [2, 2], [1, 1], [1, 1]])
    agg = create("geomed")(sq)
    assert torch.allclose(agg.update, torch.tensor([1.0, 1.0]), atol=1e-5)
    assert agg.weights.sum().item() == pytest.approx(1.0)


def test_geomed_matches_direct_weiszfeld() -> None:
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(9, 40, generator=gen, dtype=torch.float64)
    v = x.mean(0)
    for _ in range(500):  # direct smoothed Weiszfeld on the vectors, run to convergence
        w = 1.0 / (x - v).norm(dim=1).clamp(min=1e-6)
        v = (w[:, None] * x).sum(0) / w.sum()
    agg = create("geomed", tol=0.0, max_iter=500)(x)
    assert torch.allclose(agg.update, v, atol=1e-6)


def test_centeredclip_hand_computed_and_state() -> None:
    rule = create("centeredclip", tau=1.0, iterations=1)
    x = t([[3, 4], [0, 0.5]])
    # v0 = 0: ‖x_1‖ = 5 → factor 0.2 → [0.6, 0.8]; ‖x_2‖ = 0.5 → 1. v1 = ([0.6,0.8] + [0,0.5]) / 2
    agg = rule(x)
    assert torch.allclose(agg.update, torch.tensor([0.3, 0.65]))
    assert agg.diagnostics["clip_factors"] == pytest.approx([0.2, 1.0])
    # next round starts from v1: a client exactly at v1 leaves it unchanged
    assert torch.allclose(rule(t([[0.3, 0.65]])).update, torch.tensor([0.3, 0.65]))
    rule.reset()
    assert torch.allclose(rule(x).update, torch.tensor([0.3, 0.65]))


def test_centeredclip_refuses_a_changed_dimension() -> None:
    rule = create("centeredclip")
    rule(t([[1.0, 2.0]]))
    with pytest.raises(AggregatorError, match="reset"):
        rule(t([[1.0, 2.0, 3.0]]))


def test_normclip_fixed_and_median_bound() -> None:
    x = t([[3, 4], [0, 0.5]])
    agg = create("normclip", bound=1.0)(x)
    assert torch.allclose(agg.update, torch.tensor([0.3, 0.65]))
    # median of the norms 5 and 0.5 is 2.75: [3,4]·0.55 = [1.65, 2.2]; mean with [0, 0.5]
    agg = create("normclip", bound="median")(x)
    assert agg.diagnostics["bound"] == pytest.approx(2.75)
    assert torch.allclose(agg.update, torch.tensor([0.825, 1.35]))


def test_fltrust_hand_computed() -> None:
    x = t([[2, 0], [0, 3], [-1, 0], [1, 1]])
    agg = create("fltrust")(x, reference=torch.tensor([1.0, 0.0]))
    # TS = [1, 0, 0, 1/√2]; normalised [1,0] and [1,1]/√2; sum / (1 + 1/√2)
    s = 1 + 1 / math.sqrt(2)
    expected = torch.tensor([1.5 / s, 0.5 / s])
    assert torch.allclose(agg.update, expected, atol=1e-6)
    assert agg.accepted.tolist() == [True, False, False, True]
    assert torch.allclose(agg.weights, torch.tensor([1 / s, 0, 0, (1 / math.sqrt(2)) / s]))


def test_fltrust_fallbacks_never_divide_by_zero() -> None:
    x = t([[2, 0], [0, 0]])
    agg = create("fltrust")(x, reference=torch.zeros(2))
    assert agg.update.tolist() == [0.0, 0.0] and "zero norm" in agg.diagnostics["fallback"]
    agg = create("fltrust")(t([[-1, 0], [0, 0]]), reference=torch.tensor([1.0, 0.0]))
    assert agg.update.tolist() == [0.0, 0.0] and "positive cosine" in agg.diagnostics["fallback"]
    # a zero update gets trust 0 and does not disturb the others
    agg = create("fltrust")(t([[2, 0], [0, 0]]), reference=torch.tensor([1.0, 0.0]))
    assert agg.update.tolist() == [1.0, 0.0]
    with pytest.raises(AggregatorError, match="reference"):
        create("fltrust")(x)
