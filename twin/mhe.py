"""Moving-horizon estimation over a ModelSpec: a least-squares fit of the model to a window of data.

At each update the MHE solves, over the last ``N`` intervals of the estimation history (times
``t_0 < … < t_N = now``), for the trajectory ``z_0 … z_N`` (states and augmented parameters, scaled)
minimising

    ‖z_0 − z̄_0‖²_{P̄_0⁻¹}  +  Σ_k ‖z_{k+1} − Φ(z_k, u_k, t_{k+1} − t_k)‖²_{Q_k⁻¹}
                           +  Σ_{k≥1} Σ_j (y_kj − h_j(z_k))² / r_kj

subject to the physical bounds, where ``Φ`` is the same RK4 discretisation as the EKF's (fixed
``SUBSTEPS`` per interval). The problem has a fixed structure: its residuals and their Jacobian are one
CasADi function built once; it is solved by Gauss–Newton with Levenberg–Marquardt damping (iterates
clipped to the bounds), warm-started from the EKF's trajectory over the window. Short windows at the
start of a batch are padded with zero-length intervals that carry no measurement.

The bookkeeping is shared with the EKF, which runs alongside (:class:`twin.ekf.ExtendedKalmanFilter`):
it decides which readings are new, rejects the implausible ones (its gate, with the same 5 σ rule),
places late assays at their sample time (the window's nodes include those times, so out-of-sequence
measurements enter the fit where they belong), and gives the arrival cost — its estimate and covariance
at the window's first node, which contain every measurement before the window and none inside it. The
reported uncertainty ``x_std`` is the EKF's (an MHE has no cheap covariance of its own).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import casadi as ca
import numpy as np

from plant_models.spec import ModelSpec
from twin.ekf import ExtendedKalmanFilter
from twin.estimator_config import EstimatorConfig, MeasurementModel
from twin.interfaces import Estimate, FloatArray, Measurements

__all__ = ["SUBSTEPS", "MovingHorizonEstimator"]


@dataclass(frozen=True)
class _Window:
    """The data of one window fit (columns are intervals)."""

    zbar: FloatArray  # arrival estimate (scaled)
    L0: FloatArray  # arrival weight factor: L0ᵀL0 = P̄⁻¹
    U: FloatArray  # input held over each interval
    dt: FloatArray  # interval lengths (model time units)
    qinv: FloatArray  # 1/σ of the process noise over each interval
    Y: FloatArray  # measured values at each interval's end
    W: FloatArray  # 1/σ of each measurement, 0 where there is none


@dataclass(frozen=True)
class _Linearisation:
    """Residuals at one iterate: arrival ``r0``, per interval ``r[k]`` with Jacobian blocks (ends k, k+1)."""

    r0: FloatArray
    r: list[FloatArray]
    Ja: list[FloatArray]
    Jb: list[FloatArray]
    cost: float


#: RK4 steps per window interval (the window's intervals are about one loop period).
SUBSTEPS = 4
#: Gauss-Newton iterations per update at most, and the relative cost decrease that counts as converged.
MAX_ITER = 20
TOL = 1e-9


class MovingHorizonEstimator:
    """MHE with an EKF for gating, late-measurement placement and the arrival cost (see the module doc).

    Attributes:
        ekf: the filter running alongside.
        last_status: ``converged``/``not_converged`` for the latest fit (``"ekf"`` when none was needed).
        iterations: accepted Gauss-Newton steps so far.
        failures: window fits that failed; the EKF's estimate was returned instead.
    """

    def __init__(
        self,
        spec: ModelSpec,
        p: FloatArray,
        config: EstimatorConfig,
        devices: tuple[MeasurementModel, ...],
    ) -> None:
        """Build the EKF and the window NLP (once)."""
        self.ekf = ExtendedKalmanFilter(spec, p, config, devices)
        self.spec = spec
        self.p = self.ekf.p
        self.devices = devices
        self.N = config.horizon
        self.last_status = "ekf"
        self.failures = 0
        self.iterations = 0
        self._build()

    def _build(self) -> None:
        m = self.ekf.model
        nz, nu, M = m.nz, self.spec.nu, len(self.devices)
        # One interval's residuals (process noise, then the measurements at its end) and their Jacobians
        # with respect to both ends, mapped over the window: a banded Jacobian assembled in numpy.
        za, zb = ca.SX.sym("za", nz), ca.SX.sym("zb", nz)
        u, dt = ca.SX.sym("u", nu), ca.SX.sym("dt")
        qinv, y, w = ca.SX.sym("qinv", nz), ca.SX.sym("y", M), ca.SX.sym("w", M)
        ps = ca.SX.sym("p", self.spec.np)
        z = za
        for _ in range(SUBSTEPS):
            z = m.rk4(z, u, ps, dt / SUBSTEPS)
        y_model = m.measure_sym(zb, u, ps)
        r = ca.vertcat(qinv * (zb - z), w * (y - ca.vertcat(*(y_model[i] for i in self.ekf._signal_of))))
        interval = ca.Function(
            "mhe_interval", [za, zb, u, dt, qinv, y, w, ps], [r, ca.jacobian(r, za), ca.jacobian(r, zb)]
        )
        self._intervals = interval.map(self.N)
        self._lbz = np.tile(m.lower, self.N + 1)
        self._ubz = np.tile(m.upper, self.N + 1)

    def _linearise(self, z_all: FloatArray, data: _Window) -> _Linearisation:
        """Residuals and the blocks of their Jacobian over the window."""
        nz, N = self.ekf.model.nz, self.N
        Z = z_all.reshape(N + 1, nz).T
        r, Ja, Jb = self._intervals(Z[:, :-1], Z[:, 1:], data.U, data.dt, data.qinv, data.Y, data.W, self.p)
        r, Ja, Jb = np.asarray(r), np.asarray(Ja), np.asarray(Jb)
        r0 = data.L0 @ (Z[:, 0] - data.zbar)
        Ja_k = [Ja[:, k * nz : (k + 1) * nz] for k in range(N)]
        Jb_k = [Jb[:, k * nz : (k + 1) * nz] for k in range(N)]
        cost = 0.5 * (float(r0 @ r0) + float(np.sum(r * r)))
        return _Linearisation(r0, [r[:, k] for k in range(N)], Ja_k, Jb_k, cost)

    def _step(self, lin: _Linearisation, L0: FloatArray, lam: float) -> FloatArray:
        """Solve the damped Gauss-Newton system ``(JᵀJ + λ diag(JᵀJ)) s = −Jᵀr``.

        Each interval couples only its two end nodes, so ``JᵀJ`` is block tridiagonal (blocks nz × nz):
        block elimination costs O(N nz³) in small matrices instead of one dense (N nz)³ solve (and stays
        clear of multithreaded BLAS, which is slow on a loaded machine for these sizes).
        """
        N = self.N
        D = [np.zeros((L0.shape[0], L0.shape[0])) for _ in range(N + 1)]
        g = [np.zeros(L0.shape[0]) for _ in range(N + 1)]
        D[0] += L0.T @ L0
        g[0] += L0.T @ lin.r0
        C = []
        for k in range(N):
            a, b, r = lin.Ja[k], lin.Jb[k], lin.r[k]
            D[k] += a.T @ a
            D[k + 1] += b.T @ b
            g[k] += a.T @ r
            g[k + 1] += b.T @ r
            C.append(a.T @ b)  # block (k, k+1)
        for k in range(N + 1):
            D[k] = D[k] + lam * np.diag(np.diag(D[k]) + 1e-12)
        # Forward elimination, then back substitution.
        Dp, gp = [D[0]], [-g[0]]
        for k in range(1, N + 1):
            L = np.linalg.solve(Dp[k - 1], C[k - 1]).T  # C_{k-1}ᵀ D'_{k-1}⁻¹
            Dp.append(D[k] - L @ C[k - 1])
            gp.append(-g[k] - L @ gp[k - 1])
        s: list[FloatArray] = [np.zeros(0)] * (N + 1)
        s[N] = np.asarray(np.linalg.solve(Dp[N], gp[N]), dtype=float)
        for k in range(N - 1, -1, -1):
            s[k] = np.asarray(np.linalg.solve(Dp[k], gp[k] - C[k] @ s[k + 1]), dtype=float)
        return np.concatenate(s)

    def _solve(self, guess: FloatArray, data: _Window) -> FloatArray:
        """Gauss-Newton with Levenberg-Marquardt damping, iterates clipped to the bounds."""
        z = np.clip(guess, self._lbz, self._ubz)
        lin = self._linearise(z, data)
        lam = 1e-6
        for _ in range(MAX_ITER):
            z_new = np.clip(z + self._step(lin, data.L0, lam), self._lbz, self._ubz)
            lin_new = self._linearise(z_new, data)
            if lin_new.cost <= lin.cost:
                converged = lin.cost - lin_new.cost <= TOL * max(lin.cost, 1.0)
                z, lin, lam = z_new, lin_new, max(lam / 10, 1e-12)
                self.iterations += 1
                if converged:
                    self.last_status = "converged"
                    return z
            else:
                lam *= 10
                if lam > 1e8:
                    break
        self.last_status = "not_converged"
        return z

    def checkpoint(self) -> Mapping[str, FloatArray]:
        """The EKF's state: the window is rebuilt from its history (the warm start is the EKF's)."""
        return self.ekf.checkpoint()

    def restore(self, state: Mapping[str, FloatArray]) -> None:
        """Continue from a :meth:`checkpoint`."""
        self.ekf.restore(state)

    def update(self, meas: Measurements, u_applied: FloatArray | None) -> Estimate:
        """Let the EKF place and gate the new readings, then fit the window; return the fit's last state."""
        ekf_est = self.ekf.update(meas, u_applied)
        hist = self.ekf._history
        if len(hist) < 2:
            self.last_status = "ekf"
            return ekf_est
        window = hist[-(self.N + 1) :]
        pad = self.N + 1 - len(window)
        m = self.ekf.model
        nz, M = m.nz, len(self.devices)
        first = window[0]
        # Arrival weight: P̄⁻¹ = L0ᵀ L0 with L0 = chol(P̄)⁻¹ (symmetrised, jittered for safety).
        P0 = 0.5 * (first.P + first.P.T) + 1e-12 * np.eye(nz)
        L0 = np.linalg.inv(np.linalg.cholesky(P0))
        U = np.zeros((self.spec.nu, self.N))
        dt = np.zeros(self.N)
        qinv = np.zeros((nz, self.N))
        Y = np.zeros((M, self.N))
        Wt = np.zeros((M, self.N))
        q_rel, q_floor = self.ekf._q_rel, self.ekf._q_floor
        for j in range(self.N):
            if j < pad:
                U[:, j] = first.u
                qinv[:, j] = 1e3  # zero-length padding: keep z_{k+1} = z_k
                continue
            a, b = window[j - pad], window[j - pad + 1]
            U[:, j] = a.u
            dt_h = (b.t_s - a.t_s) / self.spec.seconds_per_time_unit
            dt[j] = dt_h
            var = ((q_rel * np.abs(b.z)) ** 2 + q_floor**2) * max(dt_h, 1e-9)
            qinv[:, j] = 1.0 / np.sqrt(var)
            y_hat = np.asarray(m.measure(b.z, b.u, self.p)[0]).ravel()
            for k, value in b.meas:
                dev = self.devices[k]
                yh = y_hat[self.ekf._signal_of[k]]
                r = dev.sigma**2 + (dev.rel_sigma * yh) ** 2 + 1e-12 * (1.0 + yh**2)
                Y[k, j] = value
                Wt[k, j] = 1.0 / math.sqrt(r)
        params = _Window(first.z, L0, U, dt, qinv, Y, Wt)
        # Warm start: the EKF's trajectory over the window (its nodes; padding repeats the first).
        guess = np.concatenate([first.z] * pad + [n.z for n in window])
        z_all = self._solve(guess, params)
        if not np.all(np.isfinite(z_all)):
            # A failed fit must not stop the batch: the EKF's estimate stands in (counted).
            self.failures += 1
            return ekf_est
        z = z_all[-nz:]
        x = z[: m.nx] * m.scale[: m.nx]
        return Estimate(ekf_est.t_s, x, m.params(z, self.p), ekf_est.x_std, ekf_est.rejected)
