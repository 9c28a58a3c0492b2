"""Slow-level planners for :class:`controllers.cascade.CascadeController`.

* :class:`NmpcPlanner`: the economic NMPC on the twin: re-solves the whole remaining batch
  (:class:`controllers.batch_ocp.BatchOcp`, shrinking horizon) every ``replan_s`` from the estimate and
  the estimated parameters, and holds its plan in between.
* :class:`ProfilePlanner`: plays a fixed input profile against time (the open-loop optimum computed
  offline on the nominal model, or the oracle's computed with the plant's true parameters).
* :class:`DailyBolusPlanner`: the usual industrial practice, once a day after the assay result has
  arrived, a feed bolus that brings the measured glucose back to the recipe's target, at a constant
  temperature.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from controllers.batch_ocp import BatchOcp
from controllers.cascade import SlowDecision
from controllers.interfaces import FloatArray
from plant_models.errors import ScenarioError
from plant_models.spec import ModelSpec


@dataclass(frozen=True)
class Profile:
    """Piecewise-constant inputs: ``u[k]`` held from ``t_s[k]`` to ``t_s[k+1]`` (seconds); after the last
    time the last row holds."""

    t_s: FloatArray
    u: FloatArray

    def at(self, t_s: float) -> FloatArray:
        """The input held at time ``t_s``."""
        k = int(np.searchsorted(self.t_s, t_s + 1e-9, side="right")) - 1
        return np.asarray(self.u[min(max(k, 0), len(self.u) - 1)], dtype=float)


class ProfilePlanner:
    """Plays a profile computed offline (open loop: the estimate is not used)."""

    def __init__(self, spec: ModelSpec, profile: Profile, name: str = "openloop") -> None:
        """Args: spec: the profile's model; profile: its inputs; name: what the controller is called."""
        self.spec = spec
        self.profile = profile
        self.name = name

    def plan(self, t_s: float, x: FloatArray, p: FloatArray) -> SlowDecision:
        """The profile's input at ``t_s``."""
        return SlowDecision(self.profile.at(t_s))


class NmpcPlanner:
    """Economic NMPC over the remaining batch, re-solved every ``replan_s`` from the twin's estimate."""

    name = "nmpc"

    def __init__(self, ocp: BatchOcp, batch_end_s: float, replan_s: float) -> None:
        """Args: ocp: the frozen whole-batch problem; batch_end_s: harvest time; replan_s: re-solve period."""
        if not (replan_s > 0 and batch_end_s > 0):
            raise ScenarioError("nmpc: replan period and batch length must be positive")
        self.ocp = ocp
        self.spec = ocp.spec
        self.batch_end_s = batch_end_s
        self.replan_s = replan_s
        self._plan: Profile | None = None
        self._next_s = -math.inf
        self.solves: list[tuple[float, str, int, float]] = []  # (t_s, status, iterations, compute_s)

    def plan(self, t_s: float, x: FloatArray, p: FloatArray) -> SlowDecision:
        """Re-solve when due (and time remains), else hold the current plan."""
        remaining_h = (self.batch_end_s - t_s) / self.spec.seconds_per_time_unit
        if t_s + 1e-6 < self._next_s or remaining_h <= 1e-3:
            assert self._plan is not None or remaining_h <= 1e-3
            if self._plan is None:
                return SlowDecision(np.array([self.spec.input_safe[n] for n in self.spec.inputs]), "ok", "safe_hold")
            return SlowDecision(self._plan.at(t_s))
        self._next_s = t_s + self.replan_s
        sol = self.ocp.solve(x, p, remaining_h)
        self.solves.append((t_s, sol.status, sol.iterations, sol.compute_s))
        if sol.status == "ok" or self._plan is None:
            # A failed first solve still returns Ipopt's last iterate, clipped to the input bounds.
            self._plan = Profile(t_s + sol.t[:-1] * self.spec.seconds_per_time_unit, sol.u)
            fallback = None if sol.status == "ok" else "last_iterate"
        else:
            fallback = "previous_plan"
        return SlowDecision(self._plan.at(t_s), sol.status, fallback, planned_u=sol.u, iterations=sol.iterations)


