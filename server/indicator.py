"""The server side of BackdoorIndicator (Li & Dai, USENIX Security 2024): the indicator set and
its planting in the global model each round (the check is
:class:`fedshield.aggregators.indicator.BackdoorIndicator`).

**Indicator set.** ``samples`` images of an out-of-distribution dataset available offline, each
with an assigned label: labels balanced over the task's classes, in a seeded random order (as the
authors' code). The OOD source by task:

- ``mnist`` → Fashion-MNIST; ``fashion-mnist`` → MNIST (the pairing the paper's idea calls for:
  same format, disjoint content);
- ``digits`` (8×8) → Fashion-MNIST averaged down to 8×8 (area interpolation): clothing
  silhouettes at the digits' resolution — a documented choice, digits having no OOD set of its
  own.

Images are moved into the task's normalisation: a pixel p ∈ [0, 1] of the OOD image becomes
``low + p·(high − low)`` of the task (its black and white values).

**Planting** (each round, before the clients train): from θ_t, SGD (``lr``, ``momentum``,
``weight_decay``) on the indicator set with the loss CE + (μ/2)·‖θ − θ_t‖₂, for at most ``epochs``
passes, stopping early when the mean loss of a pass changes by < 10⁻³ for 10 passes. The planted
model θ̃_t is the round's global model: the clients train from it, the updates are deltas from it
and the step is θ_{t+1} = θ̃_t + η·A(Δ). The project's models have no batch-norm statistics, so
the authors' BN replacement has nothing to do here.

**Check.** The indicator accuracy of θ̃_t + Δ_i: the highest, over the assigned labels l, of the
fraction of the indicator images labelled l that the model classifies as l.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from fedshield.tasks.datasets import load_dataset
from fedshield.tasks.device import CPU
from fedshield.tasks.params import flatten, load_vector
from fedshield.tasks.seeding import torch_generator

OOD_SOURCE = {"mnist": "fashion-mnist", "fashion-mnist": "mnist", "digits": "fashion-mnist"}


class IndicatorError(ValueError):
    """The task has no out-of-distribution pairing, or the OOD data cannot be loaded."""


def indicator_set(dataset: Any, dataset_name: str, samples: int, seed: int
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """(images in the task's shape and normalisation, assigned labels) of the indicator set."""
    source = OOD_SOURCE.get(dataset_name)
    if source is None:
        raise IndicatorError(f"backdoor-indicator has no out-of-distribution set for dataset "
                             f"{dataset_name!r}; pairings: {OOD_SOURCE}")
    ood = load_dataset(source)
    gen = torch_generator(seed, "indicator")
    pick = torch.randperm(len(ood.train_y), generator=gen)[:samples]
    x = torch.as_tensor(ood.train_x)[pick]
    pixels = ((x - ood.low) / (ood.high - ood.low)).clamp(0.0, 1.0)
    shape = tuple(dataset.input_shape)
    if tuple(pixels.shape[1:]) != shape:
        pixels = F.interpolate(pixels, size=shape[1:], mode="area")
    images = dataset.low + pixels * (dataset.high - dataset.low)
    classes = dataset.num_classes
    labels = torch.arange(len(images)) % classes
    labels = labels[torch.randperm(len(labels), generator=gen)]
    return images.to(torch.float32), labels


class IndicatorPlanter:
    """Plants the indicator in θ_t (:meth:`plant`) and measures a model's indicator accuracy
    (:meth:`accuracy`); settings from the detector's parameters."""

    def __init__(self, task: Any, dataset_name: str, params: dict[str, Any], seed: int) -> None:
        self.task = task
        self.params = params
        self.x, self.y = indicator_set(task.dataset, dataset_name, int(params["samples"]), seed)
        self.seed = seed
        self.model = task.new_model(CPU)  # planted on the CPU, with the indicator set
        self.planted: torch.Tensor | None = None

    def plant(self, global_vec: torch.Tensor, rnd: int) -> torch.Tensor:
        """θ̃_t: θ_t trained on the indicator task (module docstring)."""
        p = self.params
        load_vector(self.model, global_vec)
        anchor = [q.detach().clone() for q in self.model.parameters()]
        optimiser = torch.optim.SGD(self.model.parameters(), lr=p["lr"], momentum=p["momentum"],
                                    weight_decay=p["weight_decay"])
        gen = torch_generator(self.seed, "indicator-plant", rnd)
        previous, patience = float("inf"), 0
        self.model.train()
        for _ in range(int(p["epochs"])):
            order = torch.randperm(len(self.y), generator=gen)
            total, batches = 0.0, 0
            for batch in order.split(int(p["batch_size"])):
                optimiser.zero_grad()
                loss = F.cross_entropy(self.model(self.x[batch]), self.y[batch])
                if p["mu"] > 0:
                    distance = torch.sqrt(sum(((q - a) ** 2).sum() for q, a in
                                              zip(self.model.parameters(), anchor, strict=True))
                                          + 1e-24)
                    loss = loss + p["mu"] / 2 * distance
                loss.backward()
                optimiser.step()
                total, batches = total + float(loss.detach()), batches + 1
            mean = total / batches
            patience = patience + 1 if abs(previous - mean) < 1e-3 else 0
            previous = mean
            if patience >= 10:
                break
        self.planted = flatten(self.model).to(global_vec.dtype)
        return self.planted

    def accuracy(self, vec: torch.Tensor) -> float:
        """The indicator accuracy of the model ``vec``: the best per-label accuracy."""
        load_vector(self.model, vec)
        self.model.eval()
        with torch.no_grad():
            predicted = self.model(self.x).argmax(dim=1)
        hits = torch.zeros(int(self.y.max()) + 1)
        totals = torch.zeros_like(hits)
        hits.index_add_(0, self.y, (predicted == self.y).float())
        totals.index_add_(0, self.y, torch.ones_like(hits[self.y]))
        return float((hits / totals.clamp(min=1)).max())

    def check(self, delta: torch.Tensor) -> float:
        """The indicator accuracy of θ̃_t + Δ (the detector's bound checker)."""
        if self.planted is None:
            raise IndicatorError("no indicator planted this round")
        return self.accuracy(self.planted + delta.to(self.planted.dtype))


def indicator_detector(rule: Any) -> Any | None:
    """The rule's BackdoorIndicator detector when it composes one (``detect``), else None."""
    detector = getattr(rule, "_detector", None)
    return detector if getattr(detector, "needs_binding", False) else None
