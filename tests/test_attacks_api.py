"""create_attack / available_attacks: names, parameters, validation."""

from __future__ import annotations

import pytest

from fedshield.clients.attacks import (
    AttackError,
    DataAttack,
    ModelAttack,
    available_attacks,
    create_attack,
)

NAMES = {
    "labelflip", "backdoor-patch", "backdoor-blend", "backdoor-lighting", "scaling",
    "signflip", "gaussian", "scale", "alie", "ipm", "minmax", "minsum", "fang-krum",
    "fang-trim", "mimic", "poisonedfl", "dba", "mpaf", "neurotoxin", "adaptive",
    "fltrust-adaptive", "edge-case", "a3fl",
}


def make(name, **params):
    return create_attack(name, num_classes=10, low=0.0, high=1.0, num_clients=10,
                         num_malicious=2, **params)


def test_every_attack_is_listed_with_kind_knowledge_and_defaults():
    listing = available_attacks()
    assert set(listing) == NAMES
    for name, info in listing.items():
        attack = make(name)
        assert info["kind"] == attack.kind
        assert isinstance(attack, DataAttack if info["kind"] == "data" else ModelAttack)
        assert info["summary"]
        if info["kind"] == "model":
            assert attack.knowledge == info["knowledge"][0]
    assert listing["minsum"]["params"]["bound"] == "max"
    assert listing["alie"]["params"]["z_rule"] == "paper"
    assert listing["scaling"]["params"]["boost"] == "n"
    assert listing["fang-trim"]["params"]["b"] == 2.0


def test_unknown_attack_lists_the_valid_ones():
    with pytest.raises(AttackError, match=r"unknown attack 'nope'.*alie.*signflip"):
        make("nope")
    with pytest.raises(AttackError, match="unknown attack 'none'"):
        make("none")


def test_unknown_parameter_lists_the_valid_ones():
    with pytest.raises(AttackError, match=r"unknown parameter\(s\) gamma.*valid: .*perturbation"):
        make("minmax", gamma=3)


@pytest.mark.parametrize(
    ("name", "params", "match"),
    [
        ("minmax", {"perturbation": "random"}, "perturbation"),
        ("minsum", {"bound": "mean"}, "bound"),
        ("alie", {"z_rule": "other"}, "z_rule"),
        ("mimic", {"knowledge": "own"}, "unknown parameter"),
        ("ipm", {"knowledge": "partial"}, "knowledge"),
        ("fang-trim", {"b": 1.0}, "b must be > 1"),
        ("gaussian", {"sigma": 0}, "sigma"),
        ("scale", {"lam": "big"}, "lam"),
    ],
)
def test_bad_model_attack_parameters(name, params, match):
    with pytest.raises(AttackError, match=match):
        make(name, **params)


def test_attack_error_is_a_value_error():
    assert issubclass(AttackError, ValueError)


def test_attack_from_config_passes_the_round_context():
    from types import SimpleNamespace

    from fedshield.clients.attacks import attack_from_config
    from fedshield.tasks.config import RunConfig

    ds = SimpleNamespace(num_classes=10, low=-1.0, high=2.0)
    cfg = RunConfig(num_clients=20, attack="scaling", malicious_fraction=0.2)
    assert attack_from_config(cfg, ds).boost == 20.0
    cfg = RunConfig(num_clients=20, clients_per_round=10, attack="backdoor-patch",
                    malicious_fraction=0.2, attack_params={"boost": "auto"})
    assert attack_from_config(cfg, ds).boost == 5.0  # 10 per round, 2 of them malicious
    assert attack_from_config(RunConfig(attack="none"), ds) is None


def test_attack_from_config_builds_for_node_chosen_attackers():
    """No malicious count in the run config (a deployment's node config picks the red team):
    the attack is built for one malicious client of the round."""
    from fedshield.clients.attacks import attack_from_config
    from fedshield.tasks.config import RunConfig
    from fedshield.tasks.datasets import load_dataset

    cfg = RunConfig(dataset="digits", num_clients=5, attack="scaling")  # no malicious count
    dataset = load_dataset("digits")
    attack = attack_from_config(cfg, dataset)
    assert attack is not None and attack.name == "scaling" and attack.boost == 5  # λ = n
    assert attack_from_config(cfg.with_updates(attack="none"), dataset) is None
    auto = attack_from_config(cfg.with_updates(attack_params={"boost": "auto"}), dataset)
    assert auto.boost == 5.0  # n / m with m = 1


