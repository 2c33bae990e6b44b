"""Scenarios: a TOML file (plus ``--set key=value`` overrides) that expands into run cells.

A scenario holds two kinds of keys:

- **run keys** — the fields of :class:`tasks.config.RunConfig` (``dataset``, ``partition``,
  ``alpha``, ``num_clients``, ``rounds``, ``aggregator``, ``aggregator_params``, ``attack``, ...);
- **harness keys** — ``name``, ``description``, ``engine`` (``inline`` | ``flower``), ``seeds``
  (list of ints, a sweep over ``seed``), ``target_accuracy`` (for "rounds to target"),
  ``workers`` (parallel cell processes).

Any run key given as a **list** is a sweep axis; :func:`expand` returns the cartesian product,
one :class:`Cell` per combination, in a stable order (axes in file order, values in list order).

``aggregator`` and ``attack`` entries may also be inline tables that carry their parameters, so
that a sweep can pair each rule with its own parameters::

    aggregator = ["fedavg", { name = "krum", f = "auto" }, { name = "trimmedmean", f = "auto" }]
    attack     = ["none", "labelflip", { name = "alie", z = 1.0 }]

``f = "auto"`` (in ``aggregator_params`` or an aggregator table, and in the nested
``inner_params`` of a pre-aggregator — bucketing, nnm — at any depth) resolves to
``RunConfig.defender_f``: the malicious clients the defender is configured to tolerate per round —
by default the count the attack plans with (``malicious_per_round``); with ``defender_fraction``
in [0, 1), that fraction of each round's clients whatever the attack (a defender whose f stays
fixed while a breakdown sweep raises the malicious fraction).

``infeasible = "skip"`` (harness key; default ``"error"``) drops the cells whose rule cannot run
at the round's size (Krum needs n ≥ 2f + 3, Bulyan n ≥ 4f + 3, ...) instead of refusing the
sweep: a breakdown sweep raises f past what some rules accept. A cell whose malicious count is 0
and whose attack-free twin is in the sweep is dropped as that twin's duplicate.

A cell's id is a hash of its resolved run config and engine: the same cell in any sweep has the
same id, which is how the results store skips finished cells.
"""

from __future__ import annotations

import difflib
import hashlib
import itertools
import json
import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from fedshield.tasks.config import ConfigError, RunConfig


class ScenarioError(ValueError):
    """A scenario key or value is invalid; the message names the key."""


HARNESS_KEYS: dict[str, Any] = {
    "name": "scenario",
    "description": "",
    "engine": "inline",
    "seeds": None,
    "target_accuracy": 0.8,
    "workers": 2,
    "infeasible": "error",
}
INFEASIBLE = ("error", "skip")
ENGINES = ("inline", "flower")
RUN_KEYS = tuple(f.name for f in fields(RunConfig))
_TABLE_KEYS = {"aggregator": "aggregator_params", "attack": "attack_params",
               "certify": "certify_params"}
PRESETS_DIR = Path(__file__).with_name("scenarios")


@dataclass(frozen=True)
class Cell:
    """One run of a sweep: a resolved :class:`RunConfig`, the engine, and its sweep labels."""

    config: RunConfig
    engine: str
    axes: dict[str, Any] = field(default_factory=dict)  # the swept keys and this cell's values

    @property
    def id(self) -> str:
        return cell_id(self.config, self.engine)

    @property
    def rule_label(self) -> str:
        return label(self.config.aggregator, self.config.aggregator_params)

    @property
    def attack_label(self) -> str:
        return label(self.config.attack, self.config.attack_params)


@dataclass(frozen=True)
class Scenario:
    """A parsed, validated scenario (harness settings + raw run keys, lists = axes)."""

    name: str
    description: str
    engine: str
    target_accuracy: float
    workers: int
    run: dict[str, Any]  # run keys as given (lists are axes)
    source: str = ""
    infeasible: str = "error"  # "skip": drop cells whose rule cannot run at the round's size

    @property
    def axes(self) -> list[str]:
        return [k for k, v in self.run.items() if isinstance(v, list)]

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "description": self.description,
            "engine": self.engine,
            "target_accuracy": self.target_accuracy,
            "workers": self.workers,
        }
        if self.infeasible != HARNESS_KEYS["infeasible"]:
            out["infeasible"] = self.infeasible
        out.update(self.run)
        return out


