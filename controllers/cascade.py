"""Two-level control: a slow planner on the twin decides setpoints, a fast PID holds temperature.

Real plants run this way: an optimiser (or an operator's recipe) decides, every hour or so, the feed
and the temperature *setpoint*; a PID on the heater tracks that setpoint every few seconds to a minute.
:class:`CascadeController` is one object behind the ordinary :class:`~controllers.interfaces.Controller`
protocol, called by the loop once per (fast) period, so the loop and the wire stay unchanged:

* every ``slow_every`` periods it asks its :class:`Planner` for the slow inputs (feed ``F`` and
  temperature setpoint ``T``) from the twin's estimate, mapped by name onto the planner's model;
* every period it runs the PID from the estimated temperature to the heater power, with the vessel's
  holding power ``UA (T_sp - T_amb)`` (from the twin's parameters) as feed-forward.

Which planner runs (the NMPC, the daily bolus, an offline profile, the oracle) is the only difference
between the controllers ``bioimp compare`` runs: same cascade, same PID, same plant.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from controllers.interfaces import ControlStep, FloatArray
from controllers.pid import Pid, PidConfig
from plant_models.errors import ScenarioError
from plant_models.spec import ModelSpec


@dataclass(frozen=True)
class SlowDecision:
    """What a planner decided: the slow model's inputs (in its order), and its plan when it has one."""

    u: FloatArray
    status: str = "ok"
    fallback: str | None = None
    planned_u: FloatArray | None = None
    iterations: int | None = None


class Planner(Protocol):
    """The slow level: decides the slow model's inputs from time, state and parameters (its model's)."""

    name: str
    spec: ModelSpec

    def plan(self, t_s: float, x: FloatArray, p: FloatArray) -> SlowDecision:
        """Decide the slow inputs to hold until the next call (``t_s``: seconds since the batch start)."""
        ...


@dataclass(frozen=True)
class CascadeConfig:
    """How the two levels connect.

    Attributes:
        period_s: the fast loop period (the scenario's loop period), seconds.
        slow_every: the planner runs every this many fast periods.
        setpoint: the slow model's input that is the temperature setpoint (e.g. ``T``).
        measured: the plant state the PID measures (e.g. ``T``).
        heater: the plant input the PID drives (e.g. ``P_heater``).
        pid: gains and limits (limits default to the heater's range).
        holding: feed-forward of the holding power ``UA (T_sp - T_amb)`` from parameters named ``UA``
            and ``T_amb`` of the plant model, when it has them.
        volume_max: a guard under any planner (a stale plan, a bolus): the feed ``feed`` is cut so that
            the estimated volume ``volume`` cannot pass this within one period. None: no guard.
        setpoint_rate: the most the PID's setpoint moves per hour (setpoint units, K/h): a planner's
            jump is ramped at this rate, as temperature shifts are run on a plant. The PID, tuned to
            hold a temperature, overshoots a large step: a late 31 -> 37 °C shift reached 37.99 °C at
            the culture's 38 °C limit, 37.70 °C ramped at 12 K/h (``tests/controllers/test_cascade.py``).
            None: the planner's setpoint at once.
    """

    period_s: float
    slow_every: int
    pid: PidConfig
    setpoint: str = "T"
    measured: str = "T"
    heater: str = "P_heater"
    holding: bool = True
    volume_max: float | None = None
    volume: str = "V"
    feed: str = "F"
    setpoint_rate: float | None = None

    def __post_init__(self) -> None:
        if self.slow_every < 1 or not self.period_s > 0:
            raise ScenarioError("cascade: slow_every must be >= 1 and the loop period positive")
        if self.setpoint_rate is not None and not self.setpoint_rate > 0:
            raise ScenarioError("cascade: setpoint_rate must be positive")


