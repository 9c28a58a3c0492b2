"""The estimators' model: states plus random-walk parameters, scaled, discretised with RK4 (CasADi).

Built once per (spec, augmented parameters, measured signals); at run time only frozen
``casadi.Function``s are called with numpy arrays.

Coordinates are scaled, ``z = [x / s_x ; θ / s_θ]``, with ``s_x = max(|x0|, 1)`` and ``s_θ`` the
parameter's value at build time: cell densities (1e9 cells/L) and millimolar concentrations then live on
comparable scales, which keeps covariance matrices well conditioned (a raw VCD variance is ~1e18).
The augmented parameters ``θ`` follow ``dθ/dt = 0`` (their change is the random walk of the process
noise) and replace their entries of ``p`` wherever the model uses them.
"""

from __future__ import annotations

import math

import casadi as ca
import numpy as np

from controllers.buffered import BufferedFunction
from plant_models.spec import ModelSpec
from twin.interfaces import FloatArray

__all__ = ["AugmentedModel"]


class AugmentedModel:
    """States plus augmented parameters of ``spec``, scaled, with RK4 steps and measurement Jacobians.

    Attributes:
        spec: the model.
        nx, nz: number of states, and of states plus augmented parameters.
        aug_idx: indices in ``p`` of the augmented parameters.
        scale: ``s`` of ``z = [x; θ] / s``.
        signals: the measured signals (states or outputs), in the order ``measure`` returns them.
        lower, upper: bounds of ``z`` (scaled state bounds; parameters keep their sign).
    """

    def __init__(
        self,
        spec: ModelSpec,
        p: FloatArray,
        x0: FloatArray,
        augment: tuple[str, ...],
        signals: tuple[str, ...],
    ) -> None:
        """Build the frozen step and measurement functions.

        Args:
            spec: the model.
            p: the twin's parameter vector (also the scale of the augmented parameters).
            x0: the initial belief (the scale of the states).
            augment: parameter names estimated as states.
            signals: state or output names that devices measure.
        """
        self.spec = spec
        self.nx = spec.nx
        self.aug_idx = [spec.params.index(n) for n in augment]
        self.nz = self.nx + len(self.aug_idx)
        theta0 = np.asarray(p, dtype=float)[self.aug_idx]
        self.scale = np.concatenate([np.maximum(np.abs(x0), 1.0), np.where(theta0 != 0, np.abs(theta0), 1.0)])
        lo = [spec.state_bounds[n][0] for n in spec.states]
        hi = [spec.state_bounds[n][1] for n in spec.states]
        sign = np.sign(theta0)
        self.lower = np.concatenate([np.array(lo) / self.scale[: self.nx], np.where(sign > 0, 0.0, -math.inf)])
        self.upper = np.concatenate([np.array(hi) / self.scale[: self.nx], np.where(sign < 0, 0.0, math.inf)])
        self.signals = signals

        zs = ca.SX.sym("z", self.nz)
        u = ca.SX.sym("u", spec.nu)
        ps = ca.SX.sym("p", spec.np)
        h = ca.SX.sym("h")
        zn = self.rk4(zs, u, ps, h)
        self.step = ca.Function("ekf_step", [zs, u, ps, h], [zn, ca.jacobian(zn, zs)]).expand()
        y = self.measure_sym(zs, u, ps)
        self.measure = BufferedFunction(
            ca.Function("ekf_measure", [zs, u, ps], [ca.densify(y), ca.densify(ca.jacobian(y, zs))]).expand()
        )
        self._predictors: dict[int, BufferedFunction] = {}
        self.corrector = self._build_corrector(y, zs, u, ps)

    def _build_corrector(self, y: ca.SX, zs: ca.SX, u: ca.SX, ps: ca.SX) -> BufferedFunction:
        """``(z, P, u, p, e, value, sigma, rel_sigma) -> (innovation, s, z, P)``: one scalar reading of the
        signal picked by the one-hot ``e`` fused into ``(z, P)`` (Joseph form; ``z`` projected).

        The reading's variance ``r = sigma^2 + (rel_sigma y_hat)^2 + 1e-12 (1 + y_hat^2)`` takes its relative
        part at the prediction, not the reading, so a spike cannot widen its own sigma. ``s`` is the
        innovation variance, for the caller's gate.
        """
        P = ca.SX.sym("P", self.nz, self.nz)
        e = ca.SX.sym("e", len(self.signals))
        value, sigma, rel_sigma = ca.SX.sym("value"), ca.SX.sym("sigma"), ca.SX.sym("rel_sigma")
        y_hat = ca.dot(e, y)
        h_row = ca.jacobian(y_hat, zs).T
        r = sigma**2 + (rel_sigma * y_hat) ** 2 + 1e-12 * (1.0 + y_hat**2)
        s = ca.dot(h_row, P @ h_row) + r
        gain = P @ h_row / s
        ikh = ca.DM.eye(self.nz) - gain @ h_row.T
        P_new = ikh @ P @ ikh.T + r * (gain @ gain.T)
        innovation = value - y_hat
        z_new = ca.fmin(ca.fmax(zs + gain * innovation, ca.DM(self.lower)), ca.DM(self.upper))
        fn = ca.Function(
            "ekf_correct",
            [zs, P, u, ps, e, value, sigma, rel_sigma],
            [innovation, s, ca.densify(z_new), ca.densify(P_new)],
        )
        return BufferedFunction(fn)

    def predictor(self, n: int) -> BufferedFunction:
        """``(z, P, u, p, h, q_rel, q_floor) -> (z, P)``: ``n`` RK4 steps of length ``h`` with the
        covariance carried along, as one call (built on first use for each ``n``, then reused).

        Each step: ``P <- A P A' + diag(q h)`` with the continuous process noise relative to the value
        before the step, ``q = (q_rel |z|)^2 + q_floor^2``; then ``z`` clipped to
        ``[lower, upper]`` (an estimate never leaves the physical bounds, e.g. negative glucose).
        ``P`` is symmetrised once at the end.
        """
        if n not in self._predictors:
            nz = self.nz
            z0, P0 = ca.SX.sym("z", nz), ca.SX.sym("P", nz, nz)
            u, ps, h = ca.SX.sym("u", self.spec.nu), ca.SX.sym("p", self.spec.np), ca.SX.sym("h")
            q_rel, q_floor = ca.SX.sym("q_rel", nz), ca.SX.sym("q_floor", nz)
            lower, upper = ca.DM(self.lower), ca.DM(self.upper)
            z, P = z0, P0
            for _ in range(n):
                z_next, A = self.step(z, u, ps, h)
                q = (q_rel * ca.fabs(z)) ** 2 + q_floor**2
                P = A @ P @ A.T + ca.diag(q * h)
                z = ca.fmin(ca.fmax(z_next, lower), upper)
            args = [z0, P0, u, ps, h, q_rel, q_floor]
            fn = ca.Function(f"ekf_predict{n}", args, [z, ca.densify(0.5 * (P + P.T))])
            self._predictors[n] = BufferedFunction(fn)
        return self._predictors[n]

    def _unscale(self, zs: ca.SX, ps: ca.SX) -> tuple[ca.SX, ca.SX]:
        """Physical x and the parameter vector with the augmented entries taken from ``zs``."""
        s = ca.DM(self.scale)
        x = zs[: self.nx] * s[: self.nx]
        entries = [ps[i] for i in range(self.spec.np)]
        for k, i in enumerate(self.aug_idx):
            entries[i] = zs[self.nx + k] * s[self.nx + k]
        return x, ca.vertcat(*entries)

    def rk4(self, zs: ca.SX, u: ca.SX, ps: ca.SX, h: ca.SX) -> ca.SX:
        """One classical RK4 step of length ``h`` (model time units), in scaled coordinates."""
        s = ca.DM(self.scale[: self.nx])
        _, pf = self._unscale(zs, ps)

        def f(xs: ca.SX) -> ca.SX:
            return self.spec.f(xs * s, u, pf) / s

        xs = zs[: self.nx]
        k1 = f(xs)
        k2 = f(xs + h / 2 * k1)
        k3 = f(xs + h / 2 * k2)
        k4 = f(xs + h * k3)
        return ca.vertcat(xs + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4), zs[self.nx :])

    def measure_sym(self, zs: ca.SX, u: ca.SX, ps: ca.SX) -> ca.SX:
        """The measured signals at ``zs`` (physical units)."""
        x, pf = self._unscale(zs, ps)
        y = self.spec.h(x, u, pf)
        out = []
        for name in self.signals:
            if name in self.spec.states:
                out.append(x[self.spec.states.index(name)])
            else:
                out.append(y[self.spec.outputs.index(name)])
        return ca.vertcat(*out)

    def substeps(self, dt: float, max_step: float) -> int:
        """RK4 steps for an interval of ``dt`` model time units."""
        return max(1, math.ceil(dt / max_step - 1e-9))

    def params(self, z: FloatArray, p: FloatArray) -> FloatArray:
        """The parameter vector with the augmented entries of ``z``."""
        out = np.array(p, dtype=float)
        out[self.aug_idx] = z[self.nx :] * self.scale[self.nx :]
        return out
