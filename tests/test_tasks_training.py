"""Local SGD (hand-computed step, batch schedule, determinism), evaluation, a model that learns
digits, and batched (vmap) training equal to training the clients one by one."""

import time

import numpy as np
import pytest
import torch

from fedshield.tasks.datasets import load_dataset
from fedshield.tasks.models import build_model
from fedshield.tasks.params import flatten, load_vector
from fedshield.tasks.partition import federated_split
from fedshield.tasks.seeding import torch_generator
from fedshield.tasks.training import (
    TrainConfig,
    TrainingError,
    accuracy_on,
    batch_schedule,
    evaluate,
    supports_batched,
    train,
    train_many,
)


def test_batch_schedule_epochs_and_steps():
    cfg = TrainConfig(lr=0.1, batch_size=4, local_epochs=2)
    batches = batch_schedule(10, cfg, torch_generator(0))
    assert [len(b) for b in batches] == [4, 4, 2, 4, 4, 2]
    assert sorted(torch.cat(batches[:3]).tolist()) == list(range(10))  # one epoch = a permutation
    steps = batch_schedule(10, TrainConfig(lr=0.1, batch_size=4, local_steps=4), torch_generator(0))
    assert [torch.equal(a, b) for a, b in zip(steps, batches, strict=False)] == [True] * 4
    fedsgd = batch_schedule(
        100, TrainConfig(lr=0.1, batch_size=32, local_steps=1), torch_generator(1)
    )
    assert len(fedsgd) == 1 and len(set(fedsgd[0].tolist())) == 32


def test_one_sgd_step_matches_hand_computation():
    """Zero-initialised logistic regression: softmax is uniform, so
    ∇W = (1/B) Σ_i (1/C − onehot(y_i)) x_iᵀ, ∇b = (1/B) Σ_i (1/C − onehot(y_i))."""
    model = build_model("logreg", (3,), 2)
    load_vector(model, torch.zeros(8))
    x = torch.tensor([[1.0, 2.0, 0.0], [0.0, -1.0, 3.0]])
    y = torch.tensor([0, 1])
    cfg = TrainConfig(lr=0.5, batch_size=2, local_steps=1)
    stats = train(model, x, y, cfg, generator=torch_generator(0))
    residual = torch.full((2, 2), 0.5) - torch.eye(2)[y]  # (B, C)
    grad_w = residual.T @ x / 2
    grad_b = residual.mean(0)
    torch.testing.assert_close(model.linear.weight, -0.5 * grad_w)
    torch.testing.assert_close(model.linear.bias, -0.5 * grad_b)
    assert stats.loss == pytest.approx(np.log(2)) and (stats.steps, stats.num_examples) == (1, 2)


def test_momentum_and_weight_decay_follow_sgd_formula():
    """b1 = g1 + λw0; w1 = w0 − η b1; b2 = μ b1 + g2 + λw1; w2 = w1 − η b2 (full batch)."""
    torch.manual_seed(0)
    x, y = torch.randn(6, 3), torch.tensor([0, 1, 2, 0, 1, 2])
    model = build_model("logreg", (3,), 3, seed=1)
    w = flatten(model).clone()
    lr, mu, lam = 0.3, 0.9, 0.01
    cfg = TrainConfig(lr=lr, momentum=mu, weight_decay=lam, batch_size=6, local_steps=2)

    def full_grad(vec):
        probe = build_model("logreg", (3,), 3)
        load_vector(probe, vec)
        torch.nn.functional.cross_entropy(probe(x), y).backward()
        return torch.cat([probe.linear.weight.grad.reshape(-1), probe.linear.bias.grad])

    b1 = full_grad(w) + lam * w
    w1 = w - lr * b1
    b2 = mu * b1 + full_grad(w1) + lam * w1
    train(model, x, y, cfg, generator=torch_generator(0))
    torch.testing.assert_close(flatten(model), w1 - lr * b2)


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_same_seed_bit_identical_training(name):
    ds = load_dataset("digits")
    x, y = ds.train_x[:200], ds.train_y[:200]
    cfg = TrainConfig(lr=0.05, momentum=0.5, batch_size=16, local_steps=5)
    runs = []
    for seed in (7, 7, 8):
        model = build_model(name, ds.input_shape, 10, seed=0)
        train(model, x, y, cfg, generator=torch_generator(seed))
        runs.append(flatten(model))
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])


