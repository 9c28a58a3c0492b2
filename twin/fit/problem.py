"""The estimation problem: multiple shooting over several batches, built once in CasADi, solved by ipopt.

Decision variables: the estimated parameters θ (shared by every batch; ``ln(p/guess)`` for log-scaled
parameters, ``(p - guess)/|guess|`` for linear ones) and, per batch, the state at every shooting node
(divided by a per-state scale). Nodes sit at time 0, every sample time, every input change and every
sample removal, with no interval longer than ``max_interval``; across each interval the state is carried
by ``substeps`` RK4 steps with the inputs held. Continuity between intervals is an equality constraint,
so a bad guess can start from the measured data instead of an unstable simulation (the point of
multiple shooting, Bock 1983). The initial node of a state not in ``initial.estimate`` is fixed.

Objective (negative log-likelihood up to a constant): ``½ Σ ((y_model - y) / σ)²`` over every sample of
every batch, plus ``½ ((p - mean)/sd)²`` per prior. σ comes from the noise model at the measured value.

The NLP is symbolic once per problem *shape* (the node count of each batch); everything that varies
between fits of that shape (data, weights, inputs, interval lengths, fixed parameters, scales) enters as
NLP parameters, so repeated fits (several starts, the noise re-weighting, a coverage study) reuse one
built solver.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import casadi as ca
import numpy as np

from controllers.ipopt import ipopt_nlpsol
from plant_models.spec import ModelSpec
from twin.fit.data import BatchData
from twin.fit.spec import FitSpec
from twin.interfaces import FloatArray

__all__ = ["BatchGrid", "Problem", "StartResult", "build_grid"]

_SAME_T = 1e-9
_OK = ("Solve_Succeeded", "Solved_To_Acceptable_Level")


@dataclass(frozen=True)
class BatchGrid:
    """A batch laid on its shooting grid (model time units).

    Attributes:
        tau: node times, ``N + 1`` of them.
        u: inputs on each interval, ``N x nu``.
        jump: amount removed from each state at the start of each interval, ``N x nx``.
        y: measured values at the nodes, ``nsig x (N+1)`` (0 where none).
        weight: ``1/σ`` at the nodes, same shape (0 where no sample).
        sample_idx: signal -> node index of each of its samples (data order).
    """

    tau: FloatArray
    u: FloatArray
    jump: FloatArray
    y: FloatArray
    weight: FloatArray
    sample_idx: dict[str, list[int]]

    @property
    def n(self) -> int:
        """Number of shooting intervals."""
        return len(self.tau) - 1


def build_grid(batch: BatchData, fit: FitSpec, spec: ModelSpec, signals: tuple[str, ...]) -> BatchGrid:
    """Lay a batch on its shooting grid, with measurement weights from the noise model."""
    events = {0.0, batch.t_end}
    events.update(s.t for ss in batch.samples.values() for s in ss)
    events.update(float(t) for t in batch.input_t if 0 < t < batch.t_end)
    events.update(t for t, _, _ in batch.removals if t < batch.t_end)
    base = sorted(events)
    merged = [base[0]]
    for t in base[1:]:
        if t - merged[-1] > _SAME_T:
            merged.append(t)
    tau: list[float] = [merged[0]]
    for a, b in itertools.pairwise(merged):
        k = max(1, math.ceil((b - a) / fit.solver.max_interval - 1e-9))
        tau.extend(a + (b - a) * (i + 1) / k for i in range(k))
    tau_arr = np.array(tau)
    n = len(tau_arr) - 1
    u = np.array([batch.inputs_at(t) for t in tau_arr[:-1]]).reshape(n, spec.nu)
    jump = np.zeros((n, spec.nx))
    for t, state, amount in batch.removals:
        k = int(np.argmin(np.abs(tau_arr - t)))
        if abs(tau_arr[k] - t) < 1e-6 and k < n:
            jump[k, spec.states.index(state)] += amount
    y = np.zeros((len(signals), n + 1))
    w = np.zeros_like(y)
    idx: dict[str, list[int]] = {}
    for i, sig in enumerate(signals):
        noise = fit.noise[sig]
        data = batch.samples.get(sig, ())
        floor = 1e-3 * max((abs(s.value) for s in data), default=1.0) or 1e-12
        idx[sig] = []
        for s in data:
            k = int(np.argmin(np.abs(tau_arr - s.t)))
            sd = max(math.hypot(noise.sigma, noise.rel_sigma * abs(s.value)), floor)
            y[i, k], w[i, k] = s.value, 1.0 / sd
            idx[sig].append(k)
    return BatchGrid(tau_arr, u, jump, y, w, idx)


@dataclass(frozen=True)
class StartResult:
    """One ipopt solve."""

    start: int
    status: str
    success: bool
    objective: float
    iterations: int
    theta: FloatArray
    w: FloatArray


class Problem:
    """The estimation problem of one fit spec, with built solvers cached by problem shape."""

    def __init__(self, fit: FitSpec, spec: ModelSpec) -> None:
        """Build the symbolic pieces shared by every shape (model step, observation, parameter map)."""
        self.fit = fit
        self.spec = spec
        self.signals = tuple(fit.noise)
        self.est_idx = [spec.params.index(n) for n in fit.names]
        self.x0_idx = [spec.states.index(n) for n in fit.initial]
        self.ntheta = len(fit.estimated)
        self.theta_lo = np.array([self.to_theta(i, e.lower) for i, e in enumerate(fit.estimated)])
        self.theta_hi = np.array([self.to_theta(i, e.upper) for i, e in enumerate(fit.estimated)])
        nx, nu, npar = spec.nx, spec.nu, spec.np
        # Parameter vector from θ (estimated entries) and the fixed values (the rest).
        theta = ca.SX.sym("theta", self.ntheta)
        pbase = ca.SX.sym("pbase", npar)
        entries = [pbase[i] for i in range(npar)]
        for j, e in enumerate(fit.estimated):
            i = self.est_idx[j]
            entries[i] = e.guess * ca.exp(theta[j]) if e.scale == "log" else e.guess + abs(e.guess) * theta[j]
        self.pfun = ca.Function("pmap", [theta, pbase], [ca.vertcat(*entries)])
        # One shooting interval: RK4 substeps with inputs held, after removing the sampled volume.
        x, u, p, dt, jump = (ca.SX.sym(n, k) for n, k in (("x", nx), ("u", nu), ("p", npar), ("dt", 1), ("j", nx)))
        h = dt / fit.solver.substeps
        xk = x - jump
        for _ in range(fit.solver.substeps):
            k1 = spec.f(xk, u, p)
            k2 = spec.f(xk + h / 2 * k1, u, p)
            k3 = spec.f(xk + h / 2 * k2, u, p)
            k4 = spec.f(xk + h * k3, u, p)
            xk = xk + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        self.step = ca.Function("step", [x, u, p, dt, jump], [xk])
        # The fitted signals: a state directly, else the output of h.
        yv = spec.h(x, u, p)
        obs = [x[spec.states.index(s)] if s in spec.states else yv[spec.outputs.index(s)] for s in self.signals]
        self.obs = ca.Function("obs", [x, u, p], [ca.vertcat(*obs)])
        self._solvers: dict[tuple[int, ...], ca.Function] = {}
        self._shooting: dict[int, ca.Function] = {}

    # --- parameter scaling -------------------------------------------------------------------------

    def to_theta(self, j: int, value: float) -> float:
        """θ_j of parameter value ``value``."""
        e = self.fit.estimated[j]
        return math.log(value / e.guess) if e.scale == "log" else (value - e.guess) / abs(e.guess)

    def params(self, theta: FloatArray, pbase: FloatArray) -> FloatArray:
        """The full parameter vector."""
        return np.asarray(self.pfun(theta, pbase), dtype=float).ravel()

    def dp_dtheta(self, theta: FloatArray) -> FloatArray:
        """d p_j / d θ_j of each estimated parameter (the scaling's derivative)."""
        out = []
        for j, e in enumerate(self.fit.estimated):
            out.append(e.guess * math.exp(theta[j]) if e.scale == "log" else abs(e.guess))
        return np.array(out)

    # --- the NLP -----------------------------------------------------------------------------------

    def _solver(self, shape: tuple[int, ...]) -> ca.Function:
        if shape in self._solvers:
            return self._solvers[shape]
        spec, fit = self.spec, self.fit
        nx, nu, nsig = spec.nx, spec.nu, len(self.signals)
        theta = ca.MX.sym("theta", self.ntheta)
        pbase = ca.MX.sym("pbase", spec.np)
        xscale = ca.MX.sym("xscale", nx)
        p = self.pfun(theta, pbase)
        w_parts: list[ca.MX] = [theta]
        par_parts: list[ca.MX] = [pbase, xscale]
        g: list[ca.MX] = []
        obj = ca.MX(0.0)
        for n in shape:
            s = ca.MX.sym("s", nx, n + 1)
            y = ca.MX.sym("y", nsig, n + 1)
            wt = ca.MX.sym("wt", nsig, n + 1)
            dt = ca.MX.sym("dt", 1, n)
            u = ca.MX.sym("u", nu, n)
            jump = ca.MX.sym("jump", nx, n)
            w_parts.append(ca.vec(s))
            par_parts += [ca.vec(y), ca.vec(wt), ca.vec(dt), ca.vec(u), ca.vec(jump)]
            xs = s * ca.repmat(xscale, 1, n + 1)
            x_next = self.step.map(n)(xs[:, :n], u, ca.repmat(p, 1, n), dt, jump)
            g.append(ca.vec((x_next - xs[:, 1:]) / ca.repmat(xscale, 1, n)))
            u_nodes = ca.horzcat(u, u[:, n - 1])
            model_y = self.obs.map(n + 1)(xs, u_nodes, ca.repmat(p, 1, n + 1))
            obj += 0.5 * ca.sumsqr(wt * (model_y - y))
        for j, e in enumerate(fit.estimated):
            if e.prior_mean is not None and e.prior_sd is not None:
                obj += 0.5 * ((p[self.est_idx[j]] - e.prior_mean) / e.prior_sd) ** 2
        nlp = {"x": ca.vertcat(*w_parts), "p": ca.vertcat(*par_parts), "f": obj, "g": ca.vertcat(*g)}
        opts: dict[str, Any] = {
            "ipopt.print_level": 0,
            "print_time": False,
            "ipopt.max_iter": fit.solver.max_iter,
            "ipopt.tol": fit.solver.tol,
            "ipopt.sb": "yes",
            # SX evaluation solves several times faster but takes tens of seconds to build (the exact
            # Hessian of the expanded graph): worth it only for many fits of one shape.
            "expand": fit.solver.expand,
        }
        solver = ipopt_nlpsol("fit", nlp, opts)
        self._solvers[shape] = solver
        return solver

    @staticmethod
    def pack_data(grids: Sequence[BatchGrid]) -> list[FloatArray]:
        """The per-batch NLP parameters (column-major, as ``ca.vec``)."""
        parts: list[FloatArray] = []
        for gr in grids:
            parts += [
                gr.y.ravel(order="F"),
                gr.weight.ravel(order="F"),
                np.diff(gr.tau),
                gr.u.T.ravel(order="F"),
                gr.jump.T.ravel(order="F"),
            ]
        return parts

    def solve(
        self,
        grids: Sequence[BatchGrid],
        pbase: FloatArray,
        xscale: FloatArray,
        x0s: Sequence[FloatArray],
        starts: Sequence[tuple[FloatArray, Sequence[FloatArray]]],
    ) -> list[StartResult]:
        """Solve from each start: (θ0, the node states of each batch as ``nx x (N+1)``).

        ``x0s`` are the batches' initial states: the fixed entries hold them exactly.
        """
        nx = self.spec.nx
        solver = self._solver(tuple(gr.n for gr in grids))
        par = np.concatenate([pbase, xscale, *self.pack_data(grids)])
        lbx = [self.theta_lo]
        ubx = [self.theta_hi]
        for gr, x0 in zip(grids, x0s, strict=True):
            lo = np.array([self.spec.state_bounds[s][0] for s in self.spec.states]) / xscale
            hi = np.array([self.spec.state_bounds[s][1] for s in self.spec.states]) / xscale
            lo_n = np.repeat(lo[:, None], gr.n + 1, axis=1)
            hi_n = np.repeat(hi[:, None], gr.n + 1, axis=1)
            fixed = [i for i in range(nx) if i not in self.x0_idx]
            lo_n[fixed, 0] = x0[fixed] / xscale[fixed]
            hi_n[fixed, 0] = x0[fixed] / xscale[fixed]
            lbx.append(lo_n.ravel(order="F"))
            ubx.append(hi_n.ravel(order="F"))
        lb, ub = np.concatenate(lbx), np.concatenate(ubx)
        out: list[StartResult] = []
        for k, (theta0, nodes) in enumerate(starts):
            w0 = np.concatenate([theta0, *[(nd / xscale[:, None]).ravel(order="F") for nd in nodes]])
            w0 = np.clip(w0, lb, ub)
            try:
                sol = solver(x0=w0, p=par, lbx=lb, ubx=ub, lbg=0.0, ubg=0.0)
                stats = solver.stats()
                status = str(stats.get("return_status", "unknown"))
                w = np.asarray(sol["x"], dtype=float).ravel()
                f = float(sol["f"])
                iters = int(stats.get("iter_count", -1))
            except RuntimeError as exc:
                status, w, f, iters = f"error: {str(exc).strip().splitlines()[-1]}", w0, math.inf, -1
            ok = status in _OK and math.isfinite(f)
            out.append(StartResult(k, status, ok, f, iters, w[: self.ntheta].copy(), w))
        return out

    def nodes_of(self, w: FloatArray, grids: Sequence[BatchGrid], xscale: FloatArray) -> list[FloatArray]:
        """The node states (model units) of each batch from a solution vector."""
        out, i = [], self.ntheta
        for gr in grids:
            size = self.spec.nx * (gr.n + 1)
            out.append(w[i : i + size].reshape((self.spec.nx, gr.n + 1), order="F") * xscale[:, None])
            i += size
        return out

    # --- single shooting (statistics, prediction) ---------------------------------------------------

    def shooting(self, n: int) -> ca.Function:
        """``(θ, z0, x0, pbase, xscale, dt, u, jump) -> (Y, dY/d[θ; z0], X)`` for a batch of ``n`` intervals.

        ``z0`` are the estimated initial states divided by their scale; Y is ``nsig x (N+1)`` at the
        nodes (column-major when flattened), X the states.
        """
        if n in self._shooting:
            return self._shooting[n]
        spec = self.spec
        nx, nu = spec.nx, spec.nu
        theta = ca.MX.sym("theta", self.ntheta)
        z0 = ca.MX.sym("z0", len(self.x0_idx))
        x0 = ca.MX.sym("x0", nx)
        pbase = ca.MX.sym("pbase", spec.np)
        xscale = ca.MX.sym("xscale", nx)
        dt = ca.MX.sym("dt", 1, n)
        u = ca.MX.sym("u", nu, n)
        jump = ca.MX.sym("jump", nx, n)
        p = self.pfun(theta, pbase)
        entries = [x0[i] for i in range(nx)]
        for k, i in enumerate(self.x0_idx):
            entries[i] = z0[k] * xscale[i]
        xinit = ca.vertcat(*entries)
        acc = self._accumulator()
        traj = acc.mapaccum(n)(xinit, ca.vertcat(u, ca.repmat(p, 1, n), dt, jump))
        xs = ca.horzcat(xinit, traj)
        u_nodes = ca.horzcat(u, u[:, n - 1])
        ymat = self.obs.map(n + 1)(xs, u_nodes, ca.repmat(p, 1, n + 1))
        yflat = ca.vec(ymat)
        jac = ca.jacobian(yflat, ca.vertcat(theta, z0))
        fun = ca.Function("shoot", [theta, z0, x0, pbase, xscale, dt, u, jump], [ymat, jac, xs])
        self._shooting[n] = fun
        return fun

    def _accumulator(self) -> ca.Function:
        """The interval step as ``(x, [u; p; dt; jump]) -> x`` (the form ``mapaccum`` chains)."""
        nx, nu, npar = self.spec.nx, self.spec.nu, self.spec.np
        x = ca.SX.sym("x", nx)
        r = ca.SX.sym("r", nu + npar + 1 + nx)
        u, p, dt, jump = r[:nu], r[nu : nu + npar], r[nu + npar], r[nu + npar + 1 :]
        return ca.Function("acc", [x, r], [self.step(x, u, p, dt, jump)])
