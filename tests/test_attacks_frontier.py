"""The 2022–2024 attacks: each one's defining property, and a run through the harness."""

from __future__ import annotations

import pytest
import torch

from fedshield.clients.attacks import create_attack
from fedshield.clients.attacks.adversary import adversary_stage
from fedshield.tasks.seeding import torch_generator


def make(name, **params):
    return create_attack(name, num_classes=10, low=0.0, high=1.0, num_clients=10,
                         num_malicious=3, **params)


# --- PoisonedFL -------------------------------------------------------------------------------
def test_poisonedfl_sends_one_fixed_direction_from_every_attacker_every_round():
    attack = make("poisonedfl")
    stage = adversary_stage(attack, None, seed=7)
    d = 50
    g = torch.Generator().manual_seed(0)
    theta = torch.zeros(d)
    mask = torch.tensor([False, True, True, False, True, False])
    rows, signs = [], []
    for rnd in range(1, 7):
        updates = torch.randn(6, d, generator=g)
        crafted = stage(rnd, updates, mask, theta)
        rows.append(crafted)
        if rnd == 1:  # no global move seen yet: the mean of their own honest updates
            assert torch.allclose(crafted[0], updates[mask].mean(0))
        else:
            assert torch.equal(crafted[0], crafted[1]) and torch.equal(crafted[1], crafted[2])
            signs.append(torch.sign(crafted[0]))
        step = torch.randn(d, generator=g) * 0.1
        theta = theta + step
    assert all(torch.equal(s[s != 0], signs[0][s != 0]) for s in signs)  # fixed direction


def test_poisonedfl_magnitude_follows_the_global_models_last_move():
    attack = make("poisonedfl", scale=3.0)
    first = torch.zeros(4)
    second = torch.tensor([0.5, -1.0, 0.0, 2.0])
    attack.begin_round(1, first)
    gen = torch_generator(0, "attack", 1)
    attack.craft(torch.ones(2, 4), None, generator=gen)
    attack.begin_round(2, second)
    crafted = attack.craft(torch.ones(2, 4), None, generator=gen)
    assert torch.allclose(crafted.abs()[0], 3.0 * second.abs())


def test_poisonedfl_shrinks_its_scale_when_the_model_does_not_follow():
    attack = make("poisonedfl", scale=8.0, beta=0.5, check_every=2, alignment=0.9)
    gen = torch_generator(0, "attack", 1)
    theta = torch.zeros(100)
    for rnd in range(1, 6):
        attack.begin_round(rnd, theta)
        attack.craft(torch.ones(1, 100), None, generator=gen)
        theta = theta - 0.01 * attack._sign.float()  # the defence moves the model against s
    assert attack.last_diagnostics["scale"] == pytest.approx(8.0 * 0.5 ** 2)
    assert attack.last_diagnostics["alignment"] == 0.0


def test_poisonedfl_runs_in_the_harness_and_breaks_fedavg():
    from fedshield.simulations.engine_inline import run_inline
    from fedshield.tasks.config import RunConfig

    base = RunConfig(dataset="digits", num_clients=20, rounds=12, num_malicious=4)
    clean = run_inline(base).rounds[-1]["accuracy"]
    attacked = run_inline(base.with_updates(attack="poisonedfl")).rounds[-1]["accuracy"]
    assert attacked < clean - 0.1


