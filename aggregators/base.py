"""The aggregator contract shared by every rule (see DESIGN.md, "The aggregator contract").

A rule is built by :func:`aggregators.create` and called as ``rule(updates, **context)`` on a
``torch.Tensor`` of shape (n, d) holding the round's client *deltas* (client − global), float32.
It returns an :class:`Aggregation`. Context keys a rule may read:

- ``reference``  (d,) the server's own update (FLTrust);
- ``weights``    (n,) client-reported sample counts (unverified; most robust rules ignore them);
- ``client_ids`` sequence of n hashable ids (stateful rules keep per-client history by id);
- ``gram``       (n, n) precomputed pairwise squared distances of ``updates`` (shared per round).

This module imports nothing of the project.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch


class AggregatorError(ValueError):
    """Bad input or configuration for an aggregation rule; the message names what was wrong."""


@dataclass
class Aggregation:
    """What a rule returns.

    update:      (d,) the aggregated delta; always finite.
    accepted:    (n,) bool, for rules that select clients (Krum, Bulyan, FLAME, ...), else None.
    weights:     (n,) float, each client's share of the result (sums to 1 where defined), else None.
    diagnostics: free-form, JSON-serialisable scalars/lists (scores, iterations, clip factors...).
    """

    update: torch.Tensor
    accepted: torch.Tensor | None = None
    weights: torch.Tensor | None = None
    diagnostics: dict[str, Any] = field(default_factory=dict)


class Rule:
    """Base class of every rule: the constructor stores parameters, ``__call__`` aggregates.

    Subclasses set ``name`` (the registry key), implement ``aggregate``, and may override
    ``min_clients`` (the smallest n the rule accepts) and ``reset`` (drop cross-round state).
    """

    name: ClassVar[str] = ""
    stateful: ClassVar[bool] = False
    needs_reference: ClassVar[bool] = False

    def params(self) -> dict[str, Any]:
        """The rule's parameters, as given to ``create`` (for ledgers and reports)."""
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}

    def min_clients(self) -> int:
        return 1

    def reset(self) -> None:
        """Forget any cross-round state (stateful rules override)."""

    def __call__(self, updates: torch.Tensor, **context: Any) -> Aggregation:
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({args})"


_REGISTRY: dict[str, type[Rule]] = {}


def register(cls: type[Rule]) -> type[Rule]:
    """Class decorator: make ``cls`` available to :func:`aggregators.create` under ``cls.name``."""
    if not cls.name:
        raise TypeError(f"{cls.__name__} has no name")
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise TypeError(f"aggregator name {cls.name!r} registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def create(name: str, **params: Any) -> Rule:
    """Build the rule registered as ``name`` with ``params``; unknown names/params are errors."""
    try:
        cls = _REGISTRY[name]
    except KeyError:
        raise AggregatorError(
            f"unknown aggregator {name!r}; available: {', '.join(available())}"
        ) from None
    try:
        return cls(**params)
    except TypeError as exc:
        raise AggregatorError(f"aggregator {name!r}: {exc}") from None


def available() -> list[str]:
    """Names of every registered rule, sorted."""
    return sorted(_REGISTRY)
