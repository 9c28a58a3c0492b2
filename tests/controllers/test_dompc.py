"""The do-mpc reference controller against do-mpc's own closed loop, and on a model that is not Haldane."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from types import MappingProxyType

import casadi as ca
import numpy as np
import pytest

from controllers.config import MpcConfig, Objective, dompc_example_config
from controllers.dompc import DoMpcController
from controllers.interfaces import Controller, FloatArray
from plant_models.errors import ModelError, ScenarioError
from plant_models.fedbatch_haldane import fedbatch_haldane
from plant_models.spec import ModelSpec, Symbols, build_spec
from twin.simulator import Simulator

DATA = Path(__file__).resolve().parents[1] / "data"
REF_FINAL_P_S = 1.681883  # do-mpc 5.1.2's own closed loop, tests/data/README.md
X0 = np.array([1.0, 0.5, 0.0, 120.0])


@pytest.fixture(scope="module")
def haldane() -> ModelSpec:
    return fedbatch_haldane()


@pytest.fixture(scope="module")
def p_nom(haldane: ModelSpec) -> FloatArray:
    return np.array(haldane.vector("params", haldane.nominal_params))


def rollout(sim: Simulator, x0: FloatArray, planned_u: FloatArray, p: FloatArray, dt: float) -> FloatArray:
    """States at the interval boundaries when ``planned_u`` is applied with a zero-order hold."""
    xs = [x0]
    for u in planned_u:
        xs.append(sim.step(xs[-1], u, p, dt))
    return np.array(xs)


@pytest.fixture(scope="module")
def closed_loop(haldane: ModelSpec, p_nom: FloatArray) -> dict[str, np.ndarray]:
    """do-mpc's batch_reactor example: 150 steps of 1 h, CVODES plant (1e-10) with ZOH on the input."""
    ctrl: Controller = DoMpcController(haldane, dompc_example_config())
    sim = Simulator(haldane)
    x = X0.copy()
    xs, us, statuses, times = [x], [], [], []
    for k in range(150):
        step = ctrl.step(k * 3600.0, x, p_nom)
        us.append(step.u)
        statuses.append(step.status)
        times.append(step.compute_s)
        x = sim.step(x, step.u, p_nom, 1.0)
        xs.append(x)
    return {
        "x": np.array(xs),
        "u": np.array(us),
        "ok": np.array([s == "ok" for s in statuses]),
        "compute_s": np.array(times),
    }


def test_closed_loop_final_product_matches_dompc(closed_loop: dict[str, np.ndarray]) -> None:
    # Measured: 1.6818834 (reference 1.68188345); the 0.5 % band is the acceptance criterion.
    final_p_s = closed_loop["x"][-1, 2]
    assert final_p_s == pytest.approx(REF_FINAL_P_S, rel=5e-3)
    assert closed_loop["ok"].all()
    assert np.all(closed_loop["compute_s"] > 0)


def test_closed_loop_inputs_within_bounds(closed_loop: dict[str, np.ndarray]) -> None:
    u = closed_loop["u"]
    assert u.shape == (150, 1)
    # IPOPT may sit a hair outside a bound (bound_relax_factor 1e-8); nothing more.
    assert np.all(u >= -1e-8)
    assert np.all(u <= 0.2 + 1e-8)


def test_closed_loop_trajectory_matches_dompc_reference(closed_loop: dict[str, np.ndarray]) -> None:
    ref = np.loadtxt(DATA / "dompc_batch_bioreactor_traj.csv", delimiter=",", comments="#")
    assert ref.shape == (151, 6)
    np.testing.assert_allclose(ref[:, 0], np.arange(151))
    # Same software and settings, so only solver-tolerance noise is expected. Measured maxima:
    # |Δinp| 9.2e-7 L/h; |ΔX_s| 1.8e-7, |ΔS_s| 5.4e-6, |ΔP_s| 1.3e-8 g/L, |ΔV_s| 3.3e-6 L.
    np.testing.assert_allclose(closed_loop["u"][:, 0], ref[:-1, 5], rtol=0, atol=1e-5)
    np.testing.assert_allclose(closed_loop["x"], ref[:, 1:5], rtol=1e-6, atol=5e-5)


def test_plan_is_the_model_under_the_parameters_given_to_step(haldane: ModelSpec, p_nom: FloatArray) -> None:
    """predicted_x is the collocation solution for the p passed to *this* step, not the build-time p."""
    ctrl = DoMpcController(haldane, dompc_example_config())
    sim = Simulator(haldane)
    first = ctrl.step(0.0, X0, p_nom)
    assert first.predicted_x is not None and first.planned_u is not None
    assert first.predicted_x.shape == (21, 4)
    assert first.planned_u.shape == (20, 1)
    np.testing.assert_array_equal(first.planned_u[0], first.u)
    np.testing.assert_array_equal(first.predicted_x[0], X0)
    # Radau deg 2 x 2 elements per hour vs CVODES: measured 2.8e-6 g/L at worst.
    np.testing.assert_allclose(rollout(sim, X0, first.planned_u, p_nom, 1.0), first.predicted_x, atol=2e-5)

    p_new = p_nom.copy()
    p_new[haldane.params.index("S_in")] = 150.0
    second = ctrl.step(3600.0, X0, p_new)
    assert second.status == "ok"
    assert second.predicted_x is not None and second.planned_u is not None
    np.testing.assert_allclose(rollout(sim, X0, second.planned_u, p_new, 1.0), second.predicted_x, atol=2e-5)
    stale = rollout(sim, X0, second.planned_u, p_nom, 1.0)
    assert np.max(np.abs(stale - second.predicted_x)) > 1e-2