class CascadeController:
    """The slow planner and the fast PID as one Controller on the plant model's inputs."""

    def __init__(self, plant_spec: ModelSpec, planner: Planner, config: CascadeConfig) -> None:
        """Wire the planner's model to the plant's by name.

        Raises:
            ScenarioError: a name does not exist in the model where it is needed.
        """
        slow = planner.spec
        if config.setpoint not in slow.inputs:
            raise ScenarioError(f"cascade.setpoint: model {slow.name!r} has no input {config.setpoint!r}")
        if config.measured not in plant_spec.states:
            raise ScenarioError(f"cascade.measured: model {plant_spec.name!r} has no state {config.measured!r}")
        if config.heater not in plant_spec.inputs:
            raise ScenarioError(f"cascade.heater: model {plant_spec.name!r} has no input {config.heater!r}")
        missing = [n for n in slow.states if n not in plant_spec.states]
        passed = [n for n in slow.inputs if n != config.setpoint and n not in plant_spec.inputs]
        if missing or passed:
            raise ScenarioError(f"cascade: the plant model {plant_spec.name!r} lacks {(missing + passed)[0]!r}")
        self.name = f"cascade({planner.name})"
        self.plant_spec = plant_spec
        self.planner = planner
        self.config = config
        self.pid = Pid(config.pid)
        self._x_idx = np.array([plant_spec.states.index(n) for n in slow.states])
        self._p_map = [(i, plant_spec.params.index(n)) for i, n in enumerate(slow.params) if n in plant_spec.params]
        self._p_slow = np.array(slow.vector("params", slow.nominal_params))
        self._sp_idx = slow.inputs.index(config.setpoint)
        self._meas_idx = plant_spec.states.index(config.measured)
        self._heater_idx = plant_spec.inputs.index(config.heater)
        self._pass = [(plant_spec.inputs.index(n), slow.inputs.index(n)) for n in slow.inputs if n != config.setpoint]
        params = plant_spec.params
        has_holding = config.holding and "UA" in params and "T_amb" in params
        self._holding = (params.index("UA"), params.index("T_amb")) if has_holding else None
        self._guard: tuple[int, int] | None = None
        if config.volume_max is not None:
            if config.volume not in plant_spec.states or config.feed not in plant_spec.inputs:
                raise ScenarioError(f"cascade.volume_max: model {plant_spec.name!r} needs state V and input F")
            self._guard = (plant_spec.states.index(config.volume), plant_spec.inputs.index(config.feed))
        self._period_h = config.period_s / plant_spec.seconds_per_time_unit
        self._k = 0
        self._slow: SlowDecision | None = None
        rate = config.setpoint_rate
        self._max_move = math.inf if rate is None else rate * config.period_s / 3600.0
        self._ramp: float | None = None  # the PID's setpoint last period: where the ramp stands
        self.setpoints: list[tuple[float, float]] = []  # (t_s, temperature setpoint) at each slow decision

    def checkpoint(self) -> dict[str, FloatArray]:
        """The fast loop's state (period count, PID integral and last measurement) and the planner's,
        as arrays (``twin.checkpoint``); a resumed run continues the PID and re-plans at once."""
        y_prev = self.pid._y_prev
        state = {
            "k": np.array([float(self._k)]),
            "pid": np.array([self.pid.integral, np.nan if y_prev is None else y_prev]),
            "ramp": np.array([np.nan if self._ramp is None else self._ramp]),
        }
        planner_state = getattr(self.planner, "checkpoint", None)
        if planner_state is not None:
            state |= {f"planner.{k}": v for k, v in planner_state().items()}
        return state

    def restore(self, state: Mapping[str, FloatArray]) -> None:
        """Continue from :meth:`checkpoint`; the planner runs at the next step (its plan is not stored)."""
        self._k = int(state["k"][0])
        self.pid.integral = float(state["pid"][0])
        self.pid._y_prev = None if np.isnan(state["pid"][1]) else float(state["pid"][1])
        ramp = state.get("ramp", np.array([np.nan]))  # absent from checkpoints written before the ramp
        self._ramp = None if np.isnan(ramp[0]) else float(ramp[0])
        self._slow = None
        restore = getattr(self.planner, "restore", None)
        if restore is not None:
            restore({k.removeprefix("planner."): v for k, v in state.items() if k.startswith("planner.")})

    def slow_params(self, p: FloatArray) -> FloatArray:
        """The planner model's parameters: its nominal values, overridden by the plant model's by name."""
        out = self._p_slow.copy()
        for i, j in self._p_map:
            out[i] = p[j]
        return out

    def step(self, t_s: float, x: FloatArray, p: FloatArray) -> ControlStep:
        """Run the planner when due, then the PID; return the plant's inputs."""
        start = time.perf_counter()
        if self._slow is None or self._k % self.config.slow_every == 0:
            self._slow = self.planner.plan(t_s, x[self._x_idx], self.slow_params(p))
            self.setpoints.append((t_s, float(self._slow.u[self._sp_idx])))
        self._k += 1
        slow = self._slow
        u = np.zeros(self.plant_spec.nu)
        for i, j in self._pass:
            u[i] = slow.u[j]
        if self._guard is not None and self.config.volume_max is not None:
            iv, i_f = self._guard
            room = max(0.0, self.config.volume_max - float(x[iv]))
            u[i_f] = min(u[i_f], room / self._period_h)
        setpoint = float(slow.u[self._sp_idx])
        if self._ramp is not None:
            setpoint = min(max(setpoint, self._ramp - self._max_move), self._ramp + self._max_move)
        self._ramp = setpoint
        ff = 0.0
        if self._holding is not None:
            ua, amb = self._holding
            ff = float(p[ua] * (setpoint - p[amb]))
        u[self._heater_idx] = self.pid.update(setpoint, float(x[self._meas_idx]), self.config.period_s, ff)
        fresh = self._k == 1 or (self._k - 1) % self.config.slow_every == 0
        return ControlStep(
            u=u,
            status=slow.status,
            compute_s=time.perf_counter() - start,
            fallback=slow.fallback if fresh else None,
            iterations=slow.iterations if fresh else None,
        )