# --- DBA --------------------------------------------------------------------------------------
def test_dba_pieces_tile_the_full_trigger_and_each_client_trains_on_its_own():
    attack = make("dba", pieces=4, size=3)
    blank = torch.zeros(1, 1, 8, 8)
    full = attack.trigger(blank)[0, 0] > 0
    pieces = [attack.for_client(i).trigger(blank)[0, 0] > 0 for i in range(4)]
    assert int(full.sum()) == 4 * 3
    union = torch.zeros_like(full)
    for piece in pieces:
        assert int(piece.sum()) == 3
        assert not bool((union & piece).any())  # disjoint
        union |= piece
    assert torch.equal(union, full)  # together they tile the full trigger
    assert torch.equal(attack.for_client(5).trigger(blank), attack.for_client(1).trigger(blank))
    # the test inputs carry the full trigger
    x, target = attack.asr_inputs(torch.zeros(3, 1, 8, 8), torch.tensor([1, 2, 0]))
    assert target == 0 and x.shape[0] == 2 and torch.equal(x[0, 0] > 0, full)
    with pytest.raises(Exception, match="do not fit"):
        make("dba", pieces=8, size=4).trigger(blank)


def test_dba_clients_poison_with_their_piece_in_the_harness():
    from fedshield.clients.attacks import attack_from_config
    from fedshield.clients.client import local_data
    from fedshield.tasks.config import RunConfig
    from fedshield.tasks.task import get_task

    cfg = RunConfig(dataset="digits", num_clients=10, num_malicious=3, attack="dba")
    task = get_task(cfg)
    attack = attack_from_config(cfg, task.dataset)
    marks = []
    for pid in cfg.malicious_ids():
        x, _ = local_data(task, pid, 1, attack=attack, cfg=cfg)
        clean, _ = task.client_data(pid)
        triggered = x[(x != clean).flatten(1).any(dim=1)]
        marks.append((triggered[:, 0] == task.dataset.high).all(dim=0))
    assert [int(m.sum()) for m in marks] == [3, 3, 3]
    assert not torch.equal(marks[0], marks[1]) and not torch.equal(marks[1], marks[2])


# --- MPAF -------------------------------------------------------------------------------------
def test_mpaf_fake_clients_pull_toward_one_fixed_base_model():
    attack = make("mpaf", lam=2.0)
    gen = torch_generator(0, "attack", 1)
    theta1 = torch.arange(6.0)
    attack.begin_round(1, theta1)
    first = attack.craft(torch.zeros(2, 6), None, generator=gen)
    base = theta1.double() + first[0].double() / 2.0
    assert sorted(base.tolist()) == sorted(theta1.tolist())  # θ_1's entries, permuted
    assert torch.equal(first[0], first[1])
    theta2 = theta1 + 1.0
    attack.begin_round(2, theta2)
    second = attack.craft(torch.zeros(2, 6), None, generator=gen)
    assert torch.allclose(second[0].double(), 2.0 * (base - theta2.double()))


def test_mpaf_adds_fake_clients_that_hold_no_data():
    from fedshield.simulations.engine_inline import run_inline
    from fedshield.tasks.config import RunConfig

    cfg = RunConfig(dataset="digits", num_clients=10, rounds=3, num_malicious=2, attack="mpaf",
                    aggregator="trimmedmean", aggregator_params={"f": 2})
    result = run_inline(cfg)
    assert result.malicious_ids == [10, 11]  # added after the 10 real clients
    for row in result.rounds:
        assert row["clients"] == 12
        assert row["partition_ids"] == [*range(10), None, None]  # no partition: no data
        assert row["malicious_in_round"] == [None, None]
    clean = run_inline(cfg.with_updates(attack="none")).rounds
    assert all(c["partition_ids"] == list(range(10)) for c in clean)


