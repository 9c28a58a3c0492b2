"""Scenario files: TOML in, a validated frozen ``Scenario`` out.

Validation is strict and speaks the file's language: an unknown key, a wrong type, an unknown model or a
bound with min > max raises :class:`ScenarioError` whose one-line message names the key
(``controller.horizon: expected an integer, got 'twenty'``).
"""

from __future__ import annotations

import hashlib
import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np

from controllers.config import MpcConfig, Objective
from plant_models.errors import ModelError, ScenarioError
from plant_models.registry import resolve_model
from plant_models.spec import Bounds, ModelSpec
from twin.cascade_setup import CascadeSection, parse_cascade
from twin.estimator_config import EstimatorConfig, parse_estimator
from twin.plant_setup import PlantMismatch, build_plant, parse_mismatch
from twin.sensors import SensorConfig, parse_sensors
from twin.simulated_plant import SimulatedPlant
from twin.simulator import SimulatorConfig

#: The do-mpc fed-batch example (also shipped as scenarios/fedbatch_haldane.toml): fast, no mismatch.
HALDANE_SCENARIO = Path(__file__).parent / "scenarios" / "fedbatch_haldane.toml"
#: CHO fed-batch with heater, 14 days, mismatch, EKF, two-level control (docs/results.md).
CHO_SCENARIO = Path(__file__).parent / "scenarios" / "cho_fedbatch.toml"
DEFAULT_SCENARIO = CHO_SCENARIO
_REQUIRED = object()


@dataclass(frozen=True)
class PlantConfig:
    """The simulated plant: its true initial state and parameters, integrator tolerances.

    ``mismatch`` (seed, parameter uncertainty, process noise) and ``sensors`` (instruments) are None for
    a plant that is the model seen through exact full-state sensors (twin.plant_setup, twin.sensors).
    """

    x0: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    params: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    rtol: float = 1e-10
    atol: float = 1e-10
    mismatch: PlantMismatch | None = None
    sensors: SensorConfig | None = None


@dataclass(frozen=True)
class TwinConfig:
    """The twin's beliefs: the parameter values the controller and estimator use."""

    params: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True)
class LoopConfig:
    """How long and how often: ``steps`` periods of ``period_s`` seconds of plant time."""

    steps: int
    period_s: float


@dataclass(frozen=True)
class ControllerConfig:
    """Which controller decides, its problem, and its compute budget per step (seconds)."""

    kind: str
    mpc: MpcConfig
    budget_s: float | None = None


@dataclass(frozen=True)
class Scenario:
    """A validated scenario. ``source`` is the file's text, ``sha256`` its hash (for the record)."""

    name: str
    description: str
    model: str
    plant: PlantConfig
    twin: TwinConfig
    loop: LoopConfig
    controller: ControllerConfig
    source: str
    sha256: str
    estimator: EstimatorConfig = field(default_factory=EstimatorConfig)
    cascade: CascadeSection | None = None

    def spec(self) -> ModelSpec:
        """Resolve the model (built-in name or ``package.module:function``)."""
        return resolve_model(self.model)

    def new_plant(self, spec: ModelSpec | None = None) -> SimulatedPlant:
        """A fresh simulated plant as ``[plant]`` describes it (true parameters or the seeded draw, x0,
        tolerances, process noise, sensors): what ``bioimp plant serve --scenario`` serves."""
        pl = self.plant
        return build_plant(
            spec if spec is not None else self.spec(),
            params=pl.params,
            x0=pl.x0,
            sim_config=SimulatorConfig(pl.rtol, pl.atol),
            mismatch=pl.mismatch,
            sensors=pl.sensors,
        )


CONTROLLER_KINDS = ("nmpc", "do-mpc", "cascade")


