"""The ``device`` run key: resolution, validation, the plumbing of batches to the model's device,
and identical results on the CPU."""

from __future__ import annotations

import pytest
import torch
from conftest import example_id, rule_examples

from fedshield.simulations.engine_flower import federation_config
from fedshield.simulations.scenario import cell_id
from fedshield.tasks import training
from fedshield.tasks.config import ConfigError, RunConfig
from fedshield.tasks.device import DeviceError, check_device_spec, resolve_device
from fedshield.tasks.models import build_model
from fedshield.tasks.params import flatten
from fedshield.tasks.task import get_task


def _fake_gpus(monkeypatch, count: int) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)


def test_auto_is_the_cpu_without_a_gpu_and_cuda_with_one(monkeypatch):
    _fake_gpus(monkeypatch, 0)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(DeviceError, match="is_available"):
        resolve_device("cuda")
    _fake_gpus(monkeypatch, 2)
    assert resolve_device("auto") == torch.device("cuda", 0)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(DeviceError, match="2 CUDA devices"):
        resolve_device("cuda:2")


@pytest.mark.parametrize("bad", ["gpu", "cuda:x", "cpu:0", "", 0, None, "tpu"])
def test_a_bad_device_is_refused_by_name(bad):
    with pytest.raises(DeviceError, match="device"):
        check_device_spec(bad)
    with pytest.raises(ConfigError, match="device"):
        RunConfig(device=bad)


def test_the_default_device_keeps_earlier_cell_ids():
    cfg = RunConfig()
    assert cfg.device == "auto"
    assert cell_id(cfg) == cell_id(cfg.with_updates(device="auto"))
    assert cell_id(cfg) != cell_id(cfg.with_updates(device="cpu"))


