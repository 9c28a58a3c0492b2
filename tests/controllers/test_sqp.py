"""The structure-exploiting NMPC (SQP with HPIPM): same closed loop as Ipopt, RTI close to it, budget
fallbacks, compiled derivatives cached on disk, configuration errors."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from controllers.codegen import compile_function
from controllers.config import MpcConfig, dompc_example_config
from controllers.interfaces import FloatArray
from controllers.nmpc import Mpc, build_mpc
from controllers.sqp import SqpMpc
from plant_models import ScenarioError
from plant_models.fedbatch_haldane import fedbatch_haldane
from twin.simulator import Simulator

DOMPC_FINAL_P = 1.681883  # do-mpc 5.1.2's closed-loop result on this problem (tests/data README)
X0 = np.array([1.0, 0.5, 0.0, 120.0])
Loop = tuple[FloatArray, FloatArray, list[str | None]]


def closed_loop(config: MpcConfig, steps: int = 150) -> Loop:
    """Run ``config``'s NMPC against the CVODES plant from X0 (nominal parameters, no mismatch)."""
    spec = fedbatch_haldane()
    mpc = build_mpc(spec, config)
    sim = Simulator(spec)
    p = np.array(spec.vector("params", spec.nominal_params))
    x, xs, us, fallbacks = X0, [X0], [], []
    for k in range(steps):
        step = mpc.step(3600.0 * k, x, p)
        fallbacks.append(step.fallback)
        us.append(step.u)
        x = sim.step(x, step.u, p, 1.0)
        xs.append(x)
    return np.array(xs), np.array(us), fallbacks


def closed_loop_objective(xs: FloatArray, us: FloatArray) -> float:
    """The problem's objective along the closed loop: -sum P_s(k) - P_s(N) + sum (u_k - u_k-1)^2."""
    du = np.diff(np.concatenate([[0.0], us[:, 0]]))
    return float(-np.sum(xs[:-1, 2]) - xs[-1, 2] + np.sum(du**2))


@pytest.fixture(scope="module")
def ipopt_loop() -> Loop:
    return closed_loop(dompc_example_config())


@pytest.fixture(scope="module")
def sqp_loop() -> Loop:
    return closed_loop(replace(dompc_example_config(), solver="sqp-hpipm"))


@pytest.fixture(scope="module")
def rti_loop() -> Loop:
    return closed_loop(replace(dompc_example_config(), solver="sqp-hpipm", mode="rti"))


def test_build_mpc_picks_the_solver_path() -> None:
    spec = fedbatch_haldane()
    assert isinstance(build_mpc(spec, dompc_example_config()), Mpc)
    assert isinstance(build_mpc(spec, replace(dompc_example_config(), solver="sqp-hpipm")), SqpMpc)


def test_converged_sqp_gives_the_ipopt_closed_loop(ipopt_loop: Loop, sqp_loop: Loop) -> None:
    xs_i, us_i, _ = ipopt_loop
    xs_s, us_s, fallbacks = sqp_loop
    assert fallbacks == [None] * 150
    # Same NLP, both solved to 1e-8: measured 3.2e-5 L/h on the feed, 3e-4 of a state's range
    # (the plant integrates the small input differences over 150 h).
    assert np.max(np.abs(us_s - us_i)) < 1e-4
    scale = np.ptp(xs_i, axis=0)
    assert np.max(np.abs(xs_s - xs_i) / scale) < 1e-3
    assert xs_s[-1, 2] == pytest.approx(xs_i[-1, 2], rel=1e-5)
    assert closed_loop_objective(xs_s, us_s) == pytest.approx(closed_loop_objective(xs_i, us_i), rel=1e-6)


