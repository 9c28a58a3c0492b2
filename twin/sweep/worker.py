"""Run one case of a sweep in this process: scenario text in, one results row out.

A case runs the closed loop against its own simulated plant on a virtual clock, reached through the
``connect`` of its :class:`CaseContext` — for ``bioimp sweep``, ``hil.sweep_cli.in_process``: the wire
protocol's handler called in-process (its semantics, no sockets). The transport is passed in from the
top layer so that the twin does not import ``hil``. The result depends only on the case's
scenario text; compute times (and the wall time) are the only columns that depend on the machine.

Solvers are expensive to build (symbolic work, code generation) and cheap to run, so each worker
process (each thread, for Dask workers with several threads) keeps the controllers it built, keyed by
every scenario section the controller depends on, and reuses them for later cases with the same key.
Before a reused controller runs a case it is put back into the state it had when it was built (its
warm start — plan, multipliers, last input — dropped), so a reused controller decides exactly as a new
one would (tests/twin/test_sweep.py checks it bit for bit).
"""

from __future__ import annotations

import copy
import hashlib
import json
import threading
import time
import tomllib
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import PurePath
from types import BuiltinFunctionType, FunctionType
from typing import Any

import numpy as np

from controllers.interfaces import Controller
from plant_models.spec import ModelSpec
from twin.clock import VirtualClock
from twin.estimator_config import build_estimator
from twin.interfaces import Plant
from twin.kpis import summary, trajectory
from twin.loop import run_loop
from twin.record import MemoryRecord
from twin.runner import build_controller, twin_params
from twin.scenario import Scenario, parse_scenario
from twin.simulated_plant import SimulatedPlant
from twin.sweep.cases import Case, canonical
from twin.sweep.config import KpiConfig

__all__ = ["TIMING_COLUMNS", "CaseContext", "Connector", "controller_key", "reset_cache", "run_case"]

#: Columns that depend on the machine and its load, not on the case (left out of determinism checks).
TIMING_COLUMNS = ("compute_ms_p50", "compute_ms_p90", "compute_ms_p99", "compute_ms_max", "over_budget_steps", "wall_s")

#: A controller's objects, each with the plain-data attributes it had when it was built.
Pristine = list[tuple[object, dict[str, Any]]]

# Scenario sections a controller is built from (the plant, the loop's length and the estimator are not).
_CONTROLLER_SECTIONS = ("model", "twin", "objective", "bounds", "controller", "cascade")


class _Cache(threading.local):
    """Per-thread: built controllers with their pristine state, and resolved models."""

    def __init__(self) -> None:
        self.controllers: dict[str, tuple[Controller, Pristine]] = {}
        self.specs: dict[str, ModelSpec] = {}
        self.builds = 0


_CACHE = _Cache()


def reset_cache() -> None:
    """Forget this thread's controllers (tests; a worker keeps them for its life)."""
    _CACHE.controllers.clear()
    _CACHE.specs.clear()
    _CACHE.builds = 0


def controller_builds() -> int:
    """How many controllers this thread has built (a reused controller is not counted again)."""
    return _CACHE.builds


def controller_key(scenario_text: str) -> str:
    """Hash of everything in a scenario a controller is built from (the sample period included)."""
    data = tomllib.loads(scenario_text)
    parts = {k: data.get(k) for k in _CONTROLLER_SECTIONS}
    parts["period_s"] = data.get("loop", {}).get("period_s")
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


_SIMPLE = (np.ndarray, int, float, str, bool, type(None))
# Objects whose attributes are reset: ours (a cascade holds a planner and a PID, each with its own state).
_OWN_MODULES = ("controllers.", "twin.")


def _is_state(value: object) -> bool:
    """Plain data: arrays, scalars, None, or containers of them (a warm start, an integrator, a history)."""
    if isinstance(value, _SIMPLE):
        return True
    if isinstance(value, list | tuple):
        return all(_is_state(v) for v in value)
    if isinstance(value, dict):
        return all(_is_state(v) for v in value.values())
    return False


