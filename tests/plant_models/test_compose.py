"""compose(): cho_fedbatch_thermal's wiring, and the rules of composition on small models."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from plant_models import ModelError, ModelSpec, build_spec, resolve_model
from plant_models.cho_fedbatch import cho_fedbatch
from plant_models.cho_fedbatch_thermal import cho_fedbatch_thermal, cho_fedbatch_thermal_pilot
from plant_models.compose import compose
from plant_models.reactor_thermal import reactor_thermal
from twin.simulator import Simulator, SimulatorConfig


def test_inputs_are_exactly_the_wire_protocol_actuators() -> None:
    spec = cho_fedbatch_thermal()
    assert spec.inputs == ("F", "P_heater")
    assert (spec.units["F"], spec.units["P_heater"]) == ("L/h", "W")
    assert spec.input_safe == {"F": 0.0, "P_heater": 0.0}  # pump stopped, heater off
    assert spec.states == ("Xv", "Glc", "Gln", "Lac", "Amm", "mAb", "V", "T")
    assert spec.outputs == spec.states  # metabolic heat is internal: it only feeds the energy balance
    assert set(spec.params) == set(cho_fedbatch().params) | set(reactor_thermal().params)
    assert spec.state_bounds["V"] == (0.0, 2.0)


def test_composed_rhs_equals_the_parts_evaluated_with_the_wiring() -> None:
    spec, cho, heat = cho_fedbatch_thermal(), cho_fedbatch(), reactor_thermal()
    rng = np.random.default_rng(4)
    for _ in range(20):
        x = dict(zip(spec.states, [rng.uniform(1e8, 1e10), *rng.uniform(0, 40, 4), rng.uniform(0, 900),
                                   rng.uniform(0.8, 1.9), rng.uniform(25, 40)], strict=True))
        u = {"F": rng.uniform(0, 0.1), "P_heater": rng.uniform(0, 200)}
        par = {n: v * rng.uniform(0.8, 1.2) for n, v in spec.nominal_params.items()}
        got = dict(zip(spec.states, np.asarray(spec.f(spec.vector("states", x), spec.vector("inputs", u),
                                                      spec.vector("params", par))).ravel(), strict=True))
        pc, ph = ({n: par[n] for n in m.params} for m in (cho, heat))
        xc = cho.vector("states", {n: x[n] for n in cho.states})
        uc = [u["F"], x["T"]]  # the culture's temperature is the broth temperature
        q_met = float(cho.h(xc, uc, cho.vector("params", pc))[cho.outputs.index("Q_met")])
        d_cho = np.asarray(cho.f(xc, uc, cho.vector("params", pc))).ravel()
        d_heat = np.asarray(heat.f([x["T"], x["V"]], [u["P_heater"], u["F"], q_met],
                                   heat.vector("params", ph))).ravel()
        expected = {**dict(zip(heat.states, d_heat, strict=True)), **dict(zip(cho.states, d_cho, strict=True))}
        assert q_met > 0.0
        for n in spec.states:
            assert got[n] == pytest.approx(expected[n], rel=1e-12, abs=1e-300), n


def test_composed_batch_holds_temperature_and_matches_the_culture_alone() -> None:
    """Heater at the holding power UA (36.5 - T_amb). Without feed cooling and metabolic heat the broth
    stays at 36.5 degC and the culture part is cho_fedbatch at 36.5 degC; with them (nominal) the broth
    drifts by well under 0.5 K at bench scale."""
    spec, cho = cho_fedbatch_thermal(), cho_fedbatch()
    sim, sim_cho = (Simulator(m, SimulatorConfig(rtol=1e-10, atol=1e-10)) for m in (spec, cho))
    hold = spec.nominal_params["UA"] * (36.5 - spec.nominal_params["T_amb"])
    F = 0.5 / 336
    adiabatic_feed = {**spec.nominal_params, "T_feed": 36.5, "q_O2": 0.0}
    for par, temperature_tol in ((adiabatic_feed, 1e-7), (spec.nominal_params, 0.5)):
        p = np.array(spec.vector("params", par))
        p_cho = np.array(cho.vector("params", {n: par[n] for n in cho.params}))
        x, xc = np.array(spec.vector("states", spec.x0)), np.array(cho.vector("states", cho.x0))
        drift = 0.0
        for _ in range(14):
            x = sim.step(x, np.array([F, hold]), p, 24.0)
            xc = sim_cho.step(xc, np.array([F, 36.5]), p_cho, 24.0)
            drift = max(drift, abs(x[-1] - 36.5))
        assert drift < temperature_tol
        if temperature_tol < 1e-3:
            np.testing.assert_allclose(x[:-1], xc, rtol=1e-6)


def test_builtins_are_registered_and_finite_at_their_initial_state() -> None:
    for name in ("cho_fedbatch", "reactor_thermal", "cho_fedbatch_thermal"):
        spec = resolve_model(name)
        xdot = spec.f(spec.vector("states", spec.x0), spec.vector("inputs", spec.input_safe),
                      spec.vector("params", spec.nominal_params))
        assert np.all(np.isfinite(np.asarray(xdot, dtype=float))), name
    pilot = resolve_model("plant_models.cho_fedbatch_thermal:cho_fedbatch_thermal_pilot")
    assert pilot.x0["V"] == 100.0 and pilot.input_bounds["F"] == (0.0, 10.0)
    assert cho_fedbatch_thermal_pilot().nominal_params["UA"] == 12.0


# --- the rules, on two small models ---------------------------------------------------------------


def _tank(**over: Any) -> ModelSpec:
    """A tank whose outlet concentration C is its only output besides the level."""
    kw: dict[str, Any] = dict(
        name="tank", description="tank",
        states={"V": "L", "C": "g/L"}, inputs={"F": "L/h", "k": "1/h"}, params={"C_in": (5.0, "g/L")},
        rhs=lambda x, u, p: {"V": u["F"], "C": u["F"] / x["V"] * (p["C_in"] - x["C"]) - u["k"] * x["C"]},
        x0={"V": 1.0, "C": 0.0}, input_bounds={"F": (0.0, 1.0), "k": (0.0, 2.0)},
        input_safe={"F": 0.0, "k": 0.0},
    )
    kw.update(over)
    return build_spec(**kw)


def _heater(**over: Any) -> ModelSpec:
    """Temperature of the same tank's contents; its output k is a temperature-dependent rate constant."""
    kw: dict[str, Any] = dict(
        name="heater", description="heater",
        states={"T": "degC", "V": "L"}, inputs={"P": "W", "F": "L/h"}, params={"c": (4000.0, "J/K/L")},
        rhs=lambda x, u, p: {"T": 3600.0 * u["P"] / (p["c"] * x["V"]), "V": u["F"]},
        outputs=lambda x, u, p: {"T": (x["T"], "degC"), "k": (0.01 * x["T"], "1/h")},
        x0={"T": 20.0, "V": 1.0}, input_bounds={"P": (0.0, 100.0), "F": (0.0, 0.5)},
        input_safe={"P": 0.0, "F": 0.0},
    )
    kw.update(over)
    return build_spec(**kw)


