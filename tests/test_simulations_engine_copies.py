"""The inline engine's round without redundant work or copies: cached template and data (F2),
deltas taken in place, one (n, d) update matrix per round (F3). Results are bit-identical to
the straightforward computation."""

import torch

import tasks.task as task_module
from clients.attacks import attack_from_config
from clients.client import local_data
from simulations.engine_inline import train_round
from tasks.config import RunConfig
from tasks.seeding import torch_generator
from tasks.task import get_task
from tasks.training import train_many

MLP = dict(dataset="digits", model="mlp", partition="dirichlet", num_clients=8, rounds=2,
           batch_size=16, lr=0.1)


def _reference_deltas(task, pids, vec, rnd, cfg, attacks):
    """The pre-cache computation: a fresh template, fresh data, delta = params − start, × boost."""
    data = [local_data(task, pid, rnd, attack=attacks.get(pid), cfg=cfg) for pid in pids]
    gens = [torch_generator(cfg.seed, "client", pid, rnd) for pid in pids]
    start = vec.to(torch.float32)
    params = train_many(task.new_model(), data, task.train_config, gens, start=start).params
    rows = []
    for pid, p in zip(pids, params, strict=True):
        delta = p - start
        boost = attacks[pid].boost if pid in attacks else 1.0
        rows.append(delta * boost if boost != 1.0 else delta)
    return torch.stack(rows)


def test_batched_round_is_bit_identical_and_builds_nothing_after_round_one(monkeypatch):
    cfg = RunConfig(**MLP, attack="backdoor-patch", attack_params={"boost": 2.5}, num_malicious=2)
    task = get_task(cfg)
    attack = attack_from_config(cfg, task.dataset)
    attacks = {pid: attack for pid in cfg.malicious_ids()}
    pids = list(range(cfg.num_clients))
    vec = task.initial_vector()
    train_round(task, pids, vec, 1, cfg, attacks)  # warm the caches
    builds, gathers = [], []
    real_build, real_gather = task_module.build_model, task_module.Task._gather
    monkeypatch.setattr(task_module, "build_model",
                        lambda *a, **k: builds.append(a) or real_build(*a, **k))
    monkeypatch.setattr(task_module.Task, "_gather",
                        lambda self, i: gathers.append(i) or real_gather(self, i))
    for rnd in (2, 3):
        builds.clear()
        replies = train_round(task, pids, vec, rnd, cfg, attacks)
        assert builds == [] and gathers == []  # no template model, no partition copy per round
        got = torch.stack([r.delta for r in replies])
        want = _reference_deltas(task, pids, vec, rnd, cfg, attacks)
        assert torch.equal(got, want)  # in-place sub_/mul_ = the same float ops: bit-identical
        assert not torch.equal(got[cfg.malicious_ids()[0]], torch.zeros_like(got[0]))
