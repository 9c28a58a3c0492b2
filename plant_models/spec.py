"""`ModelSpec`: the single description of a plant model that every layer builds on.

A ModelSpec holds names, units, bounds, nominal parameters and two frozen CasADi functions:

* ``f(x, u, p) -> dx/dt`` in model time units (see ``time_unit``),
* ``h(x, u, p) -> y``, the model's outputs (what sensors can see).

It contains no numerics and no I/O: simulators, estimators and controllers are built from it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import casadi as ca

from plant_models.errors import ModelError

Bounds = tuple[float, float]
Symbols = Mapping[str, ca.SX]


def _frozen(mapping: Mapping[str, Any]) -> MappingProxyType[str, Any]:
    return MappingProxyType(dict(mapping))


@dataclass(frozen=True, eq=False)
class ModelSpec:
    """A plant model: signal names, units, bounds, nominal parameters, and f/h as CasADi functions.

    Attributes:
        name: registry name of the model.
        description: one paragraph: what the model is and where it comes from.
        states, inputs, params, outputs: signal names, in vector order.
        units: unit of every state, input, parameter and output (and of ``time``).
        state_bounds, input_bounds: physical limits ``(lo, hi)``; ``-inf``/``inf`` when unbounded.
        input_safe: value of each input when the plant is in fail-safe (pump stopped, heater off).
        nominal_params: published parameter values.
        x0: default initial state.
        f: ``f(x, u, p) -> xdot`` (per model time unit).
        h: ``h(x, u, p) -> y``.
        time_unit: model time unit, e.g. ``"h"``.
        seconds_per_time_unit: converts model time to wire time (seconds).
    """

    name: str
    description: str
    states: tuple[str, ...]
    inputs: tuple[str, ...]
    params: tuple[str, ...]
    outputs: tuple[str, ...]
    units: Mapping[str, str]
    state_bounds: Mapping[str, Bounds]
    input_bounds: Mapping[str, Bounds]
    input_safe: Mapping[str, float]
    nominal_params: Mapping[str, float]
    x0: Mapping[str, float]
    f: ca.Function
    h: ca.Function
    time_unit: str = "h"
    seconds_per_time_unit: float = 3600.0
    references: tuple[str, ...] = field(default=())

    @property
    def nx(self) -> int:
        """Number of states."""
        return len(self.states)

    @property
    def nu(self) -> int:
        """Number of inputs."""
        return len(self.inputs)

    @property
    def np(self) -> int:
        """Number of parameters."""
        return len(self.params)

    @property
    def ny(self) -> int:
        """Number of outputs."""
        return len(self.outputs)

    def vector(self, kind: str, values: Mapping[str, float]) -> list[float]:
        """Order a name→value mapping as the vector of ``kind`` (states, inputs, params, outputs).

        Raises:
            ModelError: a name is missing or unknown.
        """
        names: tuple[str, ...] = getattr(self, kind)
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise ModelError(f"model {self.name!r} has no {kind[:-1]} named {unknown[0]!r}")
        missing = [n for n in names if n not in values]
        if missing:
            raise ModelError(f"model {self.name!r}: no value for {kind[:-1]} {missing[0]!r}")
        return [float(values[n]) for n in names]


def build_spec(
    *,
    name: str,
    description: str,
    states: Mapping[str, str],
    inputs: Mapping[str, str],
    params: Mapping[str, tuple[float, str]],
    rhs: Callable[[Symbols, Symbols, Symbols], Mapping[str, ca.SX]],
    outputs: Callable[[Symbols, Symbols, Symbols], Mapping[str, tuple[ca.SX, str]]] | None = None,
    x0: Mapping[str, float],
    state_bounds: Mapping[str, Bounds] | None = None,
    input_bounds: Mapping[str, Bounds],
    input_safe: Mapping[str, float],
    time_unit: str = "h",
    seconds_per_time_unit: float = 3600.0,
    references: tuple[str, ...] = (),
) -> ModelSpec:
    """Build a ModelSpec from named symbolic equations.

    Args:
        name: registry name.
        description: what the model is.
        states: state name → unit, in vector order.
        inputs: input name → unit.
        params: parameter name → (nominal value, unit).
        rhs: ``rhs(x, u, p)`` with name→SX mappings, returning the derivative of every state.
        outputs: optional ``outputs(x, u, p)`` returning name → (expression, unit); defaults to
            every state measured.
        x0: default initial state.
        state_bounds: optional physical bounds per state (others unbounded).
        input_bounds: bounds of every input.
        input_safe: fail-safe value of every input.
        time_unit: model time unit.
        seconds_per_time_unit: seconds in one model time unit.
        references: citations for the equations and parameter values.

    Raises:
        ModelError: the equations or the metadata are inconsistent.
    """
    xs = {n: ca.SX.sym(n) for n in states}
    us = {n: ca.SX.sym(n) for n in inputs}
    ps = {n: ca.SX.sym(n) for n in params}
    derivs = rhs(xs, us, ps)
    if set(derivs) != set(states):
        raise ModelError(f"model {name!r}: rhs must return exactly the states {sorted(states)}")
    out = outputs(xs, us, ps) if outputs else {n: (xs[n], unit) for n, unit in states.items()}
    x = ca.vertcat(*xs.values())
    u = ca.vertcat(*us.values())
    p = ca.vertcat(*ps.values())
    f = ca.Function("f", [x, u, p], [ca.vertcat(*(derivs[n] for n in states))], ["x", "u", "p"], ["xdot"])
    h = ca.Function("h", [x, u, p], [ca.vertcat(*(e for e, _ in out.values()))], ["x", "u", "p"], ["y"])
    units = {"time": time_unit, **states, **inputs, **{k: v[1] for k, v in params.items()}}
    units.update({k: v[1] for k, v in out.items()})
    bounds = {n: (-math.inf, math.inf) for n in states}
    bounds.update(state_bounds or {})
    spec = ModelSpec(
        name=name,
        description=description,
        states=tuple(states),
        inputs=tuple(inputs),
        params=tuple(params),
        outputs=tuple(out),
        units=_frozen(units),
        state_bounds=_frozen(bounds),
        input_bounds=_frozen(input_bounds),
        input_safe=_frozen(input_safe),
        nominal_params=_frozen({k: v[0] for k, v in params.items()}),
        x0=_frozen(x0),
        f=f,
        h=h,
        time_unit=time_unit,
        seconds_per_time_unit=seconds_per_time_unit,
        references=references,
    )
    validate_spec(spec)
    return spec


def validate_spec(spec: ModelSpec) -> None:
    """Check a ModelSpec's internal consistency (names, dimensions, bounds, safe values).

    Raises:
        ModelError: naming the first inconsistency found.
    """
    names = spec.states + spec.inputs + spec.params + spec.outputs
    if len(set(spec.states + spec.inputs + spec.params)) != len(spec.states + spec.inputs + spec.params):
        raise ModelError(f"model {spec.name!r}: state, input and parameter names must be unique")
    for n in names:
        if n not in spec.units:
            raise ModelError(f"model {spec.name!r}: no unit for {n!r}")
    if spec.f.size1_in(0) != spec.nx or spec.f.size1_in(1) != spec.nu or spec.f.size1_in(2) != spec.np:
        raise ModelError(f"model {spec.name!r}: f(x, u, p) dimensions do not match the names")
    if spec.f.size1_out(0) != spec.nx or spec.h.size1_out(0) != spec.ny:
        raise ModelError(f"model {spec.name!r}: f or h output size does not match the names")
    for kind, bounds in (("state", spec.state_bounds), ("input", spec.input_bounds)):
        for n, (lo, hi) in bounds.items():
            if lo > hi:
                raise ModelError(f"model {spec.name!r}: {kind} {n!r} has min {lo} > max {hi}")
    for n in spec.inputs:
        if n not in spec.input_bounds or n not in spec.input_safe:
            raise ModelError(f"model {spec.name!r}: input {n!r} needs bounds and a safe value")
        lo, hi = spec.input_bounds[n]
        if not lo <= spec.input_safe[n] <= hi:
            raise ModelError(f"model {spec.name!r}: safe value of {n!r} is outside [{lo}, {hi}]")
    spec.vector("states", spec.x0)
    spec.vector("params", spec.nominal_params)