def _owned(value: object) -> bool:
    return type(value).__module__.startswith(_OWN_MODULES) and hasattr(value, "__dict__")


def _objects(root: object) -> list[object]:
    """``root`` and every object of ours reachable through attributes (and lists, tuples, dicts of them)."""
    seen: dict[int, object] = {}
    stack = [root]
    while stack:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen[id(obj)] = obj
        for value in vars(obj).values():
            items = value.values() if isinstance(value, dict) else value if isinstance(value, list | tuple) else [value]
            stack.extend(v for v in items if _owned(v))
    return list(seen.values())


def _stateless(value: object) -> bool:
    """A value whose state cannot change between cases: frozen CasADi functions and sparsities, paths,
    plain functions, the model (plant_models values are frozen); containers of such."""
    import casadi

    if isinstance(value, casadi.Function | casadi.Sparsity | PurePath | FunctionType | BuiltinFunctionType):
        return True
    if type(value).__module__.startswith("plant_models."):
        return True
    if isinstance(value, list | tuple | frozenset):
        return all(_stateless(v) or _is_state(v) or _owned(v) for v in value)
    if isinstance(value, Mapping):
        return all(_stateless(v) or _is_state(v) or _owned(v) for v in value.values())
    return False


def resettable(controller: object) -> bool:
    """Can :func:`_reset` put this controller back to new? Only if everything it holds is plain data,
    objects of ours (reset in turn), or stateless; a controller holding another library's objects
    (do-mpc's) is built anew for every case instead of being reused."""
    return all(_is_state(v) or _owned(v) or _stateless(v) for obj in _objects(controller) for v in vars(obj).values())


def _pristine(controller: object) -> Pristine:
    """The mutable state of the controller and of every object of ours it holds, right after building."""
    return [(obj, {k: copy.deepcopy(v) for k, v in vars(obj).items() if _is_state(v)}) for obj in _objects(controller)]


def _reset(pristine: Pristine) -> None:
    """Back to the pristine state; plain-data attributes created since (lazy warm starts) are dropped."""
    for obj, saved in pristine:
        state = vars(obj)
        for name in [k for k, v in state.items() if k not in saved and _is_state(v)]:
            del state[name]
        for name, value in saved.items():
            state[name] = copy.deepcopy(value)


def _controller(scenario: Scenario, spec: ModelSpec, p: np.ndarray) -> Controller:
    key = controller_key(scenario.source)
    cached = _CACHE.controllers.get(key)
    if cached is None:
        controller = build_controller(scenario, spec, p)
        _CACHE.builds += 1
        if not resettable(controller):
            return controller  # for this case only
        cached = (controller, _pristine(controller))
        _CACHE.controllers[key] = cached
    controller, pristine = cached
    _reset(pristine)
    return controller


def _spec(scenario: Scenario) -> ModelSpec:
    spec = _CACHE.specs.get(scenario.model)
    if spec is None:
        spec = _CACHE.specs[scenario.model] = scenario.spec()
    return spec


def _final(names: list[str], spec: ModelSpec, final: np.ndarray, objective: float) -> float:
    value = 1.0
    for name in names:
        value *= objective if name == "objective" else float(final[spec.states.index(name)])
    return value


def _violations(
    limits: Mapping[str, tuple[float, float]], spec: ModelSpec, truth: np.ndarray, kpi: KpiConfig
) -> dict[str, Any]:
    """Per limited state: the largest amount the true state left its limit; the steps out of any limit
    that counts (``kpi.constraints``, all when empty), and whether there was one."""
    out: dict[str, Any] = {}
    steps_out = np.zeros(len(truth), dtype=bool)
    for name, (lo, hi) in limits.items():
        col = truth[:, spec.states.index(name)]
        amount = np.maximum(lo - col, col - hi)
        out[f"violation_{name}"] = max(0.0, float(np.max(amount)))
        if not kpi.constraints or name in kpi.constraints:
            steps_out |= amount > kpi.violation_atol
    out["violation_steps"] = int(np.sum(steps_out))
    out["violated"] = bool(steps_out.any())
    return out


