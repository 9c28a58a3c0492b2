"""Composition of two ModelSpecs into one: wire signals between them, share common signals.

``compose(a, b, connections=..., shared=..., name=...)`` returns an ordinary ModelSpec whose RHS is the
two parts' frozen ``f`` functions evaluated with the wiring, so a composed model is built once and is
indistinguishable from a hand-written one to simulators and controllers.

Rules (names are taken after ``rename_a``/``rename_b``):

* ``connections`` maps an input of one model to a state or output of the other. The input disappears
  from the composition. An output used as a source must not depend on inputs (no algebraic loops), and
  an output that only feeds a connection is internal: it is not an output of the composition.
* ``shared`` names a signal both models have, of the same kind (state, input or parameter) and unit:
  it becomes one signal. A shared input keeps the intersection of both ranges and must have the same
  safe value; a shared parameter must have the same nominal value; a shared state must have the same
  initial value and the same derivative in both models (checked numerically at the initial state; the
  derivative is taken from ``a``). Bounds are intersected.
* Any other name both models use is an error: rename one side.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import casadi as ca
import numpy as np

from plant_models.errors import ModelError
from plant_models.spec import Bounds, ModelSpec, Symbols, build_spec

_KINDS = ("states", "inputs", "params")
_Wiring = Callable[[Symbols, Symbols, Symbols], dict[int, tuple[ca.SX, ca.SX, ca.SX]]]


@dataclass(frozen=True)
class _Part:
    """One side of a composition with its signal names after renaming."""

    spec: ModelSpec
    label: str
    names: Mapping[str, str]  # original name -> name in the composition

    def renamed(self, kind: str) -> tuple[str, ...]:
        return tuple(self.names[n] for n in getattr(self.spec, kind))

    def kind_of(self, name: str) -> str | None:
        for kind in _KINDS:
            if name in self.renamed(kind):
                return kind
        return None

    def original(self, name: str) -> str:
        return next(k for k, v in self.names.items() if v == name)

    def unit(self, name: str) -> str:
        return self.spec.units[self.original(name)]


def _part(spec: ModelSpec, label: str, rename: Mapping[str, str] | None) -> _Part:
    names = {n: n for n in spec.states + spec.inputs + spec.params + spec.outputs}
    for old, new in (rename or {}).items():
        if old not in names:
            raise ModelError(f"rename_{label}: model {spec.name!r} has no signal {old!r}")
        names[old] = new
    signals = [names[n] for n in spec.states + spec.inputs + spec.params]
    if len(set(signals)) != len(signals):
        raise ModelError(f"rename_{label}: two signals of {spec.name!r} would both be called the same")
    return _Part(spec, label, names)


def _intersect(x: Bounds, y: Bounds, what: str) -> Bounds:
    lo, hi = max(x[0], y[0]), min(x[1], y[1])
    if lo > hi:
        raise ModelError(f"shared {what}: ranges {x} and {y} do not overlap")
    return (lo, hi)


def _output_depends_on_inputs(spec: ModelSpec, output: str) -> bool:
    x, u, p = (ca.SX.sym(s, n) for s, n in (("x", spec.nx), ("u", spec.nu), ("p", spec.np)))
    y = spec.h(x, u, p)[spec.outputs.index(output)]
    return bool(spec.nu) and bool(ca.depends_on(y, u))


def compose(
    a: ModelSpec,
    b: ModelSpec,
    *,
    name: str,
    description: str,
    connections: Mapping[str, str] | None = None,
    shared: Iterable[str] = (),
    rename_a: Mapping[str, str] | None = None,
    rename_b: Mapping[str, str] | None = None,
    x0: Mapping[str, float] | None = None,
) -> ModelSpec:
    """Compose two models into one ModelSpec.

    Args:
        a, b: the parts. Their signals appear in the composition in that order (a's first).
        name: registry name of the composition.
        description: what the composition is.
        connections: ``{input: source}``; ``input`` is an input of one part, ``source`` a state or an
            output of the other part.
        shared: names present in both parts that denote the same signal.
        rename_a, rename_b: renames applied to a part's signal names before anything else.
        x0: overrides of the composed initial state.

    Raises:
        ModelError: naming the first inconsistency (unknown or ambiguous name, unit mismatch,
            clashing names, algebraic loop, shared signals that disagree).
    """
    if a.time_unit != b.time_unit or a.seconds_per_time_unit != b.seconds_per_time_unit:
        raise ModelError(f"cannot compose {a.name!r} ({a.time_unit}) and {b.name!r} ({b.time_unit}): time units")
    pa, pb = _part(a, "a", rename_a), _part(b, "b", rename_b)
    other = {id(pa): pb, id(pb): pa}
    shared = tuple(shared)

    # --- connections: input of one part <- state or output of the other ---
    wired: dict[str, tuple[_Part, _Part, str, str]] = {}  # input -> (sink, source part, source, kind)
    for inp, src in (connections or {}).items():
        sinks = [p for p in (pa, pb) if inp in p.renamed("inputs")]
        if len(sinks) != 1 or inp in shared:
            where = "both parts" if sinks else "neither part"
            raise ModelError(f"connection {inp!r}: must be an input of exactly one part (it is in {where})")
        sink = sinks[0]
        source = other[id(sink)]
        if src in source.renamed("states"):
            kind = "states"
        elif src in source.renamed("outputs"):
            kind = "outputs"
            if _output_depends_on_inputs(source.spec, source.original(src)):
                raise ModelError(f"connection {inp!r} <- {src!r}: that output depends on inputs (algebraic loop)")
        else:
            raise ModelError(f"connection {inp!r}: {source.spec.name!r} has no state or output {src!r}")
        if sink.unit(inp) != source.unit(src):
            raise ModelError(f"connection {inp!r} <- {src!r}: units {sink.unit(inp)!r} and {source.unit(src)!r}")
        wired[inp] = (sink, source, src, kind)

    # --- names: shared ones must match in kind and unit; any other clash is an error ---
    def free(part: _Part) -> set[str]:
        names = set(part.renamed("states") + part.renamed("params"))
        return names | {n for n in part.renamed("inputs") if n not in wired or wired[n][0] is not part}

    for n in shared:
        shared_kind = pa.kind_of(n)
        if shared_kind is None or shared_kind != pb.kind_of(n):
            raise ModelError(f"shared {n!r}: must be a state, input or parameter of the same kind in both parts")
        if pa.unit(n) != pb.unit(n):
            raise ModelError(f"shared {n!r}: units {pa.unit(n)!r} and {pb.unit(n)!r} differ")
    clashes = sorted((free(pa) & free(pb)) - set(shared))
    if clashes:
        raise ModelError(f"{clashes[0]!r} is in both {a.name!r} and {b.name!r}: share it or rename one")

    # --- composed signal lists, units, bounds, nominal values ---
    states = pa.renamed("states") + tuple(n for n in pb.renamed("states") if n not in shared)
    inputs = tuple(n for n in pa.renamed("inputs") if n not in wired) + tuple(
        n for n in pb.renamed("inputs") if n not in wired and n not in shared
    )
    params = pa.renamed("params") + tuple(n for n in pb.renamed("params") if n not in shared)
    units: dict[str, str] = {}

    merged: dict[str, dict[str, float]] = {"x0": {}, "nominal_params": {}, "input_safe": {}}
    bounds: dict[str, Bounds] = {}

    def _merge(kind: str, n: str, sides: list[_Part]) -> None:
        field, bfield = {
            "states": ("x0", "state_bounds"), "inputs": ("input_safe", "input_bounds"), "params": ("nominal_params", "")
        }[kind]
        values = sorted({float(getattr(p.spec, field)[p.original(n)]) for p in sides})
        if len(values) > 1:
            raise ModelError(f"shared {n!r}: the parts disagree on its {field.replace('_', ' ')} {values}")
        merged[field][n] = values[0]
        units[n] = sides[0].unit(n)
        if bfield:
            joint: Bounds = (-math.inf, math.inf)
            for p in sides:
                joint = _intersect(joint, getattr(p.spec, bfield).get(p.original(n), joint), repr(n))
            bounds[n] = joint

    for kind, names in (("states", states), ("inputs", inputs), ("params", params)):
        for n in names:
            _merge(kind, n, [p for p in (pa, pb) if n in p.renamed(kind)])

    internal = {(id(src), s) for _, src, s, kind in wired.values() if kind == "outputs"}
    outputs: list[tuple[_Part, str]] = []
    for part in (pa, pb):
        for n in part.renamed("outputs"):
            if (id(part), n) in internal:
                continue
            if any(n == m for _, m in outputs):
                if n in shared and part.kind_of(n) == "states":
                    continue  # the shared state's own measurement, already listed from a
                raise ModelError(f"output {n!r} is in both {a.name!r} and {b.name!r}: rename one")
            outputs.append((part, n))

    # --- the wiring, symbolically ---
    def wire(x: Symbols, u: Symbols, p: Symbols) -> dict[int, tuple[ca.SX, ca.SX, ca.SX]]:
        own = {**x, **u, **p}
        vec = {}
        for part in (pa, pb):
            xs = ca.vertcat(*(own[n] for n in part.renamed("states")))
            ps = ca.vertcat(*(own[n] for n in part.renamed("params")))
            vec[id(part)] = (xs, ps)
        args: dict[int, tuple[ca.SX, ca.SX, ca.SX]] = {}
        for part in (pa, pb):
            xs, ps = vec[id(part)]
            us = []
            for n in part.renamed("inputs"):
                if n in wired and wired[n][0] is part:
                    _, src_part, src, kind = wired[n]
                    if kind == "states":
                        us.append(own[src])
                    else:  # output that does not depend on inputs: evaluate with any input vector
                        sx, sp = vec[id(src_part)]
                        y = src_part.spec.h(sx, ca.DM.zeros(src_part.spec.nu), sp)
                        us.append(y[src_part.renamed("outputs").index(src)])
                else:
                    us.append(own[n])
            args[id(part)] = (xs, ca.vertcat(*us), ps)
        return args

    def rhs(x: Symbols, u: Symbols, p: Symbols) -> dict[str, ca.SX]:
        args = wire(x, u, p)
        out: dict[str, ca.SX] = {}
        for part in (pb, pa):  # a last: a shared state's derivative is a's
            xdot = part.spec.f(*args[id(part)])
            out.update({n: xdot[i] for i, n in enumerate(part.renamed("states"))})
        return out

    def outs(x: Symbols, u: Symbols, p: Symbols) -> dict[str, tuple[ca.SX, str]]:
        args = wire(x, u, p)
        ys = {id(part): part.spec.h(*args[id(part)]) for part in (pa, pb)}
        return {n: (ys[id(part)][part.renamed("outputs").index(n)], part.unit(n)) for part, n in outputs}

    state_bounds = {n: bounds[n] for n in states}
    spec = build_spec(
        name=name,
        description=description,
        states={n: units[n] for n in states},
        inputs={n: units[n] for n in inputs},
        params={n: (merged["nominal_params"][n], units[n]) for n in params},
        rhs=rhs,
        outputs=outs,
        x0={**merged["x0"], **(x0 or {})},
        state_bounds=state_bounds,
        input_bounds={n: bounds[n] for n in inputs},
        input_safe=merged["input_safe"],
        time_unit=a.time_unit,
        seconds_per_time_unit=a.seconds_per_time_unit,
        references=tuple(dict.fromkeys(a.references + b.references)),
    )
    _check_shared_states(spec, pa, pb, [n for n in shared if pa.kind_of(n) == "states"], wire)
    return spec


def _check_shared_states(spec: ModelSpec, pa: _Part, pb: _Part, names: list[str], wire: _Wiring) -> None:
    """Both parts must give a shared state the same derivative (checked at x0, safe and maximal inputs)."""
    if not names:
        return
    x = {n: ca.SX.sym(n) for n in spec.states}
    u = {n: ca.SX.sym(n) for n in spec.inputs}
    p = {n: ca.SX.sym(n) for n in spec.params}
    args = wire(x, u, p)
    pairs = []
    for n in names:
        da = pa.spec.f(*args[id(pa)])[pa.renamed("states").index(n)]
        db = pb.spec.f(*args[id(pb)])[pb.renamed("states").index(n)]
        pairs += [da, db]
    check = ca.Function(
        "check", [ca.vertcat(*x.values()), ca.vertcat(*u.values()), ca.vertcat(*p.values())], [ca.vertcat(*pairs)]
    )
    x0 = spec.vector("states", spec.x0)
    par = spec.vector("params", spec.nominal_params)
    u_hi = [hi if math.isfinite(hi) else lo + 1.0 for lo, hi in (spec.input_bounds[n] for n in spec.inputs)]
    for uu in (spec.vector("inputs", spec.input_safe), u_hi):
        values = np.asarray(check(x0, uu, par), dtype=float).ravel()
        for i, n in enumerate(names):
            da, db = values[2 * i], values[2 * i + 1]
            if not math.isclose(da, db, rel_tol=1e-9, abs_tol=1e-12):
                raise ModelError(f"shared state {n!r}: the parts give different derivatives ({da} vs {db})")
