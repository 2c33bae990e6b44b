"""Byzantine-robust aggregation rules: pure torch on an (n, d) matrix of client deltas.

``create(name, **params)`` builds a rule, ``available()`` lists the names; see ``base`` for the
contract. This package imports nothing else of the project.
"""

# Rule modules register themselves on import (one line per module).
from aggregators import bucketing as bucketing
from aggregators import bulyan as bulyan
from aggregators import clipping as clipping
from aggregators import coordinate as coordinate
from aggregators import dnc as dnc
from aggregators import flame as flame
from aggregators import fltrust as fltrust
from aggregators import foolsgold as foolsgold
from aggregators import geomed as geomed
from aggregators import krum as krum
from aggregators import mean as mean
from aggregators import nnm as nnm
from aggregators import signguard as signguard
from aggregators.base import Aggregation, AggregatorError, Rule, available, create, register

__all__ = ["Aggregation", "AggregatorError", "Rule", "available", "create", "register"]