#: Makes the loop's Plant from a case's simulated plant (a module-level function: it travels to workers).
Connector = Callable[[SimulatedPlant], Plant]


@dataclass(frozen=True)
class CaseContext:
    """What every case of a sweep shares: the KPI definition and how the loop reaches a plant."""

    kpi: KpiConfig
    connect: Connector


def _run(case: Case, kpi: KpiConfig, connect: Connector) -> dict[str, Any]:
    scenario = parse_scenario(case.scenario_text, f"<case {case.key[:12]}>")
    spec = _spec(scenario)
    sim = scenario.new_plant(spec)
    p = twin_params(spec, scenario)
    controller = _controller(scenario, spec, p)
    plant = connect(sim)
    truth = [sim.true_state.copy()]

    def advance(dt_s: float) -> Any:  # the true state after every period: violations are judged on it
        reply = plant.advance(dt_s)
        truth.append(sim.true_state.copy())
        return reply

    record = MemoryRecord()
    loop = run_loop(
        spec=spec,
        plant=plant,
        estimator=build_estimator(spec, p, scenario.estimator, scenario.plant.sensors),
        controller=controller,
        clock=VirtualClock(advance, scenario.loop.period_s),
        recorder=record,
        steps=scenario.loop.steps,
        period_s=scenario.loop.period_s,
        budget_s=None,
    )
    kpis = summary(spec, scenario.controller.mpc, record, trajectory(spec, record), loop, controller.name, p)
    true_x = np.array(truth)
    objective = float(kpis["objective"])  # type: ignore[arg-type]
    row: dict[str, Any] = {
        "kpi": _final(kpi.main.split("*"), spec, true_x[-1], objective),
        "objective": objective,
        **{f"final_{n}": float(v) for n, v in zip(spec.states, true_x[-1], strict=True)},
        **_violations(case.limits, spec, true_x, kpi),
        "measured_violation_max": float(kpis["constraint_violation_max"]),  # type: ignore[arg-type]
        "fallbacks": loop.fallbacks,
        "refused_writes": loop.refused_writes,
    }
    compute_ms = np.array([c.compute_s for _, _, c in record.controls]) * 1e3
    row |= {f"compute_ms_p{q}": float(np.percentile(compute_ms, q)) for q in (50, 90, 99)}
    row["compute_ms_max"] = float(np.max(compute_ms))
    budget = case.budget_s
    row["over_budget_steps"] = int(np.sum(compute_ms > budget * 1e3)) if budget is not None else 0
    return row


def run_case(case: Case, context: CaseContext) -> dict[str, Any]:
    """Run one case; never raises for the case's own failure (the row says ``status = "error"``).

    Returns:
        the results row: the case's identity (key, setting, settings, plant, seed), ``status``
        (``ok`` / ``error``), ``error`` (one line, empty when ok), the KPIs and the compute times.
    """
    start = time.perf_counter()
    row: dict[str, Any] = {
        "case_key": case.key,
        "setting_index": case.setting_index,
        "setting": case.setting,
        "settings": canonical(case.settings),
        **{f"set:{k}": v for k, v in case.settings.items()},
        "plant": case.plant,
        "seed": case.seed,
    }
    try:
        row |= _run(case, context.kpi, context.connect)
        row |= {"status": "ok", "error": ""}
    except Exception as exc:  # a failing case is a result of the sweep, not the end of it
        last = traceback.extract_tb(exc.__traceback__)[-1]
        where = f" ({last.filename.rsplit('/', 1)[-1]}:{last.lineno})" if last else ""
        row |= {"status": "error", "error": f"{type(exc).__name__}: {exc}{where}".replace("\n", " ")}
    row["wall_s"] = time.perf_counter() - start
    return row