# --- Neurotoxin and durability ----------------------------------------------------------------
def test_neurotoxin_is_zero_on_the_top_k_coordinates_and_inside_its_norm_ball():
    attack = make("neurotoxin", top_k=0.25, norm_factor=2.0)
    first = torch.zeros(8)
    move = torch.tensor([0.0, 5.0, -0.1, 0.2, -7.0, 0.3, 0.1, 0.0])
    delta = torch.full((8,), 3.0)
    assert torch.equal(attack.finish(delta.clone(), first), delta)  # round 1: no move seen
    sent = attack.finish(delta.clone(), first + move)
    assert sent[[1, 4]].tolist() == [0.0, 0.0]  # the top 25 % of |Δ|: coordinates 4 and 1
    radius = 2.0 * float(torch.linalg.vector_norm(move))
    assert float(torch.linalg.vector_norm(sent)) == pytest.approx(min(radius, 3.0 * 6 ** 0.5))
    assert bool((sent[[0, 2, 3, 5, 6, 7]] > 0).all())
    again = attack.finish(delta.clone(), first + move)  # another client, same round
    assert torch.equal(again, sent)
    # the same mask multiplies every gradient step of the local training
    fresh = make("neurotoxin", top_k=0.25, norm_factor=2.0)
    assert fresh.gradient_mask(first) is None
    assert fresh.gradient_mask(first + move).tolist() == [1, 0, 1, 1, 0, 1, 1, 1]
    assert fresh.gradient_mask(first + move).tolist() == [1, 0, 1, 1, 0, 1, 1, 1]  # idempotent


def test_attack_stop_measures_how_long_a_backdoor_lasts():
    from fedshield.simulations.engine_inline import run_inline
    from fedshield.simulations.metrics import summarize
    from fedshield.tasks.config import RunConfig

    cfg = RunConfig(dataset="digits", num_clients=10, rounds=6, num_malicious=3,
                    attack="neurotoxin", attack_stop=3, eval_every=5)
    rows = run_inline(cfg).rounds
    assert [r["attack_active"] for r in rows] == [True] * 3 + [False] * 3
    assert [r["malicious_in_round"] != [] for r in rows] == [True] * 3 + [False] * 3
    assert rows[2]["asr"] is not None  # evaluated at the stop round
    summary = summarize(rows, 0.8)
    assert summary["asr_at_stop"] == rows[2]["asr"]
    assert summary["rounds_after_stop"] == 2  # rounds 5 and 6 are evaluated after the stop
    assert 0 <= summary["durable_rounds"] <= 2


# --- adaptive attacks -------------------------------------------------------------------------
def round_matrix():
    g = torch.Generator().manual_seed(0)
    x = torch.ones(20, 30) + 0.3 * torch.randn(20, 30, generator=g)
    mask = torch.zeros(20, dtype=torch.bool)
    mask[:4] = True
    return x, mask


def damage(rule, x, mask, rows):
    ctx = {"reference": x[~mask].mean(0)} if rule.needs_reference else {}
    attacked = x.clone()
    attacked[mask] = rows
    return float(torch.linalg.vector_norm(rule(attacked, **ctx).update - rule(x, **ctx).update))


@pytest.mark.parametrize(("rule_name", "params"), [
    ("median", {}), ("trimmedmean", {"f": 4}), ("krum", {"f": 4}), ("fltrust", {})])
def test_the_adaptive_wrapper_does_at_least_the_damage_of_its_base_attack(rule_name, params):
    from fedshield import aggregators
    from fedshield.clients.attacks.adversary import craft_malicious_rows

    x, mask = round_matrix()
    rule = aggregators.create(rule_name, **params)
    gen = torch_generator(0, "attack", 1)
    base = craft_malicious_rows(x, mask, make("alie"), aggregator=rule, generator=gen)
    tuned_attack = make("adaptive", base="alie")
    tuned = craft_malicious_rows(x, mask, tuned_attack, aggregator=rule,
                                 generator=torch_generator(0, "attack", 1))
    assert damage(rule, x, mask, tuned) >= damage(rule, x, mask, base) - 1e-6
    assert tuned_attack.last_diagnostics["gamma"] is not None


