"""Numerical integration of any ModelSpec with CasADi's CVODES.

The integrator is built once per (spec, tolerances). Time is rescaled to ``tau in [0, 1]`` with the step
length as a parameter (``dx/dtau = dt * f(x, u, p)``), so one frozen integrator serves every step length
without rebuilding.
"""

from __future__ import annotations

from dataclasses import dataclass

import casadi as ca
import numpy as np

from plant_models.errors import ModelError, SolverFailed
from plant_models.spec import ModelSpec
from twin.interfaces import FloatArray


@dataclass(frozen=True)
class SimulatorConfig:
    """Integrator settings. Defaults match do-mpc's reference simulator (CVODES, 1e-10)."""

    rtol: float = 1e-10
    atol: float = 1e-10
    max_num_steps: int = 100_000

    def __post_init__(self) -> None:
        if not (self.rtol > 0 and self.atol > 0 and self.max_num_steps > 0):
            raise ModelError("simulator tolerances and max_num_steps must be positive")


class Simulator:
    """Integrates ``dx/dt = f(x, u, p)`` over a step with inputs held constant (zero-order hold)."""

    def __init__(self, spec: ModelSpec, config: SimulatorConfig | None = None) -> None:
        """Build the frozen integrator for ``spec``."""
        self.spec = spec
        self.config = config or SimulatorConfig()
        x = ca.SX.sym("x", spec.nx)
        u = ca.SX.sym("u", spec.nu)
        p = ca.SX.sym("p", spec.np)
        dt = ca.SX.sym("dt")
        ode = dt * spec.f(x, u, p)
        dae = {"x": x, "p": ca.vertcat(u, p, dt), "ode": ode}
        opts = {
            "abstol": self.config.atol,
            "reltol": self.config.rtol,
            "max_num_steps": self.config.max_num_steps,
        }
        self._integrator = ca.integrator("plant_sim", "cvodes", dae, 0.0, 1.0, opts)

    def step(self, x: FloatArray, u: FloatArray, p: FloatArray, dt: float) -> FloatArray:
        """State after ``dt`` model time units from ``x`` with input ``u`` held.

        Raises:
            SolverFailed: the integrator failed or returned a non-finite state.
        """
        if dt == 0.0:
            return np.array(x, dtype=float)
        try:
            xf = self._integrator(x0=x, p=np.concatenate((u, p, (dt,))))["xf"]
        except RuntimeError as exc:
            # CasADi's message is a multi-line stack of call sites; its last line says what happened.
            reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unknown error"
            raise SolverFailed(f"integration of {self.spec.name!r} failed: {reason}") from None
        # The dense column's nonzeros as floats: the same numbers as DM.full(), without its matrix copy
        # (this runs on every advance of a plant server).
        x_next = np.array(xf.nonzeros(), dtype=float)
        if not np.isfinite(x_next).all():
            raise SolverFailed(f"integration of {self.spec.name!r} returned a non-finite state")
        return x_next

    def outputs(self, x: FloatArray, u: FloatArray, p: FloatArray) -> FloatArray:
        """Model outputs ``h(x, u, p)``."""
        return np.asarray(self.spec.h(x, u, p), dtype=float).ravel()