@dataclass(frozen=True)
class BolusRecipe:
    """The daily bolus recipe.

    Attributes:
        glucose_target: glucose (model units, mM) the bolus brings the culture back to.
        temperature: constant culture temperature setpoint.
        first_s: time of the first assay sample; one every ``period_s`` afterwards.
        period_s: assay period (a day).
        delay_s: assay turnaround: the bolus is given when the result is in, ``delay_s`` after sampling.
        bolus_duration_s: the bolus is pumped over this time (at most the pump's maximum rate).
    """

    glucose_target: float
    temperature: float = 36.5
    first_s: float = 0.0
    period_s: float = 86400.0
    delay_s: float = 7200.0
    bolus_duration_s: float = 3600.0


class DailyBolusPlanner:
    """Once a day, after the assay result: feed ``V (G_target - G) / (G_feed - G_target)`` litres.

    The glucose it reads is the twin's estimate right after the assay result arrived (the estimator has
    just fused the assay; with an assay every day it is the measured value to within the assay noise).
    The volume cap is respected: a bolus never takes the volume above ``v_max``.
    """

    name = "bolus"

    def __init__(self, spec: ModelSpec, recipe: BolusRecipe, v_max: float, feed_glucose: float) -> None:
        """Args: spec: a model with states Glc and V and inputs F and T; v_max: volume cap; feed_glucose: mM.

        Raises:
            ScenarioError: the model lacks those names or the target is not below the feed's glucose.
        """
        for kind, names in (("states", ("Glc", "V")), ("inputs", ("F", "T"))):
            for n in names:
                if n not in getattr(spec, kind):
                    raise ScenarioError(f"bolus: model {spec.name!r} has no {kind[:-1]} {n!r}")
        if not 0 < recipe.glucose_target < feed_glucose:
            raise ScenarioError(f"bolus: glucose target must lie in (0, {feed_glucose}), got {recipe.glucose_target}")
        self.spec = spec
        self.recipe = recipe
        self.v_max = v_max
        self.feed_glucose = feed_glucose
        self._f_max = spec.input_bounds["F"][1]
        self._until_s = -math.inf
        self._rate = 0.0
        self._next_assay_k = 0
        self.boluses: list[tuple[float, float]] = []  # (t_s, litres)

    def checkpoint(self) -> dict[str, FloatArray]:
        """Which assay is next and the bolus in progress (a resumed batch gives no bolus twice)."""
        return {"bolus": np.array([float(self._next_assay_k), self._until_s, self._rate])}

    def restore(self, state: Mapping[str, FloatArray]) -> None:
        """Continue from :meth:`checkpoint`."""
        k, until, rate = (float(v) for v in state["bolus"])
        self._next_assay_k, self._until_s, self._rate = int(k), until, rate

    def plan(self, t_s: float, x: FloatArray, p: FloatArray) -> SlowDecision:
        """Start a bolus when a new assay result is in; pump it over ``bolus_duration_s``."""
        r = self.recipe
        due = r.first_s + self._next_assay_k * r.period_s + r.delay_s
        if t_s + 1e-6 >= due:
            self._next_assay_k = int((t_s - r.first_s - r.delay_s) // r.period_s) + 1
            glc = float(x[self.spec.states.index("Glc")])
            vol = float(x[self.spec.states.index("V")])
            litres = max(0.0, vol * (r.glucose_target - glc) / (self.feed_glucose - r.glucose_target))
            litres = min(litres, max(0.0, self.v_max - vol), self._f_max * r.bolus_duration_s / 3600.0)
            self._rate = litres / (r.bolus_duration_s / 3600.0)
            self._until_s = t_s + r.bolus_duration_s
            self.boluses.append((t_s, litres))
        feed = self._rate if t_s + 1e-6 < self._until_s else 0.0
        u = np.zeros(self.spec.nu)
        u[self.spec.inputs.index("F")] = feed
        u[self.spec.inputs.index("T")] = r.temperature
        return SlowDecision(u)
