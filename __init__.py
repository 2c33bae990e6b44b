"""fedshield: poisoning-resilient aggregation for federated learning on Flower.

The public API::

    from fedshield import RobustStrategy, create, available

    strategy = RobustStrategy(create("median"))        # a drop-in for Flower's FedAvg
    print(available())                                 # every registered rule

Sub-packages: ``fedshield.aggregators`` (the rules, pure torch), ``fedshield.server`` (the Flower
strategy, the round core, the ServerApp), ``fedshield.clients`` (training and attacks, the
ClientApp), ``fedshield.tasks`` (data, models, training) and ``fedshield.simulations`` (the harness
and the ``fedshield`` command).
"""

from __future__ import annotations

from typing import Any

__version__ = "0.2.0"
__all__ = [
    "Aggregation",
    "AggregatorError",
    "RobustStrategy",
    "Rule",
    "StrategyError",
    "available",
    "create",
]

_LAZY = {
    **dict.fromkeys(("Aggregation", "AggregatorError", "Rule", "available", "create"),
                    "fedshield.aggregators"),
    **dict.fromkeys(("RobustStrategy", "StrategyError"), "fedshield.server.strategy"),
}


def __getattr__(name: str) -> Any:
    """Loaded on first use: the rules import torch and ``RobustStrategy`` Flower, which the
    ``fedshield`` command's ``--help`` and ``ledger verify`` do not need."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'fedshield' has no attribute {name!r}")
