"""Sweep files: TOML in, a validated frozen :class:`SweepConfig` out.

A sweep names a base scenario, the scenario settings to vary (a grid or a random search), the
uncertainty from which each Monte Carlo plant is drawn, how many plants per setting, and one seed.
Validation is as strict as the scenario's: an unknown key or a wrong type is a :class:`ScenarioError`
whose one-line message names the key (``vary."controller.horizon": expected a list of values``).
Every setting is also applied to the base scenario and validated as a scenario before anything runs.
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from plant_models.errors import ScenarioError
from twin.scenario import _Table

__all__ = ["KpiConfig", "RandomRange", "SweepConfig", "UncertaintyConfig", "load_sweep", "parse_sweep"]

SEARCH_KINDS = ("grid", "random", "optuna")

#: A scenario value a sweep may set: a TOML scalar or a list of them (``[min, max]`` bounds); tables
#: are set key by key with dotted paths.
Value = bool | int | float | str | list[Any]


@dataclass(frozen=True)
class RandomRange:
    """A continuous (or integer) range a random search draws from: uniform, or log-uniform with ``log``."""

    low: float
    high: float
    log: bool = False
    integer: bool = False


@dataclass(frozen=True)
class UncertaintyConfig:
    """What differs between the Monte Carlo plants of one setting.

    Attributes:
        params: relative half-widths of the plant's true parameters (``[plant] uncertainty``), or the
            string ``"documented"``; empty for exact parameters.
        x0: relative half-widths of the plant's initial state, drawn uniformly per plant.
        process_noise: ``[plant] process_noise`` of every plant.
        sensors: the ``[plant.sensors]`` table of every plant (assay noise levels; the noise itself is
            drawn per plant from its seed); None keeps the base scenario's.
    """

    params: Mapping[str, float] | str = field(default_factory=lambda: MappingProxyType({}))
    x0: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    process_noise: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    sensors: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class KpiConfig:
    """The main KPI of the study.

    Attributes:
        main: ``"objective"`` (the closed-loop objective), a state name (its true final value), or
            ``"A*B"`` (the product of two true final states, e.g. ``mAb*V``: harvested product).
        direction: ``"max"`` or ``"min"``: which way is better (the Pareto front and ``best``).
        violation_atol: a true state may leave its bound by this much (model units) before the case
            counts as violating (solver tolerances).
        constraints: the bounded states whose violation makes a case count as violating (all the
            scenario's ``[bounds]`` and ``[cascade.bounds]`` states when empty).
    """

    main: str = "objective"
    direction: str = "min"
    violation_atol: float = 1e-6
    constraints: tuple[str, ...] = ()


@dataclass(frozen=True)
class SweepConfig:
    """A validated sweep.

    Attributes:
        name: the sweep's name (the file's stem unless given).
        scenario_path: the base scenario file.
        scenario_text: its text (cases are built from it, so a case is a pure function of the sweep).
        seed: the sweep's seed: plant ``j`` of every setting gets the same seed (common random numbers).
        plants: Monte Carlo plants per setting.
        search: ``"grid"``, ``"random"`` or ``"optuna"`` (Bayesian: TPE, :mod:`twin.sweep.bayes`).
        trials: number of settings of a random or optuna search (the trial budget).
        vary: dotted scenario key -> list of values (grid, random choice) or :class:`RandomRange`.
        override: dotted scenario key -> value, applied to every case (e.g. a shorter ``loop.steps``).
        uncertainty: what the plants differ in.
        kpi: the main KPI.
        source: the sweep file's text.
    """

    name: str
    scenario_path: Path
    scenario_text: str
    seed: int
    plants: int
    search: str
    trials: int
    vary: Mapping[str, tuple[Value, ...] | RandomRange]
    override: Mapping[str, Value]
    uncertainty: UncertaintyConfig
    kpi: KpiConfig
    source: str


def _value(key: str, value: Any) -> Value:
    if isinstance(value, list):
        return [_value(f"{key}[{i}]", v) for i, v in enumerate(value)]
    if isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ScenarioError(f"{key}: must be finite, got {value}")
        return value
    raise ScenarioError(f"{key}: expected a number, string or boolean, got {value!r}")


def _dotted(table: _Table, name: str) -> str:
    key = f'{table.path}."{name}"'
    if not name or any(not part for part in name.split(".")):
        raise ScenarioError(f"{key}: expected a dotted scenario key such as controller.horizon")
    if name.split(".")[0] in ("name", "description", "model"):
        raise ScenarioError(f"{key}: a sweep may not change the scenario's {name.split('.')[0]}")
    return key


def _vary(table: _Table, search: str) -> dict[str, tuple[Value, ...] | RandomRange]:
    out: dict[str, tuple[Value, ...] | RandomRange] = {}
    for name, raw in table.data.items():
        table.seen.add(name)
        key = _dotted(table, name)
        if isinstance(raw, list):
            if not raw:
                raise ScenarioError(f"{key}: expected at least one value")
            out[name] = tuple(_value(f"{key}[{i}]", v) for i, v in enumerate(raw))
        elif isinstance(raw, Mapping) and search != "grid":
            sub = _Table(raw, key)
            low, high = sub.number("low"), sub.number("high")
            log, integer = sub.boolean("log", False), sub.boolean("integer", False)
            sub.finish()
            if not low < high:
                raise ScenarioError(f"{key}: low must be < high, got {low} >= {high}")
            if log and low <= 0:
                raise ScenarioError(f"{key}.low: must be > 0 with log = true, got {low}")
            if integer and not (low.is_integer() and high.is_integer()):
                raise ScenarioError(f"{key}: low and high must be integers with integer = true")
            out[name] = RandomRange(low, high, log, integer)
        elif isinstance(raw, Mapping):
            raise ScenarioError(f"{key}: a range {{ low, high }} needs a random or optuna search; a grid takes a list")
        else:
            raise ScenarioError(f"{key}: expected a list of values, got {raw!r}")
    return out


def _uncertainty(table: _Table) -> UncertaintyConfig:
    raw = table._raw("params", {})
    params: Mapping[str, float] | str
    if isinstance(raw, str):
        if raw not in ("documented", "none"):
            raise ScenarioError(f'{table.key("params")}: expected "documented", "none" or a table, got {raw!r}')
        params = raw
    else:
        params = _widths(table, "params", upper=1.0)
    sensors = table._raw("sensors", None)
    if sensors is not None and not isinstance(sensors, Mapping):
        raise ScenarioError(f"{table.key('sensors')}: expected a table, got {sensors!r}")
    out = UncertaintyConfig(
        params=params,
        x0=_widths(table, "x0", upper=1.0),
        process_noise=_widths(table, "process_noise", upper=math.inf),
        sensors=sensors,
    )
    table.finish()
    return out


def _widths(table: _Table, name: str, upper: float) -> Mapping[str, float]:
    sub = table.table(name)
    out = {}
    for key in sub.data:
        value = sub.number(key)
        if not 0.0 <= value < upper:
            raise ScenarioError(f"{sub.key(key)}: must be in [0, {upper:g}), got {value}")
        out[key] = value
    return MappingProxyType(out)


def _kpi(table: _Table) -> KpiConfig:
    main = table.string("main", "objective")
    parts = main.split("*")
    if len(parts) > 2 or not all(p.strip() for p in parts):
        raise ScenarioError(f"{table.key('main')}: expected objective, a state name or STATE*STATE, got {main!r}")
    direction = table.string("direction", "max" if main != "objective" else "min")
    if direction not in ("max", "min"):
        raise ScenarioError(f'{table.key("direction")}: expected "max" or "min", got {direction!r}')
    atol = table.number("violation_atol", 1e-6)
    if atol < 0:
        raise ScenarioError(f"{table.key('violation_atol')}: must be >= 0, got {atol}")
    raw = table._raw("constraints", [])
    if not isinstance(raw, list) or not all(isinstance(c, str) for c in raw):
        raise ScenarioError(f"{table.key('constraints')}: expected a list of state names, got {raw!r}")
    table.finish()
    return KpiConfig("*".join(p.strip() for p in parts), direction, atol, tuple(raw))


def parse_sweep(
    text: str, base_dir: Path, origin: str = "<sweep>", name: str = "sweep", scenario_text: str | None = None
) -> SweepConfig:
    """Validate sweep TOML text (the scenario path is relative to ``base_dir``).

    ``scenario_text``, when given, is used instead of reading the scenario file (a results directory
    keeps its own copy).

    Only the file itself is checked here; :func:`twin.sweep.cases.expand_cases` validates every setting
    as a scenario.

    Raises:
        ScenarioError: one line naming the offending key (or the TOML syntax error).
    """
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{origin}: invalid TOML: {exc}") from None
    root = _Table(data, "")
    name = root.string("name", name)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):  # the default results directory's name
        raise ScenarioError(f"name: use letters, digits, '_', '.', '-' (starting with a letter or digit), got {name!r}")
    scenario_path = base_dir / root.string("scenario")
    if scenario_text is None:
        try:
            scenario_text = scenario_path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ScenarioError(f"scenario: cannot read {scenario_path}: {exc}") from None
    seed = root.integer("seed", 0, minimum=0)
    plants = root.integer("plants", 1, minimum=1)
    search_t = root.table("search")
    search = search_t.string("kind", "grid")
    if search not in SEARCH_KINDS:
        raise ScenarioError(f"search.kind: unknown search {search!r} (known: {', '.join(SEARCH_KINDS)})")
    trials = search_t.integer("trials", 0 if search == "grid" else None, minimum=1)
    if search != "grid" and trials is None:
        raise ScenarioError(f"search.trials: required key is missing (settings to try: the {search} search's budget)")
    if search == "grid" and "trials" in search_t.data:
        raise ScenarioError("search.trials: a grid runs every combination; trials are for random and optuna")
    search_t.finish()
    vary = _vary(root.table("vary"), search)
    override_t = root.table("override")
    override = {}
    for key_name, raw in override_t.data.items():
        override_t.seen.add(key_name)
        key = _dotted(override_t, key_name)
        if key_name in vary:
            raise ScenarioError(f"{key}: also in [vary]; a key is either varied or overridden")
        override[key_name] = _value(key, raw)
    uncertainty = _uncertainty(root.table("uncertainty"))
    kpi = _kpi(root.table("kpi"))
    root.finish()
    return SweepConfig(
        name=name,
        scenario_path=scenario_path,
        scenario_text=scenario_text,
        seed=seed,
        plants=plants,
        search=search,
        trials=trials or 0,
        vary=MappingProxyType(vary),
        override=MappingProxyType(override),
        uncertainty=uncertainty,
        kpi=kpi,
        source=text,
    )


def load_sweep(path: str | Path) -> SweepConfig:
    """Load and validate a sweep file.

    Raises:
        ScenarioError: the file cannot be read or is invalid.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ScenarioError(f"{path}: cannot read sweep: {exc}") from None
    return parse_sweep(text, path.parent, str(path), path.stem)
