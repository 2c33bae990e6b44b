"""Task's per-process caches (template model, partitions, root set): built once, same values."""

import torch

import fedshield.tasks.task as task_module
from fedshield.tasks.config import RunConfig
from fedshield.tasks.task import clear_cache, get_task

CFG = dict(dataset="digits", model="mlp", partition="dirichlet", num_clients=5, root_size=20)


def test_template_model_is_built_once_and_equals_a_fresh_model(monkeypatch):
    clear_cache()
    calls = []
    real = task_module.build_model
    monkeypatch.setattr(task_module, "build_model",
                        lambda *a, **k: calls.append(a) or real(*a, **k))
    task = get_task(RunConfig(**CFG))
    calls.clear()  # the core builds one model for the layout
    first = task.template_model()
    assert task.batched and task.batched
    assert task.template_model() is first and len(calls) == 1
    fresh = task.new_model()  # new_model still builds a new, trainable model every call
    assert fresh is not first and len(calls) == 2
    for (k, a), (_, b) in zip(first.state_dict().items(), fresh.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    clear_cache()


def test_client_and_root_data_are_gathered_once_with_the_partition_values(monkeypatch):
    clear_cache()
    task = get_task(RunConfig(**CFG))
    gathers = []
    real = task_module.Task._gather
    monkeypatch.setattr(task_module.Task, "_gather",
                        lambda self, idx: gathers.append(idx) or real(self, idx))
    for _ in range(3):
        for pid in range(task.num_clients):
            x, y = task.client_data(pid)
            idx = torch.as_tensor(task.split.clients[pid], dtype=torch.int64)
            assert torch.equal(x, task.dataset.train_x[idx])
            assert torch.equal(y, task.dataset.train_y[idx])
        rx, ry = task.root_data()
        assert torch.equal(rx, task.dataset.train_x[torch.as_tensor(task.split.root)])
        assert torch.equal(ry, task.dataset.train_y[torch.as_tensor(task.split.root)])
    assert len(gathers) == task.num_clients + 1  # one gather per partition + root, not per call
    assert task.client_data(3)[0].data_ptr() == task.client_data(3)[0].data_ptr()
    # another TrainConfig of the same task shares the cache (same core)
    other = get_task(RunConfig(**CFG, lr=0.5))
    assert other is not task
    assert other.client_data(1)[1].data_ptr() == task.client_data(1)[1].data_ptr()
    assert len(gathers) == task.num_clients + 1
    clear_cache()


def test_scratch_model_is_built_once_per_role_and_reference_reuses_it():
    import torch

    from fedshield.server.reference import reference_update
    from fedshield.tasks.config import RunConfig
    from fedshield.tasks.task import get_task

    cfg = RunConfig(dataset="digits", num_clients=4, root_size=50)
    task = get_task(cfg)
    model = task.scratch_model("reference")
    assert task.scratch_model("reference") is model
    assert task.scratch_model("other") is not model
    vec = task.initial_vector()
    first = reference_update(task, vec, 1, cfg)
    again = reference_update(task, vec, 1, cfg)  # same start, same seed: same reference
    assert torch.equal(first, again) and task.scratch_model("reference") is model
