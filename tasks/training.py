"""Local training (SGD) and evaluation; batched training of many clients at once.

Local training minimises the mean cross-entropy of mini-batches with PyTorch's SGD:
``g = ∇L(w) + λ·w``; ``b = μ·b + g`` (``b = g`` at the first step, μ = ``momentum``);
``w ← w − η·b`` (η = ``lr``, λ = ``weight_decay``), the momentum buffer starting from zero at every
call (every round). The number of steps is ``local_steps`` when > 0, else
``local_epochs · ⌈n / batch_size⌉``. Batches: each epoch is one ``torch.randperm(n, generator)``
cut into ⌈n / B⌉ consecutive batches (the last one smaller when B ∤ n); ``local_steps`` takes the
first S batches of that stream of epochs. ``local_steps=1, batch_size=32`` is one FedSGD step on a
random batch of 32 (FLTrust's setting). The same generator seed gives bit-identical training on CPU.

:func:`train_many` trains K clients of the same architecture together with ``torch.func``
(``vmap`` over stacked parameters of ``grad`` of a ``functional_call``), drawing every client's
batches from its own generator exactly as :func:`train` does, so the results agree with training the
clients one by one to float tolerance. Clients may hold different numbers of samples: the last,
smaller batch of an epoch is padded and masked (the masked mean equals the plain mean), and the
clients are sorted by step count so that step s runs vmap only over the clients that still have a
step to take (no padded steps, no wasted work). It is used only where it wins on CPU — logistic
regression and MLPs, 5-10× faster (``fedshield bench training``); models whose class sets
``batched_training_wins = False`` (the CNN: under vmap, convolutions become slow grouped
convolutions) are trained in a plain loop by the same function.
``fedshield bench training`` measures the speed-up.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad_and_value, vmap

from fedshield.tasks.params import ParamLayout, flatten, load_vector

__all__ = [
    "BatchedTrainResult",
    "EvalResult",
    "TrainConfig",
    "TrainStats",
    "TrainingError",
    "accuracy_on",
    "batch_schedule",
    "evaluate",
    "model_device",
    "predict",
    "supports_batched",
    "to_device",
    "train",
    "train_many",
]


class TrainingError(ValueError):
    """Bad training hyper-parameters or data; the message names the parameter."""


@dataclass(frozen=True)
class TrainConfig:
    """Local SGD hyper-parameters (see the module docstring for the update rule)."""

    lr: float
    momentum: float = 0.0
    weight_decay: float = 0.0
    batch_size: int = 32
    local_steps: int = 0
    local_epochs: int = 1

    def __post_init__(self) -> None:
        if not (isinstance(self.lr, int | float) and math.isfinite(self.lr) and self.lr > 0):
            raise TrainingError(f"lr must be a finite number > 0, got {self.lr!r}")
        if not 0.0 <= self.momentum < 1.0:
            raise TrainingError(f"momentum must be in [0, 1), got {self.momentum!r}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise TrainingError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        for key, low in (("batch_size", 1), ("local_steps", 0), ("local_epochs", 0)):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise TrainingError(f"{key} must be an integer >= {low}, got {value!r}")
        if self.local_steps == 0 and self.local_epochs == 0:
            raise TrainingError("one of local_steps or local_epochs must be > 0")

    @classmethod
    def from_run_config(cls, cfg: Any) -> TrainConfig:
        """From a :class:`tasks.config.RunConfig` (its lr, momentum, weight_decay, batch_size,
        local_steps, local_epochs)."""
        return cls(
            lr=cfg.lr,
            momentum=cfg.momentum,
            weight_decay=cfg.weight_decay,
            batch_size=cfg.batch_size,
            local_steps=cfg.local_steps,
            local_epochs=cfg.local_epochs,
        )

    def num_steps(self, n: int) -> int:
        """SGD steps on a partition of ``n`` samples."""
        if self.local_steps > 0:
            return self.local_steps
        return self.local_epochs * math.ceil(n / self.batch_size)


@dataclass(frozen=True)
class TrainStats:
    """``loss``: mean training loss over the processed batches (example-weighted, measured before
    each step; NaN if training diverged); ``num_examples``: the partition size n (FedAvg's weight);
    ``steps``: SGD steps taken."""

    loss: float
    num_examples: int
    steps: int


@dataclass(frozen=True)
class EvalResult:
    loss: float
    accuracy: float


@dataclass
class BatchedTrainResult:
    """``params``: (K, d) float32, the trained flat parameters of each client (row k = client k);
    ``stats``: one :class:`TrainStats` per client."""

    params: torch.Tensor
    stats: list[TrainStats]


# --- batches -----------------------------------------------------------------------------------


def _epoch_perms(n: int, cfg: TrainConfig, generator: torch.Generator) -> list[torch.Tensor]:
    """The permutations of ``range(n)`` the training run consumes, one per (partial) epoch."""
    if n < 1:
        raise TrainingError("cannot train on an empty partition (n = 0)")
    epochs = math.ceil(cfg.num_steps(n) / math.ceil(n / cfg.batch_size))
    return [torch.randperm(n, generator=generator) for _ in range(epochs)]


def batch_schedule(n: int, cfg: TrainConfig, generator: torch.Generator) -> list[torch.Tensor]:
    """The index batches of one local training run, in order (see the module docstring)."""
    batches = [b for perm in _epoch_perms(n, cfg, generator) for b in perm.split(cfg.batch_size)]
    return batches[: cfg.num_steps(n)]


def _check_data(x: torch.Tensor, y: torch.Tensor) -> None:
    if len(x) != len(y):
        raise TrainingError(f"x has {len(x)} samples but y has {len(y)}")
    if len(x) == 0:
        raise TrainingError("cannot train on an empty partition (n = 0)")
    if y.dtype != torch.int64:
        raise TrainingError(f"labels must be int64, got {y.dtype}")


# --- one client --------------------------------------------------------------------------------


def train(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: TrainConfig,
    *,
    generator: torch.Generator,
    grad_mask: torch.Tensor | None = None,
) -> TrainStats:
    """Train ``model`` in place on (x, y) with local SGD; batches drawn from ``generator``.
    ``grad_mask`` ((d,) over the flat parameters): every step's gradient is multiplied by it
    before the optimizer step (Neurotoxin's masked gradient descent)."""
    _check_data(x, y)
    batches = batch_schedule(len(x), cfg, generator)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
    )
    device = model_device(model)
    masks = None if grad_mask is None else [m.to(device) for m in _mask_views(model, grad_mask)]
    model.train()
    total = torch.zeros((), dtype=torch.float64, device=device)
    for idx in batches:
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(to_device(x[idx], device)), to_device(y[idx], device))
        loss.backward()
        if masks is not None:
            for p, m in zip(model.parameters(), masks, strict=True):
                if p.grad is not None:
                    p.grad.mul_(m)
        optimizer.step()
        total += loss.detach() * len(idx)
    seen = sum(len(b) for b in batches)
    return TrainStats(loss=float(total) / seen, num_examples=len(x), steps=len(batches))


