"""get_task: one Task per task key per process, consistent data, root set and initial model."""

import numpy as np
import pytest
import torch

from fedshield.tasks.config import RunConfig
from fedshield.tasks.params import flatten
from fedshield.tasks.task import TaskError, get_task, task_key


def test_task_cached_by_task_fields_only():
    cfg = RunConfig(dataset="digits", num_clients=10, partition="dirichlet", alpha=0.5, seed=3)
    task = get_task(cfg)
    assert get_task(cfg) is task
    assert get_task(cfg.with_updates(lr=0.2)).core is task.core  # training params are not the task
    assert get_task(cfg.with_updates(lr=0.2)).train_config.lr == 0.2
    assert get_task(cfg.with_updates(q=0.9)).core is task.core  # q is unused by dirichlet
    assert get_task(cfg.with_updates(alpha=0.1)).core is not task.core
    assert get_task(cfg.with_updates(seed=4)).core is not task.core
    assert task_key(cfg.with_updates(partition="iid")).scheme_param is None


def test_task_data_split_and_model():
    cfg = RunConfig(
        dataset="digits", num_clients=8, partition="iid", root_size=50, model="mlp", seed=1
    )
    task = get_task(cfg)
    ds = task.dataset
    sizes = [len(task.client_data(pid)[1]) for pid in range(8)]
    assert sum(sizes) + 50 == len(ds.train_y)
    x, y = task.client_data(2)
    idx = torch.as_tensor(task.split.clients[2])
    assert torch.equal(x, ds.train_x[idx]) and torch.equal(y, ds.train_y[idx])
    rx, ry = task.root_data()
    assert rx.shape == (50, *task.dataset.input_shape)
    assert len(ry) == 50
    assert not np.isin(task.split.root, np.concatenate(task.split.clients)).any()
    assert torch.equal(flatten(task.new_model()), task.initial_vector())
    assert torch.equal(flatten(task.new_model()), flatten(task.new_model()))
    other = get_task(cfg.with_updates(seed=2))
    assert not torch.equal(other.initial_vector(), task.initial_vector())
    assert task.layout.numel == task.initial_vector().numel() and task.batched
    v = task.initial_vector()
    v.add_(1)  # a copy
    assert not torch.equal(v, task.initial_vector())
    assert torch.equal(flatten(task.model_from_vector(v)), v)


def test_task_errors():
    task = get_task(RunConfig(dataset="digits", num_clients=4, root_size=0))
    with pytest.raises(TaskError, match=r"\[0, 4\)"):
        task.client_data(4)
    with pytest.raises(TaskError, match="root_size"):
        task.root_data()


def test_root_bias_from_config():
    cfg = RunConfig(dataset="digits", num_clients=5, root_size=100, root_bias_class=2, root_p=0.9)
    task = get_task(cfg)
    assert task_key(cfg).root_bias_class == 2
    assert (task.root_data()[1] == 2).double().mean() > 0.8
    assert task_key(RunConfig(dataset="digits")).root_bias_class is None


def test_fedavg_on_digits_end_to_end_with_train_many():
    """The pieces compose: 10 IID clients, 5 FedAvg rounds of 1 local epoch reach > 90 %."""
    from fedshield.tasks.seeding import torch_generator
    from fedshield.tasks.training import evaluate, train_many

    cfg = RunConfig(dataset="digits", num_clients=10, partition="iid", model="mlp", lr=0.1,
                    momentum=0.9, batch_size=16, local_epochs=1, seed=0)  # fmt: skip
    task = get_task(cfg)
    data = [task.client_data(pid) for pid in range(10)]
    weights = torch.tensor([len(y) for _, y in data], dtype=torch.float32)
    global_vec = task.initial_vector()
    for rnd in range(5):
        gens = [torch_generator(cfg.seed, "client", pid, rnd) for pid in range(10)]
        trained = train_many(task.new_model(), data, task.train_config, gens, start=global_vec)
        global_vec = global_vec + (weights / weights.sum()) @ (trained.params - global_vec)
    result = evaluate(task.model_from_vector(global_vec), *task.test_data())
    assert result.accuracy > 0.9, result


def test_seeded_sample_is_sorted_distinct_and_reproducible():
    from fedshield.tasks.seeding import seeded_sample

    first = seeded_sample([9, 3, 7, 1, 5], 3, 0, "sample", 1)
    assert first == sorted(first) and len(set(first)) == 3 and set(first) <= {1, 3, 5, 7, 9}
    assert seeded_sample([1, 3, 5, 7, 9], 3, 0, "sample", 1) == first  # input order irrelevant
    assert any(seeded_sample(range(10), 3, 0, "sample", r) != seeded_sample(range(10), 3, 0,
               "sample", 1) for r in range(2, 6))
