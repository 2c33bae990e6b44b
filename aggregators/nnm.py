"""Nearest-Neighbour Mixing (NNM) — Allouah, Farhadkhani, Guerraoui, Gupta, Pinot, Stephan,
"Fixing by Mixing: A Recipe for Optimal Byzantine ML under Heterogeneity", AISTATS 2023.

A pre-aggregator: each delta is replaced by the mean of its n − f nearest neighbours (itself
included, squared Euclidean distance from the shared kernel, or the ``gram`` of the context),

    y_i = (1/(n−f)) Σ_{j ∈ N_i} Δ_j,     N_i = the n − f indices j with the smallest ‖Δ_i − Δ_j‖²,

i.e. Y = A Δ with the row-stochastic mixing matrix A_ij = 1/(n−f) for j ∈ N_i; then the ``inner``
rule aggregates y_1 … y_n. Ties in distance keep the lower index, and i itself always belongs to
N_i. The paper shows that NNM makes (f, κ)-robust rules such as Krum, the coordinate median or the
trimmed mean order-optimal under heterogeneity (ByzFL implements it as ``NNM(f)``).

Back to clients: inner weights w over the mixed vectors map to client weights Aᵀw (the share of
each client in the result); inner ``accepted`` maps to "contributes to an accepted mixed vector"
(Aᵀ·accepted > 0) when the inner rule gives no weights, and to Aᵀw > 0 when it does. Only
``reference`` passes through to the inner rule (the sample counts and the ``gram`` describe the raw
updates, not the mixtures); a stateful inner rule is refused, since its per-client history would
record mixtures, not the client's own updates.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from fedshield.aggregators.base import (
    Aggregation,
    Context,
    Param,
    PreAggregator,
    inner_context,
    register,
)
from fedshield.aggregators.kernels import inner_on_columns, mean_rows, resolve_distances
from fedshield.aggregators.validation import non_negative_int


def mixing_matrix(sq_distances: torch.Tensor, neighbours: int) -> torch.Tensor:
    """(n, n) float64 A with A_ij = 1/k for the k nearest j of i (i first, then stable order)."""
    n = sq_distances.shape[0]
    dist = sq_distances.to(torch.float64).clone()
    dist.fill_diagonal_(-1.0)  # i is its own nearest neighbour, whatever the kernel's rounding
    nearest = torch.sort(dist, dim=1, stable=True).indices[:, :neighbours]
    mixing = torch.zeros(n, n, dtype=torch.float64)
    mixing.scatter_(1, nearest, 1.0 / neighbours)
    return mixing


@register
class NNM(PreAggregator):
    """NNM (Allouah et al., AISTATS 2023): mix each update with its n − f nearest, then ``inner``.

    Parameters
    ----------
    f : int ≥ 0
        Number of Byzantine clients; each update is averaged with its n − f nearest neighbours.
    inner : str or Rule
        The rule applied to the mixed vectors.
    inner_params : dict, optional
        Parameters of ``inner`` when it is given by name.

    A coordinate-wise inner rule (median, trimmed mean, mean) gets the mixed vectors one column
    block at a time, so the (n, d) matrix of mixed vectors is never built whole.
    """

    name: ClassVar[str] = "nnm"

    parameters: ClassVar[dict[str, Param]] = {
        "f": Param(1, non_negative_int),
        **PreAggregator.INNER,
    }
    examples: ClassVar[tuple[dict[str, Any], ...]] = (
        {"f": 1}, {"f": 1, "inner": "krum", "inner_params": {"f": 1}})

    def min_clients(self) -> int:
        return max(self.f + 1, self._inner.min_clients())

    def aggregate(self, updates: torch.Tensor, context: Context) -> Aggregation:
        n = updates.shape[0]
        mixing = mixing_matrix(resolve_distances("nnm", updates, context.gram), n - self.f)
        result = inner_on_columns(self._inner, updates, lambda x: mean_rows(mixing, x),
                                  inner_context(context))
        weights = None
        accepted = None
        if result.weights is not None:
            weights = mixing.T @ result.weights.to(torch.float64)
            accepted = weights > 0
        elif result.accepted is not None:
            accepted = (mixing.T @ result.accepted.to(torch.float64)) > 0
        return Aggregation(
            update=result.update,
            accepted=accepted,
            weights=weights,
            diagnostics={"neighbours": n - self.f, "inner": result.diagnostics},
        )
