"""The SQP subproblem of a :class:`~controllers.stagewise.StagewiseOcp`, solved by HPIPM.

In the step ``d = w_new - w`` the QP is

    min  1/2 d' H d + grad' d
    s.t. J_k d_(z_k, u_k) - d_(z_k+1) = z_k+1 - phi_k        k = 0..N-1  (linearised dynamics)
         lbw - w <= d <= ubw - w                                         (bounds, z_0 pinned)

with H block diagonal (one block per stage) and the constraint matrix banded as ``[J_k  -I]``: exactly
the OCP structure HPIPM's Riccati-based interior point solves in time linear in N. The sparsity is
fixed at build time; each solve only fills nonzeros, in the order precomputed here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import casadi as ca
import numpy as np

from controllers.interfaces import FloatArray
from controllers.stagewise import StagewiseOcp, gap_jacobian_pattern

# Smallest eigenvalue left in each Hessian block. The economic objective is linear in the states, so
# the exact Lagrangian Hessian is indefinite or singular in places; HPIPM's Riccati recursion needs
# positive definite stage blocks. Eigenvalues below this are clipped ("eigen-clip" convexification).
HESSIAN_MARGIN = 1e-6


# A QP "solution" that violates its own constraints by more than this is a failure (HPIPM stops at
# iter_max without converging on an infeasible QP and returns its last iterate).
FEASIBILITY_TOL = 1e-6


@dataclass(frozen=True)
class QpSolution:
    """One solved QP: the primal step, the dynamics' multipliers, and whether it succeeded."""

    d: FloatArray
    lam_g: FloatArray
    ok: bool
    status: str


