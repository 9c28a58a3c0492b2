"""The whole-batch OCP: converges, its prediction matches CVODES, bounds hold along the path, warm re-solves."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from types import MappingProxyType

import numpy as np
import pytest

from controllers.batch_ocp import BatchOcp, BatchOcpConfig
from controllers.codegen import compile_nlp
from controllers.config import Objective
from plant_models.errors import ScenarioError
from plant_models.fedbatch_haldane import fedbatch_haldane
from twin.simulator import Simulator

X0 = {"X_s": 1.0, "S_s": 0.5, "P_s": 0.0, "V_s": 120.0}


def _haldane(intervals: int = 10) -> BatchOcp:
    spec = fedbatch_haldane()
    config = BatchOcpConfig(
        intervals=intervals,
        objective=Objective(terminal=MappingProxyType({"P_s*V_s": -1.0})),  # product mass, a product name
        state_bounds=MappingProxyType({"X_s": (0.0, 3.7)}),
        input_bounds=MappingProxyType({"inp": (0.0, 0.2)}),
        substeps=8,
    )
    return BatchOcp(spec, config)


def test_optimum_converges_and_its_prediction_matches_cvodes() -> None:
    ocp = _haldane()
    spec = ocp.spec
    x0 = np.array(spec.vector("states", X0))
    p = np.array(spec.vector("params", spec.nominal_params))
    sol = ocp.solve(x0, p, 150.0)
    assert sol.status == "ok"
    assert sol.u.shape == (10, 1) and sol.t[-1] == pytest.approx(150.0)
    assert np.all(sol.u >= 0.0) and np.all(sol.u <= 0.2)
    sim = Simulator(spec)
    x = x0
    for k in range(10):
        x = sim.step(x, sol.u[k], p, 15.0)
    # RK4 with 8 sub-steps of 1.9 h against CVODES at 1e-10: the same final state to 1e-3.
    np.testing.assert_allclose(x, sol.x[-1], rtol=1e-3)
    assert sol.objective == pytest.approx(-x[2] * x[3], rel=1e-3)
    # Feeding nothing is feasible but worse: the optimum found something to control.
    x_idle = x0
    for _ in range(10):
        x_idle = sim.step(x_idle, np.zeros(1), p, 15.0)
    assert x[2] * x[3] > 1.5 * x_idle[2] * x_idle[3]


def test_soft_state_bounds_hold_at_every_substep_when_feasible() -> None:
    ocp = _haldane()
    spec = ocp.spec
    p = np.array(spec.vector("params", spec.nominal_params))
    sol = ocp.solve(np.array(spec.vector("states", X0)), p, 150.0)
    sim = Simulator(spec)
    x = sol.x[0]
    worst = 0.0
    for k in range(10):
        for _ in range(8):
            x = sim.step(x, sol.u[k], p, 15.0 / 8)
            worst = max(worst, x[0])
    assert worst <= 3.7 * (1 + 1e-3)


def test_warm_resolve_from_a_nearby_state_takes_fewer_iterations() -> None:
    ocp = _haldane()
    spec = ocp.spec
    p = np.array(spec.vector("params", spec.nominal_params))
    x0 = np.array(spec.vector("states", X0))
    cold = ocp.solve(x0, p, 150.0)
    x1 = Simulator(spec).step(x0, cold.u[0], p, 1.0)
    warm = ocp.solve(x1, p, 149.0)
    assert warm.status == "ok"
    assert warm.iterations < cold.iterations


def test_batch_grid_cuts_the_interval_under_way_and_skips_those_over() -> None:
    ocp = BatchOcp(fedbatch_haldane(), replace(_haldane().config, batch_length=150.0))
    np.testing.assert_array_equal(ocp.durations(150.0), np.full(10, 15.0))
    np.testing.assert_allclose(ocp.durations(140.0), [5.0] + [15.0] * 9)
    np.testing.assert_allclose(ocp.durations(120.0), [0.0, 0.0] + [15.0] * 8)
    np.testing.assert_allclose(ocp.durations(1.0), [0.0] * 9 + [1.0])
    for remaining in (150.0, 131.3, 120.0, 7.5, 0.2):
        assert ocp.durations(remaining).sum() == pytest.approx(remaining, rel=1e-12)
    # The default grid: N equal parts of what remains.
    np.testing.assert_allclose(_haldane().durations(140.0), np.full(10, 14.0))


def test_batch_grid_resolve_along_its_own_plan_keeps_the_plan_in_a_few_iterations() -> None:
    """Bellman: from the state the plan predicted, the rest of the plan is still optimal. On the fixed grid
    the previous solution is that plan node for node, so the warm re-solve has almost nothing to do; on
    the moving grid the same re-solve starts from nodes that sit elsewhere in time."""
    spec = fedbatch_haldane()
    p = np.array(spec.vector("params", spec.nominal_params))
    x0 = np.array(spec.vector("states", X0))
    fixed = BatchOcp(spec, replace(_haldane().config, batch_length=150.0, warm_mu_strategy="adaptive"))
    moving = _haldane()
    iterations = {}
    for name, ocp in (("fixed", fixed), ("moving", moving)):
        cold = ocp.solve(x0, p, 150.0)
        assert cold.status == "ok"
        # The state the plan predicts 20 h in (interval 1 is 5 h old), with the problem's own RK4.
        x20 = ocp.rollout(x0, cold.u[:2], p, np.array([15.0, 5.0]))[-1]
        warm = ocp.solve(x20, p, 130.0)
        assert warm.status == "ok"
        iterations[name] = warm.iterations
        if name == "fixed":
            assert warm.u.shape == (9, 1) and warm.t[1] == pytest.approx(10.0)  # 10 h left of interval 1
            np.testing.assert_allclose(warm.u, cold.u[1:], atol=1e-3)  # L/h, on a 0.2 L/h pump
            assert warm.objective == pytest.approx(cold.objective, rel=1e-5)
    assert iterations["fixed"] <= 5 < iterations["moving"]


@pytest.mark.parametrize("name", ["nope", "X_s*nope", "X_s*S_s*P_s"])
def test_unknown_signal_is_a_one_line_error(name: str) -> None:
    config = BatchOcpConfig(intervals=2, objective=Objective(terminal=MappingProxyType({name: -1.0})))
    with pytest.raises(ScenarioError, match=r"^objective\.terminal\..*has no signal"):
        BatchOcp(fedbatch_haldane(), config)


def test_compiled_problem_gives_the_interpreted_solution(tmp_path: Path) -> None:
    spec = fedbatch_haldane()
    config = _haldane().config
    x0 = np.array(spec.vector("states", X0))
    p = np.array(spec.vector("params", spec.nominal_params))
    interpreted = BatchOcp(spec, config).solve(x0, p, 150.0)
    compiled_ocp = BatchOcp(spec, replace(config, compiled=True, cache_dir=str(tmp_path)))
    assert compiled_ocp.compile_note == "compiled"
    assert len(list(tmp_path.glob("batch_ocp_nlp_*.so"))) == 1
    compiled = compiled_ocp.solve(x0, p, 150.0)
    assert compiled.status == interpreted.status == "ok"
    assert compiled.iterations == interpreted.iterations
    np.testing.assert_allclose(compiled.u, interpreted.u, rtol=1e-8, atol=1e-10)
    # A second build of the same problem loads the cached object instead of compiling again.
    assert BatchOcp(spec, replace(config, compiled=True, cache_dir=str(tmp_path))).compile_note == "reused"


def test_without_a_compiler_the_problem_stays_interpreted(tmp_path: Path) -> None:
    ocp = _haldane()
    path, note = compile_nlp(ocp._solver, tmp_path, compiler="no-such-cc")
    assert path is None and note == "no C compiler found: interpreted"
    assert not any(tmp_path.iterdir())
