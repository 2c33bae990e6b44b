"""On identical replies, RobustStrategy with our rules agrees with Flower 1.42's built-in robust
strategies where those are correct, and is right where they are not:
float32 Gram distances on raw weights (Krum), num-examples-weighted Multi-Krum, one-shot Bulyan."""

from __future__ import annotations

import gc

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord
from flwr.serverapp.strategy import Bulyan, FedMedian, FedTrimmedAvg, Krum, MultiKrum
from flwr.serverapp.strategy.multikrum import compute_distances
from helpers_flower import flat, global_record, reply

from fedshield.aggregators import create
from fedshield.server.strategy import RobustStrategy


def deltas(n: int, seed: int = 0, bad: int = 0) -> np.ndarray:
    """n (9,) deltas: honest ~ N(0.1, 0.05²), the last ``bad`` far away at +5."""
    rng = np.random.default_rng(seed)
    out = rng.normal(0.1, 0.05, size=(n, 9)).astype(np.float32)
    if bad:
        out[-bad:] = 5.0 + rng.normal(0, 0.05, size=(bad, 9))
    return out


def replies(d: np.ndarray, num_examples=None):
    counts = num_examples if num_examples is not None else [10] * len(d)
    return [reply(i + 1, row, num_examples=int(c)) for i, (row, c) in
            enumerate(zip(d, counts, strict=True))]


def ours(rule, d, num_examples=None) -> np.ndarray:
    strategy = RobustStrategy(rule)
    strategy.begin_round(global_record())
    arrays, _ = strategy.aggregate_train(1, replies(d, num_examples))
    return flat(arrays)


def flowers(strategy, d, num_examples=None) -> np.ndarray:
    # Flower's Bulyan calls gc.collect() per reply (keep_input=False); freezing the heap of
    # already-imported torch/flwr objects keeps that cheap in the test process
    gc.freeze()
    try:
        arrays, _ = strategy.aggregate_train(1, replies(d, num_examples))
    finally:
        gc.unfreeze()
    return flat(arrays)


@pytest.mark.parametrize(("name", "params", "builtin"), [
    ("median", {}, lambda: FedMedian()),
    ("trimmedmean", {"f": 2}, lambda: FedTrimmedAvg(beta=0.2)),  # int(0.2 * 10) = 2 per side
    ("krum", {"f": 2}, lambda: Krum(num_malicious_nodes=2)),
    ("multikrum", {"f": 2, "m": 4}, lambda: MultiKrum(num_malicious_nodes=2,
                                                       num_nodes_to_select=4)),
    ("bulyan", {"f": 1, "selection": "oneshot"}, lambda: Bulyan(num_malicious_nodes=1)),
])
def test_agrees_with_flower_builtin_on_identical_replies(name, params, builtin):
    d = deltas(10, seed=1, bad=2 if name != "bulyan" else 1)
    np.testing.assert_allclose(ours(create(name, **params), d), flowers(builtin(), d),
                               rtol=0, atol=1e-6)


def test_krum_on_deltas_is_right_where_float32_weights_are_not():
    """Raw weights with a large common offset: Flower's Gram trick in float32 cancels away the
    distances; on deltas the choice is the exact Krum choice."""
    n, f, d = 7, 2, 100_000
    rng = np.random.default_rng(0)
    delta = rng.normal(0, 1e-3, size=(n, d)).astype(np.float32)
    delta[-2:] += 0.02  # two outliers: exact Krum never picks them
    exact = ((delta[:, None, :].astype(np.float64) - delta[None, :, :]) ** 2).sum(-1)
    scores = np.sort(exact, axis=1)[:, 1:n - f - 1].sum(1)
    expected = int(np.argmin(scores))
    weights = 1000.0 + delta  # what the replies carry (float32 model weights)
    flower_dist = compute_distances([ArrayRecord({"w": Array(w.copy())}) for w in weights])
    off = ~np.eye(n, dtype=bool)
    # float32 cancellation: Flower's values are off by more than the distances themselves
    # (negative or large positive garbage, depending on the BLAS kernel)
    assert (np.abs(flower_dist - exact)[off] / exact[off]).max() > 1.0
    rule = create("krum", f=f)
    strategy = RobustStrategy(rule)
    base = ArrayRecord({"w": Array(np.full(d, 1000.0, np.float32))})
    msgs = [reply(i + 1, 0.0, arrays=ArrayRecord({"w": Array(weights[i].copy())}))
            for i in range(n)]
    strategy.begin_round(base)
    new, _ = strategy.aggregate_train(1, msgs)
    np.testing.assert_array_equal(new["w"].numpy(), weights[expected])
    decisions = [c["status"] for c in strategy.reports[1]["clients"]]
    assert decisions.index("accepted") == expected and decisions.count("accepted") == 1


def test_multikrum_averages_uniformly_where_flower_trusts_num_examples():
    """Blanchard et al. average the m selected updates uniformly; Flower weights them by the
    client-reported num-examples, which one client inflates."""
    d = deltas(10, seed=2, bad=2)
    counts = [10] * 10
    counts[0] = 10_000
    rule = create("multikrum", f=2, m=4)
    got = ours(rule, d, counts)
    strategy = RobustStrategy(create("multikrum", f=2, m=4))
    strategy.begin_round(global_record())
    strategy.aggregate_train(1, replies(d, counts))
    chosen = [i for i, c in enumerate(strategy.reports[1]["clients"]) if c["status"] == "accepted"]
    np.testing.assert_allclose(got, flat(global_record()) + d[chosen].mean(0), atol=1e-6)
    flower = flowers(MultiKrum(num_malicious_nodes=2, num_nodes_to_select=4), d, counts)
    if 0 in chosen:  # the inflated client dominates Flower's weighted average
        assert np.abs(flower - got).max() > 1e-3


def test_bulyan_recursive_selection_differs_from_flowers_one_shot():
    """The paper's Bulyan applies Krum recursively; Flower's new-API Bulyan selects once with
    Multi-Krum. Ours (default, recursive) equals a float64 reference of the paper's procedure."""
    n, f = 11, 2
    theta, beta = n - 2 * f, n - 4 * f
    rng = np.random.default_rng(7)
    sig = np.linspace(0.01, 0.3, n)[:, None]  # heteroscedastic honest clients
    d = (rng.normal(0, 1, size=(n, 9)) * sig).astype(np.float32)
    x = d.astype(np.float64)
    remaining, chosen = list(range(n)), []
    for _ in range(theta):
        r = len(remaining)
        sub = x[remaining]
        dist = ((sub[:, None] - sub[None]) ** 2).sum(-1)
        k = max(1, r - f - 2)
        scores = np.sort(dist, axis=1)[:, 1:k + 1].sum(1)
        chosen.append(remaining.pop(int(np.argmin(scores))))
    sel = np.sort(x[chosen], axis=0)
    med = np.median(sel, axis=0)
    idx = np.argsort(np.abs(sel - med), axis=0, kind="stable")[:beta]
    expected = np.take_along_axis(sel, idx, axis=0).mean(0)
    got = ours(create("bulyan", f=f), d)
    np.testing.assert_allclose(got, flat(global_record()) + expected, atol=1e-5)
    flower = flowers(Bulyan(num_malicious_nodes=f), d)
    assert np.abs(flower - got).max() > 1e-4  # the one-shot selection changes the result
    torch.testing.assert_close(torch.tensor(flower),
                               torch.tensor(ours(create("bulyan", f=f, selection="oneshot"), d)),
                               atol=1e-6, rtol=0)
