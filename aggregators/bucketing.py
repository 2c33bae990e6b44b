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

from collections.abc import Mapping
from typing import Any, ClassVar

import torch

from fedshield.aggregators.base import Aggregation, AggregatorError, Rule, create, register
from fedshield.aggregators.validation import (
    Context,
    check_context,
    check_f,
    check_positive,
    check_updates,
)


def resolve_inner(owner: str, inner: Rule | str, inner_params: Mapping[str, Any] | None) -> Rule:
    """The inner rule of a pre-aggregator: a Rule instance, or a registered name + parameters."""
    if isinstance(inner, Rule):
        if inner_params:
            raise AggregatorError(
                f"{owner}: inner_params is only allowed with an inner rule given by name"
            )
        rule = inner
    elif isinstance(inner, str):
        if inner_params is not None and not isinstance(inner_params, Mapping):
            raise AggregatorError(
                f"{owner}: inner_params must be a dict of the inner rule's parameters, "
                f"got {inner_params!r}"
            )
        rule = create(inner, **dict(inner_params or {}))
    else:
        raise AggregatorError(
            f"{owner}: inner must be an aggregator name or a Rule instance, got {inner!r}"
        )
    if rule.stateful:
        raise AggregatorError(
            f"{owner}: inner rule {rule.name!r} is stateful (per-client history), which the "
            f"pre-aggregated vectors cannot carry; choose a stateless inner rule"
        )
    return rule


def inner_context(context: Context) -> dict[str, Any]:
    """The context keys that keep their meaning after pre-aggregation (only ``reference``)."""
    return {"reference": context.reference} if context.reference is not None else {}


@register
class Bucketing(Rule):
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
    """

    name: ClassVar[str] = "bucketing"

    def __init__(self, s: int = 2, inner: Rule | str = "median",
                 inner_params: Mapping[str, Any] | None = None, seed: int = 0):
        check_positive("bucketing", "s", s, integer=True)
        check_f("bucketing", seed, name="seed")
        self._inner = resolve_inner("bucketing", inner, inner_params)
        self.s = s
        self.inner = self._inner.name
        self.inner_params = self._inner.params()
        self.seed = seed
        self._generator = torch.Generator().manual_seed(seed)

    @property
    def needs_reference(self) -> bool:  # type: ignore[override]
        """The inner rule's need: FLTrust inside a pre-aggregator still needs the root update."""
        return self._inner.needs_reference

    def min_clients(self) -> int:
        """⌈n/s⌉ ≥ the inner rule's minimum ⇔ n ≥ (min − 1)·s + 1."""
        return (self._inner.min_clients() - 1) * self.s + 1

    def reset(self) -> None:
        self._generator = torch.Generator().manual_seed(self.seed)
        self._inner.reset()

    def __call__(self, updates: torch.Tensor, **kwargs: Any) -> Aggregation:
        updates = check_updates(self, updates)
        context = check_context(self, updates, kwargs)
        n = updates.shape[0]
        buckets = -(-n // self.s)
        perm = torch.randperm(n, generator=self._generator)
        bucket_of = torch.empty(n, dtype=torch.int64)
        bucket_of[perm] = torch.arange(n) // self.s
        sizes = torch.bincount(bucket_of, minlength=buckets).to(torch.float64)
        sums = torch.zeros(buckets, updates.shape[1], dtype=updates.dtype)
        means = sums.index_add_(0, bucket_of, updates) / sizes.to(updates.dtype)[:, None]
        ctx = inner_context(context)
        if context.weights is not None:
            ctx["weights"] = torch.zeros(buckets, dtype=torch.float64).index_add_(
                0, bucket_of, context.weights)
        result = self._inner(means, **ctx)
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