def test_fltrust_adaptive_keeps_a_positive_cosine_and_beats_alie_on_fltrust():
    from fedshield import aggregators
    from fedshield.clients.attacks.adversary import craft_malicious_rows

    x, mask = round_matrix()
    rule = aggregators.create("fltrust")
    attack = make("fltrust-adaptive")
    rows = craft_malicious_rows(x, mask, attack, aggregator=rule,
                                generator=torch_generator(0, "attack", 1))
    root = x[~mask].mean(0)
    cosine = torch.nn.functional.cosine_similarity(rows, root[None, :])
    assert bool((cosine > 0).all())  # trusted: the weight ReLU(cos) stays positive
    assert torch.allclose(rows.norm(dim=1), torch.full((4,), float(root.norm())), rtol=1e-4)
    alie = craft_malicious_rows(x, mask, make("alie"), aggregator=rule,
                                generator=torch_generator(0, "attack", 1))
    assert damage(rule, x, mask, rows) > 2 * damage(rule, x, mask, alie)
    assert 0 < attack.last_diagnostics["angle_degrees"] < 90


def test_adaptive_attacks_refuse_what_they_cannot_do():
    from fedshield.clients.attacks import AttackError

    with pytest.raises(AttackError, match="another model attack"):
        make("adaptive", base="adaptive")
    with pytest.raises(AttackError, match="model attack on compromised clients"):
        make("adaptive", base="labelflip")
    with pytest.raises(AttackError, match="not supported"):
        make("fltrust-adaptive", knowledge="own")


# --- edge-case and A3FL -----------------------------------------------------------------------
def test_edge_case_poisons_the_least_ink_tail_of_the_source_class():
    from fedshield.clients.attacks import attack_from_config
    from fedshield.clients.attacks.edge import ink
    from fedshield.tasks.config import RunConfig
    from fedshield.tasks.task import get_task

    cfg = RunConfig(dataset="digits", num_clients=10, num_malicious=2, attack="edge-case")
    task = get_task(cfg)
    attack = attack_from_config(cfg, task.dataset)
    x, y = task.client_data(0)
    attack.prepare(task, task.initial_vector(), x, y, torch_generator(0))
    train_x, train_y = torch.as_tensor(task.dataset.train_x), torch.as_tensor(task.dataset.train_y)
    sevens = ink(train_x[train_y == 7])
    cutoff = torch.sort(sevens).values[round(0.1 * len(sevens)) - 1]
    assert bool((ink(attack._edge) <= cutoff).all()) and len(attack._edge) == round(
        0.1 * len(sevens))
    px, py = attack.poison(x, y, torch_generator(1))
    added = px.shape[0] - x.shape[0]
    assert added == len(attack._edge) and bool((py[-added:] == 1).all())
    assert torch.equal(px[: x.shape[0]], x) and torch.equal(py[: x.shape[0]], y)
    test_inputs, target = attack.asr_inputs(torch.as_tensor(task.dataset.test_x),
                                            torch.as_tensor(task.dataset.test_y))
    assert target == 1 and 0 < len(test_inputs) < 10  # the test set's tail of its 7s
    sent = attack.finish(torch.ones(5), torch.zeros(5))
    sent = attack.finish(torch.full((5,), 10.0), torch.full((5,), 0.1))  # global moved by 0.1
    assert float(sent.norm()) == pytest.approx(2.0 * float(torch.full((5,), 0.1).norm()))


def test_a3fl_optimises_its_trigger_against_the_model_each_round():
    from fedshield.clients.attacks import attack_from_config
    from fedshield.tasks.config import RunConfig
    from fedshield.tasks.task import get_task

    cfg = RunConfig(dataset="digits", num_clients=10, num_malicious=2, attack="a3fl")
    task = get_task(cfg)
    attack = attack_from_config(cfg, task.dataset)
    x, y = task.client_data(0)
    blank = torch.full((1, 1, 8, 8), task.dataset.low)
    assert float(attack.trigger(blank)[0, 0, -1, -1]) == pytest.approx(task.dataset.high)
    theta = task.initial_vector()
    attack.prepare(task, theta, x, y, torch_generator(0))
    first = attack._pattern.clone()
    assert float(first.min()) < task.dataset.high - 1e-3  # optimised away from the white patch
    assert float(first.min()) >= task.dataset.low - 1e-6
    assert float(first.max()) <= task.dataset.high + 1e-6
    attack.prepare(task, theta, x, y, torch_generator(1))  # same global model: kept
    assert torch.equal(attack._pattern, first)
    attack.prepare(task, theta + 0.01, x, y, torch_generator(1))  # a new round: re-optimised
    assert not torch.equal(attack._pattern, first)
    stamped = attack.trigger(blank)
    assert torch.equal(stamped[0, :, -3:, -3:], attack._pattern)
    assert torch.equal(stamped[0, :, :5], blank[0, :, :5])  # only the patch window changes


