"""The memory probe's baseline includes the Task's per-process caches (warm_task_caches)."""

import fedshield.tasks.task as task_module
from fedshield.simulations.bench.scaling import warm_task_caches
from fedshield.simulations.engine_inline import run_inline
from fedshield.tasks.config import RunConfig


def test_warm_task_caches_leaves_nothing_to_gather_or_build_in_the_run(monkeypatch):
    cfg = RunConfig(dataset="digits", model="mlp", partition="iid", num_clients=5, rounds=1,
                    root_size=20, aggregator="fltrust")
    task_module.clear_cache()
    warm_task_caches(cfg)
    gathers = []
    real = task_module.Task._gather
    monkeypatch.setattr(task_module.Task, "_gather",
                        lambda self, i: gathers.append(i) or real(self, i))
    run_inline(cfg)
    assert gathers == []
    task_module.clear_cache()
