"""Bucketing — Karimireddy, He, Jaggi, "Byzantine-Robust Learning on Heterogeneous Datasets via
Bucketing", ICLR 2022 (Algorithm 1).

A pre-aggregator: shuffle the n deltas with a random permutation π, average them in ⌈n/s⌉ buckets
of s consecutive shuffled deltas (the last bucket holds the remainder),

    y_k = (1/|B_k|) Σ_{i∈B_k} Δ_{π(i)},    B_k = {(k−1)s+1, …, min(ks, n)},

and apply any robust ``inner`` rule to y_1 … y_⌈n/s⌉. Averaging lowers the spread of honest updates
on non-IID data. With f Byzantine clients at most f buckets are contaminated, so the inner rule
keeps its f (now counting buckets).

Back to clients: a client is accepted when its bucket is; its weight is its bucket's inner weight
divided by the bucket's size. ``reference`` passes through to the inner rule; ``weights`` (sample
counts) are summed per bucket; a stateful inner rule is refused (bucket composition changes every
round, so per-client history cannot follow it). The permutation comes from a ``torch.Generator``
seeded with ``seed`` at construction (a new shuffle per call; ``reset()`` re-seeds).

Compose it either way: ``create("bucketing", s=2, inner="krum", inner_params={"f": 1})`` or
``create("bucketing", s=2, inner=create("krum", f=1))``.
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
from fedshield.aggregators.kernels import inner_on_columns, mean_rows
from fedshield.aggregators.validation import non_negative_int, positive_int


@register
class Bucketing(PreAggregator):
    """Bucketing (Karimireddy et al., ICLR 2022): average random buckets of s, then ``inner``.

    Parameters
    ----------
    s : int ≥ 1
        Bucket size (s = 1 only shuffles).
    inner : str or Rule
        The rule applied to the bucket means.
    inner_params : dict, optional
        Parameters of ``inner`` when it is given by name.
    seed : int
        Seed of the permutation.

    A coordinate-wise inner rule (median, trimmed mean, mean) gets the bucket means one column
    block at a time, so the (⌈n/s⌉, d) matrix of means is never built whole.
    """

    name: ClassVar[str] = "bucketing"
    permutation_invariant: ClassVar[bool] = False  # a random bucketing of the rows as given

    parameters: ClassVar[dict[str, Param]] = {
        "s": Param(2, positive_int),
        **PreAggregator.INNER,
        "seed": Param(0, non_negative_int),
    }
    examples: ClassVar[tuple[dict[str, Any], ...]] = (
        {}, {"s": 2, "inner": "krum", "inner_params": {"f": 1}})

    def min_clients(self) -> int:
        """⌈n/s⌉ ≥ the inner rule's minimum ⇔ n ≥ (min − 1)·s + 1."""
        return (self._inner.min_clients() - 1) * self.s + 1

    def reset(self) -> None:
        self._generator = torch.Generator().manual_seed(self.seed)
        super().reset()

    def aggregate(self, updates: torch.Tensor, context: Context) -> Aggregation:
        n = updates.shape[0]
        buckets = -(-n // self.s)
        perm = torch.randperm(n, generator=self._generator)
        bucket_of = torch.empty(n, dtype=torch.int64)
        bucket_of[perm] = torch.arange(n) // self.s
        sizes = torch.bincount(bucket_of, minlength=buckets).to(torch.float64)
        membership = torch.zeros(buckets, n, dtype=torch.float64)
        membership[bucket_of, torch.arange(n)] = 1.0
        mixing = membership / sizes[:, None]
        ctx = inner_context(context)
        if context.weights is not None:
            ctx["weights"] = torch.zeros(buckets, dtype=torch.float64).index_add_(
                0, bucket_of, context.weights)
        result = inner_on_columns(self._inner, updates, lambda x: mean_rows(mixing, x), ctx)
        accepted = None if result.accepted is None else result.accepted.bool()[bucket_of]
        weights = None
        if result.weights is not None:
            weights = result.weights.to(torch.float64)[bucket_of] / sizes[bucket_of]
        return Aggregation(
            update=result.update,
            accepted=accepted,
            weights=weights,
            diagnostics={"buckets": bucket_of.tolist(), "inner": result.diagnostics},
        )
