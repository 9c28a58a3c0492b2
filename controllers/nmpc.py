"""Economic NMPC built once from a ModelSpec with CasADi: direct multiple shooting, warm-started.

:func:`build_mpc` chooses the solver path from ``MpcConfig.solver``: ``"ipopt"`` (this module's
:class:`Mpc`) or ``"sqp-hpipm"`` (:class:`controllers.sqp.SqpMpc`, structure-exploiting, with the
real-time iteration mode). This module's path:

Build time (symbolic): the model's ``f`` is discretised with RK4 (``substeps`` per interval), the
objective and bounds are assembled, and the NLP is frozen into one ``nlpsol`` with expanded SX graphs.
Decision variables are ordered stage-wise ``[x_0, u_0, x_1, u_1, ..., x_N]`` so structure-exploiting
solvers can be dropped in. Run time (numeric): each ``step`` only fills parameter vectors, calls the
frozen solver and shifts the solution (primal and dual) to warm-start the next call.
"""

from __future__ import annotations

import math
import time
from typing import Any

import casadi as ca
import numpy as np

from controllers.config import IPOPT_WARM_START, MpcConfig
from controllers.interfaces import ControlStep, FloatArray
from controllers.ipopt import ipopt_nlpsol
from controllers.live_bounds import set_stage_bounds
from controllers.sqp import SqpMpc
from controllers.stagewise import rk4_step, weighted_signals
from plant_models.spec import ModelSpec

_OK_STATUSES = frozenset({"Solve_Succeeded", "Solved_To_Acceptable_Level"})


_weighted_signals = weighted_signals


