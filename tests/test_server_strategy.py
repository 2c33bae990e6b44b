"""RobustStrategy on constructed replies: deltas, server lr, validation of every malformed kind,
capping, skipping, determinism, FLTrust reference, adversary hook, ledger and checkpoints."""

from __future__ import annotations

import json
import random
from typing import ClassVar

import numpy as np
import pytest
import torch
from conftest import example_id, rule_examples
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord
from helpers_flower import error_reply, flat, global_record, reply

from fedshield.aggregators import Aggregation, AggregatorError, Param, Rule
from fedshield.server.checkpoint import CheckpointStore
from fedshield.server.ledger import Ledger, verify_ledger
from fedshield.server.strategy import RobustStrategy, StrategyError


class Mean(Rule):
    """Unweighted mean; records the validated input it was called with."""

    name = "test-mean"
    parameters: ClassVar[dict[str, Param]] = {"min_n": Param(1)}

    def reset(self) -> None:
        self._calls: list[dict] = []

    @property
    def calls(self) -> list[dict]:
        return self._calls

    def min_clients(self) -> int:
        return self.min_n

    def aggregate(self, x, ctx):
        self.calls.append({"updates": x.clone(), "weights": ctx.weights,
                           "client_ids": ctx.client_ids, "reference": ctx.reference})
        return Aggregation(x.mean(dim=0))


class PickFirst(Rule):
    """Selects row 0 only (like a selection rule), weights one-hot."""

    name = "test-pick-first"

    def aggregate(self, x, ctx):
        n = x.shape[0]
        accepted = torch.zeros(n, dtype=torch.bool)
        accepted[0] = True
        return Aggregation(x[0].clone(), accepted=accepted, weights=accepted.float())


class NeedsRef(Mean):
    name = "test-ref"
    needs_reference = True

    def aggregate(self, x, ctx):
        self.calls.append({"reference": ctx.reference})
        return Aggregation(ctx.reference.clone())


def run_round(strategy, replies, *, nodes=None, arrays=None):
    strategy.begin_round(arrays or global_record(), sent_nodes=nodes)
    return strategy.aggregate_train(1, replies)


def test_mean_of_deltas_with_server_lr_hand_computed():
    strategy = RobustStrategy(Mean(), server_lr=0.5)
    new, metrics = run_round(strategy, [reply(1, 1.0), reply(2, 2.0), reply(3, 6.0)])
    # mean delta = 3, server_lr 0.5 -> +1.5 on every coordinate
    np.testing.assert_allclose(flat(new), flat(global_record()) + 1.5)
    assert metrics["robust-accepted"] == 3 and metrics["robust-rejected"] == 0
    assert metrics["robust-skipped"] == 0
    assert metrics["train_loss"] == pytest.approx(0.5)  # the clients' own metric, as FedAvg
    assert metrics["robust-train-loss"] == pytest.approx(0.5)
    assert new["w"].shape == (2, 3) and new["w"].dtype == "float32"


def test_aggregates_deltas_not_weights():
    strategy = RobustStrategy(Mean())
    base = global_record(offset=1000.0)
    run_round(strategy, [reply(1, 0.25, base=base), reply(2, -0.25, base=base)], arrays=base)
    got = strategy.rule.calls[0]["updates"]
    assert got.dtype == torch.float32 and got.is_contiguous()
    torch.testing.assert_close(got, torch.tensor([[0.25] * 9, [-0.25] * 9]))


BAD_REPLIES = {
    "error-reply": lambda: error_reply(9),
    "missing-record": lambda: reply(9, 0.0, drop=("metrics",)),
    "extra-record": lambda: reply(9, 0.0, extra={"sneaky": ConfigRecord({"x": 1})}),
    "keys-mismatch": lambda: reply(9, 0.0, arrays=ArrayRecord({
        "w": Array(np.zeros((2, 3), np.float32)), "c": Array(np.zeros(3, np.float32))})),
    "shape-mismatch": lambda: reply(9, 0.0, arrays=ArrayRecord({
        "w": Array(np.zeros((3, 2), np.float32)), "b": Array(np.zeros(3, np.float32))})),
    "dtype-mismatch": lambda: reply(9, 0.0, arrays=ArrayRecord({
        "w": Array(np.zeros((2, 3), np.float64)), "b": Array(np.zeros(3, np.float32))})),
    "non-finite": lambda: reply(9, np.array([0, 0, np.nan, 0, 0, 0, 0, 0, 0])),
    "bad-num-examples": lambda: reply(9, 0.0, num_examples=0),
    "bad-meta": lambda: reply(9, 0.0, meta={"partition-id": "nine", "malicious": False}),
    "undecodable": lambda: reply(9, 0.0, arrays=ArrayRecord({
        # declared (2, 3) but the bytes hold a (6,) array
        "w": Array(dtype="float32", shape=(2, 3), stype="numpy.ndarray",
                   data=Array(np.zeros(6, np.float32)).data),
        "b": Array(np.zeros(3, np.float32))})),
}


