"""The NMPC problem in stage-wise form, as structure-exploiting solvers (HPIPM, Riccati) need it.

Decision variables are ``w = [z_0, u_0, z_1, u_1, ..., z_N]`` with the augmented state
``z_k = [x_k; v_k]``, where ``v_k = u_{k-1}`` is the input applied in the previous interval. With it the
move penalty ``(u_k - u_{k-1})^2`` is local to stage k (it couples ``u_k`` and ``v_k`` only), so the
Lagrangian Hessian is block diagonal with one ``(nz+nu)`` block per stage, and every constraint is
either a bound or a gap-closing constraint ``z_{k+1} = phi(z_k, u_k) = [F(x_k, u_k, p); u_k]``.

The measured state and the last applied input enter only through the bounds of ``z_0``
(``lb = ub = [x; u_prev]``): linearisations of the dynamics and the cost never depend on the
measurement, which is what lets the real-time iteration prepare its QP before the measurement arrives.

Per stage, one frozen function gives everything an SQP step needs:
``stage(z, u, lam, p) -> (H, J, phi, grad)`` with ``H`` the Hessian of
``l(z, u, p) + lam' phi(z, u, p)`` in ``(z, u)``, ``J`` the Jacobian of ``phi``, and ``grad`` the
gradient of the stage cost ``l``; it is mapped over the N stages so one call evaluates the horizon.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import casadi as ca
import numpy as np

from controllers.config import MpcConfig
from controllers.interfaces import FloatArray
from plant_models.spec import ModelSpec


def rk4_step(spec: ModelSpec, dt: float, substeps: int) -> ca.Function:
    """A frozen RK4 map ``F(x, u, p) -> x(t + dt)`` with ``substeps`` equal sub-steps (model time)."""
    x = ca.SX.sym("x", spec.nx)
    u = ca.SX.sym("u", spec.nu)
    p = ca.SX.sym("p", spec.np)
    h = dt / substeps
    xk = x
    for _ in range(substeps):
        k1 = spec.f(xk, u, p)
        k2 = spec.f(xk + h / 2 * k1, u, p)
        k3 = spec.f(xk + h / 2 * k2, u, p)
        k4 = spec.f(xk + h * k3, u, p)
        xk = xk + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    return ca.Function("rk4", [x, u, p], [xk], ["x", "u", "p"], ["xf"])


def weighted_signals(spec: ModelSpec, weights: dict[str, float]) -> ca.Function:
    """``z(x, u, p) -> sum_i w_i * signal_i`` over states and model outputs named in ``weights``."""
    x = ca.SX.sym("x", spec.nx)
    u = ca.SX.sym("u", spec.nu)
    p = ca.SX.sym("p", spec.np)
    y = spec.h(x, u, p)
    expr = ca.SX(0)
    for name, w in weights.items():
        signal = x[spec.states.index(name)] if name in spec.states else y[spec.outputs.index(name)]
        expr += w * signal
    return ca.Function("weighted", [x, u, p], [expr])


def gap_jacobian_pattern(n: int, nz: int, nv: int) -> tuple[ca.Sparsity, np.ndarray]:
    """Sparsity of the gap constraints' Jacobian ``[J_k  -I]`` and where its nonzeros come from.

    Returns ``(sparsity, source)``: nonzero i (CasADi's column-major order) is element ``source[i]``
    of ``[vec(J'); -1]`` with ``J (nz, N*nv)`` the stage Jacobians side by side (so ``vec(J')`` is J
    row by row, and the last element is the ``-1`` of every ``-I``).
    """
    n_j = nz * n * nv
    tmpl = -np.ones((n * nz, n * nv + nz), dtype=np.int64)
    for k in range(n):
        for i in range(nz):
            tmpl[k * nz + i, k * nv : (k + 1) * nv] = i * n * nv + k * nv + np.arange(nv)
            tmpl[k * nz + i, (k + 1) * nv + i] = n_j
    cols, rows = np.nonzero(tmpl.T >= 0)  # sorted by column, then row: column-major
    return ca.Sparsity.triplet(n * nz, n * nv + nz, rows.tolist(), cols.tolist()), tmpl.T[cols, rows]


@dataclass(frozen=True)
class StagewiseOcp:
    """The frozen stage-wise problem: sizes, derivative functions, bounds.

    Attributes:
        n: horizon (number of intervals).
        nx, nu: model state and input sizes.
        nz: augmented state size ``nx + nu``.
        nv: stage variable size ``nz + nu``.
        nw: number of decision variables ``N * nv + nz``.
        step_fn: the RK4 map ``F(x, u, p)``.
        stage_map: ``(Z (nz, N), U (nu, N), LAM (nz, N), p) -> (H (nv, N*nv), J (nz, N*nv),
            PHI (nz, N), GRAD (nv, N))`` (see module docstring).
        terminal_fn: ``(z_N, p) -> (H_N (nz, nz), grad_N (nz))`` of the terminal cost.
        prep_fn: ``(w, lam, p) -> (h, A, grad, b)``: a whole SQP linearisation in one call
            (``stage_map`` and ``terminal_fn`` on the stages of ``w``): ``h`` the Hessian blocks
            (N, nv, nv) then (nz, nz) as one flat vector (to be convexified), ``A`` the sparse gap
            Jacobian (:func:`gap_jacobian_pattern`), the cost gradient (nw) and
            ``b = z_{k+1} - phi(z_k, u_k)`` (N*nz), the gap right-hand side.
        merit_fn: ``(w, p) -> (J, c)``: the whole objective and the gap-constraint residuals
            ``c_k = phi(z_k, u_k) - z_{k+1}`` (line search and reporting).
        lbw, ubw: bounds on ``w``; the ``z_0`` block is replaced by the measurement at run time.
    """

    n: int
    nx: int
    nu: int
    nz: int
    nv: int
    nw: int
    step_fn: ca.Function
    stage_map: ca.Function
    terminal_fn: ca.Function
    prep_fn: ca.Function
    merit_fn: ca.Function
    lbw: FloatArray
    ubw: FloatArray

    def z0(self, x: FloatArray, u_prev: FloatArray) -> FloatArray:
        """The pinned first augmented state ``[x; u_prev]``."""
        return np.concatenate([x, u_prev])

    def stages(self, w: FloatArray) -> tuple[FloatArray, FloatArray, FloatArray]:
        """Split ``w`` into ``Z`` (nz, N), ``U`` (nu, N) and the terminal ``z_N`` (nz)."""
        body = w[: self.n * self.nv].reshape(self.n, self.nv)
        return body[:, : self.nz].T, body[:, self.nz :].T, w[self.n * self.nv :]

    def shift(self, w: FloatArray) -> FloatArray:
        """Shift a stage-wise vector one interval forward, repeating the last interval."""
        s = self.nv
        return np.concatenate([w[s:], w[-s:]])

    def rollout(self, x: FloatArray, u_prev: FloatArray, p: FloatArray) -> FloatArray:
        """Cold start: hold ``u_prev`` (clipped to bounds) and integrate the model over the horizon."""
        u = np.clip(u_prev, self.lbw[self.nz : self.nv], self.ubw[self.nz : self.nv])
        parts: list[FloatArray] = []
        xk = np.asarray(x, dtype=float)
        v = np.asarray(u_prev, dtype=float)
        for _ in range(self.n):
            parts += [xk, v, u]
            x_next = np.asarray(self.step_fn(xk, u, p), dtype=float).ravel()
            xk = x_next if np.all(np.isfinite(x_next)) else xk
            v = u
        parts += [xk, v]
        return np.concatenate(parts)


def build_stagewise(spec: ModelSpec, config: MpcConfig) -> StagewiseOcp:
    """Transcribe ``config``'s problem for ``spec`` into stage-wise form (symbolic work, once)."""
    config.check_against(spec)
    n, nx, nu = config.horizon, spec.nx, spec.nu
    nz, nv = nx + nu, nx + 2 * nu
    step_fn = rk4_step(spec, config.dt_model(spec), config.substeps)
    stage_cost = weighted_signals(spec, dict(config.objective.stage))
    terminal_cost = weighted_signals(spec, dict(config.objective.terminal))
    du_w = ca.DM([config.objective.delta_u.get(name, 0.0) for name in spec.inputs])

    z = ca.SX.sym("z", nz)
    u = ca.SX.sym("u", nu)
    lam = ca.SX.sym("lam", nz)
    p = ca.SX.sym("p", spec.np)
    x, v = z[:nx], z[nx:]
    vu = ca.vertcat(z, u)
    # do-mpc's convention: stage cost at the start of each interval, move penalty on Δu.
    ell = stage_cost(x, u, p) + ca.dot(du_w, (u - v) ** 2)
    phi = ca.vertcat(step_fn(x, u, p), u)
    hess, _ = ca.hessian(ell + ca.dot(lam, phi), vu)
    stage = ca.Function(
        "bioimp_stage",
        [z, u, lam, p],
        [ca.densify(hess), ca.densify(ca.jacobian(phi, vu)), phi, ca.densify(ca.gradient(ell, vu))],
    )
    stage_map = stage.map(n)

    zn = ca.SX.sym("zN", nz)
    mayer = terminal_cost(zn[:nx], ca.DM.zeros(nu), p)
    h_n, g_n = ca.hessian(mayer, zn)
    terminal = ca.Function("bioimp_terminal", [zn, p], [ca.densify(h_n), ca.densify(g_n)])

    # One MX function around the mapped stage function: a single call from Python per linearisation
    # (the map stays a loop, so C code generated from it stays small and compiles in about a second).
    w_mx = ca.MX.sym("w", n * nv + nz)
    lam_mx = ca.MX.sym("lam", n * nz)
    p_mx = ca.MX.sym("p", spec.np)
    body = ca.reshape(w_mx[: n * nv], nv, n)  # column k: [z_k; u_k]
    z_n_mx = w_mx[n * nv :]
    h_mx, j_mx, phi_mx, g_mx = stage_map(body[:nz, :], body[nz:, :], ca.reshape(lam_mx, nz, n), p_mx)
    h_n_mx, g_n_mx = terminal(z_n_mx, p_mx)
    b_mx = ca.vec(ca.horzcat(body[:nz, 1:], z_n_mx)) - ca.vec(phi_mx)
    # vec() is column-major: vec(H) lists block k's columns in turn (each block symmetric). Only
    # the Hessian goes back to numpy (to be convexified); A, grad and b stay CasADi matrices, since
    # converting numpy arrays to CasADi costs more than the QP at this size.
    a_sp, a_src = gap_jacobian_pattern(n, nz, nv)
    a_mx = ca.MX(a_sp, ca.vertcat(ca.vec(j_mx.T), -1.0)[a_src.tolist()])
    prep_fn = ca.Function(
        "bioimp_prep",
        [w_mx, lam_mx, p_mx],
        [ca.vertcat(ca.vec(h_mx), ca.vec(h_n_mx)), a_mx, ca.vertcat(ca.vec(g_mx), g_n_mx), b_mx],
    )

    w = ca.SX.sym("w", n * nv + nz)
    cost = ca.SX(0)
    for k in range(n):
        zk = w[k * nv : k * nv + nz]
        uk = w[k * nv + nz : (k + 1) * nv]
        cost += stage_cost(zk[:nx], uk, p) + ca.dot(du_w, (uk - zk[nx:]) ** 2)
    cost += terminal_cost(w[n * nv : n * nv + nx], ca.DM.zeros(nu), p)
    gaps = []
    for k in range(n):
        zk, uk = w[k * nv : k * nv + nz], w[k * nv + nz : (k + 1) * nv]
        gaps.append(ca.vertcat(step_fn(zk[:nx], uk, p), uk) - w[(k + 1) * nv : (k + 1) * nv + nz])
    merit_fn = ca.Function("bioimp_merit", [w, p], [cost, ca.vertcat(*gaps)])

    xb, ub = config.bounds(spec)
    free = [(-math.inf, math.inf)]
    lbw: list[float] = []
    ubw: list[float] = []
    for k in range(n + 1):
        # z_0 is pinned to the measurement at run time; v_k (k >= 1) equals u_{k-1} by the dynamics,
        # so bounding it again would only add redundant constraints.
        block = (free * nx if k == 0 else xb) + free * nu + (ub if k < n else [])
        for lo, hi in block:
            lbw.append(lo)
            ubw.append(hi)
    return StagewiseOcp(
        n=n,
        nx=nx,
        nu=nu,
        nz=nz,
        nv=nv,
        nw=n * nv + nz,
        step_fn=step_fn,
        stage_map=stage_map,
        terminal_fn=terminal,
        prep_fn=prep_fn,
        merit_fn=merit_fn,
        lbw=np.array(lbw),
        ubw=np.array(ubw),
    )
