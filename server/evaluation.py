"""Server-side evaluation of a global parameter vector on the task's test set.

accuracy = mean(argmax f_θ(x) = y), loss = mean cross-entropy (``tasks.training.evaluate``);
backdoor / targeted attack success rate ASR = fraction of the attack's ``asr_inputs`` (triggered or
source-class test inputs whose true label is not the target) that the model classifies as the target
label (``tasks.training.accuracy_on``), when the run's attack defines such inputs.
"""

from __future__ import annotations

from typing import Any

import torch

from fedshield.tasks.params import load_vector
from fedshield.tasks.training import accuracy_on, evaluate


class GlobalEvaluator:
    """Callable ``vector -> {"accuracy", "loss", "asr"}`` (asr None without ``asr_inputs``)."""

    def __init__(self, task: Any, attack: Any | None = None) -> None:
        self.model = task.new_model()
        self.x = torch.as_tensor(task.dataset.test_x)
        self.y = torch.as_tensor(task.dataset.test_y)
        self.asr_inputs = None
        self.attack = attack if getattr(attack, "kind", "") == "data" else None
        if self.attack is not None:
            self.asr_inputs = self.attack.asr_inputs(self.x, self.y)

    def __call__(self, vector: torch.Tensor) -> dict[str, float | None]:
        load_vector(self.model, vector)
        result = evaluate(self.model, self.x, self.y)
        out: dict[str, float | None] = {
            "accuracy": float(result.accuracy), "loss": float(result.loss), "asr": None,
        }
        if getattr(self.attack, "dynamic_trigger", False):  # A3FL: the trigger of this round
            self.asr_inputs = self.attack.asr_inputs(self.x, self.y)
        if self.asr_inputs is not None:
            x, target = self.asr_inputs
            out["asr"] = float(accuracy_on(self.model, x, target)) if len(x) else None
        return out
