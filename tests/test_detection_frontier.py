"""The detector contract and the 2022–2025 defences: ARC, FLDetector, FreqFed, and ``detect``."""

from __future__ import annotations

import io
import itertools
import math

import numpy as np
import pytest
import torch

from fedshield.aggregators import (
    AggregatorError,
    available_detectors,
    create,
    create_detector,
)
from fedshield.aggregators.clipping import arc_clipped
from fedshield.aggregators.detection import detector_class
from fedshield.aggregators.fldetector import gap_clusters, kmeans_1d, lbfgs_product
from fedshield.aggregators.freqfed import low_frequency
from fedshield.server.round import ClientRow, RoundCore

DETECTOR_CASES = [(name, params) for name in available_detectors()
                  for params in detector_class(name).examples]
IDS = [f"{n}-{i}" for i, (n, _) in enumerate(DETECTOR_CASES)]


def built(name: str, params: dict) -> object:
    """The detector, with a stand-in check bound when it needs the server's model (the
    indicator's accuracy of a delta: a fixed, finite function of it)."""
    detector = create_detector(name, **params)
    if getattr(detector, "needs_binding", False):
        detector.bind(lambda delta: float(torch.sigmoid(delta.double().mean())))
    return detector


def honest(n: int, d: int = 12, seed: int = 0, spread: float = 0.1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.ones(d) + spread * torch.randn(n, d, generator=g)


# --- the detector contract, over every registered detector --------------------------------------
def test_every_detector_has_examples():
    assert {"flame", "dnc", "signguard", "fldetector", "freqfed", "backdoor-indicator"} <= set(
        available_detectors())
    for name in available_detectors():
        assert detector_class(name).examples, name


@pytest.mark.parametrize("case", DETECTOR_CASES, ids=IDS)
def test_detector_returns_flags_and_scores_per_client(case):
    name, params = case
    detector = built(name, params)
    n = max(detector.min_clients(), 8)
    for _ in range(3):  # stateful detectors: several rounds
        found = detector(honest(n), client_ids=list(range(100, 100 + n)))
        assert found.flags.dtype == torch.bool and found.flags.shape == (n,)
        assert found.scores.dtype == torch.float64 and found.scores.shape == (n,)
        assert bool(torch.isfinite(found.scores).all())


@pytest.mark.parametrize("case", DETECTOR_CASES, ids=IDS)
def test_detector_validates_like_a_rule(case):
    name, params = case
    detector = built(name, params)
    x = honest(max(detector.min_clients(), 4))
    x[1, 2] = float("nan")
    with pytest.raises(AggregatorError, match="NaN/Inf in rows \\[1\\]"):
        detector(x)
    with pytest.raises(AggregatorError, match="unknown parameter"):
        create_detector(name, colour="red")
    with pytest.raises(AggregatorError, match="unknown detector"):
        create_detector("nope")


@pytest.mark.parametrize("case", DETECTOR_CASES, ids=IDS)
def test_detector_state_is_plain_data_and_restores(case):
    name, params = case
    first, second = built(name, params), built(name, params)
    n = max(first.min_clients(), 8)
    for seed in range(3):
        first(honest(n, seed=seed))
        first.observe(torch.ones(12) * 0.01 * (seed + 1))
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    second.load_state_dict(torch.load(buffer, weights_only=True))
    x = honest(n, seed=9)
    a, b = first(x), second(x)
    assert torch.equal(a.flags, b.flags) and torch.equal(a.scores, b.scores)


@pytest.mark.parametrize("name", ["flame", "freqfed", "fldetector"])
def test_an_outlier_at_any_finite_scale_is_flagged(name):
    """f = 1 row at scales up to float32's maximum, in the opposite direction, is flagged and
    the composed median stays near the honest rows."""
    for scale in (1e3, 1e20, 3e38):
        rule = create("detect", detector=name, inner="median",
                      detector_params={"warmup": 0} if name == "fldetector" else None)
        for rnd in range(4):
            x = honest(10, seed=rnd)
            x[3] = -x[3] / x[3].abs().max() * scale
            agg = rule(x, client_ids=list(range(10)))
        assert bool(agg.flagged[3]), (name, scale)
        assert float((agg.update - 1.0).abs().max()) < 0.5


# --- detect: composition ------------------------------------------------------------------------
def test_detect_hands_the_unflagged_rows_and_their_context_to_the_inner_rule():
    x = honest(8)
    x[[2, 5]] = -5.0
    rule = create("detect", detector="flame", inner="fedavg", inner_params={"weighted": True})
    weights = torch.arange(1.0, 9.0)
    agg = rule(x, weights=weights)
    kept = [i for i in range(8) if i not in (2, 5)]
    assert agg.flagged.tolist() == [i in (2, 5) for i in range(8)]
    share = weights[kept] / weights[kept].sum()
    assert torch.allclose(agg.update, (share[:, None].double() * x[kept].double()).sum(0).float())
    assert agg.weights[[2, 5]].tolist() == [0.0, 0.0]
    assert torch.allclose(agg.weights[kept], share.double())
    assert agg.accepted.tolist() == [i not in (2, 5) for i in range(8)]
    assert agg.diagnostics["flagged"] == 2 and len(agg.diagnostics["scores"]) == 8


def test_detect_refuses_the_round_when_too_few_rows_are_left():
    class FlagAll(detector_class("flame")):
        def detect(self, x, ctx, norms=None):
            found = super().detect(x, ctx, norms)
            found.flags[:] = True
            return found

    rule = create("detect", detector=FlagAll(), inner="median")
    with pytest.raises(AggregatorError, match=r"flagged 6 of 6 updates.*round refused"):
        rule(honest(6))


def test_detect_refuses_bad_composition():
    with pytest.raises(AggregatorError, match="detector must be a detector name"):
        create("detect", detector="krum")
    with pytest.raises(AggregatorError, match="unknown aggregator"):
        create("detect", detector="flame", inner="nope")
    with pytest.raises(AggregatorError, match="unknown parameter"):
        create("detect", detector="freqfed", detector_params={"window": 3})


def test_round_core_scores_detection_on_the_detectors_flags():
    """The inner rule (Krum) selects one row; detection must score the detector's flags."""
    x = honest(8, spread=0.01)
    x[[0, 1]] = -5.0
    rule = create("detect", detector="dnc", detector_params={"f": 2}, inner="krum",
                  inner_params={"f": 1})
    rows = [ClientRow(client_id=i, partition_id=i, malicious=i < 2, num_examples=10.0)
            for i in range(8)]
    record = RoundCore(rule).run(1, torch.zeros(12), x, rows)
    assert record.detection["recall"] == 1.0 and record.detection["fpr"] == 0.0
    assert sum(record.row()["accepted"]) == 1  # Krum's single choice


# --- ARC ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(("n", "f", "k"), [(5, 1, 1), (10, 2, 3), (10, 0, 0), (20, 4, 6),
                                           (7, 3, 3)])