class StagewiseQp:
    """HPIPM on the fixed stage-wise sparsity of ``ocp``; call :meth:`solve` with flat numeric data.

    Data cross from Python as flat nonzero vectors (H: the stage blocks one after the other, which is
    CasADi's column-major order for a block-diagonal matrix; A: one precomputed gather), and the
    solution comes back as one flat vector: conversions between numpy and CasADi cost more than the
    QP itself at this size.
    """

    def __init__(self, ocp: StagewiseOcp, hpipm_options: dict[str, Any] | None = None) -> None:
        """Build the sparsity patterns, the nonzero orderings and the HPIPM solver (once)."""
        self.ocp = ocp
        n, nz, nu, nv, nw = ocp.n, ocp.nz, ocp.nu, ocp.nv, ocp.nw
        self.ng = n * nz
        h_sp = ca.diagcat(*([ca.Sparsity.dense(nv, nv)] * n + [ca.Sparsity.dense(nz, nz)]))
        a_sp, _ = gap_jacobian_pattern(n, nz, nv)
        # Absolute residual tolerances: relative ones (HPIPM's "speed" mode) stall on these nearly
        # linear programs (state curvature only HESSIAN_MARGIN) and run to iter_max.
        tol = 1e-8
        options: dict[str, Any] = {"mode": "speed_abs", "iter_max": 100, "res_g_max": tol,
                                   "res_b_max": tol, "res_d_max": tol, "res_m_max": tol}
        options.update(hpipm_options or {})
        self._conic = ca.conic(
            "bioimp_hpipm",
            "hpipm",
            {"h": h_sp, "a": a_sp},
            {
                "N": n,
                "nx": [nz] * (n + 1),
                "nu": [nu] * n + [0],
                "ng": [0] * (n + 1),
                "error_on_fail": False,
                "hpipm": options,
            },
        )
        self._h_sp = h_sp
        # After the solve, one SX function (HPIPM cannot be embedded in an MX graph in CasADi 3.8: it
        # crashes) turns the raw solution into what the SQP needs, in one flat vector.
        h = ca.SX.sym("h", h_sp)
        a = ca.SX.sym("a", a_sp)
        d = ca.SX.sym("d", nw)
        lam_x = ca.SX.sym("lam_x", nw)
        grad = ca.SX.sym("grad", nw)
        b = ca.SX.sym("b", self.ng)
        lbd = ca.SX.sym("lbd", nw)
        ubd = ca.SX.sym("ubd", nw)
        # Multipliers of the dynamics from QP stationarity (CasADi 3.8's HPIPM interface returns
        # lam_a = 0, the SQP needs them for the exact Hessian). ``H d + grad + A' lam + lam_x = 0``
        # read at the columns of z_{k+1}, where A has -I (row block k) and J_{k+1,z} (row block
        # k+1), gives with r = H d + grad + lam_x a backward (adjoint) recursion:
        #     lam_{N-1} = r(z_N),   lam_k = r(z_{k+1}) + J_{k+1,z}' lam_{k+1}.
        r = ca.mtimes(h, d) + grad + lam_x
        lams = [r[n * nv :]]
        for k in range(n - 2, -1, -1):
            j_z = a[(k + 1) * nz : (k + 2) * nz, (k + 1) * nv : (k + 1) * nv + nz]
            lams.insert(0, r[(k + 1) * nv : (k + 1) * nv + nz] + ca.mtimes(j_z.T, lams[0]))
        # Largest violation of the QP's own constraints, to tell a solution from a stalled iterate.
        viol = ca.mmax(
            ca.vertcat(ca.fabs(ca.mtimes(a, d) - b), ca.fmax(lbd - d, 0), ca.fmax(d - ubd, 0))
        )
        self._post = ca.Function(
            "bioimp_qp_post", [h, a, d, lam_x, grad, b, lbd, ubd], [ca.vertcat(d, *lams, viol)]
        )
        self._nw = nw

    @staticmethod
    def convexify(blocks: FloatArray) -> FloatArray:
        """Clip the eigenvalues of each symmetric block of ``blocks`` (..., m, m) at HESSIAN_MARGIN."""
        sym = 0.5 * (blocks + np.swapaxes(blocks, -1, -2))
        eigval, eigvec = np.linalg.eigh(sym)
        clipped = np.maximum(eigval, HESSIAN_MARGIN)
        return np.asarray((eigvec * clipped[..., None, :]) @ np.swapaxes(eigvec, -1, -2), dtype=float)

    def solve(
        self,
        h_nz: FloatArray,
        a: ca.DM,
        grad: ca.DM,
        b: ca.DM,
        lbd: FloatArray,
        ubd: FloatArray,
    ) -> QpSolution:
        """Solve the QP in the step ``d`` (see module docstring).

        Args:
            h_nz: convexified Hessian blocks, stage blocks (N, nv, nv) then terminal (nz, nz), flat.
            a: the gap Jacobian (``StagewiseOcp.prep_fn``'s sparse ``A``).
            grad: cost gradient at the guess.
            b: gap right-hand side ``z_{k+1} - phi_k``.
            lbd, ubd: bounds on the step (``z_0`` pinned by ``lbd = ubd``).
        """
        h = ca.DM(self._h_sp, h_nz)
        lbx, ubx = ca.DM(lbd), ca.DM(ubd)  # converted once, used twice
        res = self._conic(h=h, g=grad, a=a, lba=b, uba=b, lbx=lbx, ubx=ubx)
        out = np.asarray(self._post(h, a, res["x"], res["lam_x"], grad, b, lbx, ubx), dtype=float).ravel()
        nw = self._nw
        d, lam, viol = out[:nw], out[nw:-1], out[-1]
        ok = bool(np.isfinite(viol) and viol <= FEASIBILITY_TOL and np.all(np.isfinite(out)))
        return QpSolution(d, lam, ok, "ok" if ok else "qp_failed")


@dataclass
class PreparedQp:
    """A QP built at a guess: everything except the measurement-dependent bounds of ``z_0``."""

    w: FloatArray
    p: FloatArray
    h_nz: FloatArray
    a: ca.DM
    grad: ca.DM
    b: ca.DM
    lbd: FloatArray
    ubd: FloatArray