def test_robust_multistage_hedges_and_keeps_nominal_branch(haldane: ModelSpec, p_nom: FloatArray) -> None:
    nominal = DoMpcController(haldane, dompc_example_config()).step(0.0, X0, p_nom)
    robust_ctrl = DoMpcController(
        haldane, dompc_example_config(), uncertainty={"Y_x": [0.5, 0.3]}, n_robust=1
    )
    assert robust_ctrl.n_scenarios == 2
    robust = robust_ctrl.step(0.0, X0, p_nom)
    assert robust.status == "ok"
    assert 0.0 - 1e-8 <= robust.u[0] <= 0.2 + 1e-8
    # Guarding against a low-yield scenario changes the decision (measured 0.0107 vs 0.0081 L/h) ...
    assert abs(robust.u[0] - nominal.u[0]) > 1e-3
    # ... and the returned plan is the nominal scenario's (Y_x = 0.5, the first value).
    assert robust.predicted_x is not None and robust.planned_u is not None
    sim = Simulator(haldane)
    np.testing.assert_allclose(rollout(sim, X0, robust.planned_u, p_nom, 1.0), robust.predicted_x, atol=2e-5)


def test_solver_failure_returns_dompc_input_with_ipopt_status(haldane: ModelSpec, p_nom: FloatArray) -> None:
    ctrl = DoMpcController(haldane, dataclasses.replace(dompc_example_config(), max_iter=2))
    step = ctrl.step(0.0, X0, p_nom)
    assert step.status == "Maximum_Iterations_Exceeded"
    assert step.fallback is None
    assert np.all(np.isfinite(step.u))


# --- genericity: a model that is not the Haldane reactor -------------------------------------------


def tank_spec() -> ModelSpec:
    """A linear draining tank in seconds: A dh/dt = q_in - k h; the outflow k h is an output."""

    def rhs(x: Symbols, u: Symbols, p: Symbols) -> dict[str, ca.SX]:
        return {"h": (u["q_in"] - p["k"] * x["h"]) / p["area"]}

    def outputs(x: Symbols, u: Symbols, p: Symbols) -> dict[str, tuple[ca.SX, str]]:
        return {
            "h_meas": (x["h"], "m"),
            "q_out": (p["k"] * x["h"], "m3/s"),
            "q_net": (u["q_in"] - p["k"] * x["h"], "m3/s"),
        }

    return build_spec(
        name="toy_tank",
        description="One-state tank with a linear outlet.",
        states={"h": "m"},
        inputs={"q_in": "m3/s"},
        params={"k": (0.01, "m2/s"), "area": (1.0, "m2")},
        rhs=rhs,
        outputs=outputs,
        x0={"h": 0.5},
        state_bounds={"h": (0.0, 2.0)},
        input_bounds={"q_in": (0.0, 0.05)},
        input_safe={"q_in": 0.0},
        time_unit="s",
        seconds_per_time_unit=1.0,
    )


def tank_config(**objective: dict[str, float]) -> MpcConfig:
    return MpcConfig(
        horizon=10,
        step_s=10.0,
        objective=Objective(**{k: MappingProxyType(v) for k, v in objective.items()}),
        state_bounds=MappingProxyType({"h": (0.0, 1.5)}),
    )


def test_generic_model_maximises_outflow_up_to_the_level_bound() -> None:
    spec = tank_spec()
    p = np.array(spec.vector("params", spec.nominal_params))
    ctrl = DoMpcController(
        spec, tank_config(stage={"q_out": -1.0}, terminal={"q_out": -1.0}, delta_u={"q_in": 0.1})
    )
    assert ctrl.mpc.settings.t_step == pytest.approx(10.0)  # model time unit is the second
    sim = Simulator(spec)
    x = np.array([0.5])
    for k in range(30):
        step = ctrl.step(10.0 * k, x, p)
        assert step.status == "ok"
        assert -1e-8 <= step.u[0] <= 0.05 + 1e-8
        x = sim.step(x, step.u, p, 10.0)
    # Best outflow the level bound allows: h at 1.5 m, fed exactly what drains, k * 1.5 = 0.015 m3/s.
    assert x[0] == pytest.approx(1.5, abs=1e-3)
    assert step.u[0] == pytest.approx(0.015, abs=1e-4)


def test_terminal_cost_on_an_input_dependent_output_is_rejected() -> None:
    with pytest.raises(ScenarioError, match="terminal"):
        DoMpcController(tank_spec(), tank_config(terminal={"q_net": 1.0}))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"uncertainty": {"nope": [1.0]}}, "uncertainty.nope"),
        ({"uncertainty": {"k": []}}, "uncertainty.k"),
        ({"n_robust": -1}, "n_robust"),
        ({"collocation_degree": 0}, "collocation"),
    ],
)
def test_invalid_settings_are_scenario_errors(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ScenarioError, match=match):
        DoMpcController(tank_spec(), tank_config(stage={"h": -1.0}), **kwargs)  # type: ignore[arg-type]


def test_negative_move_weight_is_rejected() -> None:
    with pytest.raises(ScenarioError, match=r"delta_u\.q_in"):
        DoMpcController(tank_spec(), tank_config(delta_u={"q_in": -1.0}))


def test_wrong_state_length_is_a_model_error() -> None:
    spec = tank_spec()
    ctrl = DoMpcController(spec, tank_config(stage={"h": -1.0}))
    with pytest.raises(ModelError, match="x must be a vector of 1"):
        ctrl.step(0.0, np.array([0.5, 0.5]), np.array([0.01, 1.0]))
    assert math.isfinite(ctrl.step(0.0, np.array([0.5]), np.array([0.01, 1.0])).u[0])