def test_arc_clips_floor_2f_over_n_times_n_minus_f(n, f, k):
    assert arc_clipped(n, f) == k == math.floor(2 * (f / n) * (n - f))


def test_arc_clips_the_largest_to_the_largest_unclipped_norm():
    # norms 1, 2, 3, 4, 10 along e_0; n = 5, f = 1 -> k = 1: 10 is clipped to 4
    x = torch.tensor([[1.0, 0.0], [2.0, 0.0], [10.0, 0.0], [3.0, 0.0], [4.0, 0.0]])
    agg = create("arc", f=1, inner="fedavg")(x)
    assert agg.update.tolist() == pytest.approx([(1 + 2 + 4 + 3 + 4) / 5, 0.0])
    assert agg.diagnostics["clipped"] == 1 and agg.diagnostics["clip_level"] == 4.0
    # n = 10, f = 2 -> k = 3 of norms 1..10: 10, 9, 8 clipped to 7
    y = torch.arange(1.0, 11.0)[:, None] * torch.tensor([[0.6, 0.8]])
    agg = create("arc", f=2, inner="fedavg")(y)
    expected = (sum(range(1, 8)) + 3 * 7) / 10
    assert torch.allclose(agg.update, torch.tensor([0.6, 0.8]) * expected)


def test_arc_keeps_each_clients_context_and_selection():
    x = honest(7)
    x[6] *= -1e6
    agg = create("arc", f=2, inner="krum", inner_params={"f": 2})(x)
    assert agg.accepted is not None and not bool(agg.accepted[6])
    with pytest.raises(AggregatorError, match="needs at least 5 clients \\(n > 2f\\)"):
        create("arc", f=2)(honest(4))


@pytest.mark.parametrize(("inner", "inner_params"), [
    ("median", None), ("median", {"weighted": True}), ("trimmedmean", {"f": 3}),
    ("trimmedmean", {"beta": 0.2}), ("fedavg", None), ("fedavg", {"weighted": True}),
    ("krum", {"f": 3})])