def test_rti_stays_close_to_the_converged_closed_loop(sqp_loop: Loop, rti_loop: Loop) -> None:
    xs_c, us_c, _ = sqp_loop
    xs_r, us_r, fallbacks = rti_loop
    assert fallbacks == [None] * 150
    assert xs_r[-1, 2] == pytest.approx(DOMPC_FINAL_P, rel=2e-3)
    # Measured: closed-loop objective within 1e-5 (relative) of the converged one, feed within
    # 7.5e-5 L/h, states within 0.16 % of their range.
    j_c, j_r = closed_loop_objective(xs_c, us_c), closed_loop_objective(xs_r, us_r)
    assert abs(j_r - j_c) / abs(j_c) < 1e-4
    assert np.max(np.abs(us_r - us_c)) < 5e-4
    assert np.max(np.abs(xs_r - xs_c) / np.ptp(xs_c, axis=0)) < 5e-3
    assert np.all(us_r >= 0.0) and np.all(us_r <= 0.2)


def test_rti_prepares_before_the_measurement_and_reports_its_latency() -> None:
    spec = fedbatch_haldane()
    mpc = build_mpc(spec, replace(dompc_example_config(), solver="sqp-hpipm", mode="rti"))
    assert isinstance(mpc, SqpMpc)
    p = np.array(spec.vector("params", spec.nominal_params))
    first = mpc.step(0.0, X0, p)
    assert first.iterations is not None and first.iterations > 1  # cold start: converged first
    prepared = mpc._prepared
    assert prepared is not None and prepared.w is mpc._w  # linearised at the shifted plan
    second = mpc.step(3600.0, X0 * 1.001, p)
    assert second.iterations == 1 and second.status == "ok"
    assert second.feedback_s is not None and 0 < second.feedback_s < second.compute_s


def test_budget_returns_the_last_iterate_then_the_shifted_plan() -> None:
    spec = fedbatch_haldane()
    p = np.array(spec.vector("params", spec.nominal_params))
    mpc = build_mpc(spec, replace(dompc_example_config(), solver="sqp-hpipm", budget_s=1e-6))
    # No timing yet: one iteration runs, then the next would exceed the budget.
    first = mpc.step(0.0, X0, p)
    assert (first.status, first.fallback, first.iterations) == ("budget_exceeded", "budget_iterate", 1)
    assert first.planned_u is not None
    assert 0.0 <= first.u[0] <= 0.2
    # Now one iteration is known to take longer than the budget: the previous plan, shifted.
    second = mpc.step(3600.0, X0, p)
    assert (second.status, second.fallback, second.iterations) == ("budget_exceeded", "shifted_plan", 0)
    np.testing.assert_allclose(second.u, first.planned_u[1])


def test_ipopt_budget_falls_back_to_the_shifted_plan() -> None:
    spec = fedbatch_haldane()
    p = np.array(spec.vector("params", spec.nominal_params))
    mpc = build_mpc(spec, dompc_example_config())
    good = mpc.step(0.0, X0, p)
    assert good.planned_u is not None
    tight = build_mpc(spec, replace(dompc_example_config(), budget_s=1e-6))
    tight._w0 = mpc._w0  # same warm start as the unconstrained controller
    tight._u_prev = mpc._u_prev
    late = tight.step(3600.0, X0, p)
    assert late.status == "Maximum_WallTime_Exceeded" and late.fallback == "shifted_plan"
    np.testing.assert_allclose(late.u, good.planned_u[1])


@pytest.mark.parametrize("mode", ["converged", "rti"])
def test_infeasible_state_falls_back(mode: str) -> None:
    spec = fedbatch_haldane()
    p = np.array(spec.vector("params", spec.nominal_params))
    cfg = replace(dompc_example_config(), solver="sqp-hpipm", mode=mode, max_iter=30)
    # X_s = 10 g/L cannot be diluted below the 3.7 g/L cap within one hour at <= 0.2 L/h.
    impossible = np.array([10.0, 0.5, 0.0, 120.0])
    first = build_mpc(spec, cfg).step(0.0, impossible, p)
    assert first.status != "ok" and first.fallback == "safe_hold"
    np.testing.assert_array_equal(first.u, [0.0])

    mpc = build_mpc(spec, cfg)
    good = mpc.step(0.0, X0, p)
    assert good.planned_u is not None
    bad = mpc.step(3600.0, impossible, p)
    assert bad.status != "ok" and bad.fallback == "shifted_plan"
    np.testing.assert_allclose(bad.u, good.planned_u[1])