class _Table:
    """A TOML table read key by key; leftover keys are errors naming their full path."""

    def __init__(self, data: Mapping[str, Any], path: str) -> None:
        self.data = data
        self.path = path
        self.seen: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def _raw(self, name: str, default: Any) -> Any:
        self.seen.add(name)
        if name not in self.data:
            if default is _REQUIRED:
                raise ScenarioError(f"{self.key(name)}: required key is missing")
            return default
        return self.data[name]

    def string(self, name: str, default: Any = _REQUIRED) -> Any:
        value = self._raw(name, default)
        if value is not default and not isinstance(value, str):
            raise ScenarioError(f"{self.key(name)}: expected a string, got {value!r}")
        return value

    def integer(self, name: str, default: Any = _REQUIRED, minimum: int | None = None) -> Any:
        value = self._raw(name, default)
        if value is default:
            return value
        if isinstance(value, bool) or not isinstance(value, int):
            raise ScenarioError(f"{self.key(name)}: expected an integer, got {value!r}")
        if minimum is not None and value < minimum:
            raise ScenarioError(f"{self.key(name)}: must be >= {minimum}, got {value}")
        return value

    def boolean(self, name: str, default: Any = _REQUIRED) -> Any:
        value = self._raw(name, default)
        if value is not default and not isinstance(value, bool):
            raise ScenarioError(f"{self.key(name)}: expected true or false, got {value!r}")
        return value

    def number(self, name: str, default: Any = _REQUIRED, positive: bool = False) -> Any:
        value = self._raw(name, default)
        if value is default:
            return value
        return _number(self.key(name), value, positive=positive)

    def table(self, name: str) -> _Table:
        value = self._raw(name, {})
        if not isinstance(value, Mapping):
            raise ScenarioError(f"{self.key(name)}: expected a table, got {value!r}")
        return _Table(value, self.key(name))

    def numbers(self, name: str, allowed: tuple[str, ...]) -> Mapping[str, float]:
        """A table of name = number, every name in ``allowed``."""
        sub = self.table(name)
        out = {}
        for key in sub.data:
            if key not in allowed:
                raise ScenarioError(f"{sub.key(key)}: unknown name (known: {', '.join(allowed)})")
            out[key] = sub.number(key)
        return MappingProxyType(out)

    def finish(self) -> None:
        extra = [k for k in self.data if k not in self.seen]
        if extra:
            raise ScenarioError(f"{self.key(extra[0])}: unknown key")


