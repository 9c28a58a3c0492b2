"""A discrete PID controller with output limits and anti-windup (the fast temperature loop).

Form (parallel, derivative on the measurement so a setpoint step does not kick the heater)::

    e_k = r_k - y_k
    u_k = clip(u_ff + kp e_k + I_k - kd (y_k - y_{k-1}) / dt, out_min, out_max)
    I_{k+1} = I_k + ki e_k dt + (u_k - u_unclipped_k) / kp * kt          (back-calculation)

Anti-windup by back-calculation (Åström & Hägglund, *Advanced PID Control*, 2006, §3.5): while the
output saturates, the integral is pulled back by the amount the limit cut off, with tracking gain
``kt`` (1/s), so the loop leaves saturation as soon as the error changes sign instead of after the
integral has unwound. ``u_ff`` is an optional feed-forward (e.g. the holding power ``UA (T - T_amb)``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from plant_models.errors import ScenarioError


@dataclass(frozen=True)
class PidConfig:
    """PID gains and limits. Units: output per unit of error (kp), per unit·s (ki), ·s (kd).

    Attributes:
        kp: proportional gain.
        ki: integral gain (1/s times kp's units).
        kd: derivative gain (s times kp's units), on the measurement.
        out_min, out_max: output limits (the actuator's range).
        kt: back-calculation tracking gain (1/s); default ``ki / kp`` (tracking time = integral time).
    """

    kp: float
    ki: float = 0.0
    kd: float = 0.0
    out_min: float = -math.inf
    out_max: float = math.inf
    kt: float | None = None

    def __post_init__(self) -> None:
        for name in ("kp", "ki", "kd"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ScenarioError(f"pid.{name}: must be a non-negative number, got {value}")
        if self.kp == 0 and self.ki == 0:
            raise ScenarioError("pid: kp and ki cannot both be 0")
        if not self.out_min < self.out_max:
            raise ScenarioError(f"pid: out_min {self.out_min} must be < out_max {self.out_max}")
        if self.kt is not None and not (math.isfinite(self.kt) and self.kt >= 0):
            raise ScenarioError(f"pid.kt: must be a non-negative number, got {self.kt}")


class Pid:
    """A running PID loop. :meth:`update` once per sample."""

    def __init__(self, config: PidConfig) -> None:
        """Start with a zero integral and no previous measurement."""
        self.config = config
        self.integral = 0.0
        self._y_prev: float | None = None
        kp = config.kp if config.kp > 0 else 1.0
        self._kt = config.kt if config.kt is not None else config.ki / kp

    def update(self, setpoint: float, measurement: float, dt_s: float, feedforward: float = 0.0) -> float:
        """The output for this sample (held for ``dt_s`` seconds)."""
        c = self.config
        e = setpoint - measurement
        d = 0.0 if self._y_prev is None or dt_s <= 0 else (measurement - self._y_prev) / dt_s
        self._y_prev = measurement
        raw = feedforward + c.kp * e + self.integral - c.kd * d
        out = min(max(raw, c.out_min), c.out_max)
        # Integrate the error, and bleed off what the limits cut (back-calculation anti-windup).
        self.integral += (c.ki * e + self._kt * (out - raw)) * dt_s
        return out
