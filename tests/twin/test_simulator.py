"""The simulator reproduces do-mpc's own simulator (tests/data, see its README for the origin)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from plant_models import SolverFailed
from plant_models.fedbatch_haldane import fedbatch_haldane
from twin.simulator import Simulator, SimulatorConfig

DATA = Path(__file__).parents[1] / "data"


def test_reproduces_dompc_open_loop_to_1e_6_relative() -> None:
    ref = np.loadtxt(DATA / "dompc_batch_bioreactor_openloop.csv", delimiter=",", comments="#")
    spec = fedbatch_haldane()
    sim = Simulator(spec)
    p = np.array(spec.vector("params", spec.nominal_params))
    x = ref[0, 1:5]
    worst = 0.0
    for k in range(1, len(ref)):
        x = sim.step(x, ref[k - 1, 5:6], p, ref[k, 0] - ref[k - 1, 0])
        expected = ref[k, 1:5]
        assert np.all(expected != 0.0)
        worst = max(worst, float(np.max(np.abs(x / expected - 1.0))))
    assert len(ref) == 101
    assert worst <= 1e-6, f"largest relative error {worst:.2e}"


def test_step_length_is_a_parameter_not_a_rebuild() -> None:
    spec = fedbatch_haldane()
    sim = Simulator(spec)
    p = np.array(spec.vector("params", spec.nominal_params))
    x0 = np.array([1.0, 0.5, 0.0, 120.0])
    u = np.array([0.02])
    two_halves = sim.step(sim.step(x0, u, p, 0.5), u, p, 0.5)
    # CVODES at 1e-10 takes different internal steps for 2 x 0.5 h than for 1 h: agree to 1e-7.
    np.testing.assert_allclose(two_halves, sim.step(x0, u, p, 1.0), rtol=1e-7)
    np.testing.assert_array_equal(sim.step(x0, u, p, 0.0), x0)


def test_volume_is_the_integral_of_the_feed() -> None:
    spec = fedbatch_haldane()
    sim = Simulator(spec, SimulatorConfig(rtol=1e-8, atol=1e-8))
    p = np.array(spec.vector("params", spec.nominal_params))
    x = sim.step(np.array([1.0, 0.5, 0.0, 120.0]), np.array([0.1]), p, 7.0)
    assert x[3] == pytest.approx(120.7, rel=1e-9)


def test_non_finite_state_raises_solver_failed() -> None:
    spec = fedbatch_haldane()
    sim = Simulator(spec)
    p = np.array(spec.vector("params", spec.nominal_params))
    with pytest.raises(SolverFailed):
        sim.step(np.array([1.0, 0.5, 0.0, np.nan]), np.array([0.1]), p, 1.0)


def test_bad_tolerances_are_refused() -> None:
    with pytest.raises(ValueError, match="positive"):
        SimulatorConfig(rtol=0.0)