def test_compiled_derivatives_are_cached_and_match_the_interpreted_ones(tmp_path: Path) -> None:
    spec = fedbatch_haldane()
    p = np.array(spec.vector("params", spec.nominal_params))
    cfg = replace(dompc_example_config(), solver="sqp-hpipm", compiled=True, cache_dir=str(tmp_path))
    first = SqpMpc(spec, cfg)
    assert first.compiled.compiled and not first.compiled.reused and first.compiled.path is not None
    assert first.compiled.path.parent == tmp_path
    second = SqpMpc(spec, cfg)
    assert second.compiled.reused and second.compiled.path == first.compiled.path
    assert len(list(tmp_path.glob("*.so"))) == 1
    interpreted = SqpMpc(spec, replace(cfg, compiled=False))
    w = interpreted.ocp.rollout(X0, np.array([0.01]), p)
    lam = np.linspace(-1.0, 1.0, interpreted.ocp.n * interpreted.ocp.nz)
    for ours, theirs in zip(second.ocp.prep_fn(w, lam, p), second._prep_fn(w, lam, p), strict=True):
        assert ours.sparsity() == theirs.sparsity()
        np.testing.assert_allclose(np.asarray(theirs), np.asarray(ours), rtol=1e-12, atol=1e-12)
    u_compiled = second.step(0.0, X0, p).u
    np.testing.assert_allclose(u_compiled, interpreted.step(0.0, X0, p).u, rtol=1e-9, atol=1e-12)


def test_without_a_compiler_the_interpreted_path_is_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = fedbatch_haldane()
    fn = SqpMpc(spec, replace(dompc_example_config(), solver="sqp-hpipm")).ocp.prep_fn
    missing = compile_function(fn, tmp_path, compiler="no-such-cc-bioimp")
    assert not missing.compiled and missing.function is fn and "no C compiler" in missing.note
    monkeypatch.setenv("PATH", str(tmp_path))  # neither $CC, gcc nor cc can be found
    monkeypatch.delenv("CC", raising=False)
    mpc = SqpMpc(spec, replace(dompc_example_config(), solver="sqp-hpipm", compiled=True, cache_dir=str(tmp_path)))
    assert not mpc.compiled.compiled
    assert list(tmp_path.iterdir()) == []
    p = np.array(spec.vector("params", spec.nominal_params))
    assert mpc.step(0.0, X0, p).status == "ok"


def test_a_failing_compiler_falls_back_too(tmp_path: Path) -> None:
    spec = fedbatch_haldane()
    fn = SqpMpc(spec, replace(dompc_example_config(), solver="sqp-hpipm")).ocp.prep_fn
    result = compile_function(fn, tmp_path, compiler="false")  # exists, exits 1
    assert not result.compiled and "compiling failed" in result.note


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"solver": "fatrop"}, r"^controller\.solver: unknown solver 'fatrop'"),
        ({"mode": "fast"}, r"^controller\.mode: unknown mode 'fast'"),
        ({"mode": "rti"}, r"^controller\.mode: 'rti' needs solver 'sqp-hpipm', got 'ipopt'$"),
        ({"budget_s": 0.0}, r"^controller\.budget_s must be a positive number, got 0\.0$"),
        ({"budget_s": float("nan")}, r"^controller\.budget_s must be a positive number"),
        ({"compiled": True}, r"^controller\.compiled: needs solver 'sqp-hpipm', got 'ipopt'$"),
    ],
)
def test_bad_solver_config_is_a_one_line_error(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ScenarioError, match=message) as info:
        replace(dompc_example_config(), **changes)  # type: ignore[arg-type]
    assert "\n" not in str(info.value)
