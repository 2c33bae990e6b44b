"""The aggregator contract shared by every rule (scikit-learn style).

A rule is built by :func:`create` with keyword parameters and called as ``rule(updates,
**context)`` on a ``torch.Tensor`` of shape (n, d) holding the round's client *deltas*
(client − global), float32 or float64. It returns an :class:`Aggregation`.

- **Parameters** are declared once, on the class: ``parameters = {"f": Param(REQUIRED,
  non_negative_int)}``. The base constructor (keyword-only) checks every value against its
  declaration, stores it under its own name, refuses unknown names, then calls ``setup()`` (cross-
  parameter checks, derived attributes) and ``reset()`` (fresh cross-round state). Errors name the
  rule, the parameter and the allowed values. ``params()`` returns the declared values.
- **Validation happens once**, in ``Rule.__call__``: the updates (2-D, float, n >= 1, d >= 1,
  n >= ``min_clients()``, every value finite) and the context keys below; then
  ``aggregate(x, ctx)`` runs on validated input, and its result is checked in turn (``update`` of
  shape (d,) and finite, ``accepted``/``weights`` of shape (n,)): no rule ever returns NaN/Inf.
- **State**: ``state_dict()`` holds only tensors, numbers, strings, lists and dicts (a
  checkpoint is data, loadable with ``torch.load(weights_only=True)``); ``load_state_dict``
  restores it. The base implementation exports every private attribute: tensors and plain values
  as they are, a ``torch.Generator`` as its state tensor, a nested rule as its own state dict.

Context keys a rule may read:

- ``reference``  (d,) the server's own update (FLTrust);
- ``weights``    (n,) client-reported sample counts (unverified; most robust rules ignore them);
- ``client_ids`` sequence of n ids: what the server authenticates (stateful rules keep per-client
  history by id);
- ``gram``       (n, n) precomputed pairwise squared distances of ``updates`` (shared per round).

This package imports nothing of the project.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

CONTEXT_KEYS = ("reference", "weights", "client_ids", "gram")


class AggregatorError(ValueError):
    """Bad input or configuration for an aggregation rule; the message names what was wrong."""


@dataclass
class Aggregation:
    """What a rule returns.

    update:      (d,) the aggregated delta; always finite.
    accepted:    (n,) bool, for rules that select clients (Krum, Bulyan, FLAME, ...), else None.
    weights:     (n,) float, each client's share of the result (sums to 1 where defined), else None.
    flagged:     (n,) bool, the clients a detector flagged as malicious (``detect`` composition;
                 detection metrics read it before ``accepted``), else None.
    diagnostics: free-form, JSON-serialisable scalars/lists (scores, iterations, clip factors...).
    """

    update: torch.Tensor
    accepted: torch.Tensor | None = None
    weights: torch.Tensor | None = None
    flagged: torch.Tensor | None = None
    diagnostics: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Context:
    """The validated keyword context of one call."""

    reference: torch.Tensor | None = None
    weights: torch.Tensor | None = None
    client_ids: Sequence[Any] | None = None
    gram: torch.Tensor | None = None


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()
Check = Callable[[str, str, Any], Any]


@dataclass(frozen=True)
class Param:
    """One declared parameter: its default (``REQUIRED`` for none) and its constraint, a
    ``check(rule, name, value) -> value`` that raises :class:`AggregatorError` naming both.
    ``None`` is accepted as "not given" when it is the default."""

    default: Any = REQUIRED
    check: Check | None = None


class Component:
    """What rules and detectors share: declared parameters (keyword-only constructor, checked
    against their declarations, then ``setup()`` and ``reset()``), ``params()``, plain-data state
    (``state_dict`` / ``load_state_dict``) and ``min_clients``."""

    name: ClassVar[str] = ""
    stateful: ClassVar[bool] = False  # keeps per-client history across rounds
    parameters: ClassVar[dict[str, Param]] = {}
    examples: ClassVar[tuple[dict[str, Any], ...]] = ()
    requirement: ClassVar[str] = ""

    def __init__(self, **params: Any) -> None:
        owner = self.name or type(self).__name__
        unknown = sorted(set(params) - set(self.parameters))
        if unknown:
            raise AggregatorError(
                f"{owner}: unknown parameter(s) {', '.join(unknown)}; valid: "
                f"{', '.join(sorted(self.parameters)) or '(none)'}")
        for pname, spec in self.parameters.items():
            value = params.get(pname, spec.default)
            if value is REQUIRED:
                raise AggregatorError(f"{owner}: parameter {pname!r} is required")
            if spec.check is not None and not (value is None and spec.default is None):
                value = spec.check(owner, pname, value)
            setattr(self, pname, value)
        self.setup()
        self.reset()

    def setup(self) -> None:
        """Cross-parameter checks and derived attributes (after the parameters are stored)."""

    def reset(self) -> None:
        """Start afresh: forget any cross-round state."""

    def min_clients(self) -> int:
        return 1

    def params(self) -> dict[str, Any]:
        """The declared parameters, as stored (for ledgers, reports and ``repr``)."""
        return {pname: getattr(self, pname) for pname in self.parameters}

    def state_dict(self) -> dict[str, Any]:
        """Cross-round state as tensors, numbers, strings, lists and dicts only."""
        return {key[1:]: _export_state(value) for key, value in vars(self).items()
                if key.startswith("_") and not key.startswith("__")}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned; a key the object does not have is an error."""
        for key, value in state.items():
            attr = f"_{key}"
            if not hasattr(self, attr):
                raise AggregatorError(f"{self.name}: state has an unknown key {key!r}")
            current = getattr(self, attr)
            if isinstance(current, torch.Generator):
                current.set_state(value)
            elif isinstance(current, Component):
                current.load_state_dict(value)
            else:
                setattr(self, attr, value)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({args})"


