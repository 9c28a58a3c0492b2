"""Structure-exploiting NMPC: SQP on the stage-wise problem, every QP solved by HPIPM.

Two modes (``MpcConfig.mode``):

* ``"converged"``: full-step SQP with exact (eigen-clipped) Lagrangian Hessian from the shifted
  previous primal-dual solution, until the step is below ``tol`` (typically 3–6 iterations).
* ``"rti"`` (real-time iteration, Diehl et al.): one SQP step per sample. The *preparation*
  (evaluate and convexify the Hessian, linearise the dynamics, build the QP at the shifted guess)
  does not need the measurement, because the measurement enters only through the bounds of ``z_0``;
  it runs right after ``u`` has been decided, for the next step. The *feedback* on a new measurement
  is then one HPIPM solve. The error of not iterating to convergence is contracted step after step
  along the closed loop, since each sample starts from the previous step's improved plan.

Compute budget (``MpcConfig.budget_s``): before each further SQP iteration the controller predicts
its cost from the last one; if the budget would be exceeded it stops and returns the current iterate
(``fallback="budget_iterate"``: it satisfies bounds and linearised dynamics) or, when not even one
iteration fits, the previous plan shifted by one interval (``fallback="shifted_plan"``).

A failed solve (an infeasible QP, a NaN from the model, a twin state that is not finite — status
``qp_error: ...`` or ``not_finite`` for the last two) falls back to the previous plan shifted by one
interval, and the next step starts cold from the new state; a failure with no plan is a safe hold.
"""

from __future__ import annotations

import time

import numpy as np

from controllers.codegen import Compiled, compile_function
from controllers.config import MpcConfig
from controllers.hpipm_qp import PreparedQp, QpSolution, StagewiseQp
from controllers.interfaces import ControlStep, FloatArray
from controllers.live_bounds import set_stage_bounds
from controllers.stagewise import StagewiseOcp, build_stagewise
from plant_models.spec import ModelSpec