@pytest.mark.parametrize("reason", sorted(BAD_REPLIES))
def test_malformed_reply_dropped_with_reason_round_goes_on(reason):
    strategy = RobustStrategy(Mean())
    good = [reply(1, 1.0), reply(2, 3.0)]
    new, metrics = run_round(strategy, [*good, BAD_REPLIES[reason]()])
    np.testing.assert_allclose(flat(new), flat(global_record()) + 2.0)
    assert metrics["robust-rejected"] == 1 and metrics[f"robust-rejected-{reason}"] == 1
    assert metrics["robust-accepted"] == 2
    report = strategy.reports[1]
    bad = [c for c in report["clients"] if c["status"] == "rejected"]
    assert [c["reason"] for c in bad] == [reason] and bad[0]["node_id"] == 9


def _declared_float32(data: bytes) -> ArrayRecord:
    return ArrayRecord({"w": Array(dtype="float32", shape=(2, 3), stype="numpy.ndarray",
                                   data=data),
                        "b": Array(np.zeros(3, np.float32))})


@pytest.mark.parametrize(("data", "detail"), [
    # declared float32, the bytes hold complex128: the imaginary part would be dropped silently
    (Array(np.full((2, 3), 1 + 5j, np.complex128)).data, "bytes"),
    (Array(np.zeros((2, 3), np.float64)).data, "bytes"),
    # a large payload declared as a tiny shape is refused before it is decoded
    (Array(np.zeros(4_000_000, np.float32)).data, "16000128 bytes"),
])
def test_payload_must_be_what_the_declared_dtype_and_shape_serialise_to(data, detail,
                                                                        monkeypatch):
    decoded = []
    real_numpy = Array.numpy
    monkeypatch.setattr(Array, "numpy", lambda self: decoded.append(len(self.data))
                        or real_numpy(self))
    strategy = RobustStrategy(Mean())
    _, metrics = run_round(strategy, [reply(1, 1.0), reply(2, 1.0),
                                      reply(9, 0.0, arrays=_declared_float32(data))])
    assert metrics["robust-rejected-undecodable"] == 1 and metrics["robust-accepted"] == 2
    (bad,) = [c for c in strategy.reports[1]["clients"] if c["status"] == "rejected"]
    assert detail in bad["detail"]
    assert max(decoded) < 1000  # nothing of the oversized payload was deserialised


def test_integer_buffers_are_exact_and_never_wrap():
    """Integer buffers stay out of the float robust vector: the lower median of the replies,
    exact at 2^63 − 1 (a float32 round trip would wrap it to −2^63)."""
    base = ArrayRecord({"n": Array(np.array([2**62], np.int64)),
                        "w": Array(np.zeros(2, np.float32))})
    replies = [reply(i, 0.0, base=base,
                     arrays=ArrayRecord({"n": Array(np.array([2**63 - 1], np.int64)),
                                         "w": Array(np.ones(2, np.float32))}))
               for i in (1, 2)]
    new, _ = run_round(RobustStrategy(Mean(), server_lr=4.0), replies, arrays=base)
    assert new["n"].numpy().tolist() == [2**63 - 1] and new["n"].numpy().dtype == np.int64
    np.testing.assert_allclose(new["w"].numpy(), [4.0, 4.0])


def test_integer_values_saturate_when_a_server_step_pushes_them_past_their_range():
    from fedshield.tasks.params import ParamLayout, unflatten

    layout = ParamLayout.of({"n": torch.zeros(3, dtype=torch.int64)})
    assert unflatten(torch.tensor([1e30, -1e30, 2.6]), layout)["n"].tolist() == [
        2**63 - 1, -(2**63), 3]