def _number(key: str, value: Any, *, positive: bool = False, finite: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ScenarioError(f"{key}: expected a number, got {value!r}")
    value = float(value)
    if math.isnan(value):
        raise ScenarioError(f"{key}: must not be NaN")
    if finite and not math.isfinite(value):
        raise ScenarioError(f"{key}: must be finite, got {value}")
    if positive and not (value > 0 and math.isfinite(value)):
        raise ScenarioError(f"{key}: must be a positive number, got {value}")
    return value


def _bounds(table: _Table, spec: ModelSpec) -> tuple[dict[str, Bounds], dict[str, Bounds]]:
    states: dict[str, Bounds] = {}
    inputs: dict[str, Bounds] = {}
    for name, value in table.data.items():
        key = table.key(name)
        table.seen.add(name)
        if not isinstance(value, list) or len(value) != 2:
            raise ScenarioError(f"{key}: expected [min, max], got {value!r}")
        # Bounds may be infinite (unbounded on that side); MpcConfig refuses an empty interval.
        lo, hi = (_number(key, v, finite=False) for v in value)
        if name in spec.states:
            states[name] = (lo, hi)
        elif name in spec.inputs:
            lo_phys, hi_phys = spec.input_bounds[name]
            if lo < lo_phys or hi > hi_phys:
                raise ScenarioError(f"{key}: [{lo}, {hi}] exceeds the actuator's range [{lo_phys}, {hi_phys}]")
            inputs[name] = (lo, hi)
        else:
            raise ScenarioError(f"{key}: model {spec.name!r} has no state or input {name!r}")
    return states, inputs


def _check_initial_derivative(spec: ModelSpec, plant: PlantConfig, twin: TwinConfig) -> None:
    """Refuse initial states and parameters at which the model cannot even be evaluated (V = 0, Y = 0)."""
    x0 = spec.vector("states", {**spec.x0, **plant.x0})
    u = [spec.input_safe[n] for n in spec.inputs]
    for section, params in (("plant", plant.params), ("twin", twin.params)):
        p = spec.vector("params", {**spec.nominal_params, **params})
        xdot = np.asarray(spec.f(x0, u, p), dtype=float)
        if not np.all(np.isfinite(xdot)):
            raise ScenarioError(
                f"{section}.params / plant.x0: the model's derivative is not finite at the initial state"
            )


def parse_scenario(text: str, origin: str = "<scenario>") -> Scenario:
    """Validate scenario TOML text.

    Raises:
        ScenarioError: one line naming the offending key (or the TOML syntax error).
    """
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{origin}: invalid TOML: {exc}") from None
    root = _Table(data, "")
    name = root.string("name")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        # The name becomes the default run directory (runs/<name>): no paths, no hidden files.
        raise ScenarioError(f"name: use letters, digits, '_', '.', '-' (starting with a letter or digit), got {name!r}")
    description = root.string("description", "")
    model_name = root.string("model")
    try:
        spec = resolve_model(model_name)
    except ModelError as exc:
        raise ScenarioError(f"model: {exc}") from None

    plant_t = root.table("plant")
    plant = PlantConfig(
        x0=plant_t.numbers("x0", spec.states),
        params=plant_t.numbers("params", spec.params),
        rtol=plant_t.number("rtol", 1e-10, positive=True),
        atol=plant_t.number("atol", 1e-10, positive=True),
        mismatch=parse_mismatch(plant_t, spec, model_name),
        sensors=parse_sensors(plant_t.table("sensors"), spec),
    )
    plant_t.finish()
    twin_t = root.table("twin")
    twin = TwinConfig(params=twin_t.numbers("params", spec.params))
    twin_t.finish()

    loop_t = root.table("loop")
    loop = LoopConfig(
        steps=loop_t.integer("steps", minimum=1),
        period_s=loop_t.number("period_s", positive=True),
    )
    loop_t.finish()

    obj_t = root.table("objective")
    signals = tuple(dict.fromkeys(spec.states + spec.outputs))
    objective = Objective(
        stage=obj_t.numbers("stage", signals),
        terminal=obj_t.numbers("terminal", signals),
        delta_u=obj_t.numbers("delta_u", spec.inputs),
    )
    obj_t.finish()
    state_bounds, input_bounds = _bounds(root.table("bounds"), spec)

    ctrl_t = root.table("controller")
    kind = ctrl_t.string("kind", "nmpc")
    if kind not in CONTROLLER_KINDS:
        raise ScenarioError(f"controller.kind: unknown controller {kind!r} (known: {', '.join(CONTROLLER_KINDS)})")
    budget = ctrl_t.number("budget_s", None, positive=True)
    defaults = MpcConfig()
    mpc = MpcConfig(
        horizon=ctrl_t.integer("horizon", defaults.horizon, minimum=1),
        step_s=loop.period_s,
        objective=objective,
        state_bounds=MappingProxyType(state_bounds),
        input_bounds=MappingProxyType(input_bounds),
        substeps=ctrl_t.integer("substeps", defaults.substeps, minimum=1),
        max_iter=ctrl_t.integer("max_iter", defaults.max_iter, minimum=1),
        tol=ctrl_t.number("tol", defaults.tol, positive=True),
        # Solver path and mode (controllers.config.SOLVERS / MODES; MpcConfig names the key on error).
        solver=ctrl_t.string("solver", defaults.solver),
        mode=ctrl_t.string("mode", defaults.mode),
        compiled=ctrl_t.boolean("compiled", defaults.compiled),
        budget_s=budget,
    )
    ctrl_t.finish()
    estimator = parse_estimator(root.table("estimator"), spec, plant.sensors)
    cascade = parse_cascade(root.table("cascade"), spec, loop.period_s)
    if (kind == "cascade") != (cascade is not None):
        raise ScenarioError("controller.kind: 'cascade' and a [cascade] table go together")
    root.finish()
    _check_initial_derivative(spec, plant, twin)
    return Scenario(
        name=name,
        description=description,
        model=model_name,
        plant=plant,
        twin=twin,
        loop=loop,
        controller=ControllerConfig(kind=kind, mpc=mpc, budget_s=budget),
        source=text,
        sha256=hashlib.sha256(text.encode()).hexdigest(),
        estimator=estimator,
        cascade=cascade,
    )


def load_scenario(path: str | Path | None = None) -> Scenario:
    """Load and validate a scenario file (the default CHO fed-batch scenario when ``path`` is None).

    Raises:
        ScenarioError: the file cannot be read or is invalid.
    """
    path = Path(path) if path is not None else DEFAULT_SCENARIO
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ScenarioError(f"{path}: cannot read scenario: {exc}") from None
    return parse_scenario(text, str(path))
