"""The learning task of a run, built once per process: dataset, federated split, model, training.

``get_task(cfg)`` loads the dataset (itself cached per process), draws the split and the initial
model once per *task key* — the RunConfig fields that define the task: dataset, data_root,
partition and the parameter of that scheme (alpha for dirichlet, q for bias, shards_per_client for
shards), min_partition_size, num_clients, seed, model, root_size and, when the RunConfig has them,
root_bias_class / root_p (FLTrust's root-set bias) — and hands out a
:class:`Task`. Training hyper-parameters are not part of the key: a sweep over ``lr`` shares one
split; each distinct :class:`TrainConfig` gets its own (cheap) ``Task`` view of the shared core.

Seeds: the split is drawn from ``cfg.seed`` (``derive_seed(seed, "partition", scheme)``), the
initial model from ``derive_seed(cfg.seed, "init")``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from fedshield.tasks.config import RunConfig
from fedshield.tasks.datasets import Dataset, load_dataset
from fedshield.tasks.device import CPU, resolve_device
from fedshield.tasks.models import build_model
from fedshield.tasks.params import ParamLayout, flatten, load_vector
from fedshield.tasks.partition import FederatedSplit, federated_split
from fedshield.tasks.seeding import derive_seed
from fedshield.tasks.training import TrainConfig, supports_batched

__all__ = ["Task", "TaskError", "TaskKey", "clear_cache", "get_task", "task_key"]


class TaskError(ValueError):
    """A partition id out of range, or another misuse of a Task."""


@dataclass(frozen=True, eq=False)
class _Core:
    key: TaskKey
    dataset: Dataset
    split: FederatedSplit
    model_name: str
    init_seed: int
    layout: ParamLayout
    initial: torch.Tensor
    # per-process caches (see Task.template_model / Task.client_data): key -> value
    cache: dict[object, object] = field(default_factory=dict, repr=False)


@dataclass(frozen=True, eq=False)
class Task:
    """What clients train and the server evaluates. Tensors are shared: do not modify them.

    Cached per process on the shared core (built on first use, then reused by every round):
    the template model (:meth:`template_model`), :attr:`batched`, each partition's ``(x, y)``
    (:meth:`client_data`) and the root set (:meth:`root_data`)."""

    core: _Core
    train_config: TrainConfig
    device: torch.device = CPU  # where models live (tasks.device)

    @property
    def dataset(self) -> Dataset:
        return self.core.dataset

    @property
    def split(self) -> FederatedSplit:
        return self.core.split

    @property
    def layout(self) -> ParamLayout:
        return self.core.layout

    @property
    def num_clients(self) -> int:
        return self.core.split.num_clients

    @property
    def batched(self) -> bool:
        """Whether ``tasks.training.train_many`` vmaps this model (a speed-up on CPU)."""
        return bool(self._cached("batched", lambda: supports_batched(self.template_model())))

    def template_model(self) -> nn.Module:
        """The task's model with the initial parameters, built once per process and shared: an
        architecture for ``tasks.training.train_many`` (which neither trains nor changes its
        template). Do not train or modify it; :meth:`new_model` gives a model to train."""
        return self._cached(  # type: ignore[return-value]
            ("template", self.device), self.new_model)

    def scratch_model(self, role: str) -> nn.Module:
        """A model owned by ``role`` (e.g. the server's root-set training), built once per process
        and reused: the caller overwrites its parameters (``load_vector``) before each use."""
        return self._cached(("scratch", role, self.device),  # type: ignore[return-value]
                            self.new_model)

    def new_model(self, device: torch.device | None = None) -> nn.Module:
        """A fresh model with the run's initial parameters (same for a given ``cfg.seed``), on
        ``device`` (default: the task's; initialised on the CPU, so the same values anywhere)."""
        ds = self.core.dataset
        model = build_model(
            self.core.model_name, ds.input_shape, ds.num_classes, seed=self.core.init_seed
        )
        return model.to(self.device if device is None else device)  # on the CPU: itself

    def model_from_vector(self, vec: torch.Tensor,
                          device: torch.device | None = None) -> nn.Module:
        """A fresh model holding the flat parameters ``vec`` (on ``device``, as
        :meth:`new_model`)."""
        model = self.new_model(device)
        load_vector(model, vec)
        return model

    def initial_vector(self) -> torch.Tensor:
        """(d,) float32 initial global parameters (a copy)."""
        return self.core.initial.clone()

    def client_data(self, pid: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y) of partition ``pid``, gathered from the train set on first use and then the same
        (shared, cached per process) tensors: do not modify them (a data attack poisons copies)."""
        if isinstance(pid, bool) or not isinstance(pid, int) or not 0 <= pid < self.num_clients:
            raise TaskError(f"partition id must be an int in [0, {self.num_clients}), got {pid!r}")
        return self._cached(("client", pid),  # type: ignore[return-value]
                            lambda: self._gather(self.core.split.clients[pid]))

    def root_data(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y) of FLTrust's root set D0 (disjoint from every client); raises if root_size=0.
        Cached and shared like :meth:`client_data`."""
        if len(self.core.split.root) == 0:
            raise TaskError("this task has no root set: set root_size > 0 in the run config")
        build = lambda: self._gather(self.core.split.root)  # noqa: E731
        return self._cached("root", build)  # type: ignore[return-value]

    def test_data(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.core.dataset.test_x, self.core.dataset.test_y

    def _cached(self, key: object, build: Callable[[], object]) -> object:
        cache = self.core.cache
        if key not in cache:
            cache[key] = build()
        return cache[key]

    def _gather(self, indices: object) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.as_tensor(indices, dtype=torch.int64)
        return self.core.dataset.train_x[idx], self.core.dataset.train_y[idx]


@dataclass(frozen=True)
class TaskKey:
    """The RunConfig fields that define a task; ``scheme_param`` is alpha, q or shards_per_client
    for dirichlet, bias or shards (None for iid)."""

    dataset: str
    data_root: str
    partition: str
    scheme_param: float | int | None
    min_partition_size: int
    num_clients: int
    seed: int
    model: str
    root_size: int
    root_bias_class: int | None = None
    root_p: float | None = None


_SCHEME_PARAM = {"dirichlet": "alpha", "bias": "q", "shards": "shards_per_client"}


def task_key(cfg: RunConfig) -> TaskKey:
    """The task-defining fields of ``cfg`` (see the module docstring)."""
    param_name = _SCHEME_PARAM.get(cfg.partition)
    return TaskKey(
        dataset=cfg.dataset,
        data_root=cfg.data_root,
        partition=cfg.partition,
        scheme_param=getattr(cfg, param_name) if param_name else None,
        min_partition_size=cfg.min_partition_size,
        num_clients=cfg.num_clients,
        seed=cfg.seed,
        model=cfg.model,
        root_size=cfg.root_size,
        **_root_bias(cfg),
    )


def _root_bias(cfg: RunConfig) -> dict[str, object]:
    """FLTrust's root-set bias: ``root_bias_class`` (< 0: unbiased) drawn with probability
    ``root_p``."""
    if cfg.root_bias_class < 0:
        return {}
    return {"root_bias_class": cfg.root_bias_class, "root_p": cfg.root_p}


def get_task(cfg: RunConfig) -> Task:
    """The cached :class:`Task` of ``cfg`` (same object for the same task key and TrainConfig)."""
    return _task(_core(task_key(cfg)), TrainConfig.from_run_config(cfg),
                 resolve_device(cfg.device))


def clear_cache() -> None:
    """Forget cached tasks (the dataset cache is ``tasks.datasets.clear_cache``)."""
    _core.cache_clear()
    _task.cache_clear()


@functools.lru_cache(maxsize=16)
def _task(core: _Core, train_config: TrainConfig, device: torch.device) -> Task:
    return Task(core=core, train_config=train_config, device=device)


@functools.lru_cache(maxsize=8)
def _core(key: TaskKey) -> _Core:
    dataset = load_dataset(key.dataset, root=key.data_root or None)
    param_name = _SCHEME_PARAM.get(key.partition)
    extra = {param_name: key.scheme_param} if param_name else {}
    split = federated_split(
        dataset.train_y.numpy(),
        key.num_clients,
        key.partition,
        seed=key.seed,
        min_size=key.min_partition_size,
        root_size=key.root_size,
        root_bias_class=key.root_bias_class,
        root_p=key.root_p,
        **extra,  # type: ignore[arg-type]
    )
    init_seed = derive_seed(key.seed, "init")
    model = build_model(key.model, dataset.input_shape, dataset.num_classes, seed=init_seed)
    return _Core(
        key=key,
        dataset=dataset,
        split=split,
        model_name=key.model,
        init_seed=init_seed,
        layout=ParamLayout.of(model),
        initial=flatten(model),
    )
