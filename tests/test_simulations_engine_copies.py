"""The inline engine's round without redundant work or copies: cached template and data (F2),
deltas taken in place, one (n, d) update matrix per round (F3). Results are bit-identical to
the straightforward computation."""

import torch

import fedshield.tasks.task as task_module
from fedshield.clients.attacks import attack_from_config
from fedshield.clients.client import local_data
from fedshield.simulations.engine_inline import train_round
from fedshield.tasks.config import RunConfig
from fedshield.tasks.seeding import torch_generator
from fedshield.tasks.task import get_task
from fedshield.tasks.training import train_many

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
        replies = train_round(task, pids, vec, rnd, cfg, attacks).replies
        assert builds == [] and gathers == []  # no template model, no partition copy per round
        got = torch.stack([r.delta for r in replies])
        want = _reference_deltas(task, pids, vec, rnd, cfg, attacks)
        assert torch.equal(got, want)  # in-place sub_/mul_ = the same float ops: bit-identical
        assert not torch.equal(got[cfg.malicious_ids()[0]], torch.zeros_like(got[0]))


# --- F3: one (n, d) update matrix per round ------------------------------------------------------

def _probe_run(monkeypatch, cfg):
    """Run ``cfg`` inline recording, per round, the live tensor bytes (above the pre-run baseline,
    task caches warmed) at train_round entry and at robust_step entry, and the data pointers of
    train_many's result and of the matrix robust_step receives."""
    import gc

    import fedshield.server.round as round_core
    import fedshield.simulations.engine_inline as engine
    import fedshield.tasks.training as training
    from fedshield.simulations.bench.scaling import live_tensor_bytes

    task = get_task(cfg)
    for pid in range(cfg.num_clients):
        task.client_data(pid)
    task.template_model()
    rec = {"train": [], "aggregate": [], "trained_ptr": [], "step_ptr": []}

    def census() -> int:
        gc.collect()
        return live_tensor_bytes() - baseline

    real_round, real_many = engine.train_round, training.train_many
    real_step = round_core.robust_step

    def probed_round(*a, **k):
        rec["train"].append(census())
        return real_round(*a, **k)

    def probed_many(*a, **k):
        out = real_many(*a, **k)
        rec["trained_ptr"].append(out.params.data_ptr())
        return out

    def probed_step(global_vec, updates, *a, **k):
        rec["aggregate"].append(census())
        rec["step_ptr"].append(updates.data_ptr())
        return real_step(global_vec, updates, *a, **k)

    monkeypatch.setattr(engine, "train_round", probed_round)
    monkeypatch.setattr(training, "train_many", probed_many)
    monkeypatch.setattr(round_core, "robust_step", probed_step)
    gc.collect()
    baseline = live_tensor_bytes()
    result = engine.run_inline(cfg)
    return rec, result, cfg.num_clients * task.layout.numel * 4


HELD = dict(MLP, num_clients=20, rounds=3, eval_every=10)


def test_engine_holds_one_update_matrix_and_drops_it_before_the_next_round(monkeypatch):
    rec, _, unit = _probe_run(monkeypatch, RunConfig(**HELD, aggregator="fedavg"))
    assert len(rec["aggregate"]) == 3
    # 1.0x n·d·4 (+ d-sized vectors: global, evaluator model); a stacked copy would make it 2.0x
    assert all(0.9 * unit < held < 1.4 * unit for held in rec["aggregate"]), (rec, unit)
    # nothing of the previous round's matrix is alive when the next round trains
    assert all(held < 0.4 * unit for held in rec["train"]), (rec, unit)
    # the matrix aggregated is train_many's (K, d) result itself (no copy)
    assert rec["step_ptr"] == rec["trained_ptr"]


def test_model_attack_round_holds_only_the_attacked_matrix(monkeypatch):
    cfg = RunConfig(**HELD, aggregator="median", attack="signflip", num_malicious=4)
    rec, _, unit = _probe_run(monkeypatch, cfg)
    assert all(0.9 * unit < held < 1.4 * unit for held in rec["aggregate"]), (rec, unit)
    assert all(held < 0.4 * unit for held in rec["train"]), (rec, unit)


def test_loop_path_writes_client_update_deltas_into_one_matrix(monkeypatch):
    from fedshield.clients.client import client_update

    monkeypatch.setattr(task_module.Task, "batched", property(lambda self: False))
    cfg = RunConfig(**MLP, attack="labelflip", attack_params={"boost": 3.0}, num_malicious=2)
    task = get_task(cfg)
    attack = attack_from_config(cfg, task.dataset)
    attacks = {pid: attack for pid in cfg.malicious_ids()}
    pids, vec = [1, 2, 4, 5, 7], task.initial_vector()
    trained = train_round(task, pids, vec, 2, cfg, attacks)
    assert trained.updates.shape == (len(pids), task.layout.numel)
    for row, pid, reply in zip(trained.updates, pids, trained.replies, strict=True):
        ref = client_update(task, pid, vec, 2, attack=attacks.get(pid), cfg=cfg)
        assert torch.equal(row, ref.delta)  # copied as is: bit-identical
        assert reply.delta.data_ptr() == row.data_ptr() and reply.num_examples == ref.num_examples
    rec, _, unit = _probe_run(monkeypatch, RunConfig(**HELD, aggregator="median"))
    assert rec["trained_ptr"] == []  # the loop path, not train_many
    assert all(0.9 * unit < held < 1.4 * unit for held in rec["aggregate"]), (rec, unit)
    assert all(held < 0.4 * unit for held in rec["train"]), (rec, unit)