class SqpMpc:
    """NMPC by SQP with HPIPM, converged or real-time iteration. Create with ``build_mpc``.

    Attributes:
        name: ``"nmpc"``.
        ocp: the stage-wise problem.
        compiled: how the stage derivatives are evaluated (compiled C or interpreted), and why.
    """

    name = "nmpc"

    def __init__(self, spec: ModelSpec, config: MpcConfig) -> None:
        """Build the stage-wise problem, its derivative functions and the HPIPM solver (once)."""
        self.spec = spec
        self.config = config
        self.ocp: StagewiseOcp = build_stagewise(spec, config)
        prep_fn = self.ocp.prep_fn
        if config.compiled:
            self.compiled: Compiled = compile_function(prep_fn, config.cache_dir)
        else:
            self.compiled = Compiled(prep_fn, False, None, False, "interpreted (compiled = false)")
        self._prep_fn = self.compiled.function
        self._qp = StagewiseQp(self.ocp)
        self._u_prev = np.array([spec.input_safe[name] for name in spec.inputs], dtype=float)
        self._w: FloatArray | None = None
        self._lam = np.zeros(self._qp.ng)
        self._prepared: PreparedQp | None = None
        self._iter_s: float | None = None  # wall time of the last SQP iteration (budget prediction)

    def set_bounds(self, name: str, lo: float, hi: float) -> tuple[float, float]:
        """Bound state or input ``name`` to ``[lo, hi]`` from the next step on (an operator action).

        The prepared QP (RTI) holds the old bounds and the warm start (the shifted plan and its
        multipliers) may lie outside the new ones: all three are dropped, and the next step starts cold
        (a rollout within the new bounds, iterated to convergence), as after a fallback to safe hold. A
        QP linearised at the old plan after a tightening below the current input was measured to fail.

        Returns:
            The old bounds.

        Raises:
            ScenarioError: an unknown name, or bounds that admit no value.
        """
        ocp = self.ocp
        old = set_stage_bounds(
            ocp.lbw, ocp.ubw, self.spec, name, (lo, hi), horizon=ocp.n, block=ocp.nv, input_offset=ocp.nz
        )
        self._prepared = None
        self._w = None
        self._lam = np.zeros(self._qp.ng)
        return old

    # -- preparation: everything that does not need the measurement ---------------------------
    def prepare(self, w: FloatArray, lam: FloatArray, p: FloatArray) -> PreparedQp:
        """Linearise at guess ``w`` with multipliers ``lam`` and parameters ``p``: the QP minus ``z_0``."""
        ocp = self.ocp
        n, nz, nv = ocp.n, ocp.nz, ocp.nv
        h_dm, a, grad, b = self._prep_fn(w, lam, p)
        h_flat = np.asarray(h_dm, dtype=float).ravel()
        h_nz = np.concatenate([
            self._qp.convexify(h_flat[: n * nv * nv].reshape(n, nv, nv)).ravel(),
            self._qp.convexify(h_flat[n * nv * nv :].reshape(nz, nz)).ravel(),
        ])
        return PreparedQp(w, p.copy(), h_nz, a, grad, b, ocp.lbw - w, ocp.ubw - w)

    # -- feedback: the part that needs the measurement -----------------------------------------
    def _feedback(self, prep: PreparedQp, z0: FloatArray) -> QpSolution:
        """Pin ``z_0`` to the measurement and solve the prepared QP for the step from ``prep.w``."""
        nz = self.ocp.nz
        lbd, ubd = prep.lbd.copy(), prep.ubd.copy()
        lbd[:nz] = ubd[:nz] = z0 - prep.w[:nz]
        return self._qp.solve(prep.h_nz, prep.a, prep.grad, prep.b, lbd, ubd)

    def _over_budget(self, start: float) -> bool:
        """Would one more iteration (as long as the last one) end after the budget?"""
        budget = self.config.budget_s
        if budget is None or self._iter_s is None:
            return False
        return time.perf_counter() - start + self._iter_s > budget

    def step(self, t_s: float, x: FloatArray, p: FloatArray) -> ControlStep:
        """Decide the input from state ``x`` and parameters ``p`` (see module docstring for modes).

        On QP failure (e.g. an infeasible state) the controller falls back to the previous plan
        shifted by one interval (``fallback="shifted_plan"``), or to the safe inputs if it has none.
        """
        start = time.perf_counter()
        ocp, cfg = self.ocp, self.config
        x = np.asarray(x, dtype=float).ravel()
        p = np.asarray(p, dtype=float).ravel()
        z0 = ocp.z0(x, self._u_prev)
        had_plan = self._w is not None
        w = ocp.rollout(x, self._u_prev, p) if self._w is None else self._w
        lam = self._lam
        # RTI takes one step per sample from a plan that is already nearly optimal; from a cold start
        # (first step, or after a fallback dropped the plan) it first iterates to convergence.
        rti = cfg.mode == "rti" and had_plan
        max_iter = 1 if rti else cfg.max_iter
        status, fallback, iterations, ok = "ok", None, 0, False
        if not (np.all(np.isfinite(x)) and np.all(np.isfinite(p))):
            # A NaN in the twin's state or parameters would reach the QP's bounds (HPIPM refuses them
            # with an exception): no iteration, the fallback below decides.
            status, max_iter = "not_finite", 0
        while iterations < max_iter:
            if self._over_budget(start):
                status = "budget_exceeded"
                break
            t_iter = time.perf_counter()
            prep = self._prepared
            if prep is None or prep.w is not w or not np.array_equal(prep.p, p):
                prep = self.prepare(w, lam, p)
            self._prepared = None
            try:
                sol = self._feedback(prep, z0)
            except RuntimeError as exc:  # an ill-posed QP (a NaN from the model at an odd state)
                iterations += 1
                status, ok = f"qp_error: {str(exc).splitlines()[-1][:120]}", False
                break
            iterations += 1
            self._iter_s = time.perf_counter() - t_iter
            ok = sol.ok and bool(np.all(np.isfinite(sol.d)))
            if not ok:
                status = sol.status if sol.status != "ok" else "not_finite"
                break
            # Full steps: from the shifted previous solution the iterate is close enough for the
            # local convergence of exact-Hessian SQP (each step measured: about 10x smaller).
            w, lam = w + sol.d, sol.lam_g
            if rti or float(np.max(np.abs(sol.d))) <= cfg.tol:
                break
        else:
            if max_iter > 0:
                status = "max_iter"
            ok = False
        if status == "budget_exceeded" and iterations > 0:
            ok, fallback = True, "budget_iterate"  # the last QP step: bounds and linearised dynamics hold

        nx, nz, nv = ocp.nx, ocp.nz, ocp.nv
        plan = w
        if not ok:
            if had_plan and self._w is not None:
                plan = self._w  # already the previous plan shifted by one interval
                fallback = "shifted_plan"
            else:
                plan = ocp.rollout(x, self._u_prev, p)
                plan[nz:nv] = [self.spec.input_safe[name] for name in self.spec.inputs]
                fallback = "safe_hold"
        # HPIPM meets bounds to its tolerance (~1e-8); the plant refuses any out-of-range setpoint.
        u = np.clip(plan[nz:nv], ocp.lbw[nz:nv], ocp.ubw[nz:nv])
        feedback_s = time.perf_counter() - start

        # After the feedback: shift the primal-dual solution, and (RTI) prepare the next QP.
        self._lam = np.concatenate([lam[nz:], lam[-nz:]]) if ok else np.zeros(self._qp.ng)
        self._u_prev = u
        # Without a plan to shift (safe hold) the next step starts cold, and converges first. So does the
        # step after a failed solve (not one cut short by the budget): the plan may be what failed — a NaN
        # from the model at the odd state it passes through poisons every QP linearised along it (found by
        # tests/faults/test_solver_faults.py: the shifted plan was used to the end of the batch). A second
        # failure in a row, with no plan left, is a safe hold.
        cold = fallback == "safe_hold" or (fallback == "shifted_plan" and status != "budget_exceeded")
        self._w = None if cold else ocp.shift(plan)
        n = ocp.n
        stages = plan[: n * nv].reshape(n, nv)
        predicted_x = np.vstack([stages[:, :nx], plan[n * nv : n * nv + nx]])
        planned_u = stages[:, nz:].copy()
        if cfg.mode == "rti" and self._w is not None:
            # At the shifted plan with this step's parameters: ready before the next measurement.
            self._prepared = self.prepare(self._w, self._lam, p)
        return ControlStep(
            u=u,
            status=status,
            compute_s=time.perf_counter() - start,
            fallback=fallback,
            predicted_x=predicted_x,
            planned_u=planned_u,
            iterations=iterations,
            feedback_s=feedback_s,
        )