def test_arc_streams_a_coordinate_wise_inner_rule_bit_for_bit(inner, inner_params):
    """Column blocks of clipped rows (no copy of the updates) give exactly what the inner rule
    gives on a clipped copy; x spans several blocks and ends in a partial one."""
    from fedshield.aggregators.clipping import clip_factors
    from fedshield.aggregators.kernels import row_norms, sort_block_columns

    n, f = 16, 3
    d = 16 * sort_block_columns(n) * 2 + 777
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(n, d, generator=gen)
    x[:f] *= torch.tensor([50.0, 1e6, 3.0])[:, None]
    weights = torch.rand(n, generator=gen, dtype=torch.float64) * 100
    before = x.clone()
    agg = create("arc", f=f, inner=inner, inner_params=inner_params)(x, weights=weights)
    assert torch.equal(x, before)
    norms = row_norms(x)
    k = arc_clipped(n, f)
    order = torch.sort(norms, descending=True, stable=True).indices
    factors = clip_factors(norms[order[:k]], float(norms[order[k]]))
    clipped = x.clone()
    clipped[order[:k]] *= factors.to(x.dtype)[:, None]
    expected = create(inner, **(inner_params or {}))(clipped, weights=weights)
    assert torch.equal(agg.update, expected.update)
    assert agg.diagnostics["inner"] == expected.diagnostics


# --- FLDetector ---------------------------------------------------------------------------------
def test_lbfgs_reproduces_a_known_hessian_from_conjugate_pairs():
    """On f(w) = ½ wᵀAw the pairs (s, As) pin B: with A-conjugate s spanning ℝ^d, B v = A v."""
    A = torch.diag(torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64))
    s = [torch.eye(4, dtype=torch.float64)[i] for i in range(4)]
    y = [A @ si for si in s]
    v = torch.tensor([0.3, -1.0, 2.0, 0.5], dtype=torch.float64)
    S, Y = torch.stack(s), torch.stack(y)
    assert torch.allclose(lbfgs_product(S, Y, v), A @ v, atol=1e-12)
    # a ring buffer: the same pairs stored out of order, with their chronological order
    perm = [2, 0, 3, 1]
    stored_s, stored_y = S[perm], Y[perm]
    chronological = [perm.index(k) for k in range(4)]
    assert torch.allclose(lbfgs_product(stored_s, stored_y, v, chronological), A @ v,
                          atol=1e-12)
    # one pair: B = σ I on the complement, σ = yᵀs/sᵀs, and B s = y (the secant equation)
    one = lbfgs_product(S[2:3], Y[2:3], s[2])
    assert torch.allclose(one, y[2])
    assert torch.equal(lbfgs_product(S, Y, v, []), torch.zeros(4, dtype=torch.float64))


def test_lbfgs_secant_holds_for_the_latest_pair_of_a_general_quadratic():
    g = torch.Generator().manual_seed(1)
    m = torch.randn(6, 6, generator=g, dtype=torch.float64)
    A = m @ m.T + 6 * torch.eye(6, dtype=torch.float64)
    s = [torch.randn(6, generator=g, dtype=torch.float64) for _ in range(3)]
    y = [A @ si for si in s]
    assert torch.allclose(lbfgs_product(torch.stack(s), torch.stack(y), s[-1]), y[-1],
                          atol=1e-9)


def test_exact_one_dimensional_kmeans_matches_brute_force():
    rng = np.random.default_rng(0)
    values = rng.normal(size=9)
    for k in (1, 2, 3):
        cost, labels = kmeans_1d(values, k)
        best = math.inf
        order = np.sort(values)
        for cuts in itertools.combinations(range(1, 9), k - 1):
            parts = np.split(order, cuts)
            best = min(best, sum(((p - p.mean()) ** 2).sum() for p in parts))
        assert cost == pytest.approx(best, abs=1e-12)
        assert len(set(labels.tolist())) == k
    _, labels = kmeans_1d(np.array([0.1, 5.0, 0.2, 5.1, 0.15]), 2)
    assert labels.tolist() == [0, 1, 0, 1, 0]  # label 1 = the higher cluster


def test_gap_statistic_sees_two_clusters_only_when_there_are_two():
    rng = np.random.default_rng(0)
    two = np.concatenate([rng.normal(0.02, 0.002, 16), rng.normal(0.2, 0.01, 4)])
    assert gap_clusters(two, 4, 20, np.random.default_rng(1)) >= 2
    one = rng.uniform(0.04, 0.06, 20)
    assert gap_clusters(one, 4, 20, np.random.default_rng(1)) == 1
    assert gap_clusters(np.full(20, 0.05), 4, 20, np.random.default_rng(1)) == 1


def quadratic_round(w, centres, A, lr=0.1):
    """Honest deltas of clients minimising ½(w − c_i)ᵀA(w − c_i) by one gradient step."""
    return torch.stack([-lr * (A @ (w - c)) for c in centres])