# --- ids and labels -----------------------------------------------------------------------------
#: run keys added after results stores existed: left out of a cell's id at their default, so
#: that the cells of earlier sweeps keep their ids
LATER_KEYS: dict[str, Any] = {"certify": "none", "certify_params": {}, "attack_stop": 0,
                               "defender_fraction": -1.0, "device": "auto"}


def config_dict(cfg: RunConfig) -> dict[str, Any]:
    """The run config as a plain dict, without ``output_dir`` (where results go is not what)
    and without the :data:`LATER_KEYS` at their defaults."""
    data = asdict(cfg)
    data.pop("output_dir", None)
    for key, default in LATER_KEYS.items():
        if data.get(key) == default:
            data.pop(key)
    return data


def cell_id(cfg: RunConfig, engine: str = "inline") -> str:
    """Stable 12-hex-digit id: blake2b of the canonical JSON of (run config, engine)."""
    payload = json.dumps({"run": config_dict(cfg), "engine": engine}, sort_keys=True)
    return hashlib.blake2b(payload.encode(), digest_size=6).hexdigest()


def label(name: str, params: dict[str, Any]) -> str:
    """``krum(f=4)`` — a rule or attack with its parameters, for tables and plots."""
    if not params:
        return name
    inner = ",".join(f"{k}={_short(v)}" for k, v in sorted(params.items()))
    return f"{name}({inner})"


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


# --- loading ------------------------------------------------------------------------------------
def resolve_path(spec: str | Path) -> Path:
    """A scenario path, or the name of a shipped preset (``default``, ``smoke``, ...)."""
    path = Path(spec)
    if path.is_file():
        return path
    preset = PRESETS_DIR / f"{spec}.toml"
    if preset.is_file():
        return preset
    names = ", ".join(available_presets())
    raise ScenarioError(f"scenario {str(spec)!r} is neither a file nor a preset; presets: {names}")


def available_presets() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.toml"))


def load(spec: str | Path, overrides: list[str] | None = None) -> Scenario:
    """Read a scenario TOML (or preset name) and apply ``key=value`` overrides."""
    path = resolve_path(spec)
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{path}: invalid TOML: {exc}") from None
    return from_dict(apply_overrides(data, overrides or []), source=str(path))


def parse_override(text: str) -> tuple[str, Any]:
    """``key=value`` with ``value`` a TOML value (``3``, ``[1, 2]``, ``{f = 2}``, ``'krum'``);
    bare words that are not valid TOML are strings: ``aggregator=krum`` is "krum",
    ``aggregator=krum,median`` and ``aggregator=[krum,median]`` are ["krum", "median"]."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ScenarioError(f"override {text!r} must be key=value")
    raw = raw.strip()
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        # a=b,c or a=[b,c] → a list of bare words; a=b → the string "b"
        inner = raw[1:-1] if raw.startswith("[") and raw.endswith("]") else raw
        value = [_bare(v) for v in inner.split(",")] if "," in raw or inner != raw else raw
    return key, value


def _bare(raw: str) -> Any:
    raw = raw.strip()
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key=value`` (and ``table.key=value`` for a dict key) overrides to a copy."""
    out = dict(data)
    for text in overrides:
        key, value = parse_override(text)
        head, dot, sub = key.partition(".")
        if dot:
            base = out.get(head, {})
            if not isinstance(base, dict):
                raise ScenarioError(f"override {key!r}: {head!r} is not a table")
            out[head] = {**base, sub: value}
        else:
            out[key] = value
    return out


