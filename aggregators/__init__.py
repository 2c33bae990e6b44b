"""Byzantine-robust aggregation rules: pure torch on an (n, d) matrix of client deltas.

``create(name, **params)`` builds a rule, ``available()`` lists the names; see ``base`` for the
contract. This package imports nothing else of the project.
"""

# Rule modules register themselves on import (one line per module).
from fedshield.aggregators import bucketing as bucketing
from fedshield.aggregators import bulyan as bulyan
from fedshield.aggregators import clipping as clipping
from fedshield.aggregators import coordinate as coordinate
from fedshield.aggregators import detection as detection
from fedshield.aggregators import dnc as dnc
from fedshield.aggregators import flame as flame
from fedshield.aggregators import fldetector as fldetector
from fedshield.aggregators import fltrust as fltrust
from fedshield.aggregators import foolsgold as foolsgold
from fedshield.aggregators import freqfed as freqfed
from fedshield.aggregators import geomed as geomed
from fedshield.aggregators import indicator as indicator
from fedshield.aggregators import krum as krum
from fedshield.aggregators import mean as mean
from fedshield.aggregators import nnm as nnm
from fedshield.aggregators import signguard as signguard
from fedshield.aggregators.base import (
    REQUIRED,
    Aggregation,
    AggregatorError,
    Context,
    Param,
    Rule,
    available,
    create,
    register,
    rule_class,
)
from fedshield.aggregators.detection import (
    Detection,
    Detector,
    available_detectors,
    create_detector,
)

__all__ = ["REQUIRED", "Aggregation", "AggregatorError", "Context", "Detection", "Detector",
           "Param", "Rule", "available", "available_detectors", "create", "create_detector",
           "register", "rule_class"]