@pytest.mark.parametrize("value", [-5, 0.5, float("inf"), None, 2.0**53 + 2, 3.4e38])
def test_bad_num_examples_values(value):
    strategy = RobustStrategy(Mean())
    _, metrics = run_round(strategy, [reply(1, 1.0), reply(2, 1.0, num_examples=value)])
    assert metrics["robust-rejected-bad-num-examples"] == 1


def test_infinite_parameter_and_key_order_rejected():
    strategy = RobustStrategy(Mean())
    inf = reply(3, np.array([np.inf] + [0] * 8))
    swapped = reply(4, 0.0, arrays=ArrayRecord({"b": Array(np.zeros(3, np.float32)),
                                               "w": Array(np.zeros((2, 3), np.float32))}))
    _, metrics = run_round(strategy, [reply(1, 1.0), inf, swapped])
    assert metrics["robust-rejected-non-finite"] == 1
    assert metrics["robust-rejected-keys-mismatch"] == 1


def test_node_answering_twice_loses_both_replies():
    strategy = RobustStrategy(Mean())
    new, metrics = run_round(strategy, [reply(1, 1.0), reply(2, 100.0), reply(2, 100.0)])
    assert metrics["robust-rejected-duplicate-node"] == 2
    np.testing.assert_allclose(flat(new), flat(global_record()) + 1.0)


def test_reply_from_node_not_sampled_is_rejected():
    strategy = RobustStrategy(Mean())
    _, metrics = run_round(strategy, [reply(1, 1.0), reply(7, 5.0)], nodes=[1, 2])
    assert metrics["robust-rejected-unexpected-node"] == 1 and metrics["robust-accepted"] == 1


def test_num_examples_capped_at_factor_times_median():
    rule = Mean()
    strategy = RobustStrategy(rule, num_examples_cap_factor=10.0)
    replies = [reply(1, 0.0, num_examples=20), reply(2, 0.0, num_examples=30),
               reply(3, 0.0, num_examples=10**9)]
    _, metrics = run_round(strategy, replies)
    torch.testing.assert_close(rule.calls[0]["weights"],
                               torch.tensor([20.0, 30.0, 300.0], dtype=torch.float64))
    assert metrics["robust-capped"] == 1 and metrics["robust-rejected"] == 0


def test_absolute_cap_on_num_examples():
    rule = Mean()
    strategy = RobustStrategy(rule, max_num_examples=25, num_examples_cap_factor=None)
    run_round(strategy, [reply(1, 0.0, num_examples=20), reply(2, 0.0, num_examples=30)])
    torch.testing.assert_close(rule.calls[0]["weights"],
                               torch.tensor([20.0, 25.0], dtype=torch.float64))


def test_too_few_valid_replies_keeps_the_model_and_says_so():
    strategy = RobustStrategy(Mean(min_n=3))
    new, metrics = run_round(strategy, [reply(1, 1.0), reply(2, 1.0), error_reply(3)])
    np.testing.assert_array_equal(flat(new), flat(global_record()))  # the model is kept
    assert metrics["robust-skipped"] == 1
    assert "needs 3" in strategy.reports[1]["skip_reason"]
    assert strategy.reports[1]["model_hash_before"] == strategy.reports[1]["model_hash_after"]


def test_replies_are_kept_whole_when_asked():
    strategy = RobustStrategy(Mean(), release_replies=False)
    replies = [reply(1, 1.0), reply(2, 2.0)]
    before = [flat(r.content["arrays"]).copy() for r in replies]
    run_round(strategy, replies)
    for r, b in zip(replies, before, strict=True):
        assert list(r.content["arrays"].keys()) == ["w", "b"]
        np.testing.assert_array_equal(flat(r.content["arrays"]), b)


def test_rows_sorted_by_partition_id_whatever_the_arrival_order():
    results = []
    for seed in range(3):
        replies = [reply(10 + p, float(p), pid=p) for p in range(5)]
        random.Random(seed).shuffle(replies)
        strategy = RobustStrategy(PickFirst())
        new, _ = run_round(strategy, replies)
        results.append(flat(new))
        assert [c["partition_id"] for c in strategy.reports[1]["clients"]] == [0, 1, 2, 3, 4]
    for r in results:
        np.testing.assert_array_equal(r, flat(global_record()))  # partition 0's delta is 0