def from_dict(data: dict[str, Any], source: str = "") -> Scenario:
    """Validate the keys and types of a scenario dict (values are checked again per cell)."""
    unknown = [k for k in data if k not in HARNESS_KEYS and k not in RUN_KEYS]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(key, [*HARNESS_KEYS, *RUN_KEYS], n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ScenarioError(
            f"unknown scenario key {key!r}{hint}; run keys: {', '.join(RUN_KEYS)}; "
            f"harness keys: {', '.join(HARNESS_KEYS)}"
        )
    harness = {k: data.get(k, v) for k, v in HARNESS_KEYS.items()}
    run = {k: v for k, v in data.items() if k in RUN_KEYS}
    if harness["engine"] not in ENGINES:
        raise ScenarioError(f"engine must be one of {ENGINES}, got {harness['engine']!r}")
    seeds = harness["seeds"]
    if seeds is not None:
        if "seed" in run:
            raise ScenarioError("give either 'seed' or 'seeds', not both")
        if isinstance(seeds, int) and not isinstance(seeds, bool):
            seeds = [seeds]
        if not (isinstance(seeds, list) and seeds and all(_is_int(s) for s in seeds)):
            raise ScenarioError(f"seeds must be a non-empty list of integers, got {seeds!r}")
        run["seed"] = list(seeds)
    target = harness["target_accuracy"]
    if not (isinstance(target, int | float) and 0.0 < target <= 1.0):
        raise ScenarioError(f"target_accuracy must be in (0, 1], got {target!r}")
    workers = harness["workers"]
    if not (_is_int(workers) and workers >= 1):
        raise ScenarioError(f"workers must be an integer >= 1, got {workers!r}")
    for key, value in run.items():
        if isinstance(value, list) and not value:
            raise ScenarioError(f"{key}: an empty list sweeps over nothing")
    if harness["infeasible"] not in INFEASIBLE:
        raise ScenarioError(f"infeasible must be one of {INFEASIBLE}, got "
                            f"{harness['infeasible']!r}")
    return Scenario(
        name=str(harness["name"]),
        description=str(harness["description"]),
        engine=harness["engine"],
        target_accuracy=float(target),
        workers=int(workers),
        run=run,
        source=source,
        infeasible=harness["infeasible"],
    )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# --- expansion ----------------------------------------------------------------------------------
def expand(scenario: Scenario) -> list[Cell]:
    """The cartesian product of the scenario's list-valued keys, one resolved cell each.

    Raises :class:`ScenarioError` naming the key for any invalid value, and when two
    combinations resolve to the same cell (a duplicated axis value).
    """
    axes = scenario.axes
    fixed = {k: v for k, v in scenario.run.items() if k not in axes}
    cells: list[Cell] = []
    seen: dict[str, dict[str, Any]] = {}
    for combo in itertools.product(*(scenario.run[a] for a in axes)):
        values = {**fixed, **dict(zip(axes, combo, strict=True))}
        cfg = resolve_config(values)
        if cfg.attack_stop and scenario.engine != "inline":
            raise ScenarioError("attack_stop (durability) runs on the inline engine only; set "
                                "engine = 'inline'")
        if cfg.certify != "none":
            from fedshield.simulations.certify import certification

            if scenario.engine != "inline":
                raise ScenarioError(f"certify = {cfg.certify!r} runs on the inline engine only; "
                                    "set engine = 'inline'")
            try:
                certification(cfg)
            except ConfigError as exc:
                raise ScenarioError(str(exc)) from None
        cell = Cell(config=cfg, engine=scenario.engine, axes=dict(zip(axes, combo, strict=True)))
        if cell.id in seen:
            raise ScenarioError(
                f"sweep values {cell.axes} and {seen[cell.id]} resolve to the same cell"
            )
        seen[cell.id] = cell.axes
        cells.append(cell)
    return [c for c in cells if not _duplicates_clean_twin(c, seen)]


def _duplicates_clean_twin(cell: Cell, ids: dict[str, Any]) -> bool:
    """An attack with no attacker (malicious fraction 0) runs its attack-free twin: drop it when
    the twin is in the sweep (a breakdown sweep's fraction 0 under every attack)."""
    cfg = cell.config
    if cfg.attack == "none" or cfg.nominal_malicious > 0:
        return False
    twin = cfg.with_updates(attack="none", attack_params={})
    return cell_id(twin, cell.engine) in ids


def resolve_config(values: dict[str, Any]) -> RunConfig:
    """Build one cell's :class:`RunConfig` from scalar scenario values (tables unpacked,
    ``f = "auto"`` resolved)."""
    values = dict(values)
    for key, params_key in _TABLE_KEYS.items():
        entry = values.get(key)
        if isinstance(entry, dict):
            if "name" not in entry:
                raise ScenarioError(f"{key}: an inline table needs a 'name', got {entry!r}")
            params = {k: v for k, v in entry.items() if k != "name"}
            values[key] = entry["name"]
            values[params_key] = {**values.get(params_key, {}), **params}
        elif entry is not None and not isinstance(entry, str):
            raise ScenarioError(
                f"{key} must be a name or a {{name = ..., ...}} table, got {entry!r}"
            )
    for params_key in _TABLE_KEYS.values():
        if params_key in values and not isinstance(values[params_key], dict):
            raise ScenarioError(f"{params_key} must be a table, got {values[params_key]!r}")
    try:
        cfg = RunConfig.from_dict(values)
    except ConfigError as exc:
        raise ScenarioError(str(exc)) from None
    params = cfg.aggregator_params
    resolved = resolve_auto_f(params, cfg.defender_f)
    return cfg.with_updates(aggregator_params=resolved) if resolved != params else cfg


def resolve_auto_f(params: dict[str, Any], f: int) -> dict[str, Any]:
    """``params`` with every ``f = "auto"`` set to ``f``: at the top level and in every nested
    table (``inner_params`` of bucketing / nnm, however deep the composition)."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        if key == "f" and value == "auto":
            out[key] = f
        elif isinstance(value, dict):
            out[key] = resolve_auto_f(value, f)
        else:
            out[key] = value
    return out


def validate_components(cells: list[Cell], infeasible: str = "error") -> dict[str, str]:
    """Check every rule, attack, dataset, partition and model name/parameter set before a sweep
    starts, so that a typo fails in a second rather than after an hour of other cells.

    A rule that cannot run at the round's size (``min_clients`` above it) refuses the sweep, or
    with ``infeasible = "skip"`` is returned as {cell id: reason} for the caller to leave out."""
    from fedshield.clients.attacks import available_attacks
    from fedshield.tasks.datasets import available_datasets
    from fedshield.tasks.models import available_models
    from fedshield.tasks.partition import available_partitions

    _check_names("dataset", {c.config.dataset for c in cells}, available_datasets())
    _check_names("partition", {c.config.partition for c in cells}, available_partitions())
    _check_names("model", {c.config.model for c in cells}, available_models())
    attack_names = set(available_attacks()) | {"none"}
    _check_names("attack", {c.config.attack for c in cells}, attack_names)
    verdicts: dict[str, str] = {}
    skipped: dict[str, str] = {}
    for cell in cells:
        cfg = cell.config
        key = json.dumps([cell.engine, cfg.aggregator, cfg.aggregator_params, cfg.attack,
                          cfg.attack_params, cfg.num_clients, cfg.clients_per_round],
                         sort_keys=True, default=str)
        if key not in verdicts:
            verdicts[key] = _check_cell(cell)
        if verdicts[key]:
            if infeasible != "skip":
                raise ScenarioError(verdicts[key] + "; or set infeasible = 'skip' to leave "
                                    "such cells out")
            skipped[cell.id] = verdicts[key]
    return skipped


def _check_cell(cell: Cell) -> str:
    """Build the cell's rule and attack (errors raise); '' when the rule can run at the round's
    size, else why it cannot."""
    from fedshield import aggregators
    from fedshield.clients.attacks import AttackError, attack_from_config

    cfg = cell.config
    try:
        rule = aggregators.create(cfg.aggregator, **cfg.aggregator_params)
    except aggregators.AggregatorError as exc:
        raise ScenarioError(f"aggregator: {exc}") from None
    if cell.engine != "inline" and getattr(getattr(rule, "_detector", None),
                                           "needs_binding", False):
        raise ScenarioError(f"aggregator {cell.rule_label}: backdoor-indicator plants its "
                            "indicator each round in the inline engine; set engine = 'inline'")
    if cfg.attack != "none":
        try:
            attack_from_config(cfg, _PROBE_DATASET)
        except AttackError as exc:
            raise ScenarioError(f"attack: {exc}") from None
    if rule.min_clients() > cfg.per_round:
        return (f"aggregator {cell.rule_label} needs at least {rule.min_clients()} clients per "
                f"round; the scenario aggregates {cfg.per_round} (num_clients / "
                "clients_per_round)")
    return ""


_PROBE_DATASET = SimpleNamespace(num_classes=10, low=0.0, high=1.0)


def _check_names(key: str, used: set[str], allowed: Any) -> None:
    allowed = sorted(allowed)
    for name in sorted(used):
        if name not in allowed:
            raise ScenarioError(f"{key} {name!r} is unknown; available: {', '.join(allowed)}")
