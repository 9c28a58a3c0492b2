"""The scenario's ``[cascade]`` table: two-level control of a plant by a planner on a simpler model.

```toml
[controller]
kind = "cascade"

[cascade]
model = "cho_fedbatch"          # the planner's model: feed F and the temperature *setpoint* T
planner = "nmpc"                # nmpc | bolus | openloop | oracle (bioimp compare runs each)
slow_period_s = 3600.0          # the planner runs every this many seconds (a multiple of the loop period)
replan_s = 3600.0               # the NMPC re-solves the remaining batch this often
intervals = 14                  # piecewise-constant intervals over the remaining batch
grid = "remaining"              # remaining: N equal parts of what remains at each re-solve; batch: N equal
                                # parts of the whole batch, fixed in time (re-solves converge, see below)
substeps = 12                   # RK4 sub-steps per interval
compiled = false                # true: the planner's NLP compiled to C once (cached), re-solves ~4x faster
setpoint = "T"                  # planner input that is the fast loop's setpoint
measured = "T"                  # plant state the PID measures
heater = "P_heater"             # plant input the PID drives
pid = { kp = 20.0, ki = 0.011, kd = 0.0 }   # W/K, W/(K s), W s/K; limits = the heater's range
volume_max = 1.5                # under every planner: no feed that would take the estimated volume past it
setpoint_rate = 12.0            # K/h: a planner's temperature jump reaches the PID as a ramp (default: none)

[cascade.objective]             # minimised; names: states, outputs or "a*b" products
terminal = { "mAb*V" = -1.0 }   # harvested antibody (mg)

[cascade.bounds]                # soft state bounds (exact L1 penalty) and hard input bounds
V = [0.0, 1.5]
T = [31.0, 37.0]

[cascade.bolus]                 # the daily-bolus baseline's recipe
glucose_target = 20.0
temperature = 36.5
```

The batch ends at ``loop.steps * loop.period_s``; the bolus recipe takes the assay schedule from
``[plant.sensors]``.

``grid = "batch"`` fixes the NMPC's intervals on the batch's clock, so each re-solve starts from the
previous solution node for node; its warm re-solves use Ipopt's adaptive barrier and up to 200
iterations, and converge where the moving grid's stop at 40. The default CHO scenario uses it
(docs/performance.md and docs/results.md have the figures on twelve plants).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import TYPE_CHECKING

import numpy as np

from controllers.batch_ocp import BatchOcp, BatchOcpConfig, BatchSolution, check_signal
from controllers.cascade import CascadeConfig, CascadeController, Planner
from controllers.config import Objective
from controllers.interfaces import FloatArray
from controllers.pid import PidConfig
from controllers.planners import BolusRecipe, DailyBolusPlanner, NmpcPlanner, Profile, ProfilePlanner
from plant_models.errors import ModelError, ScenarioError
from plant_models.registry import resolve_model
from plant_models.spec import Bounds, ModelSpec

if TYPE_CHECKING:
    from twin.scenario import Scenario, _Table

__all__ = [
    "PLANNERS",
    "CascadeSection",
    "build_cascade",
    "offline_optimum",
    "parse_cascade",
    "plant_truth",
]

PLANNERS = ("nmpc", "bolus", "openloop", "oracle")
GRIDS = ("remaining", "batch")


@dataclass(frozen=True)
class CascadeSection:
    """The validated ``[cascade]`` table (see the module docstring)."""

    model: str
    planner: str
    slow_period_s: float
    replan_s: float
    intervals: int
    substeps: int
    setpoint: str
    measured: str
    heater: str
    pid: PidConfig
    objective: Objective
    state_bounds: Mapping[str, Bounds]
    input_bounds: Mapping[str, Bounds]
    bolus_target: float = 20.0
    bolus_temperature: float = 36.5
    penalty: float = 100.0
    cost_scale: float = 1e-3
    max_iter: int = 500
    volume_max: float | None = None
    compiled: bool = False
    setpoint_rate: float | None = None
    grid: str = "remaining"

    def spec(self) -> ModelSpec:
        """The planner's model."""
        return resolve_model(self.model)

    def ocp_config(self, batch_length: float | None = None) -> BatchOcpConfig:
        """The whole-batch problem the NMPC, the open-loop profile and the oracle solve.

        Args:
            batch_length: the batch's length in the planner's time units, for a ``grid = "batch"``
                NMPC (its intervals fixed on the batch's clock); None for the others.
        """
        config = BatchOcpConfig(
            intervals=self.intervals,
            objective=self.objective,
            state_bounds=self.state_bounds,
            input_bounds=self.input_bounds,
            substeps=self.substeps,
            penalty=self.penalty,
            cost_scale=self.cost_scale,
            max_iter=self.max_iter,
            compiled=self.compiled,
        )
        if self.grid != "batch" or batch_length is None:
            return config
        return replace(config, batch_length=batch_length, warm_mu_strategy="adaptive", warm_max_iter=200)