def test_per_client_decisions_reported_by_node_and_partition():
    strategy = RobustStrategy(PickFirst())
    run_round(strategy, [reply(11, 1.0, pid=0), reply(12, 2.0, pid=1, malicious=True)])
    clients = strategy.reports[1]["clients"]
    assert [(c["node_id"], c["partition_id"], c["malicious"], c["status"], c["weight"])
            for c in clients] == [(11, 0, False, "accepted", 1.0), (12, 1, True, "excluded", 0.0)]
    assert strategy.reports[1]["accepted"] == 1


def test_reference_rule_requires_reference_fn_and_gets_it():
    with pytest.raises(StrategyError, match="reference_fn"):
        RobustStrategy(NeedsRef())
    seen = []

    def ref(rnd, global_vec):
        seen.append((rnd, global_vec.clone()))
        return torch.full_like(global_vec, 0.125)

    strategy = RobustStrategy(NeedsRef(), reference_fn=ref, round_offset=4)
    new, _ = run_round(strategy, [reply(1, 1.0), reply(2, 1.0)])
    assert seen[0][0] == 5  # round offset applied
    np.testing.assert_allclose(seen[0][1].numpy(), flat(global_record()))
    np.testing.assert_allclose(flat(new), flat(global_record()) + 0.125)


def test_adversary_hook_rewrites_malicious_rows_only():
    calls = []

    def adversary(rnd, updates, mask, global_vec):  # returns the crafted malicious rows
        calls.append(mask.tolist())
        return torch.full((int(mask.sum()), updates.shape[1]), -10.0)

    strategy = RobustStrategy(Mean(), adversary=adversary)
    new, _ = run_round(strategy, [reply(1, 1.0, pid=0), reply(2, 1.0, pid=1, malicious=True)])
    assert calls == [[False, True]]
    np.testing.assert_allclose(flat(new), flat(global_record()) + (1.0 - 10.0) / 2)


def test_aggregator_by_name_and_bad_configuration():
    with pytest.raises(ValueError, match="unknown aggregator"):
        RobustStrategy("no-such-rule")
    with pytest.raises(StrategyError, match="server_lr"):
        RobustStrategy(Mean(), server_lr=0.0)
    with pytest.raises(StrategyError, match="aggregator_params"):
        RobustStrategy(Mean(), {"f": 1})
    with pytest.raises(StrategyError, match="before configure_train"):
        RobustStrategy(Mean()).aggregate_train(1, [])


def test_metric_record_holds_scalars_only():
    strategy = RobustStrategy(Mean())
    _, metrics = run_round(strategy, [reply(1, 1.0), error_reply(2)])
    assert isinstance(metrics, MetricRecord)
    assert all(isinstance(v, int | float) for v in metrics.values())
    assert "partition-id" not in metrics


def test_ledger_and_checkpoints_each_round(tmp_path):
    ledger = Ledger(tmp_path / "ledger.jsonl")
    store = CheckpointStore(tmp_path / "ck")
    strategy = RobustStrategy(Mean(), ledger=ledger, checkpoints=store)
    arrays = global_record()
    for rnd in (1, 2):
        strategy.begin_round(arrays)
        arrays, _ = strategy.aggregate_train(rnd, [reply(1, 1.0, base=arrays),
                                                   reply(2, 3.0, base=arrays), error_reply(3)])
    check = verify_ledger(tmp_path / "ledger.jsonl")
    assert check.ok and check.rows == 2
    latest = store.latest()
    assert latest.round == 2
    np.testing.assert_allclose(latest.vector.numpy(), flat(global_record()) + 4.0)
    rows = [json.loads(line) for line in (tmp_path / "ledger.jsonl").read_text().splitlines()]
    assert rows[1]["model_hash_before"] == rows[0]["model_hash_after"]
    reasons = {c["node_id"]: (c["status"], c["reason"]) for c in rows[0]["clients"]}
    assert reasons == {1: ("accepted", ""), 2: ("accepted", ""), 3: ("rejected", "error-reply")}
    assert rows[0]["rule"] == "test-mean" and rows[0]["rule_params"] == {"min_n": 1}


class TwoNodeGrid:
    def get_node_ids(self):
        return [7, 8]


def test_too_small_federation_fails_with_the_fix_in_the_message():
    strategy = RobustStrategy(Mean(), min_available_nodes=20, node_wait_timeout=0.0)
    with pytest.raises(StrategyError, match=r"only 2 nodes connected.*num-supernodes=20"):
        strategy.configure_train(1, global_record(), ConfigRecord(), TwoNodeGrid())


