"""BackdoorIndicator's check as a detector — Li & Dai, "BackdoorIndicator: Leveraging OOD Data
for Proactive Backdoor Detection in Federated Learning", USENIX Security 2024 (arXiv:2405.20862).

Before each round the server plants an *indicator* task in the global model: out-of-distribution
samples, each with an assigned label (``fedshield.server.indicator``). A benign client's training
on its in-distribution data erodes the indicator; a backdoor is itself out-of-distribution
learning, and a model trained on a backdoor keeps the indicator. After the round each uploaded
model θ̃ + Δ_i (θ̃ the planted global model) is evaluated on the indicator set: its indicator
accuracy a_i is the highest per-label accuracy over the assigned labels (as the authors' code
does), and

    flagged_i  ⇔  a_i ≥ τ        (τ = ``threshold``, 0.95 in the paper's code).

Score = a_i. The check needs the server's model and OOD data, which this package cannot hold: the
engine binds a checker ``Δ_i -> a_i`` each round (:meth:`BackdoorIndicator.bind`), after planting
the indicator with the planting parameters declared here. Used unbound, the detector refuses.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch

from fedshield.aggregators.base import AggregatorError, Context, Param
from fedshield.aggregators.detection import Detection, Detector, register_detector
from fedshield.aggregators.validation import interval, non_negative, positive, positive_int

Checker = Callable[[torch.Tensor], float]


@register_detector
class BackdoorIndicator(Detector):
    """BackdoorIndicator (Li & Dai, USENIX Security 2024): flag the updates that keep the
    server's planted out-of-distribution indicator task.

    Parameters
    ----------
    threshold : float in (0, 1]
        τ: indicator accuracy at or above which an update is flagged.
    samples : int ≥ 1
        OOD samples of the indicator set (paper's code: 800).
    lr, momentum, weight_decay : the server's SGD while planting (0.005, 0.9, 5e-4).
    mu : float ≥ 0
        Weight of the proximal term (μ/2)·‖θ − θ_t‖ that keeps the planted model near θ_t (0.1).
    epochs : int ≥ 1
        Passes over the indicator set while planting, at most (200; early stop when the loss
        changes by < 10⁻³ for 10 passes).
    batch_size : int ≥ 1
    """

    name: ClassVar[str] = "backdoor-indicator"
    parameters: ClassVar[dict[str, Param]] = {
        "threshold": Param(0.95, interval(0.0, 1.0, closed_lo=False)),
        "samples": Param(800, positive_int),
        "lr": Param(0.005, positive),
        "momentum": Param(0.9, interval(0.0, 1.0, closed_hi=False)),
        "weight_decay": Param(5e-4, non_negative),
        "mu": Param(0.1, non_negative),
        "epochs": Param(200, positive_int),
        "batch_size": Param(64, positive_int),
    }
    examples: ClassVar[tuple[dict[str, Any], ...]] = ({}, {"threshold": 0.5, "samples": 100})
    needs_binding: ClassVar[bool] = True

    def setup(self) -> None:
        self.checker: Checker | None = None  # public: bound by the engine, not state

    def bind(self, checker: Checker) -> None:
        """The round's check: a client's delta relative to the planted model -> its indicator
        accuracy in [0, 1]."""
        self.checker = checker

    def detect(self, x: torch.Tensor, ctx: Context) -> Detection:
        if self.checker is None:
            raise AggregatorError(
                "backdoor-indicator: no indicator bound; it needs the server's model and OOD "
                "data: run it in the harness (inline engine), which plants the indicator each "
                "round and binds the check")
        accuracy = torch.tensor([float(self.checker(row)) for row in x], dtype=torch.float64)
        return Detection(flags=accuracy >= self.threshold, scores=accuracy,
                         diagnostics={"indicator_accuracy": accuracy.tolist()})
