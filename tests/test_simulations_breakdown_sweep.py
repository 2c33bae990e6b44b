"""The scenario side of a breakdown sweep: the defender's f following the malicious fraction or
fixed, infeasible cells left out on request, and fraction 0 run once per rule."""

import pytest

from fedshield.simulations import scenario as sc
from fedshield.simulations.scenario import ScenarioError
from fedshield.tasks.config import ConfigError, RunConfig

KRUM = {"name": "krum", "f": "auto"}


def _f_by_fraction(**extra):
    cells = sc.expand(sc.from_dict({"aggregator": KRUM, "attack": "alie", "num_clients": 20,
                                    "malicious_fraction": [0.1, 0.2, 0.4], **extra}))
    return {c.config.malicious_fraction: c.config.aggregator_params["f"] for c in cells}


def test_the_defenders_f_follows_the_fraction_by_default_and_stays_fixed_on_request():
    assert _f_by_fraction() == {0.1: 2, 0.2: 4, 0.4: 8}
    assert _f_by_fraction(defender_fraction=0.15) == {0.1: 3, 0.2: 3, 0.4: 3}
    # the attack plans with the actual count either way
    cfg = RunConfig(num_clients=20, malicious_fraction=0.4, defender_fraction=0.15,
                    attack="alie")
    assert (cfg.malicious_per_round, cfg.defender_f) == (8, 3)


@pytest.mark.parametrize("bad", [-0.5, 1.0, 2.0, float("nan")])
def test_a_defender_fraction_outside_its_range_is_refused(bad):
    with pytest.raises(ConfigError, match="defender_fraction must be -1"):
        RunConfig(defender_fraction=bad)


def test_the_default_defender_fraction_leaves_cell_ids_unchanged():
    cfg = RunConfig(aggregator="median", attack="alie", malicious_fraction=0.2)
    assert "defender_fraction" not in sc.config_dict(cfg)
    assert "defender_fraction" in sc.config_dict(cfg.with_updates(defender_fraction=0.2))


def test_fraction_zero_runs_once_per_rule_when_the_clean_twin_is_swept():
    cells = sc.expand(sc.from_dict({"aggregator": ["median", KRUM], "num_clients": 20,
                                    "attack": ["none", "alie", "signflip"],
                                    "malicious_fraction": [0.0, 0.1]}))
    at_zero = [(c.config.aggregator, c.config.attack) for c in cells
               if c.config.malicious_fraction == 0.0]
    assert at_zero == [("median", "none"), ("krum", "none")]
    assert len(cells) == 2 + 2 * 3
    # without the twin in the sweep the attacked cell at fraction 0 is kept
    alone = sc.expand(sc.from_dict({"attack": "alie", "malicious_fraction": 0.0}))
    assert len(alone) == 1


def test_infeasible_cells_refuse_the_sweep_or_are_left_out_on_request():
    data = {"aggregator": [KRUM, "median"], "attack": "alie", "num_clients": 20,
            "malicious_fraction": [0.2, 0.45]}
    cells = sc.expand(sc.from_dict(data))
    with pytest.raises(ScenarioError, match=r"krum\(f=9\) needs at least 21 clients.*"
                                            r"infeasible = 'skip'"):
        sc.validate_components(cells)
    scen = sc.from_dict({**data, "infeasible": "skip"})
    skipped = sc.validate_components(sc.expand(scen), scen.infeasible)
    krum_45 = [c.id for c in cells if c.config.aggregator == "krum"
               and c.config.malicious_fraction == 0.45]
    assert list(skipped) == krum_45
    with pytest.raises(ScenarioError, match="infeasible must be one of"):
        sc.from_dict({"infeasible": "ignore"})
    # a typo is an error even when infeasible cells are skipped
    with pytest.raises(ScenarioError, match="aggregator: "):
        sc.validate_components(sc.expand(sc.from_dict({"aggregator": {"name": "krum", "g": 1},
                                                       "infeasible": "skip"})), "skip")
