"""The round core on hand-computed rounds: one order of steps, one record, every row a view."""

from __future__ import annotations

import math

import pytest
import torch

from fedshield.aggregators import create
from fedshield.server.round import ClientRow, Reason, Rejection, RoundCore, cap_num_examples


def rows(n, *, malicious=(), losses=None, counts=None):
    return [ClientRow(client_id=100 + i, partition_id=i, malicious=i in malicious,
                      num_examples=float(counts[i] if counts else 10),
                      train_loss=None if losses is None else losses[i], index=i)
            for i in range(n)]


def test_hand_computed_record_and_its_views():
    # fedavg (uniform) of deltas 1, 2, 6 -> 3; η = 0.5 -> θ + 1.5. Client 2 is malicious.
    core = RoundCore(create("fedavg"), server_lr=0.5)
    updates = torch.tensor([[1.0, 1.0], [2.0, 2.0], [6.0, 6.0]])
    record = core.run(4, torch.zeros(2), updates,
                      rows(3, malicious={2}, losses=[1.0, 3.0, 9.0], counts=[10, 30, 10]))
    torch.testing.assert_close(record.new_vec, torch.tensor([1.5, 1.5]))
    row = record.row()
    assert row["round"] == 4 and row["clients"] == 3 and row["partition_ids"] == [0, 1, 2]
    assert row["malicious_in_round"] == [2] and not row["skipped"] and not row["diverged"]
    # the training loss of the rows not flagged malicious, weighted by their sample counts
    assert row["train_loss"] == pytest.approx((1.0 * 10 + 3.0 * 30) / 40)
    assert row["malicious_share"] == pytest.approx(1 / 3) and row["share_kind"] == "weights"
    assert row["update_norms"] == pytest.approx([math.sqrt(2), 2 * math.sqrt(2), 6 * math.sqrt(2)])
    assert row["norm_malicious"] == pytest.approx(6 * math.sqrt(2))
    assert row["norm_benign"] == pytest.approx(1.5 * math.sqrt(2))
    assert row["update_norm"] == pytest.approx(3 * math.sqrt(2))
    report = record.report()
    assert [c["client_id"] for c in report["clients"]] == [100, 101, 102]
    assert report["model_hash_before"] != report["model_hash_after"]
    assert record.counts()["accepted"] == 3


def test_non_finite_rows_are_dropped_before_the_adversary_and_the_rule():
    seen = []

    def adversary(rnd, updates, mask, global_vec):
        seen.append((updates.clone(), mask.clone()))
        return torch.full((int(mask.sum()), updates.shape[1]), -1.0)

    core = RoundCore(create("median"), adversary=adversary)
    updates = torch.tensor([[1.0], [float("nan")], [3.0], [5.0]])
    record = core.run(1, torch.zeros(1), updates, rows(4, malicious={3}))
    # an honest client that diverged never reaches the (omniscient) adversary nor the rule
    assert seen[0][0].tolist() == [[1.0], [3.0], [5.0]] and seen[0][1].tolist() == [0, 0, 1]
    assert record.row()["rejected_by_reason"] == {"non-finite": 1}
    torch.testing.assert_close(record.new_vec, torch.tensor([1.0]))  # median of 1, 3, −1


def test_any_exception_from_a_rule_skips_the_round_with_the_reason():
    class Broken(type(create("median"))):
        name = "broken"

        def aggregate(self, x, ctx):
            raise torch.linalg.LinAlgError("SVD did not converge")

    record = RoundCore(Broken()).run(2, torch.ones(3), torch.randn(4, 3), rows(4))
    assert record.skipped and "LinAlgError: SVD did not converge" in record.skip_reason
    torch.testing.assert_close(record.new_vec, torch.ones(3))
    assert all(d.status == "excluded" for d in record.decisions)


def test_too_few_rows_and_divergence():
    core = RoundCore(create("krum", f=1))
    record = core.run(1, torch.zeros(2), torch.ones(4, 2), rows(4))
    assert record.skipped and "4 valid updates, rule 'krum' needs 5" in record.skip_reason
    nan = torch.full((3, 2), float("nan"))
    record = RoundCore(create("fedavg")).run(1, torch.zeros(2), nan, rows(3))
    assert record.diverged and record.row()["rejected"] == 3
    record = RoundCore(create("fedavg"), server_lr=1e39).run(1, torch.zeros(2), torch.ones(3, 2),
                                                             rows(3))
    assert record.diverged and torch.equal(record.new_vec, torch.zeros(2))


def test_rejections_of_the_decoding_stage_are_part_of_the_record():
    earlier = [Rejection(5, 77, None, Reason.DUPLICATE, "sent twice")]
    record = RoundCore(create("fedavg")).run(1, torch.zeros(1), torch.ones(2, 1), rows(2),
                                             replies=4, rejected=earlier)
    row = record.row()
    assert row["replies"] == 4 and row["valid"] == 2 and row["rejected"] == 1
    assert row["rejected_by_reason"] == {"duplicate-node": 1}


def test_capped_sample_counts():
    # median of (10, 20, 30, 1000) is 25 -> cap 250
    assert cap_num_examples([10, 20, 30, 1000]) == [10, 20, 30, 250]
    assert cap_num_examples([10, 20, 30, 1000], max_num_examples=15) == [10, 15, 15, 15]
    assert cap_num_examples([10, 1000], cap_factor=None) == [10, 1000]
    assert cap_num_examples([]) == []