def test_mlp_learns_digits_above_90_percent_quickly():
    ds = load_dataset("digits")
    model = build_model("mlp", ds.input_shape, ds.num_classes, seed=0)
    start = time.perf_counter()
    cfg = TrainConfig(lr=0.1, momentum=0.9, batch_size=32, local_epochs=10)
    train(model, ds.train_x, ds.train_y, cfg, generator=torch_generator(0))
    result = evaluate(model, ds.test_x, ds.test_y)
    assert result.accuracy > 0.9, result
    assert time.perf_counter() - start < 10


def test_evaluate_chunks_and_accuracy_on():
    ds = load_dataset("digits")
    model = build_model("logreg", ds.input_shape, 10, seed=0)
    train(
        model,
        ds.train_x,
        ds.train_y,
        TrainConfig(lr=0.1, local_epochs=3),
        generator=torch_generator(0),
    )
    a = evaluate(model, ds.test_x, ds.test_y, batch_size=7)
    b = evaluate(model, ds.test_x, ds.test_y, batch_size=1000)
    assert a.accuracy == b.accuracy and a.loss == pytest.approx(b.loss, rel=1e-6)
    predicted = model(ds.test_x).argmax(1)
    assert accuracy_on(model, ds.test_x, 3) == pytest.approx(
        float((predicted == 3).double().mean())
    )
    assert accuracy_on(model, ds.test_x, ds.test_y) == pytest.approx(a.accuracy)
    assert accuracy_on(model, ds.test_x[:0], 3) == 0.0


def _clients(k=12, seed=0):
    ds = load_dataset("digits")
    split = federated_split(ds.train_y.numpy(), k, "dirichlet", seed=seed, alpha=0.5, min_size=3)
    return ds, [
        (ds.train_x[torch.as_tensor(i)], ds.train_y[torch.as_tensor(i)]) for i in split.clients
    ]


CONFIGS = [
    TrainConfig(lr=0.05, batch_size=8, local_epochs=2),  # unequal step counts and short batches
    TrainConfig(lr=0.1, momentum=0.9, weight_decay=1e-3, batch_size=16, local_steps=4),
    TrainConfig(lr=0.05, batch_size=32, local_steps=1),  # FedSGD
]


@pytest.mark.parametrize("name", ["logreg", "mlp"])
@pytest.mark.parametrize("cfg", CONFIGS)
def test_train_many_vmap_equals_sequential(name, cfg):
    ds, data = _clients()
    template = build_model(name, ds.input_shape, 10, seed=0)
    assert supports_batched(template)
    start = flatten(template)
    batched = train_many(
        template,
        data,
        cfg,
        [torch_generator(0, "client", k, 1) for k in range(len(data))],
        start=start,
        method="vmap",
    )
    assert torch.equal(flatten(template), start)  # the template is untouched
    for k, (x, y) in enumerate(data):
        model = build_model(name, ds.input_shape, 10, seed=0)
        stats = train(model, x, y, cfg, generator=torch_generator(0, "client", k, 1))
        torch.testing.assert_close(batched.params[k], flatten(model), rtol=1e-5, atol=1e-6)
        assert batched.stats[k].steps == stats.steps and batched.stats[k].num_examples == len(x)
        assert batched.stats[k].loss == pytest.approx(stats.loss, rel=1e-5)


def test_train_many_modules_in_place_and_per_client_start():
    ds, data = _clients(k=5)
    cfg = CONFIGS[1]
    models = [build_model("mlp", ds.input_shape, 10, seed=s) for s in range(5)]
    expected = []
    for k in range(len(models)):
        copy = build_model("mlp", ds.input_shape, 10, seed=k)
        train(copy, *data[k], cfg, generator=torch_generator(k))
        expected.append(flatten(copy))
    result = train_many(models, data, cfg, [torch_generator(k) for k in range(5)])
    for k, m in enumerate(models):
        torch.testing.assert_close(flatten(m), expected[k], rtol=1e-5, atol=1e-6)
        assert torch.equal(flatten(m), result.params[k])