def test_small_composition_wires_shares_and_intersects() -> None:
    spec = compose(_tank(), _heater(), name="pair", description="pair", connections={"k": "k"}, shared=("F", "V"))
    assert spec.states == ("V", "C", "T") and spec.inputs == ("F", "P") and spec.params == ("C_in", "c")
    assert spec.outputs == ("V", "C", "T")  # k only feeds the tank: internal
    assert spec.input_bounds["F"] == (0.0, 0.5)  # the tighter of the two pumps
    x, u, p = [2.0, 1.0, 30.0], [0.2, 50.0], [5.0, 4000.0]
    expected = [0.2, 0.2 / 2.0 * (5.0 - 1.0) - 0.01 * 30.0 * 1.0, 3600.0 * 50.0 / (4000.0 * 2.0)]
    np.testing.assert_allclose(np.asarray(spec.f(x, u, p)).ravel(), expected, rtol=1e-14)


def test_rename_resolves_a_clash() -> None:
    spec = compose(_tank(), _heater(), name="pair", description="pair", rename_b={"V": "V_jacket", "F": "F_jacket"},
                   connections={"k": "k"})
    assert spec.states == ("V", "C", "T", "V_jacket") and spec.inputs == ("F", "P", "F_jacket")


@pytest.mark.parametrize(
    ("a", "b", "kwargs", "message"),
    [
        (_tank, _heater, {"connections": {"k": "k"}}, "'F' is in both 'tank' and 'heater': share it or rename"),
        (_tank, _heater, {"connections": {"k": "nope"}, "shared": ("F", "V")}, "has no state or output 'nope'"),
        (_tank, _heater, {"connections": {"F": "T"}, "shared": ("V",)}, "must be an input of exactly one part"),
        (_tank, _heater, {"connections": {"k": "T"}, "shared": ("F", "V")}, "units '1/h' and 'degC'"),
        (_tank, _heater, {"connections": {"k": "k"}, "shared": ("F", "V", "C_in")}, "same kind in both parts"),
        (_tank, lambda: _heater(x0={"T": 20.0, "V": 3.0}), {"connections": {"k": "k"}, "shared": ("F", "V")},
         "disagree on its x0"),
        (_tank, lambda: _heater(input_safe={"P": 0.0, "F": 0.1}), {"connections": {"k": "k"}, "shared": ("F", "V")},
         "disagree on its input safe"),
        (_tank, lambda: _heater(rhs=lambda x, u, p: {"T": u["P"], "V": 2 * u["F"]}),
         {"connections": {"k": "k"}, "shared": ("F", "V")}, "shared state 'V': the parts give different derivatives"),
        (_tank, lambda: _heater(outputs=lambda x, u, p: {"k": (u["P"], "1/h")}),
         {"connections": {"k": "k"}, "shared": ("F", "V")}, "depends on inputs"),
        (_tank, _heater, {"rename_a": {"Q": "R"}}, "rename_a: model 'tank' has no signal 'Q'"),
        (_tank, _heater, {"rename_b": {"P": "F"}}, "rename_b: two signals of 'heater' would both be called"),
    ],
)
def test_inconsistent_compositions_are_refused(a: Any, b: Any, kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ModelError, match=message):
        compose(a(), b(), name="pair", description="pair", **kwargs)
