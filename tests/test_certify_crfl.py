"""CRFL: the server's clipping and noise, the certified radius, and the harness run."""

from __future__ import annotations

import math

import pytest
import torch
from scipy.stats import norm

from fedshield.simulations import scenario as sc
from fedshield.simulations.certify import CRFL, CRFLTraining, crfl_radius


def test_training_clips_to_the_schedule_and_noises_all_but_the_last_round():
    settings = CRFL(clip=2.5, clip_start=2.0, clip_growth=0.1, sigma=0.5)
    step = CRFLTraining(settings, rounds=10, seed=0)
    vec = torch.full((100,), 1.0)  # norm 10
    evaluated, following = step(3, vec)
    assert float(torch.linalg.vector_norm(evaluated)) == pytest.approx(2.3)  # 2 + 0.1 · 3
    noise = following - evaluated
    assert 0.35 < float(noise.std()) < 0.65  # σ = 0.5
    evaluated, following = step(9, vec)
    assert float(torch.linalg.vector_norm(evaluated)) == pytest.approx(2.5)  # capped at clip
    last, after = step(10, vec)
    assert torch.equal(last, after)  # the final model is clipped, not noised
    small = torch.full((4,), 0.1)
    assert torch.equal(step(10, small)[0], small)  # inside the ball: untouched


def test_radius_is_the_papers_formula():
    """One input, hand-computed: M = 100 votes 90 / 6 / 4, α = 0.01."""
    settings = CRFL(sigma=0.01, test_sigma=0.02, alpha=0.01, clip=15, clip_start=2,
                    clip_growth=0.1, attack_round=7, lipschitz_rho=3.0)
    counts = torch.tensor([[6, 90, 4]])
    radius = crfl_radius(counts, settings, rounds=10, clients=20, attackers=2,
                         local_iterations=5, lr=0.05, poison_fraction=0.5, scale=10.0)
    slack = math.sqrt(math.log(1 / 0.01) / 200)
    pa, pb = 0.9 - slack, 0.06 + slack
    fraction = -math.log(1 - (math.sqrt(pa) - math.sqrt(pb)) ** 2) * 0.01 ** 2
    contraction = 1.0
    for t in (8, 9):
        contraction *= 2 * norm.cdf((2 + 0.1 * t) / 0.01) - 1
    contraction *= 2 * norm.cdf((2 + 0.1 * 10) / 0.02) - 1
    denominator = (2 * 2 * 5 ** 2 * (2 + 6 + 9) * (2 * (1 / 20) ** 2) * 10 ** 2 * 0.05 ** 2
                   * 0.5 ** 2 * contraction)
    assert float(radius[0]) == pytest.approx(math.sqrt(fraction / denominator), rel=1e-9)


def test_radius_grows_with_the_vote_margin_and_is_infinite_when_unanimous_enough():
    settings = CRFL(alpha=0.5)
    counts = torch.tensor([[50, 50, 0], [70, 30, 0], [99, 1, 0], [1000, 0, 0]])
    radius = crfl_radius(counts, settings, rounds=5, clients=10, attackers=1,
                         local_iterations=2, lr=0.1, poison_fraction=0.5, scale=1.0)
    assert radius[0] == 0.0 and 0 < radius[1] < radius[2] < radius[3]
    # an attacker with twice the scale halves the radius
    halved = crfl_radius(counts, settings, rounds=5, clients=10, attackers=1,
                         local_iterations=2, lr=0.1, poison_fraction=0.5, scale=2.0)
    assert torch.allclose(halved[1:3], radius[1:3] / 2)


def test_crfl_runs_from_a_scenario_and_reports_a_radius_curve(tmp_path):
    from fedshield.simulations.report import write_report
    from fedshield.simulations.runner import run_sweep
    from fedshield.simulations.store import ResultsStore

    scenario = sc.from_dict({
        "name": "crfl", "dataset": "digits", "model": "logreg", "num_clients": 8, "rounds": 3,
        "certify": {"name": "crfl", "samples": 20, "radii": 5, "sigma": 0.001,
                    "test_sigma": 0.001},
        "attack": ["none", "backdoor-patch"], "num_malicious": 2, "workers": 1})
    store = ResultsStore(tmp_path)
    run_sweep(scenario, sc.expand(scenario), store, workers=1)
    records = {r["config"]["attack"]: r for r in store.load_cells()}
    for record in records.values():
        certified = record["summary"]["certified"]
        assert certified["axis"] == "radius" and len(certified["x"]) == 5
        assert certified["x"][0] == 0.0
        assert certified["accuracy"] == sorted(certified["accuracy"], reverse=True)
        last = record["rounds"][-1]
        assert certified["accuracy"][0] == last["smoothed_accuracy"]
        assert last["accuracy"] is not None  # the clipped final model, evaluated
    assert records["backdoor-patch"]["rounds"][-1]["smoothed_asr"] is not None
    report = write_report(tmp_path).read_text()
    assert "fedavg × none (radius)" in report