def model_device(model: nn.Module) -> torch.device:
    """The device of ``model``'s parameters (the CPU for a model without any)."""
    return next((p.device for p in model.parameters()), torch.device("cpu"))


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``tensor`` on ``device``: itself when it is there already (always, on the CPU)."""
    return tensor if tensor.device == device else tensor.to(device, non_blocking=True)


def _mask_views(model: nn.Module, grad_mask: torch.Tensor) -> list[torch.Tensor]:
    """``grad_mask`` cut into one view per parameter (``model.parameters()`` order)."""
    layout = ParamLayout.of(model)
    mask = _checked_mask(layout, grad_mask)
    views = {key: mask[a:b].view(shape)
             for (key, a, b), shape in zip(layout.offsets(), layout.shapes, strict=True)}
    return [views[key] for key, _ in model.named_parameters()]


def _checked_mask(layout: ParamLayout, grad_mask: torch.Tensor) -> torch.Tensor:
    if grad_mask.shape != (layout.numel,):
        raise TrainingError(f"grad_mask must have shape ({layout.numel},), got "
                            f"{tuple(grad_mask.shape)}")
    return grad_mask.detach().to(torch.float32)


# --- evaluation --------------------------------------------------------------------------------


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """(N,) int64 predicted labels, computed in chunks of ``batch_size``."""
    was_training = model.training
    model.eval()
    device = model_device(model)
    try:
        return torch.cat([model(to_device(chunk, device)).argmax(1).cpu()
                          for chunk in x.split(batch_size)])
    finally:
        model.train(was_training)


@torch.no_grad()
def evaluate(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256
) -> EvalResult:
    """Mean cross-entropy and accuracy on (x, y), in chunks of ``batch_size``."""
    if len(x) != len(y) or len(x) == 0:
        raise TrainingError(f"evaluate needs matching non-empty x and y, got {len(x)}, {len(y)}")
    was_training = model.training
    model.eval()
    device = model_device(model)
    loss = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    try:
        for xb, yb in zip(x.split(batch_size), y.split(batch_size), strict=True):
            xb, yb = to_device(xb, device), to_device(yb, device)
            logits = model(xb)
            loss += F.cross_entropy(logits, yb, reduction="sum").double()
            correct += (logits.argmax(1) == yb).sum()
    finally:
        model.train(was_training)
    return EvalResult(loss=float(loss) / len(y), accuracy=int(correct) / len(y))


def accuracy_on(
    model: nn.Module, x: torch.Tensor, target_label: int | torch.Tensor, batch_size: int = 256
) -> float:
    """Fraction of ``x`` predicted as ``target_label`` (an int, or (N,) per-input targets): the
    attack success rate of a backdoor on triggered inputs. 0.0 for empty ``x``."""
    if len(x) == 0:
        return 0.0
    hits = predict(model, x, batch_size) == torch.as_tensor(target_label)
    return float(hits.double().mean())


# --- many clients at once ----------------------------------------------------------------------


def supports_batched(model: nn.Module) -> bool:
    """Whether :func:`train_many` vmaps this model (it wins on CPU) rather than looping."""
    only_parameters = {k for k, _ in model.named_parameters()} == set(model.state_dict())
    return bool(getattr(model, "batched_training_wins", False)) and only_parameters


def train_many(
    models: nn.Module | Sequence[nn.Module],
    datasets: Sequence[tuple[torch.Tensor, torch.Tensor]],
    cfg: TrainConfig,
    generators: Sequence[torch.Generator],
    *,
    start: torch.Tensor | None = None,
    method: Literal["auto", "vmap", "loop"] = "auto",
    grad_masks: Sequence[torch.Tensor | None] | None = None,
) -> BatchedTrainResult:
    """Train K clients; client k trains on ``datasets[k]`` with batches from ``generators[k]``.

    ``models`` is either one template module (its architecture; its own parameters are not used
    or changed) with ``start`` the initial flat parameters, (d,) shared by all or (K, d); or a
    sequence of K modules, trained in place from their current parameters (``start`` must be
    None). ``method="auto"`` vmaps when :func:`supports_batched` says it wins, else loops.
    ``grad_masks[k]`` (or None) masks client k's every gradient step, as in :func:`train`.
    Returns the (K, d) trained parameters and per-client stats; equal, to float tolerance, to
    calling :func:`train` on each client in turn.
    """
    template, initial, modules = _many_inputs(models, start, len(datasets))
    if len(generators) != len(datasets):
        raise TrainingError(f"{len(datasets)} datasets but {len(generators)} generators")
    masks = list(grad_masks) if grad_masks is not None else [None] * len(datasets)
    if len(masks) != len(datasets):
        raise TrainingError(f"{len(datasets)} datasets but {len(masks)} gradient masks")
    for x, y in datasets:
        _check_data(x, y)
    if method not in ("auto", "vmap", "loop"):
        raise TrainingError(f"method must be 'auto', 'vmap' or 'loop', got {method!r}")
    use_vmap = method == "vmap" or (method == "auto" and supports_batched(template))
    if use_vmap and {k for k, _ in template.named_parameters()} != set(template.state_dict()):
        raise TrainingError("method='vmap' needs a model whose state is only parameters")
    if use_vmap:
        shared = start is not None and start.ndim == 1
        result = _train_vmap(template, initial, datasets, cfg, generators, shared_start=shared,
                             grad_masks=masks)
    else:
        result = _train_loop(template, initial, datasets, cfg, generators, masks)
    for module, row in zip(modules, result.params, strict=False):
        load_vector(module, row)
    return result


def _many_inputs(
    models: nn.Module | Sequence[nn.Module], start: torch.Tensor | None, k: int
) -> tuple[nn.Module, torch.Tensor, list[nn.Module]]:
    if k < 1:
        raise TrainingError("train_many needs at least one dataset")
    if isinstance(models, nn.Module):
        if start is None:
            raise TrainingError("train_many(template, ...) needs start= the initial parameters")
        d = ParamLayout.of(models).numel
        if start.shape not in ((d,), (k, d)):
            raise TrainingError(f"start must have shape ({d},) or ({k}, {d}), got {start.shape}")
        return models, start.detach().to(torch.float32).expand(k, d), []
    modules = list(models)
    if start is not None:
        raise TrainingError("pass start= only with a single template module")
    if len(modules) != k:
        raise TrainingError(f"{len(modules)} models but {k} datasets")
    layouts = {ParamLayout.of(m) for m in modules}
    if len(layouts) != 1:
        raise TrainingError("train_many needs models of one architecture (same parameter layout)")
    return modules[0], torch.stack([flatten(m) for m in modules]), modules


def _train_loop(
    template: nn.Module,
    initial: torch.Tensor,
    datasets: Sequence[tuple[torch.Tensor, torch.Tensor]],
    cfg: TrainConfig,
    generators: Sequence[torch.Generator],
    grad_masks: Sequence[torch.Tensor | None],
) -> BatchedTrainResult:
    model = copy.deepcopy(template)
    params = torch.empty(initial.shape, dtype=torch.float32)  # initial may be an expand() view
    stats = []
    for k, ((x, y), generator) in enumerate(zip(datasets, generators, strict=True)):
        load_vector(model, initial[k])
        stats.append(train(model, x, y, cfg, generator=generator, grad_mask=grad_masks[k]))
        params[k] = flatten(model)
    return BatchedTrainResult(params=params, stats=stats)


def _padded_schedule(
    n: int, max_steps: int, cfg: TrainConfig, generator: torch.Generator
) -> torch.Tensor:
    """(max_steps, B) row indices of one client's batches (as in :func:`batch_schedule`), −1
    where the short last batch of an epoch is padded or the client has no more steps."""
    per_epoch = math.ceil(n / cfg.batch_size)
    padded = torch.full((max_steps * cfg.batch_size,), -1, dtype=torch.int64)
    start = 0
    for perm in _epoch_perms(n, cfg, generator):
        stop = min(start + per_epoch * cfg.batch_size, len(padded))
        take = min(n, stop - start)
        padded[start : start + take] = perm[:take]
        start = stop
    idx = padded.view(max_steps, cfg.batch_size)
    idx[cfg.num_steps(n) :] = -1
    return idx


def _train_vmap(
    template: nn.Module,
    initial: torch.Tensor,
    datasets: Sequence[tuple[torch.Tensor, torch.Tensor]],
    cfg: TrainConfig,
    generators: Sequence[torch.Generator],
    shared_start: bool,
    grad_masks: Sequence[torch.Tensor | None],
) -> BatchedTrainResult:
    sizes = [len(x) for x, _ in datasets]
    steps = torch.tensor([cfg.num_steps(n) for n in sizes])
    max_steps, k, width = int(steps.max()), len(datasets), cfg.batch_size
    order = torch.argsort(steps, descending=True, stable=True)  # active clients form a prefix
    clients = order.tolist()
    schedules = [
        _padded_schedule(n, max_steps, cfg, g) for n, g in zip(sizes, generators, strict=True)
    ]
    idx = torch.stack(schedules)[order]  # (K, S, B), rows sorted like `clients`
    device = model_device(template)
    mask = (idx >= 0).to(torch.float32)
    idx.clamp_(min=0)  # padded slots read row 0 of their own client, with weight 0

    in_order = bool(torch.equal(order, torch.arange(k)))  # e.g. equal step counts: no permuting
    flat = initial.clone(memory_format=torch.contiguous_format) if in_order else initial[order]
    flat = to_device(flat, device)
    layout = ParamLayout.of(template)
    params = {
        key: flat[:, a:b].view(k, *shape)
        for (key, a, b), shape in zip(layout.offsets(), layout.shapes, strict=True)
    }
    buffers = {key: torch.zeros_like(p) for key, p in params.items()} if cfg.momentum else {}
    grad_mask = None
    if any(m is not None for m in grad_masks):  # (K, d) in the sorted row order, ones = no mask
        rows = torch.ones(k, layout.numel)
        for row, client in enumerate(clients):
            if grad_masks[client] is not None:
                rows[row] = _checked_mask(layout, grad_masks[client])
        rows = to_device(rows, device)
        grad_mask = {key: rows[:, a:b].view(k, *shape)
                     for (key, a, b), shape in zip(layout.offsets(), layout.shapes, strict=True)}

    def loss_fn(p: dict[str, torch.Tensor], xb: torch.Tensor, yb: torch.Tensor, mb: torch.Tensor):
        ce = F.cross_entropy(functional_call(template, p, (xb,)), yb, reduction="none")
        return (ce * mb).sum() / mb.sum()

    step_fn = vmap(grad_and_value(loss_fn))
    # Step 0 from one shared start: the parameters are not batched (in_dims=None), so the first
    # layer is one large matmul over all clients' batches instead of K small ones (FedSGD).
    first_fn = vmap(grad_and_value(loss_fn), in_dims=(None, 0, 0, 0)) if shared_start else step_fn
    # One (K, B, ...) batch buffer, filled by index_select per client: no copy of the datasets.
    xb = torch.empty(k, width, *datasets[0][0].shape[1:], dtype=datasets[0][0].dtype)
    yb = torch.empty(k, width, dtype=torch.int64)
    sorted_steps = steps[order]
    loss_sum = torch.zeros(k, dtype=torch.float64, device=device)
    step_mask = to_device(mask, device)
    template.train()
    for s in range(max_steps):
        active = int((sorted_steps > s).sum())
        for row, client in enumerate(clients[:active]):
            x, y = datasets[client]
            torch.index_select(x, 0, idx[row, s], out=xb[row])
            torch.index_select(y, 0, idx[row, s], out=yb[row])
        mb = step_mask[:active, s]
        xs, ys = to_device(xb, device), to_device(yb, device)
        sub = {key: p[:active] for key, p in params.items()}
        if s == 0 and shared_start:
            grads, losses = first_fn({key: p[0] for key, p in sub.items()}, xs, ys, mb)
        else:
            grads, losses = step_fn(sub, xs[:active], ys[:active], mb)
        loss_sum[:active] += losses.detach().double() * mb.sum(1).double()
        if grad_mask is not None:
            grads = {key: g * grad_mask[key][:active] for key, g in grads.items()}
        _sgd_update(sub, grads, buffers, active, cfg)

    if in_order:
        out = flat
    else:
        out = torch.empty_like(flat)
        out[order.to(device)] = flat
    out, loss_sum = out.cpu(), loss_sum.cpu()
    seen = mask.sum((1, 2)).double()
    stats = [TrainStats(loss=0.0, num_examples=0, steps=0)] * k
    for row, client in enumerate(clients):
        loss = float(loss_sum[row] / seen[row])
        stats[client] = TrainStats(loss=loss, num_examples=sizes[client], steps=int(steps[client]))
    return BatchedTrainResult(params=out, stats=stats)


def _sgd_update(
    params: dict[str, torch.Tensor],
    grads: dict[str, torch.Tensor],
    buffers: dict[str, torch.Tensor],
    active: int,
    cfg: TrainConfig,
) -> None:
    """In place, exactly torch.optim.SGD's arithmetic (dampening 0, no Nesterov)."""
    for key, p in params.items():
        g = grads[key]
        if cfg.weight_decay:
            g = g.add(p, alpha=cfg.weight_decay)
        if cfg.momentum:
            g = buffers[key][:active].mul_(cfg.momentum).add_(g)
        p.add_(g, alpha=-cfg.lr)