class Rule(Component):
    """Base class of every rule (see the module docstring for the contract).

    Subclasses set ``name`` (the registry key), ``parameters`` and ``examples`` (parameter sets
    the contract test suite builds the rule with; every registered rule must have one), implement
    ``aggregate``, and may override ``setup``, ``min_clients`` (the smallest n the rule accepts,
    with ``requirement`` saying why) and ``reset`` (fresh cross-round state).
    """

    needs_reference: ClassVar[bool] = False
    robust: ClassVar[bool] = True  # claims bounded influence of f arbitrary rows
    permutation_invariant: ClassVar[bool] = True  # the result does not depend on row order
    #: coordinate j of ``update`` depends on column j of the updates only, and ``accepted`` /
    #: ``weights`` / ``diagnostics`` on none of the columns (only on n and the context); the
    #: rule is stateless. A caller may then run it on column blocks and concatenate the updates
    #: (ARC, bucketing and NNM stream their transformed rows so: ``kernels.inner_on_columns``).
    coordinatewise: ClassVar[bool] = False

    def uses_weights(self) -> bool:
        """Whether the result depends on the client-reported sample counts (``weights``)."""
        return bool(getattr(self, "weighted", False))

    def aggregate(self, x: torch.Tensor, ctx: Context) -> Aggregation:
        """Aggregate validated updates ``x`` (n, d), contiguous, finite, on CPU."""
        raise NotImplementedError

    def __call__(self, updates: torch.Tensor, **context: Any) -> Aggregation:
        x = check_updates(self, updates)
        ctx = check_context(self, x, context)
        return check_aggregation(self, self.aggregate(x, ctx), x.shape)


