"""The one aggregation step of a round, shared by ``RobustStrategy`` and the inline engine.

Given the round's global vector θ_t (d,), the (n, d) float32 matrix of client deltas
Δ_i = θ_i − θ_t and a rule ``A`` from ``aggregators``::

    θ_{t+1} = θ_t + η · A(Δ_1, …, Δ_n; context)

with η the server learning rate (η = 1 is plain FedAvg-style replacement by the aggregate; η ≠ 1 is
the "server learning rate" of Reddi et al., *Adaptive Federated Optimization*, ICLR 2021).
Distance-based rules compute the round's pairwise squared distances once themselves
(``fedshield.aggregators.kernels``); a caller that already has them passes ``gram`` (context key
``gram``). Rules with ``needs_reference`` must be given the server's reference delta (FLTrust).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch

from fedshield.aggregators import Aggregation, AggregatorError, Rule
from fedshield.aggregators.kernels import kernel_device


@dataclass
class StepResult:
    new_vec: torch.Tensor
    aggregation: Aggregation
    seconds: float  # wall time of the rule call


def robust_step(
    global_vec: torch.Tensor,
    updates: torch.Tensor,
    rule: Rule,
    *,
    server_lr: float = 1.0,
    reference: torch.Tensor | None = None,
    weights: torch.Tensor | None = None,
    client_ids: list[Any] | None = None,
    gram: torch.Tensor | None = None,
    device: torch.device | None = None,
) -> StepResult:
    """θ_{t+1} = θ_t + server_lr · rule(updates, context); raises AggregatorError on bad input
    (shape mismatch, too few clients for the rule, a non-finite aggregate). ``device``: where the
    rule's sorts and Gram products run (``aggregators.kernels.kernel_device``; None: the CPU)."""
    if updates.ndim != 2 or updates.shape[1] != global_vec.numel():
        raise AggregatorError(
            f"updates must have shape (n, {global_vec.numel()}), got {tuple(updates.shape)}"
        )
    n = updates.shape[0]
    if n < rule.min_clients():
        raise AggregatorError(
            f"rule {rule.name!r} with {rule.params()} needs at least {rule.min_clients()} "
            f"clients, got {n}"
        )
    if not server_lr > 0:
        raise AggregatorError(f"server_lr must be > 0, got {server_lr}")
    context: dict[str, Any] = {}
    if weights is not None:
        context["weights"] = weights
    if client_ids is not None:
        context["client_ids"] = client_ids
    if gram is not None:
        context["gram"] = gram
    if reference is not None:
        context["reference"] = reference
    elif rule.needs_reference:
        raise AggregatorError(f"rule {rule.name!r} needs a server reference update")
    start = time.perf_counter()
    with kernel_device(device):
        agg = rule(updates, **context)
    seconds = time.perf_counter() - start
    update = agg.update.to(torch.float32).reshape(-1)
    if update.numel() != global_vec.numel() or not bool(torch.isfinite(update).all()):
        raise AggregatorError(f"rule {rule.name!r} returned a non-finite or mis-shaped update")
    new_vec = global_vec.to(torch.float32) + server_lr * update
    return StepResult(new_vec, agg, seconds)
