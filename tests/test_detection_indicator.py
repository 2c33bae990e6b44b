"""BackdoorIndicator: the OOD indicator set, its planting, the check, and the harness run."""

from __future__ import annotations

import pytest
import torch

from fedshield.aggregators import AggregatorError, create, create_detector
from fedshield.server.indicator import IndicatorError, IndicatorPlanter, indicator_set
from fedshield.tasks.config import RunConfig
from fedshield.tasks.task import get_task

fashion = pytest.importorskip("fedshield.tasks.datasets").load_dataset


def needs_fashion_mnist():
    try:
        fashion("fashion-mnist")
    except Exception as exc:  # the Debian package is not installed
        pytest.skip(f"Fashion-MNIST is not available: {exc}")


@pytest.fixture(scope="module")
def digits_task():
    return get_task(RunConfig(dataset="digits", num_clients=10))


def test_the_indicator_set_is_ood_in_the_tasks_format_with_balanced_labels(digits_task):
    needs_fashion_mnist()
    ds = digits_task.dataset
    x, y = indicator_set(ds, "digits", 100, seed=0)
    assert tuple(x.shape) == (100, *ds.input_shape) and x.dtype == torch.float32
    assert float(x.min()) >= ds.low - 1e-5 and float(x.max()) <= ds.high + 1e-5
    assert torch.bincount(y, minlength=10).tolist() == [10] * 10
    x2, y2 = indicator_set(ds, "digits", 100, seed=0)
    assert torch.equal(x, x2) and torch.equal(y, y2)  # seeded
    assert not torch.equal(indicator_set(ds, "digits", 100, seed=1)[1], y)
    with pytest.raises(IndicatorError, match="no out-of-distribution set"):
        indicator_set(ds, "npz", 10, seed=0)


def test_planting_teaches_the_indicator_and_a_keeping_update_is_flagged(digits_task):
    needs_fashion_mnist()
    params = create_detector("backdoor-indicator", samples=100, lr=0.05).params()
    planter = IndicatorPlanter(digits_task, "digits", params, seed=0)
    start = digits_task.initial_vector()
    before = planter.accuracy(start)
    planted = planter.plant(start, 1)
    after = planter.accuracy(planted)
    assert after >= 0.95 > before
    detector = create_detector("backdoor-indicator", threshold=0.95)
    detector.bind(planter.check)
    keep = torch.zeros_like(planted)  # an update that leaves the planted model as it is
    erase = start - planted  # an update that returns to the unplanted model
    found = detector(torch.stack([keep, erase]))
    assert found.flags.tolist() == [True, False]
    assert found.scores[0] == pytest.approx(after)


def test_the_detector_refuses_to_run_unbound():
    with pytest.raises(AggregatorError, match="no indicator bound"):
        create("detect", detector="backdoor-indicator", inner="fedavg")(torch.ones(3, 4))


def test_the_harness_plants_and_checks_every_round():
    needs_fashion_mnist()
    from fedshield.simulations.engine_inline import run_inline

    cfg = RunConfig(dataset="digits", num_clients=6, rounds=2, attack="backdoor-patch",
                    num_malicious=1, aggregator="detect", aggregator_params={
                        "detector": "backdoor-indicator", "inner": "fedavg",
                        "detector_params": {"samples": 50, "epochs": 5}})
    result = run_inline(cfg)
    for row in result.rounds:
        assert row["fpr"] is not None and row["recall"] is not None
        assert row["accuracy"] is not None


def test_the_flower_engine_and_robust_strategy_refuse_it():
    from fedshield.server.strategy import RobustStrategy, StrategyError
    from fedshield.simulations import scenario as sc

    spec = {"name": "detect", "detector": "backdoor-indicator", "inner": "fedavg"}
    cells = sc.expand(sc.from_dict({"engine": "flower", "aggregator": spec}))
    with pytest.raises(sc.ScenarioError, match="set engine = 'inline'"):
        sc.validate_components(cells)
    with pytest.raises(StrategyError, match="harness's inline engine"):
        RobustStrategy(create("detect", detector="backdoor-indicator", inner="fedavg"))
