"""RobustStrategy on a diverging run: a non-finite new global model or a round whose every reply
is non-finite is marked ``diverged`` and the last finite model is kept and returned (the round
core's behaviour, in both engines)."""

from __future__ import annotations

import numpy as np
import torch
from helpers_flower import flat, global_record, reply

from fedshield.aggregators import create
from fedshield.server.strategy import RobustStrategy


def _round(strategy: RobustStrategy, replies):
    strategy.begin_round(global_record(), sent_nodes=None)
    return strategy.aggregate_train(1, replies)


def test_non_finite_new_global_is_kept_out_and_marked_diverged():
    # server_lr 1e39 is +inf in float32: θ_t + η · mean is not finite
    strategy = RobustStrategy(create("fedavg"), server_lr=1e39)
    new, metrics = _round(strategy, [reply(1, 1.0), reply(2, 2.0)])
    report = strategy.reports[1]
    assert metrics["robust-skipped"] == 1
    np.testing.assert_array_equal(flat(new), flat(global_record()))  # θ_t, returned
    assert report["diverged"] is True and "not finite" in report["skip_reason"]
    assert report["model_hash_before"] == report["model_hash_after"]
    assert torch.isfinite(strategy.latest_vec).all()
    np.testing.assert_array_equal(strategy.latest_vec.numpy(), flat(global_record()))
    assert strategy.records[1].row()["diverged"] is True


def test_every_reply_non_finite_is_divergence_some_is_not():
    strategy = RobustStrategy(create("fedavg"))
    nan = np.full(9, np.nan)
    new, metrics = _round(strategy, [reply(1, nan), reply(2, np.full(9, np.inf))])
    assert strategy.reports[1]["diverged"] is True
    np.testing.assert_array_equal(flat(new), flat(global_record()))
    assert metrics["robust-rejected-non-finite"] == 2
    new, metrics = _round(strategy, [reply(1, nan), reply(2, 1.0)])
    report = strategy.reports[1]
    assert new is not None and report["diverged"] is False and not report["skipped"]
    np.testing.assert_allclose(flat(new), flat(global_record()) + 1.0)
    assert strategy.records[1].row()["diverged"] is False