class Mpc:
    """A built NMPC: call :meth:`step` each sample period. Create with :func:`build_mpc`."""

    name = "nmpc"

    def __init__(self, spec: ModelSpec, config: MpcConfig) -> None:
        """Build the frozen solver (prefer :func:`build_mpc`)."""
        config.check_against(spec)
        self.spec = spec
        self.config = config
        n, nx, nu = config.horizon, spec.nx, spec.nu
        dt = config.dt_model(spec)
        step_fn = rk4_step(spec, dt, config.substeps)
        self._step_fn = step_fn
        stage = _weighted_signals(spec, dict(config.objective.stage))
        terminal = _weighted_signals(spec, dict(config.objective.terminal))
        du_w = ca.DM([config.objective.delta_u.get(name, 0.0) for name in spec.inputs])

        x_init = ca.SX.sym("x_init", nx)
        p = ca.SX.sym("p", spec.np)
        u_prev = ca.SX.sym("u_prev", nu)
        xs = [ca.SX.sym(f"x{k}", nx) for k in range(n + 1)]
        us = [ca.SX.sym(f"u{k}", nu) for k in range(n)]
        w: list[ca.SX] = []
        # Every constraint block has -1 on the state it defines (x_init - x_0, F(x_k, u_k) - x_k+1),
        # so shifting the multipliers by one block is a valid dual warm start.
        g: list[ca.SX] = [x_init - xs[0]]
        cost = ca.SX(0)
        last_u = u_prev
        for k in range(n):
            w += [xs[k], us[k]]
            # do-mpc's convention: stage cost at the start of each interval, move penalty on Δu.
            cost += stage(xs[k], us[k], p) + ca.dot(du_w, (us[k] - last_u) ** 2)
            g.append(step_fn(xs[k], us[k], p) - xs[k + 1])
            last_u = us[k]
        w.append(xs[n])
        cost += terminal(xs[n], ca.DM.zeros(nu), p)

        xb, ub = config.bounds(spec)
        free = [(-math.inf, math.inf)] * nx
        lbw: list[float] = []
        ubw: list[float] = []
        for k in range(n + 1):
            # x_0 is pinned by the equality constraint to the estimate; bounding it too would make a
            # slightly out-of-bounds estimate infeasible instead of letting the plan recover.
            for lo, hi in free if k == 0 else xb:
                lbw.append(lo)
                ubw.append(hi)
            if k < n:
                for lo, hi in ub:
                    lbw.append(lo)
                    ubw.append(hi)
        self._lbw = np.array(lbw)
        self._ubw = np.array(ubw)
        self._nw = len(lbw)
        self._ng = nx * (n + 1)
        nlp = {"x": ca.vertcat(*w), "p": ca.vertcat(x_init, p, u_prev), "f": cost, "g": ca.vertcat(*g)}
        opts: dict[str, Any] = {
            "expand": True,
            "print_time": False,
            "ipopt": {
                "print_level": 0,
                "sb": "yes",
                "max_iter": config.max_iter,
                "tol": config.tol,
                **IPOPT_WARM_START,  # from the shifted primal-dual solution
            },
        }
        if config.budget_s is not None:
            # Ipopt stops at its wall-time limit; the step then falls back to the shifted plan.
            opts["ipopt"]["max_wall_time"] = config.budget_s
        self._solver = ipopt_nlpsol("nmpc", nlp, opts)
        self._u_prev = np.array([spec.input_safe[name] for name in spec.inputs])
        self._w0: FloatArray | None = None
        self._lam_x0 = np.zeros(self._nw)
        self._lam_g0 = np.zeros(self._ng)
        self._stride = nx + nu

    def set_bounds(self, name: str, lo: float, hi: float) -> tuple[float, float]:
        """Bound state or input ``name`` to ``[lo, hi]`` from the next step on (an operator action).

        Returns:
            The old bounds.

        Raises:
            ScenarioError: an unknown name, or bounds that admit no value.
        """
        nx, nu = self.spec.nx, self.spec.nu
        return set_stage_bounds(
            self._lbw, self._ubw, self.spec, name, (lo, hi), horizon=self.config.horizon, block=nx + nu, input_offset=nx
        )

    def _initial_guess(self, x: FloatArray, p: FloatArray) -> FloatArray:
        """Cold start: hold the last input and roll the model out, so the guess satisfies the dynamics."""
        nx, s = self.spec.nx, self._stride
        u_guess = np.clip(self._u_prev, self._lbw[nx:s], self._ubw[nx:s])
        guess = [x]
        for _ in range(self.config.horizon):
            x_next = np.asarray(self._step_fn(guess[-1], u_guess, p), dtype=float).ravel()
            guess += [u_guess, x_next if np.all(np.isfinite(x_next)) else guess[-1]]
        return np.concatenate(guess)

    def _shift(self, sol: FloatArray) -> FloatArray:
        """Shift a stage-wise vector one interval forward, repeating the last interval (warm start)."""
        s = self._stride
        shifted = np.concatenate([sol[s:], sol[-s:]])
        return np.asarray(shifted, dtype=float)

    def step(self, t_s: float, x: FloatArray, p: FloatArray) -> ControlStep:
        """Solve the NMPC from state ``x`` with parameters ``p``; return the first input.

        On solver failure the controller falls back to the previous plan shifted by one interval
        (``fallback="shifted_plan"``), or to the safe inputs if it has no plan yet.
        """
        start = time.perf_counter()
        w0 = self._initial_guess(x, p) if self._w0 is None else self._w0
        res = self._solver(
            x0=w0,
            lam_x0=self._lam_x0,
            lam_g0=self._lam_g0,
            lbx=self._lbw,
            ubx=self._ubw,
            lbg=0.0,
            ubg=0.0,
            p=np.concatenate([x, p, self._u_prev]),
        )
        stats = self._solver.stats()
        status = "ok" if stats["return_status"] in _OK_STATUSES else str(stats["return_status"])
        sol = np.asarray(res["x"], dtype=float).ravel()
        nx, s = self.spec.nx, self._stride
        fallback = None
        if status == "ok" and np.all(np.isfinite(sol)):
            plan = sol
            self._lam_x0 = self._shift(np.asarray(res["lam_x"], dtype=float).ravel())
            self._lam_g0 = np.concatenate([np.asarray(res["lam_g"], dtype=float).ravel()[nx:], np.zeros(nx)])
        else:
            self._lam_x0 = np.zeros(self._nw)
            self._lam_g0 = np.zeros(self._ng)
            if self._w0 is not None:
                plan = self._w0  # already the previous plan shifted by one interval
                fallback = "shifted_plan"
            else:
                plan = self._initial_guess(x, p)
                plan[nx:s] = [self.spec.input_safe[name] for name in self.spec.inputs]
                fallback = "safe_hold"
        # Ipopt may end a hair outside a bound (bound_relax_factor, 1e-8); the plant refuses any
        # out-of-range setpoint, so the input is clipped to its bounds before it leaves.
        u = np.clip(plan[nx:s], self._lbw[nx:s], self._ubw[nx:s])
        self._u_prev = u
        self._w0 = self._shift(plan)
        n = self.config.horizon
        predicted_x = np.vstack([plan[k * s : k * s + nx] for k in range(n)] + [plan[-nx:]])
        planned_u = np.vstack([plan[k * s + nx : (k + 1) * s] for k in range(n)])
        return ControlStep(
            u=u,
            status=status,
            compute_s=time.perf_counter() - start,
            fallback=fallback,
            predicted_x=predicted_x,
            planned_u=planned_u,
        )


def build_mpc(spec: ModelSpec, config: MpcConfig) -> Mpc | SqpMpc:
    """Build the NMPC for ``spec`` as configured (symbolic work happens here, once).

    ``config.solver`` picks the path: ``"ipopt"`` → :class:`Mpc`, ``"sqp-hpipm"`` →
    :class:`~controllers.sqp.SqpMpc` (``config.mode`` converged or real-time iteration).
    """
    if config.solver == "sqp-hpipm":
        return SqpMpc(spec, config)
    return Mpc(spec, config)
