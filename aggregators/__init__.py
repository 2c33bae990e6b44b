"""Byzantine-robust aggregation rules: pure torch on an (n, d) matrix of client deltas.

``create(name, **params)`` builds a rule, ``available()`` lists the names; see ``base`` for the
contract. This package imports nothing else of the project.
"""

from aggregators.base import Aggregation, AggregatorError, Rule, available, create, register

# Rule modules register themselves on import (one line per module).

__all__ = ["Aggregation", "AggregatorError", "Rule", "available", "create", "register"]