def test_fldetector_flags_unpredictable_clients_on_a_quadratic_and_spares_honest_ones():
    d, n, bad = 6, 12, [2, 7, 9]
    g = torch.Generator().manual_seed(0)
    A = torch.diag(torch.linspace(0.5, 2.0, d, dtype=torch.float64))
    centres = [torch.ones(d, dtype=torch.float64) + 0.05 * torch.randn(d, generator=g,
                                                                       dtype=torch.float64)
               for _ in range(n)]
    rule = create("detect", detector="fldetector", detector_params={"window": 5, "warmup": 3},
                  inner="median")
    w = torch.zeros(d, dtype=torch.float64)
    flags = []
    for _ in range(15):
        x = quadratic_round(w, centres, A)
        x[bad] = x[bad].abs().mean() * torch.randn(len(bad), d, generator=g, dtype=torch.float64)
        agg = rule(x.float(), client_ids=[f"node-{i}" for i in range(n)])
        w = w + agg.update.double()
        flags.append(agg.flagged.tolist())
    assert flags[0] == [False] * n  # warm-up
    for row in flags[-5:]:
        assert row == [i in bad for i in range(n)]


def test_fldetector_keeps_its_pair_products_up_to_date_in_the_ring_buffer():
    det = create_detector("fldetector", window=3, warmup=0)
    g = torch.Generator().manual_seed(0)
    for _ in range(6):  # wraps the 3-row buffers twice
        det(torch.randn(4, 5, generator=g))
        det.observe(torch.randn(5, generator=g))
    state = det.state_dict()
    S, Y = state["s"], state["y"]
    assert torch.allclose(state["ss"], S @ S.T) and torch.allclose(state["sy"], S @ Y.T)
    assert sorted(state["order"]) == [0, 1, 2]


def test_fldetector_keeps_history_by_client_id_not_position():
    det = create_detector("fldetector", warmup=0, window=3)
    det(honest(4), client_ids=[10, 11, 12, 13])
    det.observe(torch.ones(12) * 0.01)
    det(honest(4, seed=1), client_ids=[13, 12, 11, 10])
    assert sorted(det.state_dict()["last"]) == [10, 11, 12, 13]
    with pytest.raises(AggregatorError, match="distinct"):
        det(honest(2), client_ids=[1, 1])
    with pytest.raises(AggregatorError, match="call reset"):
        det(torch.ones(4, 5))


# --- FreqFed ------------------------------------------------------------------------------------
def test_low_frequency_is_the_orthonormal_dct_ii_truncated():
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0], [4.0, -1.0, 0.0, 2.0]])
    d = 4
    expected = torch.zeros(2, 2, dtype=torch.float64)
    for row in range(2):
        for k in range(2):
            c = math.sqrt(1 / d) if k == 0 else math.sqrt(2 / d)
            expected[row, k] = c * sum(float(x[row, m]) * math.cos(math.pi * k * (2 * m + 1)
                                                                    / (2 * d)) for m in range(d))
    assert torch.allclose(low_frequency(x, 0.5), expected, atol=1e-12)
    assert low_frequency(x, 0.1).shape == (2, 1)  # ⌈0.1 · 4⌉ = 1 coefficient


def test_freqfed_ignores_high_frequency_differences_and_catches_low_frequency_ones():
    """Built in the DCT domain: honest rows share a low band L and carry large random high-band
    coefficients, so their full-vector cosines are near 0; the attackers send −L with the same
    kind of high band. Only the low band separates them, and FreqFed looks only there."""
    from scipy.fft import idct

    d, n, low = 64, 10, 16
    rng = np.random.default_rng(0)
    base = rng.normal(size=low)
    coefficients = np.zeros((n, d))
    coefficients[:, :low] = base + 0.05 * rng.normal(size=(n, low))
    coefficients[:, low:] = 3.0 * rng.normal(size=(n, d - low))
    coefficients[[1, 4], :low] = -base
    x = torch.from_numpy(idct(coefficients, type=2, norm="ortho", axis=1)).float()
    full = create_detector("flame")(x)  # the same clustering on the whole vectors
    found = create_detector("freqfed", fraction=low / d)(x)
    kept = set(torch.nonzero(~found.flags).flatten().tolist())
    assert kept.isdisjoint({1, 4}) and len(kept) >= n // 2 + 1  # a majority, all honest
    assert not (bool(full.flags[1]) and bool(full.flags[4]))  # the full vectors hide them
    # the honest low bands are within 0.006 of each other, the attackers' ~2 away
    scores = found.scores.tolist()
    assert min(scores[1], scores[4]) > 1.9 > 0.01 > max(scores[i] for i in kept)