@pytest.mark.flower
@pytest.mark.parametrize("attack, malicious", [("mpaf", 2), ("a3fl", 1)])
def test_fake_clients_and_a_moving_trigger_run_on_flower_as_inline(tmp_path, attack, malicious):
    """MPAF's fake clients join the Flower round in the shared round core, and A3FL's malicious
    ClientApp keeps its trigger in its node state and reports it for the server's ASR: a real
    `flwr run` gives the inline engine's rows, ASR included."""
    from conftest import assert_same_rows

    from fedshield.simulations import scenario as sc
    from fedshield.simulations.engine_flower import processes_of, run_flower
    from fedshield.simulations.engine_inline import run_inline
    from fedshield.tasks.config import RunConfig

    cfg = RunConfig(dataset="digits", model="logreg", partition="iid", num_clients=6, rounds=3,
                    batch_size=16, lr=0.1, aggregator="median", attack=attack,
                    num_malicious=malicious, output_dir=str(tmp_path / "flower"))
    sc.validate_components(sc.expand(sc.from_dict({"engine": "flower", "attack": attack,
                                                   "num_malicious": malicious})))
    home = tmp_path / "flwr_home"
    flower = run_flower(cfg, timeout=480, log_path=tmp_path / "flower.log", flwr_home=home)
    inline = run_inline(cfg)
    assert_same_rows(flower.rounds, inline.rounds, atol=1e-4)
    if attack == "mpaf":
        assert [r["partition_ids"][-2:] for r in flower.rounds] == [[None, None]] * 3
    else:
        assert all(r["asr"] is not None for r in flower.rounds)
    assert processes_of(home) == []


def test_an_a3fl_client_reports_its_trigger_and_the_server_checks_the_report():
    import numpy as np
    from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
    from flwr.supercore.task_identity import TaskIdentity
    from helpers_flower import metadata

    from fedshield.clients.attacks import attack_from_config
    from fedshield.clients.client_app import ATTACK_MEMORY, TRIGGER_KEY, train
    from fedshield.server.server_app import trigger_reports
    from fedshield.tasks.config import RunConfig
    from fedshield.tasks.params import to_arrayrecord
    from fedshield.tasks.task import get_task

    cfg = RunConfig(dataset="digits", num_clients=4, num_malicious=1, attack="a3fl",
                    attack_params={"trigger_steps": 2, "adv_steps": 1})
    task = get_task(cfg)
    pid = cfg.malicious_ids()[0]
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 0
    state, theta, patterns = RecordDict(), task.initial_vector(), []
    for rnd, vec in ((1, theta), (2, theta * 0.9)):
        content = RecordDict({"arrays": to_arrayrecord(vec, task.layout),
                              "config": ConfigRecord({"server-round": rnd})})
        ctx = Context(run_id=1, node_id=7, state=state,
                      run_config={k.replace("_", "-"): v for k, v in cfg.to_flower().items()},
                      node_config={"partition-id": pid, "num-partitions": 4})
        reply = train(Message(content=content, metadata=metadata(7)), ctx)
        patterns.append(reply.content[TRIGGER_KEY]["pattern"].numpy())
        assert np.array_equal(state[ATTACK_MEMORY]["pattern"].numpy(), patterns[-1])
    assert patterns[0].shape == (1, 3, 3) and not np.array_equal(patterns[0], patterns[1])

    server_attack = attack_from_config(cfg, task.dataset)
    observe = trigger_reports(cfg, server_attack)
    honest = next(p for p in range(4) if p != pid)

    def report(partition, pattern):
        return Message(content=RecordDict({
            "meta": ConfigRecord({"partition-id": partition, "malicious": True}),
            TRIGGER_KEY: ArrayRecord({"pattern": Array(pattern)})}), metadata=metadata(7))

    observe(2, [report(pid, patterns[1])])
    assert np.array_equal(server_attack.memory()["pattern"].numpy(), patterns[1])
    bad = [np.full((1, 3, 3), np.nan, np.float32), np.full((1, 3, 3), 7.0, np.float32),
           np.zeros((1, 4, 4), np.float32), np.zeros((1, 3, 3), np.int64)]
    for pattern in bad:  # refused: the evaluator keeps the last good trigger
        observe(3, [report(pid, pattern)])
        assert np.array_equal(server_attack.memory()["pattern"].numpy(), patterns[1])
    observe(3, [report(honest, patterns[0])])  # not an attacker of the simulation
    assert np.array_equal(server_attack.memory()["pattern"].numpy(), patterns[1])
    patch = cfg.with_updates(attack="backdoor-patch", attack_params={})
    assert trigger_reports(patch, attack_from_config(patch, task.dataset)) is None


