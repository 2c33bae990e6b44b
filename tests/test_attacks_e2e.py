"""End to end on digits: the attacks hurt (a plain loop of tasks + client_update + aggregators).

10 clients (IID), an MLP, 5 rounds of one local epoch: sign flipping by 3 of 10 clients collapses
FedAvg to chance while the coordinate median holds, and a BadNets patch backdoor (and the lighting
trigger) from 3 clients reaches a high attack success rate against FedAvg. Sign flipping uses
factor 4 (−4·x, the strength of Li et al.'s RSA sign-flipping attack, AAAI 2019): plain −x at 30 %
only slows FedAvg down (the mean keeps 0.4 of the honest direction), as expected.
"""

from __future__ import annotations

import pytest
import torch

from fedshield import aggregators
from fedshield.clients.attacks import apply_model_attack, attack_from_config
from fedshield.clients.client import client_update
from fedshield.tasks.config import RunConfig
from fedshield.tasks.seeding import torch_generator
from fedshield.tasks.task import get_task
from fedshield.tasks.training import accuracy_on, evaluate

ROUNDS = 5


def _rule(name):
    return aggregators.create(name)


def run(rule_name, attack, **attack_params):
    cfg = RunConfig(dataset="digits", partition="iid", num_clients=10, model="mlp", seed=0,
                    lr=0.1, local_epochs=1, rounds=ROUNDS, attack=attack,
                    malicious_fraction=0.3, attack_params=attack_params)
    rule = _rule(rule_name)
    task = get_task(cfg)
    ds = task.dataset
    malicious = set(cfg.malicious_ids())
    assert len(malicious) == 3
    adversary = attack_from_config(cfg, ds)
    mask = torch.tensor([pid in malicious for pid in range(cfg.num_clients)])
    vec = task.initial_vector()
    for rnd in range(1, ROUNDS + 1):
        data_attack = adversary if adversary.kind == "data" else None
        updates = torch.stack([
            client_update(task, pid, vec, rnd, cfg=cfg,
                          attack=data_attack if pid in malicious else None).delta
            for pid in range(cfg.num_clients)
        ])
        if adversary.kind == "model":
            updates = apply_model_attack(updates, mask, adversary, aggregator=rule,
                                         generator=torch_generator(cfg.seed, "attack", rnd))
        vec = vec + rule(updates).update
    model = task.model_from_vector(vec)
    acc = evaluate(model, ds.test_x, ds.test_y).accuracy
    asr = None
    if adversary.kind == "data":
        x, target = adversary.asr_inputs(ds.test_x, ds.test_y)
        asr = accuracy_on(model, x, target)
    return acc, asr


def test_sign_flipping_collapses_fedavg_but_not_median():
    fedavg, _ = run("fedavg", "signflip", factor=4.0)
    median, _ = run("median", "signflip", factor=4.0)
    assert fedavg <= 0.2  # chance is 0.1 on 10 classes
    assert median >= 0.6


@pytest.mark.parametrize(
    ("attack", "params"),
    [("backdoor-patch", {"size": 3}), ("backdoor-lighting", {})],
)
def test_backdoor_succeeds_against_fedavg(attack, params):
    acc, asr = run("fedavg", attack, target=0, poison_fraction=0.5, **params)
    assert asr >= 0.9
    assert acc >= 0.6  # the main task still learns: the backdoor is stealthy
