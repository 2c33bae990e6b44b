"""Detection and share metrics on hand-built cases."""

import pytest
import torch

from fedshield.aggregators import Aggregation
from fedshield.simulations import metrics


def test_detection_counts_rejected_clients_as_flagged():
    # clients 0..5; malicious = {0, 1}; the rule rejects 0 (TP) and 3 (FP), keeps 1 (FN)
    accepted = torch.tensor([False, True, True, False, True, True])
    malicious = torch.tensor([True, True, False, False, False, False])
    d = metrics.detection(accepted, malicious)
    assert (d["tp"], d["fp"], d["fn"], d["tn"]) == (1, 1, 1, 3)
    assert d["precision"] == pytest.approx(0.5)
    assert d["recall"] == pytest.approx(0.5)
    assert d["fpr"] == pytest.approx(1 / 4)


def test_detection_undefined_ratios_are_none():
    d = metrics.detection([True, True], [False, False])
    assert d["precision"] is None and d["recall"] is None and d["fpr"] == 0.0
    assert metrics.detection(None, [True])["recall"] is None
    with pytest.raises(ValueError, match="entries"):
        metrics.detection([True], [True, False])


def test_share_from_weights_and_from_accepted():
    mal = torch.tensor([True, False, False, False])
    agg = Aggregation(update=torch.zeros(2), weights=torch.tensor([0.1, 0.3, 0.3, 0.3]))
    assert metrics.malicious_share(agg, torch.zeros(4, 2), mal, "x", {}) == (
        pytest.approx(0.1), "weights")
    agg = Aggregation(update=torch.zeros(2), accepted=torch.tensor([True, True, False, False]))
    assert metrics.malicious_share(agg, torch.zeros(4, 2), mal, "krum", {}) == (0.5, "accepted")
    agg = Aggregation(update=torch.zeros(2))
    assert metrics.malicious_share(agg, torch.zeros(4, 2), mal, "geomed", {}) == (None, "none")


def test_coordinate_share_of_median_and_trimmed_mean():
    # 5 clients, 2 coordinates; client 0 malicious.
    # coord 0 values [3, 1, 2, 5, 4] -> sorted clients [1, 2, 0, 4, 3]: median is client 0's value
    # coord 1 values [9, 1, 2, 3, 4] -> client 0 is the max: not the median
    updates = torch.tensor([[3.0, 9.0], [1.0, 1.0], [2.0, 2.0], [5.0, 3.0], [4.0, 4.0]])
    mal = torch.tensor([True, False, False, False, False])
    agg = Aggregation(update=torch.zeros(2))
    share, kind = metrics.malicious_share(agg, updates, mal, "median", {})
    assert kind == "coordinates" and share == pytest.approx(0.5)
    # trimmed mean f=1 keeps sorted positions 1..3: coord 0 keeps clients {2, 0, 4} -> 1/3,
    # coord 1 keeps {2, 3, 4} -> 0; mean 1/6
    share, _ = metrics.malicious_share(agg, updates, mal, "trimmedmean", {"f": 1})
    assert share == pytest.approx(1 / 6)
    # even n: median averages the two middle values, each counts 1/2
    share, _ = metrics.malicious_share(agg, updates[:4, :1], mal[:4], "median", {})
    assert metrics.coordinate_positions("median", 4, {}) == [1, 2]
    assert share == pytest.approx(0.5)  # sorted clients [1, 2, 0, 3]: positions 1,2 = {2, 0}


def test_summary_final_best_target_and_drops():
    rows = [{"round": 1, "accuracy": 0.5, "asr": 0.9, "recall": 1.0},
            {"round": 2, "accuracy": None, "recall": 0.0},
            {"round": 3, "accuracy": 0.8, "asr": 0.2, "recall": None},
            {"round": 4, "accuracy": 0.7, "asr": 0.1}]
    s = metrics.summarize(rows, target_accuracy=0.75)
    assert s["final_accuracy"] == 0.7 and s["best_accuracy"] == 0.8
    assert s["rounds_to_target"] == 3 and s["final_asr"] == 0.1 and s["max_asr"] == 0.9
    assert s["recall"] == pytest.approx(0.5)
    assert metrics.summarize(rows, 0.99)["rounds_to_target"] is None
    cells = [{"id": "a", "clean": True, "clean_key": "k", "summary": {"final_accuracy": 0.9}},
             {"id": "b", "clean": False, "clean_key": "k", "summary": {"final_accuracy": 0.6}},
             {"id": "c", "clean": False, "clean_key": "z", "summary": {"final_accuracy": 0.6}}]
    drops = metrics.accuracy_drops(cells)
    assert drops["a"] == 0.0 and drops["b"] == pytest.approx(0.3) and drops["c"] is None
    worst = metrics.worst_case({("krum", "none"): 0.9, ("krum", "alie"): 0.4,
                                ("median", "none"): 0.8, ("median", "alie"): 0.7})
    assert worst == {"krum": (0.4, "alie"), "median": (0.7, "alie")}


def test_norm_stats():
    updates = torch.tensor([[3.0, 4.0], [0.0, 1.0], [0.0, 3.0]])
    s = metrics.norm_stats(updates, torch.tensor([True, False, False]))
    assert s == {"norm_benign": pytest.approx(2.0), "norm_malicious": pytest.approx(5.0),
                 "norm_max": pytest.approx(5.0)}


def test_trimmed_mean_share_with_beta_params_as_the_rule_reports_them():
    from fedshield import aggregators
    # rule.params() holds both keys, the unused one None: beta=0.2 of n=5 trims 1 per side
    params = aggregators.create("trimmedmean", beta=0.2).params()
    assert metrics.trimmed_count(5, params) == 1 and metrics.trimmed_count(10, {"f": 3}) == 3
    assert metrics.coordinate_positions("trimmedmean", 5, params) == [1, 2, 3]
    assert metrics.trimmed_count(100, {"f": None, "beta": 0.29}) == 29  # 0.29·100 = 28.99…
