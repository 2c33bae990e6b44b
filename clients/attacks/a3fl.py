"""A3FL — Zhang, Jia, Li, Gong, Fang, "A3FL: Adversarially Adaptive Backdoor Attacks to Federated
Learning", NeurIPS 2023.

A fixed trigger is learned by the global model and then *unlearned* by the benign rounds that
follow. A3FL optimises its trigger, each round, to survive that: against the global model θ_t and
against an adversarially adapted copy θ_adv that has been trained to *forget* the current
trigger (triggered inputs with their true labels: what the benign clients and the defence will
do to it).

Each round, before poisoning (``prepare``, once per global model, shared by the colluding
malicious clients):

1. θ_adv ← θ_t trained ``adv_steps`` SGD steps (lr ``adv_lr``) on min CE(θ_adv(x ⊕ t), y);
2. the trigger pattern t (the ``size`` × ``size`` patch of ``backdoor-patch``, values in
   [low, high], starting from the white patch) takes ``trigger_steps`` signed-gradient steps of
   ``trigger_lr`` · (high − low) on

       min_t  CE(θ_t(x ⊕ t), target) + λ · CE(θ_adv(x ⊕ t), target),   λ = ``adv_weight``,

   over a batch of up to 64 of the client's own non-target examples;
3. the client poisons its data with the new trigger and trains as ``backdoor-patch`` does.

The attack success rate is measured with the trigger of the last round (``dynamic_trigger``: the
server's evaluator asks for it at every evaluation). In the inline engine the attackers share one
attack object; on Flower each malicious ClientApp keeps its pattern in its node state and reports
it in its reply (the ``attack-trigger`` record, :data:`fedshield.clients.client_app.TRIGGER_KEY`),
and the simulation's ServerApp evaluates with the pattern of the lowest malicious partition id that
replied, after :meth:`A3FL.restore` has checked it.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from fedshield.clients.attacks.base import AttackError, check_positive, register
from fedshield.clients.attacks.data import BackdoorPatch, _check_image
from fedshield.tasks.device import CPU


@register
class A3FL(BackdoorPatch):
    """A3FL (Zhang et al. NeurIPS'23): a patch trigger re-optimised each round against the
    global model and an adversarially adapted copy of it (module docstring)."""

    name: ClassVar[str] = "a3fl"
    observes: ClassVar[str] = "the global model each round (its trigger is re-optimised)"
    dynamic_trigger: ClassVar[bool] = True

    def __init__(
        self,
        *,
        num_classes: int,
        low: float,
        high: float,
        target: int = 0,
        size: int = 3,
        location: str = "bottom-right",
        margin: int = 0,
        poison_fraction: float = 0.5,
        adv_steps: int = 5,
        adv_lr: float = 0.05,
        trigger_steps: int = 10,
        trigger_lr: float = 0.05,
        adv_weight: float = 1.0,
        boost: Any = 1.0,
        num_clients: int | None = None,
        num_malicious: int | None = None,
    ) -> None:
        super().__init__(
            num_classes=num_classes, low=low, high=high, target=target, size=size,
            location=location, margin=margin, poison_fraction=poison_fraction, boost=boost,
            num_clients=num_clients, num_malicious=num_malicious,
        )
        for key, value in (("adv_steps", adv_steps), ("trigger_steps", trigger_steps)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise AttackError(f"attack {self.name!r}: {key} must be an int >= 0, got "
                                  f"{value!r}")
        self.adv_steps, self.trigger_steps = adv_steps, trigger_steps
        self.adv_lr = check_positive(self.name, "adv_lr", adv_lr)
        self.trigger_lr = check_positive(self.name, "trigger_lr", trigger_lr)
        self.adv_weight = float(adv_weight)
        if self.adv_weight < 0:
            raise AttackError(f"attack {self.name!r}: adv_weight must be >= 0")
        self._pattern: torch.Tensor | None = None  # (C, size, size); None: the white patch
        self._prepared_for: torch.Tensor | None = None

    def memory(self) -> dict[str, torch.Tensor]:
        """The current trigger pattern: what a rebuilt client continues from next round, and
        what the simulation's server evaluates the ASR with (the client reports it)."""
        return {} if self._pattern is None else {"pattern": self._pattern}

    def restore(self, memory: dict[str, torch.Tensor]) -> None:
        """Take back a pattern — possibly from another process: checked to be one finite
        (channels, size, size) patch inside [low, high], else AttackError naming the fault."""
        unknown = set(memory) - {"pattern"}
        if unknown:
            raise AttackError(f"attack {self.name!r}: unknown trigger state {sorted(unknown)}")
        if "pattern" not in memory:
            return
        pattern = torch.as_tensor(memory["pattern"])
        if (pattern.ndim != 3 or pattern.shape[1:] != (self.size, self.size)
                or not pattern.is_floating_point()):
            raise AttackError(f"attack {self.name!r}: the trigger pattern must be a float "
                              f"(channels, {self.size}, {self.size}) patch, got "
                              f"{pattern.dtype} {tuple(pattern.shape)}")
        if not bool(torch.isfinite(pattern).all()) or float(pattern.min()) < self.low \
                or float(pattern.max()) > self.high:
            raise AttackError(f"attack {self.name!r}: the trigger pattern must be finite and "
                              f"inside [{self.low}, {self.high}]")
        self._pattern = pattern.detach().to(torch.float32).clone()

    def trigger(self, x):
        _check_image(self.name, x)
        rows, cols = self._window(x.shape[2], x.shape[3])
        out = x.clone()
        out[:, :, rows, cols] = self.high if self._pattern is None else self._pattern.to(x.dtype)
        return out

    def prepare(self, task: Any, global_vec: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                generator: torch.Generator) -> None:
        theta = global_vec.detach().to(torch.float32)
        if self._prepared_for is not None and torch.equal(self._prepared_for, theta):
            return
        self._prepared_for = theta.clone()
        keep = torch.nonzero(y != self.target).flatten()
        if keep.numel() == 0:
            return
        pick = keep[torch.randperm(keep.numel(), generator=generator)[:64]]
        xb, yb = x[pick], y[pick]
        rows, cols = self._window(x.shape[2], x.shape[3])
        pattern = (torch.full((x.shape[1], self.size, self.size), self.high)
                   if self._pattern is None else self._pattern.clone())
        # on the CPU, with the client's data, whatever the run's device
        model = task.model_from_vector(theta, CPU)
        adapted = task.model_from_vector(theta, CPU)
        optimiser = torch.optim.SGD(adapted.parameters(), lr=self.adv_lr)
        for _ in range(self.adv_steps):  # the copy that forgets the current trigger
            optimiser.zero_grad()
            F.cross_entropy(adapted(self._stamp(xb, pattern, rows, cols)), yb).backward()
            optimiser.step()
        for net in (model, adapted):
            net.requires_grad_(False)
        target = torch.full_like(yb, self.target)
        step = self.trigger_lr * (self.high - self.low)
        for _ in range(self.trigger_steps):
            pattern.requires_grad_(True)
            stamped = self._stamp(xb, pattern, rows, cols)
            loss = (F.cross_entropy(model(stamped), target)
                    + self.adv_weight * F.cross_entropy(adapted(stamped), target))
            (grad,) = torch.autograd.grad(loss, pattern)
            pattern = (pattern.detach() - step * grad.sign()).clamp(self.low, self.high)
        self._pattern = pattern.detach()

    @staticmethod
    def _stamp(x: torch.Tensor, pattern: torch.Tensor, rows: slice, cols: slice) -> torch.Tensor:
        """x with the pattern in the trigger window, differentiable in the pattern."""
        mask = torch.zeros(x.shape[1:], dtype=x.dtype)
        mask[:, rows, cols] = 1.0
        placed = F.pad(pattern, (cols.start, x.shape[3] - cols.stop,
                                 rows.start, x.shape[2] - rows.stop))
        return x * (1 - mask) + placed * mask
