"""Where Flower 1.42's built-in robust strategies are wrong, ours is right.

Flower's strategies are driven offline through ``aggregate_train`` on reply Messages built with
explicit Metadata; no SuperLink or Ray is started.
"""

from __future__ import annotations

import logging
import time

import flwr.app as flwr_app
import flwr.serverapp.strategy as flwr_strategy
import numpy as np
import pytest
import torch

from fedshield.aggregators import create
from fedshield.aggregators.kernels import pairwise_sq_distances

logging.getLogger("flwr").setLevel(logging.ERROR)


def replies(rows: np.ndarray, num_examples: list[int] | None = None) -> list:
    out = []
    for i, row in enumerate(rows):
        md = flwr_app.Metadata(run_id=1, message_id=f"r{i}", src_node_id=100 + i, dst_node_id=0,
                               reply_to_message_id=f"m{i}", group_id="1", created_at=time.time(),
                               ttl=3600.0, message_type=flwr_app.MessageType.TRAIN)
        count = num_examples[i] if num_examples else 10
        content = flwr_app.RecordDict({
            "arrays": flwr_app.ArrayRecord(
                array_dict={"w": flwr_app.Array(np.ascontiguousarray(row, dtype=np.float32))}),
            "metrics": flwr_app.MetricRecord({"num-examples": count}),
        })
        out.append(flwr_app.Message(content=content, metadata=md))
    return out


def flower_vector(strategy, rows: np.ndarray, **kw) -> np.ndarray:
    arrays, _ = strategy.aggregate_train(1, replies(rows, **kw))
    return arrays["w"].numpy().astype(np.float64)


def paper_krum_scores(dist: np.ndarray, members: list[int], f: int) -> dict[int, float]:
    k = max(1, len(members) - f - 2)
    return {i: sum(sorted(dist[i, j] for j in members if j != i)[:k]) for i in members}


def paper_bulyan(x: np.ndarray, f: int) -> np.ndarray:
    """El Mhamdi et al. 2018, written plainly: recursive Krum, then β closest to the median."""
    dist = ((x[:, None, :].astype(np.float64) - x[None, :, :]) ** 2).sum(-1)
    n = len(x)
    theta, beta = n - 2 * f, n - 4 * f
    remaining, chosen = list(range(n)), []
    for _ in range(theta):
        scores = paper_krum_scores(dist, remaining, f)
        best = min(remaining, key=lambda i: (scores[i], i))
        chosen.append(best)
        remaining.remove(best)
    sel = x[sorted(chosen)].astype(np.float64)
    med = np.median(sel, axis=0)
    out = np.empty(x.shape[1])
    for j in range(x.shape[1]):
        closest = sorted(sel[:, j], key=lambda v: abs(v - med[j]))[:beta]
        out[j] = np.mean(closest)
    return out


def test_krum_on_raw_weights_with_a_large_offset() -> None:
    """Float32 Gram distances on raw weights with a large common offset lose every digit; ours
    (centred, float64 accumulation) match the float64 truth and give the exact Krum choice."""
    from flwr.serverapp.strategy.multikrum import compute_distances

    gen = np.random.default_rng(0)
    n, d = 10, 100_000
    spread = np.linspace(0.5, 3.0, n)[:, None]  # client i's update std, so Krum has a clear choice
    weights = (1000.0 + 1e-4 * spread * gen.standard_normal((n, d))).astype(np.float32)
    truth = ((weights[:, None, :].astype(np.float64) - weights[None]) ** 2).sum(-1)
    off = ~np.eye(n, dtype=bool)

    records = [flwr_app.ArrayRecord(array_dict={"w": flwr_app.Array(w)}) for w in weights]
    theirs = compute_distances(records)
    # Flower's float32 ‖x‖² + ‖y‖² − 2xy cancels away every digit: its values are wrong by more
    # than the distances themselves (negative or large positive, depending on the BLAS kernel).
    assert (np.abs(theirs - truth)[off] / truth[off]).max() > 1.0

    ours = pairwise_sq_distances(torch.from_numpy(weights)).numpy()
    assert (np.abs(ours - truth)[off] / truth[off]).max() < 1e-5

    f = 2
    exact_scores = paper_krum_scores(truth, list(range(n)), f)
    exact_choice = min(range(n), key=lambda i: (exact_scores[i], i))
    assert exact_choice == 0  # the client with the smallest spread
    agg = create("krum", f=f)(torch.from_numpy(weights))
    assert agg.diagnostics["selected"] == [exact_choice]