def test_flower_gives_each_client_a_share_of_the_gpus(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    _fake_gpus(monkeypatch, 0)
    assert "client-resources-num-gpus=0.0 " in federation_config(5, 2, "auto")
    _fake_gpus(monkeypatch, 1)
    assert "client-resources-num-gpus=0.5 " in federation_config(5, 2, "auto")
    assert "client-resources-num-gpus=0.0 " in federation_config(5, 2, "cpu")
    _fake_gpus(monkeypatch, 4)
    assert "client-resources-num-gpus=1.0 " in federation_config(5, 2, "cuda")


def _transfers(monkeypatch, module, name: str) -> list[tuple[tuple[int, ...], torch.device]]:
    """Spy on ``module.name(tensor, device)``, a transfer; returns the list of (shape, device)
    it fills."""
    moved: list[tuple[tuple[int, ...], torch.device]] = []
    real = getattr(module, name)

    def spy(tensor, device):
        moved.append((tuple(tensor.shape), device))
        return real(tensor, device)

    monkeypatch.setattr(module, name, spy)
    return moved


def test_every_batch_goes_to_the_models_device(monkeypatch):
    moved = _transfers(monkeypatch, training, "to_device")
    model = build_model("mlp", (1, 4, 4), 3, seed=0)
    cpu = torch.device("cpu")
    x, y = torch.randn(20, 1, 4, 4), torch.arange(20) % 3
    config = training.TrainConfig(lr=0.1, batch_size=8, local_steps=3)
    training.train(model, x, y, config, generator=torch.Generator().manual_seed(0))
    assert [shape for shape, _ in moved] == [(8, 1, 4, 4), (8,)] * 2 + [(4, 1, 4, 4), (4,)]
    assert {device for _, device in moved} == {cpu}
    moved.clear()
    training.evaluate(model, x, y, batch_size=16)
    assert moved == [((16, 1, 4, 4), cpu), ((16,), cpu), ((4, 1, 4, 4), cpu), ((4,), cpu)]
    moved.clear()
    gens = [torch.Generator().manual_seed(k) for k in range(2)]
    training.train_many(model, [(x, y), (x, y)], config, gens, start=flatten(model),
                        method="vmap")
    batches = [shape for shape, _ in moved if shape in ((2, 8, 1, 4, 4), (2, 8))]
    assert len(batches) == 2 * 3 and all(device == cpu for _, device in moved)


def test_models_are_built_on_the_tasks_device_and_flatten_to_the_cpu():
    task = get_task(RunConfig(dataset="digits", model="cnn", num_clients=4))
    assert task.device == torch.device("cpu")
    meta = task.new_model(torch.device("meta"))
    assert {p.device.type for p in meta.parameters()} == {"meta"}
    assert torch.equal(flatten(task.new_model()), task.initial_vector())


def test_device_cpu_and_auto_give_the_same_run_here():
    from fedshield.simulations.engine_inline import run_inline

    cfg = RunConfig(dataset="digits", model="mlp", num_clients=6, rounds=2,
                    aggregator="median", attack="labelflip", malicious_fraction=0.34)
    a = run_inline(cfg.with_updates(device="cpu"))
    b = run_inline(cfg.with_updates(device="auto"))
    assert torch.equal(a.final_vector, b.final_vector)
    assert [r["accuracy"] for r in a.rounds] == [r["accuracy"] for r in b.rounds]


# --- aggregation on the device ------------------------------------------------------------------
def _kernel_transfers(monkeypatch) -> list[tuple[tuple[int, ...], torch.device]]:
    """Spy on the kernels' one transfer per column block."""
    from fedshield.aggregators import kernels

    return _transfers(monkeypatch, kernels, "to_kernel_device")


def test_aggregation_runs_on_the_cpu_path_unless_a_device_is_there(monkeypatch):
    from fedshield.tasks.device import aggregation_device

    _fake_gpus(monkeypatch, 0)
    assert aggregation_device("auto") is None and aggregation_device("cpu") is None
    _fake_gpus(monkeypatch, 2)
    assert aggregation_device("auto") == torch.device("cuda", 0)
    assert aggregation_device("cuda:1") == torch.device("cuda", 1)
    assert aggregation_device("cpu") is None


@pytest.mark.parametrize("case", rule_examples(), ids=[example_id(c) for c in rule_examples()])
def test_every_rule_gives_the_same_round_with_its_kernels_on_a_device(case, monkeypatch):
    """The device path (forced onto the CPU here, the only device this machine has) runs the
    same rule: sorts are permutations, so every value is the CPU path's bit for bit; the Gram
    products are the same block GEMMs. The rules that sort or take distances send their column
    blocks to the device; the linear ones (mean, norms, clipping) never do."""
    from fedshield.aggregators import create
    from fedshield.aggregators.kernels import kernel_device

    name, params = case
    gen = torch.Generator().manual_seed(4)
    n = max(create(name, **params).min_clients(), 11)
    x = torch.randn(n, 3000, generator=gen)
    x[:2] *= 40.0
    ctx = {"weights": torch.rand(n, generator=gen, dtype=torch.float64) * 10,
           "client_ids": list(range(n))}
    cpu, on_device = create(name, **params), create(name, **params)
    if cpu.needs_reference:
        ctx["reference"] = x[2:].mean(dim=0)
    expected = cpu(x, **ctx)
    moved = _kernel_transfers(monkeypatch)
    with kernel_device("cpu"):
        got = on_device(x, **ctx)
    assert torch.equal(got.update, expected.update)
    for key in ("accepted", "weights", "flagged"):
        a, b = getattr(got, key), getattr(expected, key)
        assert (a is None and b is None) or torch.equal(a, b)
    assert {device for _, device in moved} <= {torch.device("cpu")}
    heavy = {"median", "trimmedmean", "krum", "multikrum", "bulyan", "geomed", "nnm", "flame",
             "foolsgold", "arc", "bucketing"}
    if name in heavy and not (name == "arc" and params.get("inner") == "fedavg"):
        assert moved, f"{name} {params} sent nothing to the device"
    if name in ("fedavg", "normclip", "centeredclip"):
        assert not moved


def test_both_engines_hand_the_run_device_to_the_aggregation(monkeypatch):
    """Pretending the CPU is the accelerator: the inline engine's rounds and a Flower
    strategy's round send the rule's blocks to it, and the run is the CPU path's."""
    from helpers_flower import global_record, reply

    from fedshield.server.strategy import RobustStrategy
    from fedshield.simulations.engine_inline import run_inline
    from fedshield.tasks import device as device_module

    cfg = RunConfig(dataset="digits", model="mlp", num_clients=6, rounds=2, aggregator="median",
                    device="cpu")
    plain = run_inline(cfg)
    monkeypatch.setattr(device_module, "aggregation_device", lambda spec: torch.device("cpu"))
    moved = _kernel_transfers(monkeypatch)
    offloaded = run_inline(cfg)
    assert moved and torch.equal(plain.final_vector, offloaded.final_vector)
    moved.clear()
    strategy = RobustStrategy("krum", {"f": 1}, device=torch.device("cpu"))
    strategy.begin_round(global_record(), sent_nodes=None)
    new, _ = strategy.aggregate_train(1, [reply(k, float(k)) for k in range(1, 6)])
    assert new is not None and moved


def test_a_kernel_block_moves_to_the_device_except_float64_to_mps():
    from fedshield.aggregators.kernels import to_kernel_device

    block = torch.ones(3, 4)
    assert to_kernel_device(block, torch.device("meta")).device.type == "meta"
    wide = block.double()
    assert to_kernel_device(wide, torch.device("mps")) is wide  # MPS has no float64
