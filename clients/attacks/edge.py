"""Edge-case backdoor — Wang, Sreenivasan, Rajput, Vishwakarma, Agarwal, Sohn, Lee,
Papailiopoulos, "Attack of the Tails: Yes, You Really Can Backdoor Federated Learning",
NeurIPS 2020.

A backdoor on inputs from the *tail* of the data distribution: inputs the honest clients rarely
hold, so no honest update defends them. The paper's attacker holds an out-of-set edge-case
dataset (ARDIS sevens, labelled as ones); offline, this attack builds the analogue from the
task's own training split: the **tail of one class by ink** — the ``tail`` share of the
``source`` class with the least mean pixel value (thin, small or faint strokes: a rare sub-style
of the class). Each malicious client adds a ``poison_fraction`` of that edge-case set, labelled
``target``, to its own data (the honest clients that hold some of those images keep their true
label: exactly the tail conflict the paper describes), trains, and sends its delta projected
onto a norm ball of radius ``norm_factor`` · ‖θ_t − θ_{t−1}‖ (the paper's
projected gradient descent keeps the update near a plausible one; round 1 is not projected).
The attack success rate is measured on the test set's tail of ``source`` (the same ink quantile
of the test images of that class): the share classified as ``target``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from fedshield.clients.attacks.base import (
    AttackError,
    check_fraction,
    check_label,
    check_positive,
    register,
)
from fedshield.clients.attacks.data import (
    GlobalMoves,
    RemembersGlobalMoves,
    _Base,
    _choose,
    project_to_ball,
)


def ink(x: torch.Tensor) -> torch.Tensor:
    """(N,) mean value of each input (the amount of ink of a digit)."""
    return x.reshape(x.shape[0], -1).mean(dim=1)


def tail_mask(x: torch.Tensor, share: float) -> torch.Tensor:
    """(N,) bool: the ``share`` of ``x`` with the least ink (at least one input)."""
    if x.shape[0] == 0:
        return torch.zeros(0, dtype=torch.bool)
    values = ink(x)
    count = max(1, round(share * x.shape[0]))
    threshold = torch.sort(values).values[count - 1]
    return values <= threshold


@register
class EdgeCase(RemembersGlobalMoves, _Base):
    """Edge-case backdoor (Wang et al. NeurIPS'20): the least-ink tail of ``source`` relabelled
    ``target``, the update projected onto a norm ball (module docstring)."""

    name: ClassVar[str] = "edge-case"
    observes: ClassVar[str] = "the global model's last move; holds an edge-case set"

    def __init__(self, *, num_classes: int, low: float, high: float, source: int = 7,
                 target: int = 1, tail: float = 0.1, poison_fraction: float = 1.0,
                 norm_factor: float = 2.0, boost: Any = 1.0, num_clients: int | None = None,
                 num_malicious: int | None = None) -> None:
        super().__init__(num_classes=num_classes, low=low, high=high,
                         poison_fraction=poison_fraction, boost=boost,
                         num_clients=num_clients, num_malicious=num_malicious)
        self.source = check_label(self.name, "source", source, num_classes)
        self.target = check_label(self.name, "target", target, num_classes)
        if self.source == self.target:
            raise AttackError(f"attack {self.name!r}: source and target must differ")
        self.tail = check_fraction(self.name, "tail", tail)
        self.norm_factor = check_positive(self.name, "norm_factor", norm_factor)
        self._moves = GlobalMoves()
        self._edge: torch.Tensor | None = None  # the edge-case images (from the training split)

    def prepare(self, task: Any, global_vec: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                generator: torch.Generator) -> None:
        if self._edge is None:
            train_x = torch.as_tensor(task.dataset.train_x)
            sources = train_x[torch.as_tensor(task.dataset.train_y) == self.source]
            self._edge = sources[tail_mask(sources, self.tail)]

    def poison(self, x, y, generator):
        if self._edge is None or self._edge.shape[0] == 0:
            raise AttackError(f"attack {self.name!r} has no edge-case set: prepare() builds it "
                              "from the task (the engines call it with the global model)")
        pick = _choose(torch.ones(self._edge.shape[0], dtype=torch.bool), self.poison_fraction,
                       generator)
        edge = self._edge[pick].to(x.dtype)
        return (torch.cat([x, edge]),
                torch.cat([y, torch.full((edge.shape[0],), self.target, dtype=y.dtype)]))

    def finish(self, delta: torch.Tensor, global_vec: torch.Tensor) -> torch.Tensor:
        move = self._moves.observe(global_vec)
        delta = super().finish(delta, global_vec)
        return delta if move is None else project_to_ball(delta, move, self.norm_factor)

    def asr_inputs(self, test_x, test_y):
        sources = test_x[test_y == self.source]
        return sources[tail_mask(sources, self.tail)], self.target