def parse_cascade(table: _Table, plant: ModelSpec, period_s: float) -> CascadeSection | None:
    """Read ``[cascade]`` (None when absent).

    Raises:
        ScenarioError: naming the offending key.
    """
    if not table.data:
        return None
    model = table.string("model")
    try:
        slow = resolve_model(model)
    except ModelError as exc:
        raise ScenarioError(f"{table.key('model')}: {exc}") from None
    planner = table.string("planner", "nmpc")
    if planner not in PLANNERS:
        raise ScenarioError(f"{table.key('planner')}: unknown planner {planner!r} (known: {', '.join(PLANNERS)})")
    grid = table.string("grid", "remaining")
    if grid not in GRIDS:
        raise ScenarioError(f"{table.key('grid')}: unknown grid {grid!r} (known: {', '.join(GRIDS)})")
    slow_period = table.number("slow_period_s", 3600.0, positive=True)
    ratio = slow_period / period_s
    if abs(ratio - round(ratio)) > 1e-9 or round(ratio) < 1:
        raise ScenarioError(f"{table.key('slow_period_s')}: must be a multiple of loop.period_s ({period_s})")
    heater = table.string("heater", "P_heater")
    if heater not in plant.inputs:
        raise ScenarioError(f"{table.key('heater')}: model {plant.name!r} has no input {heater!r}")
    lo, hi = plant.input_bounds[heater]
    pid_t = table.table("pid")
    try:
        pid = PidConfig(
            kp=pid_t.number("kp"),
            ki=pid_t.number("ki", 0.0),
            kd=pid_t.number("kd", 0.0),
            out_min=lo,
            out_max=hi,
        )
    except ScenarioError as exc:
        raise ScenarioError(f"{table.key('pid')}: {exc}") from None
    pid_t.finish()
    obj_t = table.table("objective")
    objective = Objective(
        stage=_weights(obj_t.table("stage"), slow),
        terminal=_weights(obj_t.table("terminal"), slow),
        delta_u=obj_t.numbers("delta_u", slow.inputs),
    )
    obj_t.finish()
    bounds_t = table.table("bounds")
    states: dict[str, Bounds] = {}
    inputs: dict[str, Bounds] = {}
    for name, value in bounds_t.data.items():
        key = bounds_t.key(name)
        bounds_t.seen.add(name)
        if not (isinstance(value, list) and len(value) == 2 and all(isinstance(v, int | float) for v in value)):
            raise ScenarioError(f"{key}: expected [min, max], got {value!r}")
        b = (float(value[0]), float(value[1]))
        if not b[0] <= b[1]:
            raise ScenarioError(f"{key}: min {b[0]} > max {b[1]}")
        if name in slow.states:
            states[name] = b
        elif name in slow.inputs:
            plo, phi = slow.input_bounds[name]
            if b[0] < plo or b[1] > phi:
                raise ScenarioError(f"{key}: [{b[0]}, {b[1]}] exceeds the input's range [{plo}, {phi}]")
            inputs[name] = b
        else:
            raise ScenarioError(f"{key}: model {slow.name!r} has no state or input {name!r}")
    bolus_t = table.table("bolus")
    section = CascadeSection(
        model=model,
        planner=planner,
        slow_period_s=slow_period,
        replan_s=table.number("replan_s", slow_period, positive=True),
        intervals=table.integer("intervals", 14, minimum=1),
        substeps=table.integer("substeps", 12, minimum=1),
        setpoint=table.string("setpoint", "T"),
        measured=table.string("measured", "T"),
        heater=heater,
        pid=pid,
        objective=objective,
        state_bounds=MappingProxyType(states),
        input_bounds=MappingProxyType(inputs),
        bolus_target=bolus_t.number("glucose_target", 20.0, positive=True),
        bolus_temperature=bolus_t.number("temperature", 36.5, positive=True),
        penalty=table.number("penalty", 100.0, positive=True),
        cost_scale=table.number("cost_scale", 1e-3, positive=True),
        max_iter=table.integer("max_iter", 500, minimum=1),
        volume_max=table.number("volume_max", None, positive=True),
        compiled=table.boolean("compiled", False),
        setpoint_rate=table.number("setpoint_rate", None, positive=True),
        grid=grid,
    )
    bolus_t.finish()
    table.finish()
    if section.setpoint not in slow.inputs:
        raise ScenarioError(f"{table.key('setpoint')}: model {slow.name!r} has no input {section.setpoint!r}")
    if section.measured not in plant.states:
        raise ScenarioError(f"{table.key('measured')}: model {plant.name!r} has no state {section.measured!r}")
    return section