def test_train_many_loops_for_cnn_bit_identically():
    ds, data = _clients(k=3)
    template = build_model("cnn", ds.input_shape, 10, seed=0)
    assert not supports_batched(template)
    cfg = TrainConfig(lr=0.05, batch_size=16, local_steps=2)
    result = train_many(
        template, data, cfg, [torch_generator(k) for k in range(3)], start=flatten(template)
    )
    for k in range(3):
        model = build_model("cnn", ds.input_shape, 10, seed=0)
        train(model, *data[k], cfg, generator=torch_generator(k))
        assert torch.equal(result.params[k], flatten(model))


def test_training_errors():
    with pytest.raises(TrainingError, match="lr"):
        TrainConfig(lr=0)
    with pytest.raises(TrainingError, match="local_steps or local_epochs"):
        TrainConfig(lr=0.1, local_steps=0, local_epochs=0)
    with pytest.raises(TrainingError, match="momentum"):
        TrainConfig(lr=0.1, momentum=1.0)
    model = build_model("logreg", (3,), 2)
    with pytest.raises(TrainingError, match="empty"):
        train(
            model,
            torch.zeros(0, 3),
            torch.zeros(0, dtype=torch.int64),
            TrainConfig(lr=0.1),
            generator=torch_generator(0),
        )
    with pytest.raises(TrainingError, match="start="):
        train_many(
            model,
            [(torch.zeros(2, 3), torch.zeros(2, dtype=torch.int64))],
            TrainConfig(lr=0.1),
            [torch_generator(0)],
        )
    with pytest.raises(TrainingError, match="generators"):
        train_many(
            model,
            [(torch.zeros(2, 3), torch.zeros(2, dtype=torch.int64))],
            TrainConfig(lr=0.1),
            [],
            start=flatten(model),
        )


@pytest.mark.parametrize("cfg", [CONFIGS[0], CONFIGS[1]])
def test_train_many_per_client_start_matrix_is_not_modified(cfg):
    ds, data = _clients(k=4)
    template = build_model("logreg", ds.input_shape, 10, seed=0)
    starts = torch.stack(
        [flatten(build_model("logreg", ds.input_shape, 10, seed=s)) for s in range(4)]
    )
    before = starts.clone()
    result = train_many(template, data, cfg, [torch_generator(k) for k in range(4)], start=starts)
    assert torch.equal(starts, before)
    for k in range(4):
        model = build_model("logreg", ds.input_shape, 10, seed=k)
        train(model, *data[k], cfg, generator=torch_generator(k))
        torch.testing.assert_close(result.params[k], flatten(model), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cfg", CONFIGS[:2])
def test_a_gradient_mask_is_applied_at_every_step_in_both_paths(cfg):
    """Neurotoxin's masked descent: masked coordinates never move (without weight decay), the
    others follow the masked trajectory — not the unmasked one masked afterwards — and the vmap
    path equals the per-client loop, with clients without a mask untouched by the others'."""
    ds, data = _clients(k=4)
    template = build_model("mlp", ds.input_shape, 10, seed=0)
    start = flatten(template)
    d = start.numel()
    mask = (torch.arange(d) % 3 != 0).float()
    masks = [mask, None, mask, None]
    gens = lambda: [torch_generator(0, "client", k, 1) for k in range(len(data))]  # noqa: E731
    loop = train_many(template, data, cfg, gens(), start=start, method="loop", grad_masks=masks)
    vmapped = train_many(template, data, cfg, gens(), start=start, method="vmap",
                         grad_masks=masks)
    torch.testing.assert_close(vmapped.params, loop.params, rtol=1e-5, atol=1e-6)
    plain = train_many(template, data, cfg, gens(), start=start, method="loop")
    torch.testing.assert_close(loop.params[[1, 3]], plain.params[[1, 3]], rtol=0, atol=0)
    moved = loop.params[0] - start
    if not cfg.weight_decay:
        assert bool((moved[mask == 0] == 0).all())
    after = (plain.params[0] - start) * mask
    assert float((moved * mask - after).abs().max()) > 1e-4  # the trajectory itself changed
    with pytest.raises(TrainingError, match="grad_mask must have shape"):
        train_many(template, data[:1], cfg, gens()[:1], start=start, grad_masks=[mask[:-1]])
    with pytest.raises(TrainingError, match="1 datasets but 2 gradient masks"):
        train_many(template, data[:1], cfg, gens()[:1], start=start, grad_masks=[mask, mask])
