"""The inline engine (and, marked flower, its parity with the Flower engine)."""

import pytest
import torch

from fedshield.simulations.engine_inline import run_inline, sample_clients, train_round
from fedshield.tasks.config import RunConfig

TINY = dict(dataset="digits", model="logreg", partition="iid", num_clients=6, rounds=2,
            batch_size=16, lr=0.1)


def test_run_rows_metrics_and_determinism():
    cfg = RunConfig(**TINY, aggregator="median", attack="signflip", num_malicious=2)
    result = run_inline(cfg)
    assert [r["round"] for r in result.rounds] == [1, 2]
    last = result.rounds[-1]
    assert 0.0 <= last["accuracy"] <= 1.0 and last["loss"] > 0
    assert last["malicious_in_round"] == cfg.malicious_ids() and len(cfg.malicious_ids()) == 2
    # median: coordinate share of 2 malicious out of 6 lies in [0, 1]; sign-flipped updates are
    # the outliers, so they seldom provide the median value
    assert last["share_kind"] == "coordinates" and 0.0 <= last["malicious_share"] < 2 / 6
    assert last["recall"] is None  # median neither accepts nor rejects
    # signflip (factor 1) keeps each malicious update's norm: the row's norms are its own
    norms = last["update_norms"]
    mal = [norms[p] for p in cfg.malicious_ids()]
    assert last["norm_malicious"] == pytest.approx(sum(mal) / 2)
    assert last["norm_max"] == pytest.approx(max(norms))
    again = run_inline(cfg)
    assert torch.equal(result.final_vector, again.final_vector)


def test_fedavg_share_is_the_malicious_weight():
    cfg = RunConfig(**TINY, aggregator="fedavg", attack="labelflip", num_malicious=2)
    row = run_inline(cfg).rounds[0]
    assert row["share_kind"] == "weights"
    # iid split of digits' train set over 6 clients: near-equal sizes, so the share is ~ 2/6
    assert row["malicious_share"] == pytest.approx(2 / 6, abs=0.01)


def test_sampling_is_seeded_sorted_and_full_when_zero():
    cfg = RunConfig(**{**TINY, "num_clients": 10}, clients_per_round=4)
    r1 = sample_clients(cfg, 1)
    assert r1 == sorted(r1) and len(set(r1)) == 4 and r1 == sample_clients(cfg, 1)
    assert any(sample_clients(cfg, t) != r1 for t in range(2, 6))
    assert sample_clients(RunConfig(**TINY), 3) == list(range(6))


def test_batched_round_equals_client_update_per_client():
    from fedshield.clients.attacks import attack_from_config
    from fedshield.clients.client import client_update
    from fedshield.tasks.task import get_task

    cfg = RunConfig(**{**TINY, "model": "mlp"}, attack="labelflip",
                    attack_params={"boost": 3.0}, num_malicious=2)
    task = get_task(cfg)
    attack = attack_from_config(cfg, task.dataset)
    vec = task.initial_vector()
    attacks = {pid: attack for pid in cfg.malicious_ids()}
    batched = train_round(task, list(range(6)), vec, 1, cfg, attacks).replies
    for pid, upd in enumerate(batched):
        ref = client_update(task, pid, vec, 1, attack=attacks.get(pid), cfg=cfg)
        assert upd.num_examples == ref.num_examples
        torch.testing.assert_close(upd.delta, ref.delta, atol=1e-6, rtol=1e-4)


@pytest.mark.flower
def test_inline_and_flower_engines_give_the_same_rows(tmp_path):
    """The Flower Simulation Engine (flwr run, Ray) and the inline engine share the round core:
    whole rows agree key by key. (Under partial participation Flower samples its random node
    ids, so the two engines draw different partitions; the in-process grid test covers it.)"""
    from conftest import assert_same_rows

    from fedshield.simulations.engine_flower import processes_of, run_flower

    cfg = RunConfig(**{**TINY, "rounds": 3}, aggregator="median", attack="signflip",
                    num_malicious=1, output_dir=str(tmp_path / "flower"))
    home = tmp_path / "flwr_home"
    flower = run_flower(cfg, timeout=480, log_path=tmp_path / "flower.log", flwr_home=home)
    inline = run_inline(cfg)
    torch.testing.assert_close(flower.final_vector, inline.final_vector, atol=1e-5, rtol=1e-4)
    assert_same_rows(flower.rounds, inline.rounds, atol=1e-4)
    assert [r["share_kind"] for r in flower.rounds] == ["coordinates"] * 3
    assert (tmp_path / "flower" / "final.pt").exists()
    assert (home / "local-superlink").is_dir()  # the run used this private FLWR_HOME ...
    assert processes_of(home) == []  # ... and left no SuperLink, ServerApp or Ray behind