def test_bulyan_recursive_selection_not_flowers_one_shot() -> None:
    """Flower 1.42's Bulyan selects θ by one-shot Multi-Krum."""
    gen = np.random.default_rng(7)
    n, f, d = 11, 2, 20
    scale = np.array([0.1, 0.2, 0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])[:, None]
    x = (scale * gen.standard_normal((n, d))).astype(np.float32)

    paper = paper_bulyan(x, f)
    ours = create("bulyan", f=f)(torch.from_numpy(x)).update.double().numpy()
    np.testing.assert_allclose(ours, paper, atol=1e-6)

    flower = flower_vector(flwr_strategy.Bulyan(num_malicious_nodes=f), x)
    oneshot = create("bulyan", f=f, selection="oneshot")(torch.from_numpy(x)).update.numpy()
    np.testing.assert_allclose(flower, oneshot, atol=1e-6)  # Flower = the one-shot variant
    assert np.abs(flower - paper).max() > 1e-2  # ... which is not the paper's Bulyan


def test_trimmed_mean_beta_trims_nothing_at_n4_in_flower() -> None:
    """Flower 1.42's FedTrimmedAvg(β=0.2) at n = 4 averages a 1e6 outlier in."""
    x = np.array([[1e6], [0.0], [0.1], [-0.1]], dtype=np.float32)
    flower = flower_vector(flwr_strategy.FedTrimmedAvg(beta=0.2), x)
    assert flower[0] == pytest.approx(250_000.0)
    ours = create("trimmedmean", f=1)(torch.from_numpy(x)).update
    assert ours.item() == pytest.approx(0.05)  # mean of 0 and 0.1
    with pytest.raises(ValueError, match="floor"):  # β that cannot trim at this n is refused
        create("trimmedmean", beta=0.2)(torch.from_numpy(x))


def test_multikrum_ignores_inflated_sample_counts() -> None:
    """Flower 1.42's MultiKrum weights the selected by reported num-examples."""
    gen = np.random.default_rng(3)
    honest = 0.1 * gen.standard_normal((9, 30))
    attacker = honest.mean(0) + 0.05  # inconspicuous: always selected
    x = np.vstack([attacker, honest]).astype(np.float32)
    counts = [10_000] + [10] * 9
    flower = flower_vector(flwr_strategy.MultiKrum(num_malicious_nodes=1, num_nodes_to_select=9),
                           x, num_examples=counts)
    ours = create("multikrum", f=1, m=9)(torch.from_numpy(x), weights=counts).update.numpy()
    selected = create("multikrum", f=1, m=9)(torch.from_numpy(x)).accepted.numpy()
    assert selected[0]  # the attacker is selected by both
    np.testing.assert_allclose(ours, x[selected].mean(0), atol=1e-6)  # uniform, as in the paper
    assert np.abs(flower - x[0]).max() < 0.01  # Flower's result is essentially the attacker's
    assert np.abs(ours - x[0]).max() > 0.05


def test_median_and_trimmed_mean_agree_with_flower_where_flower_is_right() -> None:
    gen = np.random.default_rng(5)
    x = gen.standard_normal((10, 50)).astype(np.float32)
    np.testing.assert_allclose(create("median")(torch.from_numpy(x)).update.numpy(),
                               flower_vector(flwr_strategy.FedMedian(), x), atol=1e-6)
    np.testing.assert_allclose(create("trimmedmean", f=2)(torch.from_numpy(x)).update.numpy(),
                               flower_vector(flwr_strategy.FedTrimmedAvg(beta=0.2), x), atol=1e-6)
