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
from controllers.stagewise import StagewiseOcp

# Smallest eigenvalue left in each Hessian block. The economic objective is linear in the states, so
# the exact Lagrangian Hessian is indefinite or singular in places; HPIPM's Riccati recursion needs
# positive definite stage blocks. Eigenvalues below this are clipped ("eigen-clip" convexification).
HESSIAN_MARGIN = 1e-6


@dataclass(frozen=True)
class QpSolution:
    """One solved QP: the primal step, the new multipliers of the dynamics, and whether it succeeded."""

    d: FloatArray
    lam_g: FloatArray
    ok: bool
    status: str


class StagewiseQp:
    """HPIPM on the fixed stage-wise sparsity of ``ocp``; call :meth:`solve` with numeric blocks."""

    def __init__(self, ocp: StagewiseOcp, hpipm_options: dict[str, Any] | None = None) -> None:
        """Build the sparsity patterns, the nonzero orderings and the HPIPM solver (once)."""
        self.ocp = ocp
        n, nz, nu, nv, nw = ocp.n, ocp.nz, ocp.nu, ocp.nv, ocp.nw
        self.ng = n * nz
        self._h_sp = ca.diagcat(*([ca.Sparsity.dense(nv, nv)] * n + [ca.Sparsity.dense(nz, nz)]))
        # Constraint matrix: a template of indices into [J_all.ravel(), -1.0], traversed column-major
        # (CasADi's nonzero order), so each solve builds A with one fancy-indexing gather.
        n_j = nz * n * nv
        tmpl = -np.ones((self.ng, nw), dtype=np.int64)
        for k in range(n):
            for i in range(nz):
                tmpl[k * nz + i, k * nv : (k + 1) * nv] = i * n * nv + k * nv + np.arange(nv)
                tmpl[k * nz + i, (k + 1) * nv + i] = n_j
        cols, rows = np.nonzero(tmpl.T >= 0)
        self._a_perm = tmpl.T[cols, rows]
        self._a_sp = ca.Sparsity.triplet(self.ng, nw, rows.tolist(), cols.tolist())
        # Absolute residual tolerances: relative ones (HPIPM's "speed" mode) stall on these nearly
        # linear programs (state curvature only HESSIAN_MARGIN) and run to iter_max.
        tol = 1e-8
        options: dict[str, Any] = {"mode": "speed_abs", "iter_max": 100, "res_g_max": tol,
                                   "res_b_max": tol, "res_d_max": tol, "res_m_max": tol}
        options.update(hpipm_options or {})
        self._solver = ca.conic(
            "bioimp_qp",
            "hpipm",
            {"h": self._h_sp, "a": self._a_sp},
            {
                "N": n,
                "nx": [nz] * (n + 1),
                "nu": [nu] * n + [0],
                "ng": [0] * (n + 1),
                "error_on_fail": False,
                "hpipm": options,
            },
        )

    @staticmethod
    def convexify(blocks: FloatArray) -> FloatArray:
        """Clip the eigenvalues of each symmetric block of ``blocks`` (..., m, m) at HESSIAN_MARGIN."""
        sym = 0.5 * (blocks + np.swapaxes(blocks, -1, -2))
        eigval, eigvec = np.linalg.eigh(sym)
        clipped = np.maximum(eigval, HESSIAN_MARGIN)
        return np.asarray((eigvec * clipped[..., None, :]) @ np.swapaxes(eigvec, -1, -2), dtype=float)

    def data(self, h_stages: FloatArray, h_terminal: FloatArray, j_all: FloatArray) -> tuple[ca.DM, ca.DM]:
        """Sparse H and A from stage blocks ``(N, nv, nv)``, terminal ``(nz, nz)``, ``J (nz, N*nv)``."""
        # Block diagonal with dense symmetric blocks: column-major nonzeros are the blocks, one after
        # the other, each in column-major (= row-major, by symmetry) order.
        h_nz = np.concatenate([h_stages.ravel(), h_terminal.ravel()])
        a_nz = np.concatenate([j_all.ravel(), [-1.0]])[self._a_perm]
        return ca.DM(self._h_sp, h_nz), ca.DM(self._a_sp, a_nz)

    def solve(
        self,
        h: ca.DM,
        grad: FloatArray,
        a: ca.DM,
        b: FloatArray,
        lbd: FloatArray,
        ubd: FloatArray,
        j_z: FloatArray,
    ) -> QpSolution:
        """Solve the QP in the step ``d`` (see module docstring); ``b`` is the right-hand side.

        ``j_z`` (N, nz, nz) are the dynamics' Jacobians in ``z_k``, used to recover the multipliers.
        """
        res = self._solver(h=h, g=grad, a=a, lba=b, uba=b, lbx=lbd, ubx=ubd)
        stats = self._solver.stats()
        d = np.asarray(res["x"], dtype=float).ravel()
        ok = bool(stats.get("success", False)) and bool(np.all(np.isfinite(d)))
        lam = self._gap_multipliers(h, grad, d, np.asarray(res["lam_x"], dtype=float).ravel(), j_z)
        ok = ok and bool(np.all(np.isfinite(lam)))
        return QpSolution(d, lam, ok, "ok" if ok else f"qp_{stats.get('return_status', 'failed')}")

    def _gap_multipliers(
        self, h: ca.DM, grad: FloatArray, d: FloatArray, lam_x: FloatArray, j_z: FloatArray
    ) -> FloatArray:
        """Multipliers of the dynamics from QP stationarity, by a backward (adjoint) recursion.

        CasADi 3.8's HPIPM interface returns ``lam_a = 0``; the SQP needs them for the exact Hessian.
        Stationarity ``H d + grad + A' lam + lam_x = 0`` read at the columns of ``z_{k+1}``, where A
        has ``-I`` (row block k) and ``J_{k+1,z}`` (row block k+1), gives with ``r = H d + grad + lam_x``

            lam_{N-1} = r_(z_N),    lam_k = r_(z_{k+1}) + J_{k+1,z}' lam_{k+1}.
        """
        ocp = self.ocp
        n, nz, nv = ocp.n, ocp.nz, ocp.nv
        r = np.asarray(ca.mtimes(h, d), dtype=float).ravel() + grad + lam_x
        lam = np.empty((n, nz))
        lam[n - 1] = r[n * nv :]
        for k in range(n - 2, -1, -1):
            lam[k] = r[(k + 1) * nv : (k + 1) * nv + nz] + j_z[k + 1].T @ lam[k + 1]
        return lam.ravel()
