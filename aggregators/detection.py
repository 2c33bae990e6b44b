"""The detector contract, beside the rule contract: detection separate from aggregation.

A detector looks at one round — the (n, d) deltas, the authenticated ``client_ids``, its own
history across rounds — and returns a :class:`Detection`: per-client ``flags`` (True = suspected
malicious) and ``scores`` (higher = more suspicious). Any rule then aggregates the rows left
unflagged: the ``detect`` rule composes the two,

    detect(Δ) = inner(Δ[K]),   K = {i : not flags_i},

so ``{name = "detect", detector = "fldetector", inner = "median"}`` in a scenario, or
``create("detect", detector="freqfed", inner="trimmedmean", inner_params={"f": 2})`` in code, runs
FLDetector's or FreqFed's filter in front of any rule. The composed rule's ``Aggregation``
carries the detector's ``flags`` as ``flagged``: the round's detection precision, recall and FPR
are scored on them, not on what the inner rule then selects.

Detectors are built like rules (:class:`~fedshield.aggregators.base.Component`: declared,
checked parameters; plain-data state for checkpoints) and called as ``detector(updates,
**context)`` with the rule contract's context keys; validation is the rule contract's own. A
detector that needs the round's outcome (FLDetector predicts the next updates from the global
model's movement) overrides :meth:`Detector.observe`, which the ``detect`` rule calls with the
aggregate it applied.

Fail closed: when the detector leaves fewer rows than the inner rule needs, the composition
raises (the round core then skips the round and keeps the model), rather than readmitting rows
that were flagged.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from fedshield.aggregators.base import (
    Aggregation,
    AggregatorError,
    Component,
    Context,
    Param,
    PreAggregator,
    check_context,
    check_updates,
    register,
)
from fedshield.aggregators.kernels import inner_on_columns


@dataclass
class Detection:
    """What a detector returns: ``flags`` (n,) bool, True = flagged malicious; ``scores`` (n,)
    float64 suspicion, higher = more suspicious (the detector's own scale); ``diagnostics``
    JSON-serialisable extras."""

    flags: torch.Tensor
    scores: torch.Tensor
    diagnostics: dict[str, Any] = field(default_factory=dict)


class Detector(Component):
    """Base class of every detector: implement ``detect(x, ctx)`` on validated input."""

    def detect(self, x: torch.Tensor, ctx: Context) -> Detection:
        raise NotImplementedError

    def observe(self, aggregate: torch.Tensor) -> None:
        """The aggregate the server applied this round (for detectors with a model of the
        training dynamics); the default ignores it."""

    def __call__(self, updates: torch.Tensor, **context: Any) -> Detection:
        x = check_updates(self, updates)
        ctx = check_context(self, x, context)
        result = self.detect(x, ctx)
        n = x.shape[0]
        for key in ("flags", "scores"):
            value = getattr(result, key)
            if not isinstance(value, torch.Tensor) or tuple(value.shape) != (n,):
                raise AggregatorError(f"{self.name}: returned {key} that is not a tensor of "
                                      f"shape ({n},) (a bug in the detector)")
        result.flags = result.flags.to(torch.bool)
        result.scores = torch.nan_to_num(result.scores.to(torch.float64), nan=0.0)
        return result


_DETECTORS: dict[str, type[Detector]] = {}


def register_detector(cls: type[Detector]) -> type[Detector]:
    """Class decorator: make ``cls`` available to :func:`create_detector` under ``cls.name``."""
    if not cls.name:
        raise TypeError(f"{cls.__name__} has no name")
    if _DETECTORS.get(cls.name, cls) is not cls:
        raise TypeError(f"detector name {cls.name!r} registered twice")
    _DETECTORS[cls.name] = cls
    return cls


def available_detectors() -> list[str]:
    """Names of every registered detector, sorted."""
    return sorted(_DETECTORS)


def detector_class(name: str) -> type[Detector]:
    if name not in _DETECTORS:
        raise AggregatorError(
            f"unknown detector {name!r}; available: {', '.join(available_detectors())}")
    return _DETECTORS[name]


def create_detector(name: str, **params: Any) -> Detector:
    """Build the detector registered as ``name`` with ``params``."""
    return detector_class(name)(**params)


def _detector_spec(rule: str, name: str, value: Any) -> Any:
    if isinstance(value, Detector) or (isinstance(value, str) and value in _DETECTORS):
        return value
    raise AggregatorError(f"{rule}: {name} must be a detector name or a Detector instance; "
                          f"available: {', '.join(available_detectors())}; got {value!r}")


@register
class Detect(PreAggregator):
    """A detector in front of any rule: ``inner`` aggregates the rows the detector did not flag.

    Parameters
    ----------
    detector : str or Detector
        A registered detector name (``detector_params`` its parameters) or an instance.
    detector_params : dict, optional
    inner : str or Rule
        The rule applied to the kept rows (a registered name, ``inner_params`` its parameters).
    inner_params : dict, optional

    The kept rows reach the inner rule with their context (sample counts, ids, the reference,
    the distance matrix restricted to them). ``accepted`` = kept and accepted by the inner rule;
    ``weights`` = the inner rule's weights on the kept rows, 0 on the flagged ones; ``flagged`` =
    the detector's flags; ``diagnostics`` = the detector's scores and diagnostics and the inner
    rule's.
    """

    name: ClassVar[str] = "detect"
    parameters: ClassVar[dict[str, Param]] = {
        "detector": Param("fldetector", _detector_spec),
        "detector_params": Param(None),
        **PreAggregator.INNER,
    }
    KEEPS_ROWS: ClassVar[bool] = True
    examples: ClassVar[tuple[dict[str, Any], ...]] = (
        {"detector": "fldetector"},
        {"detector": "freqfed", "inner": "fedavg"},
        {"detector": "flame", "inner": "trimmedmean", "inner_params": {"f": 1}},
        {"detector": "dnc", "detector_params": {"f": 1}},
        {"detector": "signguard", "inner": "fedavg"},
    )

    def setup(self) -> None:
        if isinstance(self.detector, Detector):
            if self.detector_params:
                raise AggregatorError("detect: detector_params is only allowed with a detector "
                                      "given by name")
            self._detector = self.detector
        else:
            if self.detector_params is not None and not isinstance(self.detector_params, Mapping):
                raise AggregatorError(f"detect: detector_params must be a dict, got "
                                      f"{self.detector_params!r}")
            self._detector = create_detector(self.detector, **dict(self.detector_params or {}))
        self.detector, self.detector_params = self._detector.name, self._detector.params()
        super().setup()

    @property
    def stateful(self) -> bool:  # type: ignore[override]
        return self._detector.stateful or self._inner.stateful

    def reset(self) -> None:
        self._detector.reset()
        super().reset()

    def min_clients(self) -> int:
        return max(self._detector.min_clients(), self._inner.min_clients())

    def aggregate(self, x: torch.Tensor, ctx: Context) -> Aggregation:
        found = self._detector(x, **_context(ctx))
        kept = ~found.flags
        rows = torch.nonzero(kept).flatten()
        if rows.numel() < self._inner.min_clients():
            raise AggregatorError(
                f"detect: {self._detector.name} flagged {int(found.flags.sum())} of "
                f"{x.shape[0]} updates; the {rows.numel()} left are fewer than "
                f"{self._inner.name} needs ({self._inner.min_clients()}): round refused")
        everyone = rows.numel() == x.shape[0]  # nothing flagged: no (n, d) copy
        result = inner_on_columns(  # a coordinate-wise inner rule: kept rows block by block
            self._inner, x, None if everyone else (lambda block: block.index_select(0, rows)),
            _context(ctx, None if everyone else rows))
        self._detector.observe(result.update)
        n = x.shape[0]
        accepted = kept.clone()
        if result.accepted is not None:
            accepted[rows] = result.accepted.to(torch.bool)
        weights = None
        if result.weights is not None:
            weights = torch.zeros(n, dtype=torch.float64)
            weights[rows] = result.weights.to(torch.float64)
        return Aggregation(
            update=result.update, accepted=accepted, weights=weights, flagged=found.flags,
            diagnostics={"scores": found.scores.tolist(), "flagged": int(found.flags.sum()),
                         "detector": found.diagnostics, "inner": result.diagnostics})


def _context(ctx: Context, rows: torch.Tensor | None = None) -> dict[str, Any]:
    """The context as keywords, restricted to ``rows`` when given."""
    out: dict[str, Any] = {}
    if ctx.reference is not None:
        out["reference"] = ctx.reference
    if rows is None:
        for key in ("weights", "client_ids", "gram"):
            if getattr(ctx, key) is not None:
                out[key] = getattr(ctx, key)
        return out
    if ctx.weights is not None:
        out["weights"] = ctx.weights.index_select(0, rows)
    if ctx.client_ids is not None:
        ids = list(ctx.client_ids)
        out["client_ids"] = [ids[i] for i in rows.tolist()]
    if ctx.gram is not None:
        out["gram"] = ctx.gram.index_select(0, rows).index_select(1, rows)
    return out


__all__ = ["Detect", "Detection", "Detector", "available_detectors", "create_detector",
           "detector_class", "register_detector"]