def test_seeded_sampling_is_reproducible_and_sorted():
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 0

    class Grid:
        def get_node_ids(self):
            return [5, 3, 9, 1, 7, 2]

    picks = []
    for _ in range(2):
        s = RobustStrategy(Mean(), fraction_train=0.5, min_train_nodes=3, min_available_nodes=6,
                           sample_seed=11)
        msgs = list(s.configure_train(2, global_record(), ConfigRecord(), Grid()))
        picks.append([m.metadata.dst_node_id for m in msgs])
        assert msgs[0].content["config"]["server-round"] == 2
    assert picks[0] == picks[1] == sorted(picks[0]) and len(picks[0]) == 3


def test_per_client_state_is_keyed_by_node_id_never_by_the_claimed_partition_id():
    """A sybil that reports a fresh partition id every round must not get a fresh history:
    the rule's client_ids are the node ids the SuperLink authenticates."""
    rule = Mean()
    strategy = RobustStrategy(rule)
    for rnd, claimed in enumerate(([0, 1], [7, 8], [1, 0]), start=1):
        strategy.begin_round(global_record())
        strategy.aggregate_train(rnd, [reply(11, 1.0, pid=claimed[0]),
                                       reply(12, 1.0, pid=claimed[1])])
    assert [list(c["client_ids"]) for c in rule.calls] == [[11, 12], [11, 12], [12, 11]]


def test_foolsgold_sybils_rotating_their_claimed_partition_ids_still_get_no_weight():
    """Three sybils push one direction every round (with noise) and claim a fresh partition id
    each time; keyed by the authenticated node id their histories accumulate, the noise averages
    out and FoolsGold gives them no weight (keyed by the claimed id they would look new, with
    one noisy update each, every round)."""
    from fedshield.aggregators import create

    gen = np.random.default_rng(0)
    sybil = 3 * gen.normal(size=9)
    strategy = RobustStrategy(create("foolsgold"))
    for rnd in range(1, 6):
        honest = [reply(n, gen.normal(size=9).astype(np.float32), pid=n) for n in (1, 2, 3, 4)]
        sybils = [reply(n, (sybil + gen.normal(size=9)).astype(np.float32), pid=100 * rnd + n)
                  for n in (7, 8, 9)]
        strategy.begin_round(global_record())
        strategy.aggregate_train(rnd, honest + sybils)
    weights = {c["node_id"]: c["weight"] for c in strategy.reports[5]["clients"]}
    assert [weights[n] for n in (7, 8, 9)] == [0.0, 0.0, 0.0]
    assert all(weights[n] > 0 for n in (1, 2, 3, 4))


def test_the_users_metrics_are_aggregated_as_fedavg_does_with_the_robust_counts_beside():
    calls = []

    def aggr(contents, weighted_by_key):
        calls.append((len(contents), weighted_by_key))
        return MetricRecord({"accuracy": 0.75})

    strategy = RobustStrategy(Mean(), train_metrics_aggr_fn=aggr)
    _, metrics = run_round(strategy, [reply(1, 1.0), reply(2, 1.0), error_reply(3)])
    assert calls == [(2, "num-examples")]  # the valid replies only
    assert metrics["accuracy"] == 0.75 and metrics["robust-accepted"] == 2
    assert metrics["robust-rejected-error-reply"] == 1


def test_every_reply_rejected_still_returns_the_model():
    strategy = RobustStrategy(Mean())
    new, metrics = run_round(strategy, [error_reply(1), reply(2, 0.0, num_examples=0)])
    np.testing.assert_array_equal(flat(new), flat(global_record()))
    assert metrics["robust-skipped"] == 1 and metrics["robust-rejected"] == 2


def test_a_sampling_that_can_never_satisfy_the_rule_is_refused_with_the_numbers():
    from fedshield.aggregators import create

    class Grid:
        def get_node_ids(self):
            return list(range(1, 11))

    strategy = RobustStrategy(create("krum", f=3), fraction_train=0.5)
    with pytest.raises(StrategyError, match=r"samples 5 of 10 nodes .* needs at least 9"):
        list(strategy.configure_train(1, global_record(), ConfigRecord(), Grid()))