def _weights(table: _Table, spec: ModelSpec) -> Mapping[str, float]:
    out = {}
    for name in table.data:
        check_signal(spec, name, table.key(name))
        out[name] = table.number(name)
    return MappingProxyType(out)


def _section(scenario: Scenario) -> CascadeSection:
    if scenario.cascade is None:
        raise ScenarioError(f"scenario {scenario.name!r} has no [cascade] table")
    return scenario.cascade


def batch_end_s(scenario: Scenario) -> float:
    """When the batch is harvested: the end of the last loop period (seconds)."""
    return scenario.loop.steps * scenario.loop.period_s


def plant_truth(scenario: Scenario) -> tuple[dict[str, float], dict[str, float]]:
    """The simulated plant's true parameters and initial state (for the oracle only, never the twin)."""
    from twin.plant_setup import true_params

    spec = scenario.spec()
    params = true_params(spec, scenario.plant.params, scenario.plant.mismatch)
    return params, {**spec.x0, **scenario.plant.x0}


def offline_optimum(
    scenario: Scenario, params: Mapping[str, float] | None = None, x0: Mapping[str, float] | None = None
) -> tuple[BatchOcp, BatchSolution]:
    """The whole-batch optimum on the planner's model from ``x0`` with ``params`` (default: the twin's
    beliefs: nominal parameters with ``[twin] params``, the estimator's initial state)."""
    section = _section(scenario)
    slow = section.spec()
    plant = scenario.spec()
    p_all = {**plant.nominal_params, **scenario.twin.params, **(params or {})}
    x_all = {**plant.x0, **scenario.estimator.x0} if x0 is None else dict(x0)
    p = np.array([p_all.get(n, slow.nominal_params[n]) for n in slow.params])
    x = np.array([x_all.get(n, slow.x0[n]) for n in slow.states])
    ocp = BatchOcp(slow, section.ocp_config())
    duration = batch_end_s(scenario) / slow.seconds_per_time_unit
    return ocp, ocp.solve(x, p, duration)


def _profile(slow: ModelSpec, sol: BatchSolution) -> Profile:
    return Profile(sol.t[:-1] * slow.seconds_per_time_unit, sol.u)


def build_planner(scenario: Scenario, planner: str | None = None) -> Planner:
    """The scenario's planner, or ``planner`` instead (what ``bioimp compare`` swaps).

    Raises:
        ScenarioError: unknown planner, or the offline optimum failed.
    """
    section = _section(scenario)
    slow = section.spec()
    kind = planner or section.planner
    if kind == "nmpc":
        ocp = BatchOcp(slow, section.ocp_config(batch_end_s(scenario) / slow.seconds_per_time_unit))
        return NmpcPlanner(ocp, batch_end_s(scenario), section.replan_s)
    if kind == "bolus":
        sensors = scenario.plant.sensors
        recipe = BolusRecipe(
            glucose_target=section.bolus_target,
            temperature=section.bolus_temperature,
            first_s=sensors.assay_first_s if sensors else 0.0,
            period_s=sensors.assay_period_s if sensors else 86400.0,
            delay_s=sensors.assay_delay_s if sensors else 0.0,
            bolus_duration_s=section.slow_period_s,
        )
        v_max = section.state_bounds.get("V", slow.state_bounds.get("V", (0.0, math.inf)))[1]
        return DailyBolusPlanner(slow, recipe, v_max, float(slow.nominal_params.get("Glc_f", 300.0)))
    if kind in ("openloop", "oracle"):
        params, x0 = plant_truth(scenario) if kind == "oracle" else (None, None)
        _, sol = offline_optimum(scenario, params, x0)
        if sol.status != "ok":
            raise ScenarioError(f"{kind}: the offline optimum did not converge ({sol.status})")
        return ProfilePlanner(slow, _profile(slow, sol), kind)
    raise ScenarioError(f"unknown planner {kind!r} (known: {', '.join(PLANNERS)})")


def build_cascade(scenario: Scenario, spec: ModelSpec, p: FloatArray, planner: str | None = None) -> CascadeController:
    """The two-level controller of the scenario for the plant model ``spec``."""
    section = _section(scenario)
    config = CascadeConfig(
        period_s=scenario.loop.period_s,
        slow_every=round(section.slow_period_s / scenario.loop.period_s),
        pid=section.pid,
        setpoint=section.setpoint,
        measured=section.measured,
        heater=section.heater,
        volume_max=section.volume_max,
        setpoint_rate=section.setpoint_rate,
    )
    return CascadeController(spec, build_planner(scenario, planner), config)
