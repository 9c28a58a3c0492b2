"""Whole-batch optimal control: the economic problem from now to the end of the batch, built once.

A batch ends at a fixed time, and what counts is the harvest at that end (antibody mass, product). A
receding horizon of fixed length optimises for a moment that is not the harvest, so a temperature shift
or a late feed is chosen myopically. This problem spans the *remaining* batch instead, as a shrinking
horizon. Its ``N`` interval lengths are parameters of the frozen solver, laid out on one of two grids:

* ``N`` equal parts of what remains (``dt = (t_end - t) / N``): the grid moves with every re-solve;
* ``N`` equal parts of the whole batch, fixed on the batch's clock (``batch_length``): the interval
  under way is cut short and the ones already over take no time. A re-solve's warm start is then the
  previous solution itself, node for node, off only by what the new estimate moved.

The same frozen solver serves

* the offline optimum over the whole batch (``bioimp optimize``, the open-loop baseline, the oracle),
* the slow level of the two-level controller, re-solved every ``replan_s`` (a few hours) from the twin's
  estimate.

Build time (symbolic): RK4 multiple shooting (``substeps`` per interval: one SX RK4 step looped by
``mapaccum``, called once per interval from an MX graph, so its derivatives are built once), objective,
soft state bounds with an exact L1 penalty (slacks), hard input bounds, frozen into one Ipopt ``nlpsol``,
optionally with its functions compiled to C (cached on disk). Run time:
:meth:`BatchOcp.solve` fills the parameters ``(x0, p, dt_1..dt_N)`` and warm-starts from the previous solution.

Objective names are states, outputs, or products ``"a*b"`` of two of them (``"mAb*V"``: antibody mass,
mg, from titer mg/L times volume L), weighted linearly as in :class:`controllers.config.Objective`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import casadi as ca
import numpy as np

from controllers.codegen import compile_nlp
from controllers.config import IPOPT_WARM_START, Objective
from controllers.interfaces import FloatArray
from controllers.ipopt import ipopt_nlpsol
from plant_models.errors import ScenarioError
from plant_models.spec import Bounds, ModelSpec

_OK = frozenset({"Solve_Succeeded", "Solved_To_Acceptable_Level"})


def _empty_bounds() -> Mapping[str, Bounds]:
    return MappingProxyType({})


@dataclass(frozen=True)
class BatchOcpConfig:
    """The whole-batch problem.

    Attributes:
        intervals: N, piecewise-constant input intervals over the remaining batch.
        objective: what to minimise (names: states, outputs or ``"a*b"`` products of them).
        state_bounds: soft bounds per state, at every RK4 sub-step (the largest violation in an
            interval costs ``penalty`` per unit).
        input_bounds: hard bounds per input (override the model's).
        substeps: RK4 sub-steps per interval.
        penalty: L1 weight of a state-bound violation (objective units per state unit).
        cost_scale: the objective is multiplied by this inside the solver (order 1 helps Ipopt).
        max_iter: Ipopt iteration limit (a cold start).
        warm_max_iter: iteration limit of a warm-started re-solve; when it is reached the iterate is
            kept as the next re-solve's start (the work carries over) and the solve reports failure.
        warm_mu_strategy: Ipopt's barrier update in a warm re-solve: ``"monotone"`` (from the small
            ``mu_init`` of a warm start) or ``"adaptive"`` (recovers faster when the estimate moved).
        batch_length: the whole batch (model time units): the intervals are then fixed on the batch's
            clock; None: ``N`` equal parts of whatever remains at each solve.
        tol: Ipopt tolerance.
        compiled: compile the NLP's functions (C, once per distinct problem, cached on disk): a solve is
            about 5x faster; without a C compiler the interpreted problem is used (``compile_note``).
        cache_dir: where the compiled problem is cached (default ``$BIOIMP_CACHE_DIR`` or
            ``~/.cache/bioimp``).
    """

    intervals: int = 28
    objective: Objective = field(default_factory=Objective)
    state_bounds: Mapping[str, Bounds] = field(default_factory=_empty_bounds)
    input_bounds: Mapping[str, Bounds] = field(default_factory=_empty_bounds)
    substeps: int = 24
    penalty: float = 1.0e2
    cost_scale: float = 1.0
    max_iter: int = 500
    warm_max_iter: int = 40
    tol: float = 1e-7
    compiled: bool = False
    cache_dir: str | None = None
    warm_mu_strategy: str = "monotone"
    batch_length: float | None = None

    def __post_init__(self) -> None:
        if self.intervals < 1 or self.substeps < 1 or self.max_iter < 1 or self.warm_max_iter < 1:
            raise ScenarioError("optimizer: intervals, substeps, max_iter and warm_max_iter must be >= 1")
        if self.warm_mu_strategy not in ("monotone", "adaptive"):
            raise ScenarioError(f"optimizer: warm_mu_strategy {self.warm_mu_strategy!r} is not monotone or adaptive")
        if self.batch_length is not None and not self.batch_length > 0:
            raise ScenarioError("optimizer: batch_length must be positive")
        if not (self.penalty > 0 and self.tol > 0):
            raise ScenarioError("optimizer: penalty and tol must be positive")


@dataclass(frozen=True)
class BatchSolution:
    """A solved whole-batch problem.

    The intervals are those still to come: ``M = N`` on the moving grid, fewer on a fixed grid once some
    are over.

    Attributes:
        t: interval start times (model time units, from the solve's start), length M+1 (last: the end).
        u: inputs per interval (M, nu).
        x: predicted states at the interval boundaries (M+1, nx).
        objective: the objective value (including any penalty of violated soft bounds).
        status: ``"ok"`` or Ipopt's return status.
        iterations: Ipopt iterations.
        compute_s: wall time of the solve.
    """

    t: FloatArray
    u: FloatArray
    x: FloatArray
    objective: float
    status: str
    iterations: int
    compute_s: float


def signal_expr(spec: ModelSpec, name: str, x: ca.MX, u: ca.MX, p: ca.MX) -> ca.MX:
    """A state, output or ``"a*b"`` product of two of them as an expression of ``(x, u, p)``."""
    if "*" in name:
        a, b = name.split("*", 1)
        return signal_expr(spec, a, x, u, p) * signal_expr(spec, b, x, u, p)
    if name in spec.states:
        return x[spec.states.index(name)]
    return spec.h(x, u, p)[spec.outputs.index(name)]


def check_signal(spec: ModelSpec, name: str, key: str) -> None:
    """Raise ScenarioError unless ``name`` is a state, output or product of two of them."""
    known = set(spec.states) | set(spec.outputs)
    parts = name.split("*")
    if len(parts) > 2 or any(part not in known for part in parts):
        raise ScenarioError(f"{key}: model {spec.name!r} has no signal {name!r} (a state, output or 'a*b')")


class BatchOcp:
    """The frozen whole-batch problem for one model. Solve with :meth:`solve`."""

    def __init__(self, spec: ModelSpec, config: BatchOcpConfig, scale: FloatArray | None = None) -> None:
        """Build the frozen solver.

        Args:
            spec: the model.
            config: the problem.
            scale: typical magnitude of each state (decision variables are scaled by it); default: the
                model's initial state, at least 1.

        Raises:
            ScenarioError: an objective or bound names no signal of the model.
        """
        for part in ("stage", "terminal"):
            for name in getattr(config.objective, part):
                check_signal(spec, name, f"objective.{part}.{name}")
        for name in config.state_bounds:
            if name not in spec.states:
                raise ScenarioError(f"bounds.{name}: model {spec.name!r} has no such state")
        self.spec = spec
        self.config = config
        n, nx, nu = config.intervals, spec.nx, spec.nu
        x0_model = np.array(spec.vector("states", spec.x0))
        self.scale = np.maximum(np.abs(x0_model), 1.0) if scale is None else np.asarray(scale, dtype=float)

        # One interval, symbolic once: RK4 with dt as a symbol (the interval length is a run-time
        # parameter: the horizon shrinks), returning the state at its end and the bounded states at every
        # sub-step — bounds hold along the path, not only at the interval ends (a daily grid would
        # otherwise let glucose dip to starvation between two nodes).
        xs_, us_, ps_, dt_ = ca.SX.sym("x", nx), ca.SX.sym("u", nu), ca.SX.sym("p", spec.np), ca.SX.sym("dt")
        h = dt_ / config.substeps
        bounded = [(i, name) for i, name in enumerate(spec.states) if name in config.state_bounds]
        nb, ns = len(bounded), config.substeps
        k1 = spec.f(xs_, us_, ps_)
        k2 = spec.f(xs_ + h / 2 * k1, us_, ps_)
        k3 = spec.f(xs_ + h / 2 * k2, us_, ps_)
        k4 = spec.f(xs_ + h * k3, us_, ps_)
        rk4 = ca.Function("rk4", [xs_, us_, ps_, dt_], [xs_ + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)])
        # The sub-steps as a loop (mapaccum), not unrolled: the derivatives of one RK4 step are built
        # once, so the generated C of the whole NLP stays small enough to compile in seconds.
        substeps = rk4.mapaccum("substeps", ns, [0], [0])
        xm, um, pm, dm = ca.MX.sym("x", nx), ca.MX.sym("u", nu), ca.MX.sym("p", spec.np), ca.MX.sym("dt")
        traj = substeps(xm, ca.repmat(um, 1, ns), ca.repmat(pm, 1, ns), ca.repmat(dm, 1, ns))
        bounded_idx = [i for i, _ in bounded]
        path = traj[bounded_idx, :] if bounded else ca.MX(0, ns)
        step = ca.Function("F", [xm, um, pm, dm], [traj[:, -1]])
        rk4_interval = ca.Function("rk4_interval", [xm, um, pm, dm], [traj[:, -1], path])
        # On the fixed grid the intervals already over have zero length: RK4 with h = 0 is the identity,
        # so they take the identity's branch instead of evaluating (and differentiating) their sub-steps
        # in every Ipopt iteration. The result is the same up to rounding (1e-13 on the batch's harvest).
        at_start = ca.repmat(xm[bounded_idx], 1, ns) if bounded else ca.MX(0, ns)
        elapsed = ca.Function("elapsed", [xm, um, pm, dm], [xm, at_start])
        interval = ca.Function.conditional("interval", [elapsed], rk4_interval)  # branch 0 when dt == 0
        # The NLP is an MX graph that *calls* the interval function N times: its derivatives are
        # generated once, for one RK4 step, and reused. Inlining the N x substeps RK4 stages into one SX
        # graph instead made the exact Hessian's graph so large that building the solver took ~9 s (and
        # its C code 175 MB).
        x_init, p = ca.MX.sym("x_init", nx), ca.MX.sym("p", spec.np)
        dts, u_prev = ca.MX.sym("dt", n), ca.MX.sym("u_prev", nu)
        sc = ca.DM(self.scale)
        sb = ca.DM([float(self.scale[i]) for i, _ in bounded])
        sb_grid = ca.repmat(sb, 1, ns)
        zs = [ca.MX.sym(f"z{k}", nx) for k in range(n + 1)]  # scaled states
        us = [ca.MX.sym(f"u{k}", nu) for k in range(n)]
        slo = [ca.MX.sym(f"slo{k}", nb) for k in range(n)]  # slacks of nodes 1..N
        shi = [ca.MX.sym(f"shi{k}", nb) for k in range(n)]
        xs = [sc * z for z in zs]
        w: list[ca.MX] = []
        g: list[ca.MX] = [(x_init - xs[0]) / sc]
        lbg: list[float] = [0.0] * nx
        ubg: list[float] = [0.0] * nx
        # Path bounds in the order of vec() of an (nb, substeps) grid: bound j of sub-step m at j + nb m.
        lo_grid = [config.state_bounds[name][0] / float(self.scale[i]) for i, name in bounded] * ns
        hi_grid = [config.state_bounds[name][1] / float(self.scale[i]) for i, name in bounded] * ns
        cost = ca.MX(0)
        du_w = ca.DM([config.objective.delta_u.get(name, 0.0) for name in spec.inputs])
        last_u = u_prev
        for k in range(n):
            w += [zs[k], us[k]]
            dt = dts[k]
            for name, weight in config.objective.stage.items():
                # Stage weights are per model time unit: a rectangle rule over the interval.
                cost += dt * weight * signal_expr(spec, name, xs[k], us[k], p)
            cost += ca.dot(du_w, (us[k] - last_u) ** 2)
            last_u = us[k]
            x_end, points = interval(dt > 0, xs[k], us[k], p, dt)
            g.append((x_end - xs[k + 1]) / sc)
            lbg += [0.0] * nx
            ubg += [0.0] * nx
            if bounded:
                w += [slo[k], shi[k]]
                cost += config.penalty * ca.dot(sb, slo[k] + shi[k])
                # lo - slo <= x <= hi + shi on every sub-step, slacks >= 0 and paid for: exact penalty.
                g.append(ca.vec((points + ca.repmat(slo[k] * sb, 1, ns)) / sb_grid))
                lbg += lo_grid
                ubg += [math.inf] * (nb * ns)
                g.append(ca.vec((points - ca.repmat(shi[k] * sb, 1, ns)) / sb_grid))
                lbg += [-math.inf] * (nb * ns)
                ubg += hi_grid
        w.append(zs[n])
        for name, weight in config.objective.terminal.items():
            cost += weight * signal_expr(spec, name, xs[n], ca.MX.zeros(nu), p)

        ub = [config.input_bounds.get(nm, spec.input_bounds[nm]) for nm in spec.inputs]
        lbw: list[float] = []
        ubw: list[float] = []
        # The model's physical bounds (concentrations >= 0, the vessel) are hard on nodes 1..N; x_0 is
        # pinned by the equality to the estimate, which may lie a hair outside them.
        phys = [spec.state_bounds.get(nm, (-math.inf, math.inf)) for nm in spec.states]
        for k in range(n + 1):
            lbw += [-math.inf if k == 0 else lo / s for (lo, _), s in zip(phys, self.scale, strict=True)]
            ubw += [math.inf if k == 0 else hi / s for (_, hi), s in zip(phys, self.scale, strict=True)]
            if k < n:
                lbw += [lo for lo, _ in ub]
                ubw += [hi for _, hi in ub]
                lbw += [0.0] * 2 * len(bounded)
                ubw += [math.inf] * 2 * len(bounded)
        self._lbw, self._ubw = np.array(lbw), np.array(ubw)
        self._lbg, self._ubg = np.array(lbg), np.array(ubg)
        self._nb = len(bounded)
        self._stride = nx + nu + 2 * len(bounded)
        params = ca.vertcat(x_init, p, dts, u_prev)
        nlp = {"x": ca.vertcat(*w), "p": params, "f": config.cost_scale * cost, "g": ca.vertcat(*g)}
        ipopt: dict[str, Any] = {"print_level": 0, "sb": "yes", "max_iter": config.max_iter, "tol": config.tol}
        opts: dict[str, Any] = {"print_time": False, "ipopt": ipopt}
        self._solver = ipopt_nlpsol("batch_ocp", nlp, opts)
        problem: dict[str, Any] | str = nlp
        self.compile_note = "interpreted (compiled = false)"
        if config.compiled:
            so_path, self.compile_note = compile_nlp(self._solver, config.cache_dir)
            if so_path is not None:
                problem = str(so_path)
                self._solver = ipopt_nlpsol("batch_ocp", problem, opts)
        # Re-solves from the previous primal-dual solution (the next re-plan's problem is close to this one).
        warm: dict[str, Any] = {
            **ipopt,
            **IPOPT_WARM_START,
            "max_iter": config.warm_max_iter,
            "mu_strategy": config.warm_mu_strategy,
        }
        self._warm_solver = ipopt_nlpsol("batch_ocp_warm", problem, {**opts, "ipopt": warm})
        self._lam_x = np.zeros(len(lbw))
        self._lam_g = np.zeros(len(lbg))
        self._step = step
        self._ub = np.array(ub)
        self._w0: FloatArray | None = None
        self.last_u = np.tile(self._ub.mean(axis=1), (n, 1))

    def rollout(self, x0: FloatArray, u: FloatArray, p: FloatArray, dts: FloatArray) -> FloatArray:
        """States at the interval boundaries under inputs ``u`` (N, nu) held for ``dts`` (N), with this
        problem's RK4."""
        out = [np.asarray(x0, dtype=float)]
        for uk, dt in zip(u, dts, strict=True):
            out.append(np.asarray(self._step(out[-1], uk, p, dt), dtype=float).ravel())
        return np.array(out)

    def durations(self, duration: float) -> FloatArray:
        """Each interval's length when ``duration`` of the batch remains."""
        n, length = self.config.intervals, self.config.batch_length
        if length is None or duration >= length:
            return np.full(n, duration / n)
        edges = np.linspace(0.0, length, n + 1)
        dts = np.clip(edges[1:] - np.maximum(edges[:-1], length - duration), 0.0, None)
        dts[dts <= 1e-9 * length] = 0.0
        return dts

    def _guess(self, x0: FloatArray, p: FloatArray, dts: FloatArray, u: FloatArray) -> FloatArray:
        xs = self.rollout(x0, u, p, dts)
        if not np.all(np.isfinite(xs)):
            xs = np.tile(x0, (len(u) + 1, 1))
        parts = []
        for k in range(len(u)):
            parts += [xs[k] / self.scale, u[k], np.zeros(2 * self._nb)]
        parts.append(xs[-1] / self.scale)
        return np.concatenate(parts)

    def solve(
        self,
        x0: FloatArray,
        p: FloatArray,
        duration: float,
        u_guess: FloatArray | None = None,
        u_prev: FloatArray | None = None,
    ) -> BatchSolution:
        """Optimise the inputs over ``duration`` model time units from state ``x0``.

        Args:
            x0: initial state.
            p: parameters.
            duration: time to the end of the batch (model units, > 0).
            u_guess: initial guess of the inputs (N, nu); default: the previous solution's inputs, or the
                middle of each input's range.
            u_prev: the input before the first interval (for the move penalty); default: the guess's first.
        """
        start = time.perf_counter()
        n, nx, nu = self.config.intervals, self.spec.nx, self.spec.nu
        dts = self.durations(duration)
        first = int(np.count_nonzero(dts == 0.0))
        x0 = np.asarray(x0, dtype=float)
        warm = u_guess is None and self._w0 is not None
        if u_guess is None:
            u_guess = self.last_u
        u_guess = np.clip(np.asarray(u_guess, dtype=float), self._ub[:, 0], self._ub[:, 1])
        up = u_guess[0] if u_prev is None else np.asarray(u_prev, dtype=float)
        s = self._stride
        lbw, ubw = self._lbw, self._ubw
        if first:
            # Intervals already over take no time: their inputs act on nothing, so they are pinned.
            lbw, ubw = lbw.copy(), ubw.copy()
            for k in range(first):
                lbw[k * s + nx : k * s + nx + nu] = up
                ubw[k * s + nx : k * s + nx + nu] = up
        args = {"lbx": lbw, "ubx": ubw, "lbg": self._lbg, "ubg": self._ubg}
        pv = np.concatenate([x0, p, dts, up])
        if warm:
            assert self._w0 is not None
            w0 = self._w0.copy()
            w0[:nx] = x0 / self.scale
            res = self._warm_solver(x0=w0, lam_x0=self._lam_x, lam_g0=self._lam_g, p=pv, **args)
            stats = self._warm_solver.stats()
            if stats["return_status"] == "Maximum_Iterations_Exceeded":
                # Keep the work: the next re-solve starts from this iterate (its caller keeps its plan).
                self._w0 = np.asarray(res["x"], dtype=float).ravel()
                self._lam_x = np.asarray(res["lam_x"], dtype=float).ravel()
                self._lam_g = np.asarray(res["lam_g"], dtype=float).ravel()
            elif stats["return_status"] not in _OK:  # fall back to a cold start from the rollout
                warm = False
        if not warm:
            res = self._solver(x0=self._guess(x0, p, dts, u_guess), p=pv, **args)
            stats = self._solver.stats()
        status = "ok" if stats["return_status"] in _OK else str(stats["return_status"])
        sol = np.asarray(res["x"], dtype=float).ravel()
        if status == "ok":
            self._lam_x = np.asarray(res["lam_x"], dtype=float).ravel()
            self._lam_g = np.asarray(res["lam_g"], dtype=float).ravel()
        u = np.array([sol[k * s + nx : k * s + nx + nu] for k in range(n)])
        u = np.clip(u, self._ub[:, 0], self._ub[:, 1])
        x = np.array([sol[k * s : k * s + nx] for k in range(n)] + [sol[-nx:]]) * self.scale
        if status == "ok":
            self._w0 = sol
            self.last_u = u
        return BatchSolution(
            t=np.concatenate([[0.0], np.cumsum(dts[first:])]),
            u=u[first:],
            x=x[first:],
            objective=float(res["f"]) / self.config.cost_scale,
            status=status,
            iterations=int(stats.get("iter_count", 0)),
            compute_s=time.perf_counter() - start,
        )


__all__ = ["BatchOcp", "BatchOcpConfig", "BatchSolution", "check_signal", "signal_expr"]
