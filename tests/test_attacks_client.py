"""fedshield.clients.client.client_update: honest training, poisoned training, boosting, seeding."""

from __future__ import annotations

import pytest
import torch

from fedshield.clients.attacks import create_attack
from fedshield.clients.client import ClientError, client_update, local_data
from fedshield.tasks.config import RunConfig
from fedshield.tasks.params import flatten, load_vector
from fedshield.tasks.seeding import torch_generator
from fedshield.tasks.task import get_task
from fedshield.tasks.training import train

CFG = RunConfig(dataset="digits", partition="iid", num_clients=10, model="logreg", seed=3,
                lr=0.1, local_epochs=1)


@pytest.fixture(scope="module")
def task():
    return get_task(CFG)


def attack(name, **params):
    ds = get_task(CFG).dataset
    return create_attack(name, num_classes=ds.num_classes, low=ds.low, high=ds.high,
                         num_clients=10, num_malicious=2, **params)


def test_honest_update_is_local_minus_global_and_seeded(task):
    vec = task.initial_vector()
    before = vec.clone()
    upd = client_update(task, 4, vec, 2, attack=None, cfg=CFG)
    assert torch.equal(vec, before)  # the global vector is not modified
    x, y = task.client_data(4)
    model = task.new_model()
    load_vector(model, vec)
    train(model, x, y, task.train_config, generator=torch_generator(CFG.seed, "client", 4, 2))
    assert torch.equal(upd.delta, flatten(model) - vec)
    assert upd.num_examples == len(y) and upd.loss > 0 and upd.delta.dtype == torch.float32
    again = client_update(task, 4, vec, 2, attack=None, cfg=CFG)
    assert torch.equal(again.delta, upd.delta)
    other_round = client_update(task, 4, vec, 3, attack=None, cfg=CFG)
    assert not torch.equal(other_round.delta, upd.delta)


def test_poisoned_update_trains_on_poisoned_data(task):
    flip = attack("labelflip")
    x, y = local_data(task, 1, 1, attack=flip, cfg=CFG)
    x0, y0 = task.client_data(1)
    assert torch.equal(x, x0) and torch.equal(y, 9 - y0)
    vec = task.initial_vector()
    honest = client_update(task, 1, vec, 1, attack=None, cfg=CFG)
    poisoned = client_update(task, 1, vec, 1, attack=flip, cfg=CFG)
    assert not torch.allclose(honest.delta, poisoned.delta)


def test_boost_scales_the_delta(task):
    vec = task.initial_vector()
    plain = client_update(task, 2, vec, 1, attack=attack("backdoor-patch"), cfg=CFG)
    boosted = client_update(task, 2, vec, 1, attack=attack("backdoor-patch", boost="auto"),
                            cfg=CFG)
    assert torch.allclose(boosted.delta, 5.0 * plain.delta)  # n / m = 10 / 2
    assert torch.allclose(boosted.delta.norm(), 5.0 * plain.delta.norm())


def test_pending_boost_is_bound_from_the_run_config(task):
    ds = task.dataset
    cfg = CFG.with_updates(attack="scaling", malicious_fraction=0.2)
    scaling = create_attack("scaling", num_classes=ds.num_classes, low=ds.low, high=ds.high)
    assert scaling.boost_pending
    vec = task.initial_vector()
    boosted = client_update(task, 2, vec, 1, attack=scaling, cfg=cfg)
    assert scaling.boost == 10.0  # FLTrust's λ = n, n = 10 clients in the round
    plain = client_update(task, 2, vec, 1, attack=attack("backdoor-patch"), cfg=cfg)
    assert torch.allclose(boosted.delta, 10.0 * plain.delta)


def test_model_attack_clients_train_honestly(task):
    vec = task.initial_vector()
    honest = client_update(task, 0, vec, 1, attack=None, cfg=CFG)
    assert torch.equal(client_update(task, 0, vec, 1, attack=attack("alie"), cfg=CFG).delta,
                       honest.delta)


def test_bad_inputs(task):
    with pytest.raises(ClientError, match="global_vec"):
        client_update(task, 0, task.initial_vector()[None], 1, attack=None, cfg=CFG)
    with pytest.raises(ValueError, match="attack must be"):
        client_update(task, 0, task.initial_vector(), 1, attack="labelflip", cfg=CFG)


def test_finished_delta_is_boosted_by_the_data_attacks_bound_boost_only():
    from fedshield.clients.attacks import create_attack
    from fedshield.clients.client import finish_delta
    from fedshield.tasks.config import RunConfig

    cfg = RunConfig(dataset="digits", num_clients=10, attack="scaling", num_malicious=2)
    scaling = create_attack("scaling", num_classes=10, low=0.0, high=1.0)  # boost "n", pending
    theta = torch.zeros(3)
    # bound to n = clients per round
    assert finish_delta(scaling, cfg, torch.ones(3), theta).tolist() == [10.0] * 3
    signflip = create_attack("signflip", num_classes=10, low=0.0, high=1.0)
    assert finish_delta(signflip, cfg, torch.ones(3), theta).tolist() == [1.0] * 3
    assert finish_delta(None, cfg, torch.ones(3), theta).tolist() == [1.0] * 3
