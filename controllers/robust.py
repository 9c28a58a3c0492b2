"""Robust multi-stage NMPC (scenario tree, robust horizon 1) on the SQP-HPIPM fast path.

As do-mpc's ``n_robust = 1``: the tree branches once, at the first interval, into one scenario per
combination of uncertain parameter values (``itertools.product`` order, the first combination
nominal). The first input ``u_0`` is common to all scenarios (it is applied before the uncertainty
reveals itself: non-anticipativity); from stage 1 on every scenario has its own states and inputs.
The objective is the scenarios' mean; every scenario's states must satisfy the bounds.

The tree is solved as one optimal-control QP for HPIPM, but not with the scenarios side by side in
each stage (stage blocks S times as wide: HPIPM's Riccati recursion is dense per stage, so its cost
grows with S^3 per stage although the scenarios do not couple after stage 0). The QP is laid out as a
*chain*: stage 0, then scenario 1's stages 1..N, then scenario 2's, and so on, S*N + 1 stages of
nominal size, linked by one carried copy ``c`` of the shared input ``u_0``:

    stage 0:           state z_0 (nz, pinned),        input u_0 (nu)
    scenario s, k:     state [z_k^s; c] (nz + nu),    input u_k^s (nu; none at k = N)
    dynamics:          z_{k+1}^s = phi(z_k^s, u_k^s, p_s),  c' = c
    junction s -> s+1: z_1^{s+1} = phi(z_0, c, p_{s+1}),    c' = c   (z_0 is pinned: its part of the
                       linearisation moves into the right-hand side when the measurement is known)

Everything else (the iterate, bounds, warm start, the multipliers the SQP keeps) stays in the stacked
per-stage order ``[z_0, u_0, Z_1, U_1, .., Z_N]`` with ``Z_k = [z_k^1 .. z_k^S]``; only the QP is
gathered into chain order and its solution scattered back. The chain QP has the same solution as the
stacked one; its Riccati recursion costs S times one scenario's (measured: about 0.25 ms per
interior-point iteration instead of 1.2 ms with 45-state stages, the whole RTI step 2.4-2.55x faster).
Hessians are eigen-clipped per scenario block, as in :mod:`controllers.sqp`.
Converged and real-time-iteration modes, budget and fallbacks as there.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import casadi as ca
import numpy as np

from controllers.codegen import Compiled, compile_function
from controllers.config import MpcConfig, scenario_overrides
from controllers.hpipm_qp import FEASIBILITY_TOL, StagewiseQp
from controllers.interfaces import ControlStep, FloatArray
from controllers.stagewise import rk4_step, weighted_signals
from plant_models.errors import ScenarioError
from plant_models.spec import ModelSpec

IntArray = np.ndarray

# HPIPM settings for a tree (more than one scenario), on top of StagewiseQp's. The tree has nearly flat
# directions (curvature HESSIAN_MARGIN) along which a state near its bound can slide; with the mean
# complementarity at 1e-8 the QP's step along them is arbitrary to about 1e-2, and converged SQP (whose
# test is a step below 1e-8) was measured to cycle there to max_iter: 3 of 60 closed-loop steps. Tighter
# complementarity needs HPIPM's floors on slacks and multipliers lowered (at 1e-16, CasADi's stand-in
# +-1e8 for infinite bounds stalls the mean near 1e-8 and HPIPM runs to iter_max). Iterating to
# convergence takes 1e-12 (0 of 60 steps cycled); a real-time iteration, one QP from a nearly optimal
# plan, 1e-10 (1e-12 failed 6 of 150 RTI QPs). With one scenario the chain is the nominal problem and
# keeps the nominal settings (the same answer to 1e-10).
TREE_QP_FLOORS: dict[str, float] = {"lam_min": 1e-30, "t_min": 1e-30}
TREE_QP_COMPLEMENTARITY = {"converged": 1e-12, "rti": 1e-10}


@dataclass
class _ChainQp:
    """The chain QP built at a guess: everything except what depends on the measurement (``z_0``)."""

    w: FloatArray  # the guess, stacked order
    p: FloatArray  # scenario parameters (np, S)
    h: ca.DM  # convexified Hessian, chain sparsity
    a: ca.DM  # gap Jacobian, chain sparsity
    grad: ca.DM
    b: FloatArray  # gap right-hand side, before the junction rows take z_0's part
    j_z0: FloatArray  # (S-1, nz, nz): J_z of stage 0 for scenarios 2..S
    lbd: FloatArray  # bounds on the step, chain order
    ubd: FloatArray


class RobustSqpMpc:
    """Robust multi-stage NMPC by SQP with HPIPM; see the module docstring.

    Attributes:
        name: ``"nmpc-robust"``.
        n_scenarios: number of scenarios S.
        compiled: how the derivatives are evaluated (compiled C or interpreted), and why.
    """

    name = "nmpc-robust"

    def __init__(
        self,
        spec: ModelSpec,
        config: MpcConfig,
        uncertainty: Mapping[str, Sequence[float]],
        n_robust: int = 1,
    ) -> None:
        """Build the scenario tree's derivative functions and the HPIPM solver (once).

        Args:
            spec: the model.
            config: the problem and solver settings (``solver`` must be ``"sqp-hpipm"``).
            uncertainty: parameter name -> candidate values (absolute; first = nominal); parameters
                not named follow the ``p`` given to :meth:`step`.
            n_robust: robust horizon; only 1 is implemented (do-mpc's usual choice).

        Raises:
            ScenarioError: unknown names, an unsupported ``n_robust`` or solver.
        """
        config.check_against(spec)
        if n_robust != 1:
            raise ScenarioError(f"n_robust: only 1 is implemented on the SQP-HPIPM path, got {n_robust}")
        if config.solver != "sqp-hpipm":
            raise ScenarioError(f"controller.solver: robust NMPC needs 'sqp-hpipm', got {config.solver!r}")
        self.spec, self.config = spec, config
        self._overrides = scenario_overrides(spec, uncertainty)
        s_count = self.n_scenarios = len(self._overrides)
        n, nx, nu = config.horizon, spec.nx, spec.nu
        if n < 2:
            raise ScenarioError("controller.horizon: robust NMPC needs a horizon of at least 2")
        nz, nv = nx + nu, nx + 2 * nu
        self._n, self._nx, self._nu, self._nz, self._nv, self._s = n, nx, nu, nz, nv, s_count
        big_z, big_v = s_count * nz, s_count * nz + s_count * nu
        self._nv0 = nz + nu
        # Offsets of stage k's block in w: stage 0 is [z_0, u_0]; stages 1..N-1 are [Z_k, U_k].
        self._off = [0] + [self._nv0 + (k - 1) * big_v for k in range(1, n + 1)]
        nw = self._off[n] + big_z
        ng = n * big_z
        self._nw, self._ng, self._big_z, self._big_v = nw, ng, big_z, big_v

        step_fn = rk4_step(spec, config.dt_model(spec), config.substeps)
        self._step_fn = step_fn
        stage_cost = weighted_signals(spec, dict(config.objective.stage))
        terminal_cost = weighted_signals(spec, dict(config.objective.terminal))
        du_w = ca.DM([config.objective.delta_u.get(name, 0.0) for name in spec.inputs])

        # One scenario's stage, with the cost weighted by omega (1/S: the objective is the mean).
        z, u, lam = ca.SX.sym("z", nz), ca.SX.sym("u", nu), ca.SX.sym("lam", nz)
        p, omega = ca.SX.sym("p", spec.np), ca.SX.sym("omega")
        x_, v_ = z[:nx], z[nx:]
        vu = ca.vertcat(z, u)
        ell = omega * (stage_cost(x_, u, p) + ca.dot(du_w, (u - v_) ** 2))
        phi = ca.vertcat(step_fn(x_, u, p), u)
        hess, _ = ca.hessian(ell + ca.dot(lam, phi), vu)
        stage = ca.Function(
            "bioimp_rstage", [z, u, lam, p, omega],
            [ca.densify(hess), ca.densify(ca.jacobian(phi, vu)), phi, ca.densify(ca.gradient(ell, vu))],
        )
        zn = ca.SX.sym("zN", nz)
        mayer = omega * terminal_cost(zn[:nx], ca.DM.zeros(nu), p)
        h_n, g_n = ca.hessian(mayer, zn)
        terminal = ca.Function("bioimp_rterminal", [zn, p, omega], [ca.densify(h_n), ca.densify(g_n)])

        # The whole linearisation as one MX function of (w, lam, P) with P (np, S) per scenario.
        w_mx, lam_mx, p_mx = ca.MX.sym("w", nw), ca.MX.sym("lam", ng), ca.MX.sym("P", spec.np, s_count)
        om = 1.0 / s_count
        z0, u0 = w_mx[:nz], w_mx[nz : self._nv0]
        h0, j0, phi0, g0 = stage.map(s_count)(
            ca.repmat(z0, 1, s_count), ca.repmat(u0, 1, s_count), ca.reshape(lam_mx[:big_z], nz, s_count), p_mx, om
        )
        zk = [ca.reshape(w_mx[self._off[k] : self._off[k] + big_z], nz, s_count) for k in range(1, n + 1)]
        uk = [ca.reshape(w_mx[self._off[k] + big_z : self._off[k] + big_v], nu, s_count) for k in range(1, n)]
        lk = [ca.reshape(lam_mx[k * big_z : (k + 1) * big_z], nz, s_count) for k in range(1, n)]
        m = s_count * (n - 1)
        hk, jk, phik, gk = stage.map(m)(
            ca.horzcat(*zk[:-1]), ca.horzcat(*uk), ca.horzcat(*lk), ca.repmat(p_mx, 1, n - 1), om
        )
        hn, gn = terminal.map(s_count)(zk[-1], p_mx, om)
        # Stage 0's Hessian and gradient: the scenarios share (z_0, u_0), so their blocks add up.
        h0_sum = sum((h0[:, s * nv : (s + 1) * nv] for s in range(s_count)), ca.MX.zeros(nv, nv))
        g0_sum = ca.sum2(g0)
        grads = [g0_sum]
        for k in range(1, n):
            g_stage = gk[:, (k - 1) * s_count : k * s_count]
            grads += [ca.vec(g_stage[:nz, :]), ca.vec(g_stage[nz:, :])]
        grads.append(ca.vec(gn))
        phis = [ca.vec(phi0)] + [ca.vec(phik[:, (k - 1) * s_count : k * s_count]) for k in range(1, n)]
        b_mx = ca.vertcat(*(ca.vec(zk[k]) - phis[k] for k in range(n)))
        # Gathered into chain order (a trailing zero stands in for the carry's entries).
        self._chain_layout()
        grad_chain = ca.vertcat(*grads, 0)[self._grad_src.tolist()]
        b_chain = ca.vertcat(b_mx, 0)[self._b_src.tolist()]
        a_sp, a_src = self._gap_pattern(j0.shape[1], jk.shape[1])
        a_mx = ca.MX(a_sp, ca.vertcat(ca.vec(j0.T), ca.vec(jk.T), -1.0, 1.0)[a_src.tolist()])
        prep = ca.Function(
            "bioimp_robust_prep", [w_mx, lam_mx, p_mx],
            [ca.vertcat(ca.vec(h0_sum), ca.vec(hk), ca.vec(hn)), a_mx, grad_chain, b_chain, j0],
        )
        if config.compiled:
            self.compiled: Compiled = compile_function(prep, config.cache_dir)
        else:
            self.compiled = Compiled(prep, False, None, False, "interpreted (compiled = false)")
        self._prep_fn = self.compiled.function
        self._h_scatter, h_sp = self._hessian_pattern()
        self._build_qp(h_sp, a_sp)

        xb, ub = config.bounds(spec)
        free = [(-math.inf, math.inf)]
        bounds: list[tuple[float, float]] = free * nz + ub  # stage 0: z_0 pinned at run time
        for k in range(1, n + 1):
            bounds += (xb + free * nu) * s_count + (ub * s_count if k < n else [])
        self._lbw = np.array([lo for lo, _ in bounds])
        self._ubw = np.array([hi for _, hi in bounds])
        # The same bounds in chain order; the carry is free.
        self._lbc = np.full(self._nwc, -math.inf)
        self._ubc = np.full(self._nwc, math.inf)
        self._lbc[self._cidx], self._ubc[self._cidx] = self._lbw, self._ubw
        self._u_prev = np.array([spec.input_safe[name] for name in spec.inputs], dtype=float)
        self._w: FloatArray | None = None
        self._lam = np.zeros(ng)
        self._prepared: _ChainQp | None = None
        self._iter_s: float | None = None
        self._plan: FloatArray | None = None

    # -- build-time patterns ----------------------------------------------------------------
    def _chain_layout(self) -> None:
        """Stage sizes and offsets of the chain QP, and the maps between stacked and chain order.

        Chain stage 0 is ``[z_0, u_0]``; scenario s's stage k (1..N) is stage ``j = s*N + k`` with
        block ``[z_k^s, c, u_k^s]`` (no input at k = N). The carry ``c`` (nu) exists only to link
        scenarios: with one scenario it has size 0 and the chain is the nominal problem.
        """
        n, nz, nu, s_count, big_z, off = self._n, self._nz, self._nu, self._s, self._big_z, self._off
        nc = self._nc = nu if s_count > 1 else 0
        n_chain = s_count * n
        self._cnx = [nz] + [nz + nc] * n_chain
        self._cnu = [nu] + ([nu] * (n - 1) + [0]) * s_count
        sizes = [a + b for a, b in zip(self._cnx, self._cnu, strict=True)]
        self._coff = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self._roff = np.concatenate([[0], np.cumsum(self._cnx[1:])]).astype(np.int64)
        self._nwc, self._ngc = int(self._coff[-1]), int(self._roff[-1])
        coff, roff = self._coff, self._roff
        cidx = np.empty(self._nw, dtype=np.int64)  # stacked index -> chain index
        cidx[: self._nv0] = np.arange(self._nv0)
        b_src = np.full(self._ngc, self._ng, dtype=np.int64)  # chain row -> stacked row (ng: zero)
        for s in range(s_count):
            for k in range(1, n + 1):
                j = s * n + k
                cidx[off[k] + s * nz + np.arange(nz)] = coff[j] + np.arange(nz)
                if k < n:
                    cidx[off[k] + big_z + s * nu + np.arange(nu)] = coff[j] + nz + nc + np.arange(nu)
                # Dynamics into z_k^s: chain transition j-1 (a junction for k = 1, s > 0).
                b_src[roff[j - 1] + np.arange(nz)] = (k - 1) * big_z + s * nz + np.arange(nz)
        self._cidx = cidx
        grad_src = np.full(self._nwc, self._nw, dtype=np.int64)
        grad_src[cidx] = np.arange(self._nw)
        self._grad_src, self._b_src = grad_src, b_src
        # Junction rows: z_1^s for s > 0 depends on the pinned z_0 through J_z^s, moved to the right side.
        self._junction_rows = np.concatenate(
            [roff[s * n] + np.arange(nz) for s in range(1, s_count)] or [np.zeros(0, dtype=np.int64)]
        )

    def _gap_pattern(self, n_j0_cols: int, n_jk_cols: int) -> tuple[ca.Sparsity, IntArray]:
        """Sparsity of the chain QP's gap Jacobian and, per nonzero, its index in
        ``[vec(J0'); vec(Jk'); -1; +1]`` (J0, Jk: the stage Jacobians of stage 0 and of stages 1..N-1)."""
        n, nz, nu, nv, s_count, nc = self._n, self._nz, self._nu, self._nv, self._s, self._nc
        coff, roff = self._coff, self._roff
        n_j0 = nz * n_j0_cols
        minus_one = n_j0 + nz * n_jk_cols
        plus_one = minus_one + 1
        tmpl = -np.ones((self._ngc, self._nwc), dtype=np.int64)

        def carry(j: int) -> None:  # c' = c (from u_0 itself at transition 0)
            for i in range(nc):
                tmpl[roff[j] + nz + i, coff[j] + nz + i] = plus_one
                tmpl[roff[j] + nz + i, coff[j + 1] + nz + i] = minus_one

        for i in range(nz):  # transition 0: z_1^1 = phi(z_0, u_0, p_1)
            tmpl[roff[0] + i, : self._nv0] = i * n_j0_cols + np.arange(nv)
            tmpl[roff[0] + i, coff[1] + i] = minus_one
        carry(0)
        for s in range(s_count):
            for k in range(1, n + 1):
                j = s * n + k
                if k < n:  # z_{k+1}^s = phi(z_k^s, u_k^s, p_s)
                    for i in range(nz):
                        src = n_j0 + i * n_jk_cols + ((k - 1) * s_count + s) * nv
                        tmpl[roff[j] + i, coff[j] + np.arange(nz)] = src + np.arange(nz)
                        tmpl[roff[j] + i, coff[j] + nz + nc + np.arange(nu)] = src + nz + np.arange(nu)
                        tmpl[roff[j] + i, coff[j + 1] + i] = minus_one
                elif s + 1 < s_count:  # junction: z_1^{s+1} = phi(z_0, c, p_{s+1})
                    for i in range(nz):
                        src = i * n_j0_cols + (s + 1) * nv + nz
                        tmpl[roff[j] + i, coff[j] + nz + np.arange(nu)] = src + np.arange(nu)
                        tmpl[roff[j] + i, coff[j + 1] + i] = minus_one
                else:
                    continue  # the last stage
                carry(j)
        cols, rows = np.nonzero(tmpl.T >= 0)
        return ca.Sparsity.triplet(self._ngc, self._nwc, rows.tolist(), cols.tolist()), tmpl.T[cols, rows]

    def _hessian_pattern(self) -> tuple[IntArray, ca.Sparsity]:
        """The chain Hessian's sparsity (the scenario blocks only) and where each flat element lands in it.

        The prep function returns stage 0's block (nv, nv), then one (nv, nv) block per scenario and
        stage 1..N-1, then one (nz, nz) terminal block per scenario, each column-major, all flat;
        ``scatter[i]`` is the nonzero index of flat element i. Only the scenario blocks are nonzero
        (scenarios do not couple after stage 0, the carry has no cost), which keeps the data crossing
        into CasADi small.
        """
        n, nz, nu, nv, s_count, big_z, off = self._n, self._nz, self._nu, self._nv, self._s, self._big_z, self._off
        rows: list[IntArray] = []
        cols: list[IntArray] = []

        def block(stacked_idx: IntArray) -> None:
            idx = self._cidx[stacked_idx]
            size = len(idx)
            cols.append(np.repeat(idx, size))  # column-major: column by column
            rows.append(np.tile(idx, size))

        block(np.arange(nv))
        for k in range(1, n):
            for s in range(s_count):
                block(np.concatenate([off[k] + s * nz + np.arange(nz), off[k] + big_z + s * nu + np.arange(nu)]))
        for s in range(s_count):
            block(off[n] + s * nz + np.arange(nz))
        r, c = np.concatenate(rows), np.concatenate(cols)
        h_sp = ca.Sparsity.triplet(self._nwc, self._nwc, r.tolist(), c.tolist())
        # Nonzero index of each (row, col): number the nonzeros and read them back densely (build time).
        numbered = np.asarray(ca.DM(h_sp, np.arange(h_sp.nnz(), dtype=float)).full())
        return numbered[r, c].astype(np.int64), h_sp

    def _build_qp(self, h_sp: ca.Sparsity, a_sp: ca.Sparsity) -> None:
        """HPIPM on the chain's stages, and the post-solve function (multipliers, feasibility)."""
        n, nz, s_count, coff, roff = self._n, self._nz, self._s, self._coff, self._roff
        tol = 1e-8  # as StagewiseQp: absolute tolerances
        options: dict[str, Any] = {"mode": "speed_abs", "iter_max": 100, "res_g_max": tol,
                                   "res_b_max": tol, "res_d_max": tol, "res_m_max": tol}
        self._conic: dict[str, ca.Function] = {}
        for mode, res_m in TREE_QP_COMPLEMENTARITY.items():
            tree = {**TREE_QP_FLOORS, "res_m_max": res_m} if s_count > 1 else {}
            self._conic[mode] = ca.conic(
                f"bioimp_robust_hpipm_{mode}", "hpipm", {"h": h_sp, "a": a_sp},
                {"N": s_count * n, "nx": self._cnx, "nu": self._cnu, "ng": [0] * (s_count * n + 1),
                 "error_on_fail": False, "hpipm": {**options, **tree}},
            )
        self._h_sp = h_sp
        nwc = self._nwc
        h, a = ca.SX.sym("h", h_sp), ca.SX.sym("a", a_sp)
        d, lam_x, grad, lbd, ubd = (ca.SX.sym(k, nwc) for k in ("d", "lam_x", "grad", "lbd", "ubd"))
        b = ca.SX.sym("b", self._ngc)
        # Multipliers of the stacked dynamics from stationarity, backwards per scenario (see
        # StagewiseQp): lam_{k-1}^s = r(z_k^s) + J_{k,z}^s' lam_k^s, lam_{N-1}^s = r(z_N^s).
        r = ca.mtimes(h, d) + grad + lam_x
        lams: list[list[ca.SX]] = []
        for s in range(s_count):
            j_last = s * n + n
            per = [r[coff[j_last] : coff[j_last] + nz]]
            for k in range(n - 1, 0, -1):
                j = s * n + k
                j_z = a[roff[j] : roff[j] + nz, coff[j] : coff[j] + nz]
                per.insert(0, r[coff[j] : coff[j] + nz] + ca.mtimes(j_z.T, per[0]))
            lams.append(per)
        viol = ca.mmax(ca.vertcat(ca.fabs(ca.mtimes(a, d) - b), ca.fmax(lbd - d, 0), ca.fmax(d - ubd, 0)))
        stacked = [lams[s][k] for k in range(n) for s in range(s_count)]
        self._post = ca.Function(
            "bioimp_robust_post", [h, a, d, lam_x, grad, b, lbd, ubd],
            [ca.vertcat(d[self._cidx.tolist()], *stacked, viol)],
        )

    # -- run time -------------------------------------------------------------------------
    def _scenario_params(self, p: FloatArray) -> FloatArray:
        """P (np, S): ``p`` with each scenario's uncertain values written over it."""
        mat = np.repeat(p[:, None], self._s, axis=1)
        for s, overrides in enumerate(self._overrides):
            for idx, value in overrides:
                mat[idx, s] = value
        return mat

    def _rollout(self, x: FloatArray, params: FloatArray) -> FloatArray:
        """Cold start: hold the last input (clipped) and integrate every scenario's model."""
        nz, nv0 = self._nz, self._nv0
        u = np.clip(self._u_prev, self._lbw[nz:nv0], self._ubw[nz:nv0])
        parts: list[FloatArray] = [x, self._u_prev, u]
        xs = [np.asarray(x, dtype=float)] * self._s
        v = u
        for k in range(1, self._n + 1):
            xs = [np.asarray(self._step_fn(xi, u, params[:, s]), dtype=float).ravel() for s, xi in enumerate(xs)]
            xs = [xi if np.all(np.isfinite(xi)) else x for xi in xs]
            parts += [np.concatenate([xi, v]) for xi in xs]
            if k < self._n:
                parts += [u] * self._s
        return np.concatenate(parts)

    def _shift(self, w: FloatArray) -> FloatArray:
        """Warm start one interval on: stage 0 takes the nominal scenario's stage 1, stages move up."""
        off, big_z, nz, nu = self._off, self._big_z, self._nz, self._nu
        stage0 = np.concatenate([w[off[1] : off[1] + nz], w[off[1] + big_z : off[1] + big_z + nu]])
        middle = w[off[2] : off[self._n]]
        last = w[off[self._n - 1] : off[self._n]]  # repeat the last interval
        return np.concatenate([stage0, middle, last, w[off[self._n] :]])

    def prepare(self, w: FloatArray, lam: FloatArray, params: FloatArray) -> _ChainQp:
        """Linearise at ``w``, ``lam`` with scenario parameters ``params``: the chain QP minus ``z_0``."""
        nv, nz, s_count, n = self._nv, self._nz, self._s, self._n
        h_dm, a, grad, b, j0 = self._prep_fn(w, lam, params)
        flat = np.asarray(h_dm, dtype=float).ravel()
        n_stage = nv * nv * (1 + s_count * (n - 1))
        clipped = np.concatenate([
            StagewiseQp.convexify(flat[:n_stage].reshape(-1, nv, nv)).ravel(),
            StagewiseQp.convexify(flat[n_stage:].reshape(-1, nz, nz)).ravel(),
        ])
        h_nz = np.zeros(self._h_sp.nnz())
        h_nz[self._h_scatter] = clipped
        # J_z of stage 0 per scenario s > 0, (S-1, nz, nz): the junctions' dependence on z_0.
        j_z0 = np.asarray(j0, dtype=float).reshape(nz, s_count, nv)[:, 1:, :nz].transpose(1, 0, 2)
        w_chain = np.zeros(self._nwc)
        w_chain[self._cidx] = w
        return _ChainQp(
            w, params.copy(), ca.DM(self._h_sp, h_nz), a, grad, np.asarray(b, dtype=float).ravel(), j_z0,
            self._lbc - w_chain, self._ubc - w_chain,
        )

    def _feedback(self, prep: _ChainQp, x: FloatArray, rti: bool) -> tuple[FloatArray, FloatArray, bool]:
        """Pin ``z_0 = [x; u_prev]`` and solve (a real-time iteration's QP or one of a converging SQP):
        the new iterate's step, multipliers, success."""
        nz = self._nz
        dz0 = np.concatenate([x, self._u_prev]) - prep.w[:nz]
        lbd, ubd = prep.lbd.copy(), prep.ubd.copy()
        lbd[:nz] = ubd[:nz] = dz0
        b = prep.b.copy()
        b[self._junction_rows] -= (prep.j_z0 @ dz0).ravel()
        b_dm, lbd_dm, ubd_dm = ca.DM(b), ca.DM(lbd), ca.DM(ubd)  # converted once, used twice
        qp = self._conic["rti" if rti else "converged"]
        res = qp(h=prep.h, g=prep.grad, a=prep.a, lba=b_dm, uba=b_dm, lbx=lbd_dm, ubx=ubd_dm)
        out = np.asarray(
            self._post(prep.h, prep.a, res["x"], res["lam_x"], prep.grad, b_dm, lbd_dm, ubd_dm), dtype=float
        ).ravel()
        viol = out[-1]
        ok = bool(np.isfinite(viol) and viol <= FEASIBILITY_TOL and np.all(np.isfinite(out)))
        return out[: self._nw], out[self._nw : -1], ok

    def step(self, t_s: float, x: FloatArray, p: FloatArray) -> ControlStep:
        """Decide the common first input from ``x`` and parameters ``p`` (see module docstring).

        ``predicted_x`` and ``planned_u`` are the nominal (first) scenario's plan.
        """
        start = time.perf_counter()
        cfg = self.config
        x = np.asarray(x, dtype=float).ravel()
        params = self._scenario_params(np.asarray(p, dtype=float).ravel())
        had_plan = self._w is not None
        w = self._rollout(x, params) if self._w is None else self._w
        lam = self._lam
        rti = cfg.mode == "rti" and had_plan
        max_iter = 1 if rti else cfg.max_iter
        status, fallback, iterations, ok = "ok", None, 0, False
        while iterations < max_iter:
            budget = cfg.budget_s
            if budget is not None and self._iter_s is not None and time.perf_counter() - start + self._iter_s > budget:
                status = "budget_exceeded"
                break
            t_iter = time.perf_counter()
            prep = self._prepared
            if prep is None or prep.w is not w or not np.array_equal(prep.p, params):
                prep = self.prepare(w, lam, params)
            self._prepared = None
            d, lam_new, ok = self._feedback(prep, x, rti)
            iterations += 1
            self._iter_s = time.perf_counter() - t_iter
            if not ok:
                status = "qp_failed"
                break
            w, lam = w + d, lam_new
            if rti or float(np.max(np.abs(d))) <= cfg.tol:
                break
        else:
            status, ok = "max_iter", False
        if status == "budget_exceeded" and iterations > 0:
            ok, fallback = True, "budget_iterate"
        nz, nx, nv0 = self._nz, self._nx, self._nv0
        plan = w
        if not ok:
            if had_plan and self._w is not None:
                plan, fallback = self._w, "shifted_plan"
            else:
                plan = self._rollout(x, params)
                plan[nz:nv0] = [self.spec.input_safe[name] for name in self.spec.inputs]
                fallback = "safe_hold"
        u = np.clip(plan[nz:nv0], self._lbw[nz:nv0], self._ubw[nz:nv0])
        feedback_s = time.perf_counter() - start
        if ok:
            big_z = self._big_z
            self._lam = np.concatenate([lam[big_z:], lam[-big_z:]])
        else:
            self._lam = np.zeros(self._ng)
        self._u_prev = u
        self._plan = plan
        self._w = None if fallback == "safe_hold" else self._shift(plan)
        off, big_z, nu = self._off, self._big_z, self._nu
        predicted_x = np.vstack([plan[:nx]] + [plan[off[k] : off[k] + nx] for k in range(1, self._n + 1)])
        planned_u = np.vstack([plan[nz:nv0]] + [plan[off[k] + big_z : off[k] + big_z + nu] for k in range(1, self._n)])
        if cfg.mode == "rti" and self._w is not None:
            self._prepared = self.prepare(self._w, self._lam, params)
        return ControlStep(
            u=u, status=status, compute_s=time.perf_counter() - start, fallback=fallback,
            predicted_x=predicted_x, planned_u=planned_u, iterations=iterations, feedback_s=feedback_s,
        )

    def scenario_plans(self) -> FloatArray:
        """The last step's predicted states per scenario, (S, N, nx) for stages 1..N."""
        if self._plan is None:
            raise ScenarioError("scenario_plans: no step has been taken yet")
        w, off, nz, nx = self._plan, self._off, self._nz, self._nx
        return np.stack([
            np.vstack([w[off[k] + s * nz : off[k] + s * nz + nx] for k in range(1, self._n + 1)])
            for s in range(self._s)
        ])