def test_one_info_line_per_round_names_kept_excluded_and_rejected_nodes(caplog):
    import logging

    from flwr.common.logger import FLOWER_LOGGER

    FLOWER_LOGGER.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.INFO, logger=FLOWER_LOGGER.name):
            run_round(RobustStrategy(PickFirst()), [reply(1, 1.0), reply(2, 2.0), error_reply(3)])
    finally:
        FLOWER_LOGGER.removeHandler(caplog.handler)
    text = caplog.text
    assert "Received 2 results and 1 failures" in text
    assert "kept [1], excluded by the rule [2], rejected ['3 (error-reply)']" in text


def test_flowers_server_side_dp_clipping_wraps_a_robust_strategy():
    """DifferentialPrivacyServerSideFixedClipping(RobustStrategy(...)) clips every delta to the
    clipping norm, then the robust rule aggregates the clipped deltas (noise 0 here, to check the
    value: the median of the clipped magnitudes 1, 0.5, 0.2 along one unit direction is 0.5)."""
    from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping

    from fedshield.aggregators import create

    unit = np.full(9, 1 / 3.0)  # norm 1
    inner = RobustStrategy(create("median"))
    dp = DifferentialPrivacyServerSideFixedClipping(inner, noise_multiplier=0.0,
                                                    clipping_norm=1.0, num_sampled_clients=3)
    dp.current_arrays = global_record()
    inner.begin_round(global_record())
    replies = [reply(n, scale * unit) for n, scale in ((1, 10.0), (2, 0.5), (3, 0.2))]
    new, metrics = dp.aggregate_train(1, replies)
    np.testing.assert_allclose(flat(new), flat(global_record()) + 0.5 * unit, atol=1e-6)
    assert metrics["robust-accepted"] == 3


def bn_record(mean, var, count, weight):
    return ArrayRecord({"bn.weight": Array(np.full(3, weight, np.float32)),
                        "bn.running_mean": Array(np.full(3, mean, np.float32)),
                        "bn.running_var": Array(np.full(3, var, np.float32)),
                        "bn.num_batches_tracked": Array(np.array(count, np.int64))})


def test_buffers_stay_out_of_the_robust_vector_and_take_a_robust_median():
    """BatchNorm's running statistics and counter: the rule sees only the trainable weight
    (norms and distances over it alone); the buffers take the replies' median, so one client
    claiming a huge running variance or counter moves nothing."""
    base = bn_record(0.0, 1.0, 10, 0.0)

    def replies():  # fresh each round: a strategy releases the replies' decoded arrays
        honest = [bn_record(0.1 * i, 1.0 + 0.1 * i, 12, 1.0) for i in range(4)]
        evil = bn_record(1e6, 1e9, 2**40, 1.0)
        return [reply(i + 1, 0.0, arrays=rec) for i, rec in enumerate([*honest, evil])]

    rule = Mean()
    new, _ = run_round(RobustStrategy(rule), replies(), arrays=base)
    assert rule.calls[0]["updates"].shape == (5, 3)  # the weight only
    np.testing.assert_allclose(new["bn.running_mean"].numpy(), [0.2] * 3, rtol=1e-6)
    np.testing.assert_allclose(new["bn.running_var"].numpy(), [1.2] * 3, rtol=1e-6)
    assert new["bn.num_batches_tracked"].numpy().tolist() == 12
    assert new["bn.num_batches_tracked"].numpy().dtype == np.int64
    mean = RobustStrategy(Mean(), buffers="mean")
    new, _ = run_round(mean, replies(), arrays=base)
    assert new["bn.running_var"].numpy()[0] > 1e8  # "mean" lets one client move it at will
    keep = RobustStrategy(Mean(), integer_buffers="keep")
    new, _ = run_round(keep, replies(), arrays=base)
    assert new["bn.num_batches_tracked"].numpy().tolist() == 10
    ruled = Mean()
    run_round(RobustStrategy(ruled, buffers="rule"), replies(), arrays=base)
    assert ruled.calls[0]["updates"].shape == (5, 9)  # running statistics in the robust vector
    with pytest.raises(StrategyError, match="buffers must be one of"):
        RobustStrategy(Mean(), buffers="average")


