"""A bound changed between two steps (an operator action): the next input and plan respect it."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from controllers.config import dompc_example_config
from controllers.live_bounds import AdjustableBounds
from controllers.nmpc import build_mpc
from controllers.pid import Pid
from plant_models import ScenarioError
from plant_models.fedbatch_haldane import fedbatch_haldane
from twin.simulator import Simulator

X0 = np.array([1.0, 0.5, 0.0, 120.0])


@pytest.mark.parametrize("solver", [{"solver": "ipopt"}, {"solver": "sqp-hpipm", "mode": "rti"}])
def test_a_tightened_input_bound_holds_from_the_next_step(solver: dict[str, str]) -> None:
    spec = fedbatch_haldane()
    mpc = build_mpc(spec, replace(dompc_example_config(), **solver))
    assert isinstance(mpc, AdjustableBounds)
    sim, p = Simulator(spec), np.array(spec.vector("params", spec.nominal_params))
    x, k, u = X0, 0, 0.0
    while u < 1e-3:  # run until the controller feeds
        step = mpc.step(3600.0 * k, x, p)
        u = float(step.u[0])
        x, k = sim.step(x, step.u, p, 1.0), k + 1
        assert k < 100, "the controller never fed"
    cap = u / 2
    assert mpc.set_bounds("inp", 0.0, cap) == (0.0, 0.2)
    step = mpc.step(3600.0 * k, x, p)
    assert step.fallback is None and step.u[0] <= cap + 1e-12  # a fresh solution, not a fallback
    assert step.planned_u is not None and np.max(step.planned_u) <= cap + 1e-6
    assert mpc.set_bounds("X_s", 0.0, 3.0) == (0.0, 3.7)  # a state bound (stages 1..N)
    with pytest.raises(ScenarioError, match="no such state or input"):
        mpc.set_bounds("nope", 0.0, 1.0)
    with pytest.raises(ScenarioError, match="admits no value"):
        mpc.set_bounds("inp", 0.2, 0.1)


def test_a_controller_without_solve_time_bounds_is_not_adjustable() -> None:
    assert not isinstance(Pid.__new__(Pid), AdjustableBounds)