def _export_state(value: Any) -> Any:
    if isinstance(value, torch.Generator):
        return value.get_state()
    if isinstance(value, Component):
        return value.state_dict()
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, dict):
        return {k: _export_state(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_export_state(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise TypeError(f"state of type {type(value).__name__} is not plain data")


# --- validation of a call (the one place) --------------------------------------------------------
def finite_rows(x: torch.Tensor) -> torch.Tensor:
    """(n,) bool: which rows of a 2-D ``x`` hold no NaN/±Inf, without an (n, d) temporary.

    One row-sum pass in the input dtype (a sum propagates NaN/Inf; a float64 reduction would copy
    the whole matrix); only the rows whose sum is not finite — bad rows, or finite rows whose sum
    overflowed — are checked exactly, one row at a time."""
    if x.numel() == 0:
        return torch.ones(x.shape[0], dtype=torch.bool)
    ok = torch.isfinite(x.sum(dim=1))
    for row in torch.nonzero(~ok).flatten().tolist():
        ok[row] = bool(torch.isfinite(x[row]).all())
    return ok


def require_finite(rule: str, name: str, x: torch.Tensor) -> None:
    """Raise unless every entry of ``x`` is finite (rows located exactly, no (n, d) temporary)."""
    if bool(torch.isfinite(x.sum())):
        return
    ok = finite_rows(x) if x.ndim == 2 else torch.isfinite(x.reshape(-1))
    rows = torch.nonzero(~ok).flatten().tolist()
    if rows:
        shown = rows[:10]
        more = f" (+{len(rows) - 10} more)" if len(rows) > 10 else ""
        what = "rows" if x.ndim > 1 else "entries"
        raise AggregatorError(
            f"{rule}: {name} contains NaN/Inf in {what} {shown}{more}; reject such updates "
            "before aggregating")


def check_updates(rule: Component, updates: Any) -> torch.Tensor:
    """The (n, d) matrix of client deltas, validated; returned contiguous, detached, on CPU."""
    name = rule.name or type(rule).__name__
    if not isinstance(updates, torch.Tensor):
        raise AggregatorError(
            f"{name}: updates must be a torch.Tensor of shape (n, d), got {type(updates).__name__}")
    if updates.ndim != 2:
        raise AggregatorError(
            f"{name}: updates must be 2-D (n clients, d parameters), got shape "
            f"{tuple(updates.shape)}")
    if updates.dtype not in (torch.float32, torch.float64):
        raise AggregatorError(f"{name}: updates must be float32 or float64, got {updates.dtype}")
    n, d = updates.shape
    if n == 0:
        raise AggregatorError(f"{name}: no updates to aggregate (n = 0)")
    if d == 0:
        raise AggregatorError(f"{name}: updates have no parameters (d = 0)")
    need = rule.min_clients()
    if n < need:
        why = f" ({rule.requirement})" if rule.requirement else ""
        raise AggregatorError(
            f"{name} with {rule.params()} needs at least {need} clients{why}, got n = {n}")
    updates = updates.detach()
    if updates.device.type != "cpu":
        updates = updates.cpu()
    if not updates.is_contiguous():
        updates = updates.contiguous()
    require_finite(name, "updates", updates)
    return updates


def _as_tensor(rule: str, key: str, value: Any, shape: tuple[int, ...]) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        try:
            value = torch.as_tensor(value)
        except (TypeError, ValueError, RuntimeError):
            raise AggregatorError(
                f"{rule}: context {key!r} must be a tensor of shape {shape}, got "
                f"{type(value).__name__}") from None
    if tuple(value.shape) != shape:
        raise AggregatorError(
            f"{rule}: context {key!r} must have shape {shape}, got {tuple(value.shape)}")
    if not (value.is_floating_point() or value.dtype in (torch.int32, torch.int64)):
        raise AggregatorError(f"{rule}: context {key!r} must be numeric, got {value.dtype}")
    value = value.detach().cpu()
    require_finite(rule, f"context {key!r}", value.double())
    return value


def check_context(rule: Component, updates: torch.Tensor, context: dict[str, Any]) -> Context:
    """Validate the context keys against ``updates`` (n, d); unknown keys are an error."""
    name = rule.name or type(rule).__name__
    unknown = sorted(set(context) - set(CONTEXT_KEYS))
    if unknown:
        raise AggregatorError(
            f"{name}: unknown context keys {unknown}; allowed: {', '.join(CONTEXT_KEYS)}")
    n, d = updates.shape
    reference = weights = gram = None
    if context.get("reference") is not None:
        reference = _as_tensor(name, "reference", context["reference"], (d,))
        reference = reference.to(updates.dtype).contiguous()
    if context.get("weights") is not None:
        weights = _as_tensor(name, "weights", context["weights"], (n,)).double()
        if bool((weights < 0).any()):
            raise AggregatorError(f"{name}: context 'weights' must be >= 0 (sample counts)")
    if context.get("gram") is not None:
        gram = _as_tensor(name, "gram", context["gram"], (n, n)).double()
    client_ids = context.get("client_ids")
    if client_ids is not None:
        try:
            count = len(client_ids)
        except TypeError:
            raise AggregatorError(
                f"{name}: context 'client_ids' must be a sequence of n ids") from None
        if count != n:
            raise AggregatorError(
                f"{name}: context 'client_ids' has {count} ids for n = {n} updates")
    return Context(reference=reference, weights=weights, client_ids=client_ids, gram=gram)


def check_aggregation(rule: Rule, agg: Aggregation, shape: torch.Size) -> Aggregation:
    """The rule's result keeps the contract: a finite (d,) update, (n,) accepted / weights."""
    n, d = shape
    update = agg.update.reshape(-1) if agg.update.numel() == d else agg.update
    if tuple(update.shape) != (d,):
        raise AggregatorError(
            f"{rule.name}: returned an update of shape {tuple(agg.update.shape)}, expected ({d},)")
    if not bool(torch.isfinite(update).all()):
        raise AggregatorError(f"{rule.name}: returned a non-finite update (a bug in the rule)")
    for key in ("accepted", "weights", "flagged"):
        value = getattr(agg, key)
        if value is not None and tuple(value.shape) != (n,):
            raise AggregatorError(
                f"{rule.name}: returned {key} of shape {tuple(value.shape)}, expected ({n},)")
    if agg.weights is not None and not bool(torch.isfinite(agg.weights).all()):
        raise AggregatorError(f"{rule.name}: returned non-finite weights")
    agg.update = update
    return agg


# --- registry ------------------------------------------------------------------------------------
_REGISTRY: dict[str, type[Rule]] = {}


def register(cls: type[Rule]) -> type[Rule]:
    """Class decorator: make ``cls`` available to :func:`create` under ``cls.name``."""
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
            f"unknown aggregator {name!r}; available: {', '.join(available())}") from None
    return cls(**params)


def available() -> list[str]:
    """Names of every registered rule, sorted."""
    return sorted(_REGISTRY)


def rule_class(name: str) -> type[Rule]:
    """The class registered as ``name``."""
    if name not in _REGISTRY:
        raise AggregatorError(f"unknown aggregator {name!r}; available: {', '.join(available())}")
    return _REGISTRY[name]


def resolve_inner(owner: str, inner: Rule | str, inner_params: Mapping[str, Any] | None, *,
                  stateless: bool = True) -> Rule:
    """The inner rule of a composition: a Rule instance, or a registered name + parameters.
    ``stateless``: refuse a rule with per-client history (a pre-aggregator hands it mixtures,
    not the clients' own updates)."""
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
    if stateless and rule.stateful:
        raise AggregatorError(
            f"{owner}: inner rule {rule.name!r} is stateful (per-client history), which the "
            f"pre-aggregated vectors cannot carry; choose a stateless inner rule"
        )
    return rule


def inner_context(context: Context) -> dict[str, Any]:
    """The context keys that keep their meaning after pre-aggregation (only ``reference``)."""
    return {"reference": context.reference} if context.reference is not None else {}


class PreAggregator(Rule):
    """A rule that transforms the rows, then hands them to an ``inner`` rule (bucketing, NNM,
    ARC, detect):
    the inner rule is a Rule instance or a registered name with ``inner_params``; the
    pre-aggregator needs a reference, or weights, when its inner rule does."""

    INNER: ClassVar[dict[str, Param]] = {"inner": Param("median"), "inner_params": Param(None)}
    #: the inner rule sees each client's own row (clipped, or filtered), not mixtures of rows:
    #: an inner rule with per-client state is allowed (ARC, detect)
    KEEPS_ROWS: ClassVar[bool] = False

    def setup(self) -> None:
        self._inner = resolve_inner(self.name, self.inner, self.inner_params,
                                    stateless=not self.KEEPS_ROWS)
        self.inner = self._inner.name
        self.inner_params = self._inner.params()

    @property
    def stateful(self) -> bool:  # type: ignore[override]
        return self._inner.stateful

    @property
    def needs_reference(self) -> bool:  # type: ignore[override]
        """The inner rule's need: FLTrust inside a pre-aggregator still needs the root update."""
        return self._inner.needs_reference

    def uses_weights(self) -> bool:
        return self._inner.uses_weights()

    def reset(self) -> None:
        self._inner.reset()


__all__ = [
    "CONTEXT_KEYS",
    "REQUIRED",
    "Aggregation",
    "AggregatorError",
    "Component",
    "Context",
    "Param",
    "PreAggregator",
    "Rule",
    "available",
    "check_aggregation",
    "check_context",
    "check_updates",
    "create",
    "finite_rows",
    "inner_context",
    "register",
    "require_finite",
    "resolve_inner",
    "rule_class",
]