def test_a_round_checkpoints_the_buffers_it_returns(tmp_path):
    """The checkpoint of round t holds round t's buffers (not the previous round's)."""
    base = bn_record(0.0, 1.0, 10, 0.0)
    replies = [reply(i + 1, 0.0, arrays=bn_record(0.1 * i, 1.0 + 0.1 * i, 12, 1.0))
               for i in range(3)]
    store = CheckpointStore(tmp_path)
    new, _ = run_round(RobustStrategy(Mean(), checkpoints=store), replies, arrays=base)
    saved = store.latest().meta["buffers"]
    assert saved["bn.num_batches_tracked"].item() == 12
    np.testing.assert_array_equal(saved["bn.running_var"].numpy(), new["bn.running_var"].numpy())


def test_a_detector_runs_before_the_rule_and_its_flags_are_the_decisions():
    """RobustStrategy(aggregator="median", detector="dnc"): DnC flags the f = 1 outlier, the
    median aggregates the other rows, and the report says which client was flagged."""
    strategy = RobustStrategy("median", detector="dnc", detector_params={"f": 1})
    assert strategy.rule.name == "detect" and strategy.rule.params()["inner"] == "median"
    deltas = [np.full(9, v, dtype=np.float32) + 0.01 * k for k, v in
              enumerate([1.0, 1.1, 0.9, 1.05, -50.0])]
    arrays, _ = run_round(strategy, [reply(11 + k, d, pid=k, malicious=k == 4)
                                     for k, d in enumerate(deltas)])
    assert np.allclose(flat(arrays) - flat(global_record()), np.median(np.stack(deltas[:4]), 0))
    clients = strategy.reports[1]["clients"]
    assert [c["status"] for c in clients] == ["accepted"] * 4 + ["excluded"]
    assert strategy.reports[1]["diagnostics"]["flagged"] == 1


def test_detector_configuration_errors():
    with pytest.raises(StrategyError, match="detector_params need a detector"):
        RobustStrategy("median", detector_params={"f": 1})
    with pytest.raises(StrategyError, match="harness's inline engine"):
        RobustStrategy("median", detector="backdoor-indicator")
    with pytest.raises(AggregatorError, match=r"detector must be a detector name.*got 'nope'"):
        RobustStrategy("median", detector="nope")


def test_decoded_replies_release_their_robust_arrays_for_the_same_round():
    deltas = [1.0, 2.0, 6.0]
    released = [reply(i + 1, d) for i, d in enumerate(deltas)]
    kept = [reply(i + 1, d) for i, d in enumerate(deltas)]
    new_released, _ = run_round(RobustStrategy(Mean()), released)
    new_kept, _ = run_round(RobustStrategy(Mean(), release_replies=False), kept)
    np.testing.assert_array_equal(flat(new_released), flat(new_kept))
    assert all(len(msg.content["arrays"]) == 0 for msg in released)  # freed as decoded
    assert all(set(msg.content["arrays"].keys()) == {"w", "b"} for msg in kept)
    assert all("metrics" in msg.content for msg in released)  # the rest of a reply stays


@pytest.mark.slow
def test_the_memory_bench_measures_both_modes_in_child_processes(tmp_path, capsys):
    import json

    from fedshield.simulations.bench import memory

    out = tmp_path / "memory.json"
    assert memory.main(["--clients", "4", "--params", "1000", "--rules", "fedavg",
                        "--json", str(out)]) == 0
    kept, released = json.loads(out.read_text())
    assert (kept["release"], released["release"]) == (False, True)
    assert kept["replies_bytes"] == released["replies_bytes"] == 4 * 1000 * 4
    assert released["peak"] >= released["rss_with_replies"] > 0
    assert "| fedavg |" in capsys.readouterr().out


@pytest.mark.parametrize("case", rule_examples(), ids=[example_id(c) for c in rule_examples()])
def test_every_rule_gives_the_same_round_with_replies_released_or_kept(case):
    from fedshield import aggregators

    name, params = case
    n = max(aggregators.create(name, **params).min_clients(), 9)
    gen = np.random.default_rng(7)
    deltas = [gen.standard_normal(9).astype(np.float32) for _ in range(n)]
    reference = torch.from_numpy(np.mean(deltas, axis=0))
    results = []
    for release in (True, False):
        rule = aggregators.create(name, **params)
        strategy = RobustStrategy(rule, release_replies=release,
                                  reference_fn=(lambda rnd, theta: reference)
                                  if rule.needs_reference else None)
        new, _ = run_round(strategy, [reply(i + 1, d) for i, d in enumerate(deltas)])
        results.append(flat(new))
    np.testing.assert_array_equal(results[0], results[1])