def test_every_attack_states_its_threat_model():
    from fedshield.clients.attacks import available_attacks
    from fedshield.simulations.cli import main

    listing = available_attacks()
    for name in ("poisonedfl", "mpaf", "neurotoxin", "dba", "a3fl", "edge-case", "adaptive",
                 "fltrust-adaptive"):
        assert listing[name]["observes"] != "the current round only", name
    assert listing["alie"]["observes"] == "the current round only"
    assert main(["list", "attacks"]) == 0


def test_a_flower_client_remembers_the_last_global_model_for_neurotoxin():
    """The ClientApp is rebuilt for every message: a malicious node keeps Neurotoxin's memory
    (the last global model it received) in its node state, so round 2 is masked."""
    import numpy as np
    from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
    from flwr.supercore.task_identity import TaskIdentity
    from helpers_flower import metadata

    from fedshield.clients.client_app import ATTACK_MEMORY, train
    from fedshield.tasks.config import RunConfig
    from fedshield.tasks.params import to_arrayrecord
    from fedshield.tasks.task import get_task

    cfg = RunConfig(dataset="digits", num_clients=4, num_malicious=1, attack="neurotoxin",
                    attack_params={"top_k": 0.5})
    task = get_task(cfg)
    pid = cfg.malicious_ids()[0]
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 0
    state = RecordDict()
    theta = task.initial_vector()
    deltas = []
    for rnd, vec in ((1, theta), (2, theta + 0.01 * torch.arange(theta.numel()) / theta.numel())):
        content = RecordDict({"arrays": to_arrayrecord(vec, task.layout),
                              "config": ConfigRecord({"server-round": rnd})})
        msg = Message(content=content, metadata=metadata(7))
        ctx = Context(run_id=1, node_id=7, state=state,
                      run_config={k.replace("_", "-"): v for k, v in cfg.to_flower().items()},
                      node_config={"partition-id": pid, "num-partitions": 4})
        reply = train(msg, ctx)
        local = np.concatenate([reply.content["arrays"][k].numpy().reshape(-1)
                                for k in reply.content["arrays"]])
        deltas.append(torch.from_numpy(local) - vec)
        assert ATTACK_MEMORY in state
    assert isinstance(state[ATTACK_MEMORY], ArrayRecord)
    zero_share = float((deltas[1].abs() < 1e-7).double().mean())
    assert zero_share >= 0.45  # the top half of the last move is masked in round 2
    assert float((deltas[0].abs() < 1e-7).double().mean()) < zero_share
