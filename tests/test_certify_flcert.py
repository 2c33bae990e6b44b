"""FLCert: the group split, the vote's certificate, and the harness run."""

from __future__ import annotations

import itertools
import json

import pytest
import torch

from fedshield.simulations import scenario as sc
from fedshield.simulations.certify import (
    FLCert,
    certified_accuracy,
    certified_radius,
    flcert_partition,
    run_flcert,
    vote_counts,
)
from fedshield.tasks.config import ConfigError, RunConfig


@pytest.mark.parametrize(("n", "k"), [(20, 5), (23, 4), (100, 10), (7, 7), (5, 1)])
def test_groups_are_disjoint_balanced_and_deterministic(n, k):
    groups = flcert_partition(n, k)
    flat = sorted(c for g in groups for c in g)
    assert flat == list(range(n))
    assert max(map(len, groups)) - min(map(len, groups)) <= 1
    assert groups == flcert_partition(n, k)
    assert all(g == sorted(g) for g in groups)


def test_certificate_on_a_constructed_vote():
    # 7 models, 3 classes. votes per input:
    #   a: 6 for 1, 1 for 0      -> gap 5 to class 0 (0 < 1): m ≤ ⌊(5−1)/2⌋ = 2
    #   b: 4 for 0, 3 for 2      -> gap 1 to class 2 (2 > 0): m ≤ ⌊1/2⌋ = 0
    #   c: 3 for 0, 3 for 1, 1 for 2 -> tie to the smaller label 0; gap 0 to 1 (1 > 0): m ≤ 0
    #   d: 7 for 2               -> gap 7 to 0 and 1 (both < 2): m ≤ ⌊6/2⌋ = 3
    #   e: 2 for 0, 4 for 1, 1 for 2 -> gap 2 to 0 (0 < 1): ⌊1/2⌋ = 0; gap 3 to 2 (2 > 1): 1 → 0
    predictions = torch.tensor([
        [1, 0, 0, 2, 0], [1, 0, 0, 2, 0], [1, 0, 0, 2, 1], [1, 0, 1, 2, 1],
        [1, 2, 1, 2, 1], [1, 2, 1, 2, 1], [0, 2, 2, 2, 2],
    ])
    counts = vote_counts(predictions, 3)
    assert counts.tolist() == [[1, 6, 0], [4, 0, 3], [3, 3, 1], [0, 0, 7], [2, 4, 1]]
    label, radius = certified_radius(counts)
    assert label.tolist() == [1, 0, 0, 2, 1]
    assert radius.tolist() == [2, 0, 0, 3, 0]
    truth = torch.tensor([1, 0, 1, 2, 1])  # c is wrong
    assert certified_accuracy(counts, truth, 3) == [4 / 5, 2 / 5, 2 / 5, 1 / 5]


def test_a_certified_input_survives_every_change_of_m_models():
    """Brute force: any m models changed to any labels leave a certified vote unchanged, and an
    uncertified one (radius m − 1) has some change of m models that flips it."""
    gen = torch.Generator().manual_seed(0)
    k, classes = 5, 3
    for _ in range(40):
        predictions = torch.randint(0, classes, (k, 1), generator=gen)
        label, radius = certified_radius(vote_counts(predictions, classes))
        for m in range(0, 3):
            flipped = False
            for models in itertools.combinations(range(k), m):
                for labels in itertools.product(range(classes), repeat=m):
                    changed = predictions.clone()
                    changed[list(models), 0] = torch.tensor(labels, dtype=changed.dtype)
                    new_label, _ = certified_radius(vote_counts(changed, classes))
                    flipped |= int(new_label) != int(label)
            assert flipped == (m > int(radius)), (predictions.flatten().tolist(), m)


def test_flcert_runs_from_a_scenario_and_reports_certified_accuracy(tmp_path):
    from fedshield.simulations.report import write_report
    from fedshield.simulations.runner import run_sweep
    from fedshield.simulations.store import ResultsStore

    scenario = sc.from_dict({
        "name": "flcert", "dataset": "digits", "num_clients": 12, "rounds": 2,
        "certify": {"name": "flcert", "groups": 3}, "attack": ["none", "backdoor-patch"],
        "num_malicious": 2, "workers": 1})
    cells = sc.expand(scenario)
    store = ResultsStore(tmp_path)
    run_sweep(scenario, cells, store, workers=1)
    records = {r["config"]["attack"]: r for r in store.load_cells()}
    for record in records.values():
        last = record["rounds"][-1]
        assert record["summary"]["certified"]["x"] == [0, 1, 2, 3]
        certified = record["summary"]["certified"]["accuracy"]
        assert len(certified) == 4 and certified == sorted(certified, reverse=True)
        assert certified[0] == last["accuracy"] == record["summary"]["final_accuracy"]
        assert len(last["group_accuracy"]) == 3 and last["group_sizes"] == [4, 4, 4]
        assert record["rounds"][0]["clients"] == 12
    assert records["backdoor-patch"]["summary"]["final_asr"] is not None
    report = write_report(tmp_path).read_text()
    assert "### Certified accuracy" in report and "certified.png" in report
    assert "fedavg × none (malicious clients)" in report
    assert json.dumps(records["none"]["summary"])  # plain JSON


@pytest.mark.parametrize(("values", "error"), [
    ({"certify": "flcert", "certify_params": {"groups": 11}}, "groups must be in"),
    ({"certify": "flcert", "certify_params": {"groups": 2}, "clients_per_round": 5},
     "clients_per_round = 0"),
    ({"certify": "flcert", "certify_params": {"grops": 2}}, "unknown parameter"),
    ({"certify": "flcert", "certify_params": {"groups": 2.5}}, "finite int"),
    ({"certify": "crfl", "certify_params": {}}, "model = 'logreg'"),
    ({"certify": "crfl", "model": "logreg", "certify_params": {"sigma": -1}}, "sigma must be"),
    ({"certify": "crfl", "model": "logreg", "certify_params": {"alpha": 1.0}}, "alpha"),
])
def test_certification_is_refused_where_it_cannot_run(values, error):
    scenario = sc.from_dict({"num_clients": 10, **values})
    with pytest.raises(sc.ScenarioError, match=error):
        sc.expand(scenario)


def test_certification_needs_the_inline_engine_and_a_known_scheme():
    with pytest.raises(sc.ScenarioError, match="inline engine only"):
        sc.expand(sc.from_dict({"engine": "flower", "certify": "flcert"}))
    with pytest.raises(ConfigError, match="certify must be one of"):
        RunConfig(certify="magic")


def test_certify_keys_stay_out_of_the_cell_id_at_their_default():
    """Cells of sweeps run before certification existed keep their ids."""
    cfg = RunConfig()
    assert "certify" not in sc.config_dict(cfg) and "certify_params" not in sc.config_dict(cfg)
    assert sc.cell_id(cfg) != sc.cell_id(cfg.with_updates(certify="flcert"))


def test_the_ensemble_votes_its_group_models():
    cfg = RunConfig(dataset="digits", num_clients=6, rounds=1, certify="flcert")
    result = run_flcert(cfg, FLCert(groups=1))
    assert result.rounds[-1]["certified"]["accuracy"][0] == pytest.approx(
        result.rounds[-1]["group_accuracy"][0])  # one model: the vote is its prediction
