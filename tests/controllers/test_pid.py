"""PID: tracking, output limits, back-calculation anti-windup, configuration errors."""

from __future__ import annotations

import math

import pytest

from controllers.pid import Pid, PidConfig
from plant_models.errors import ScenarioError

# A first-order vessel: C dT/dt = P - UA (T - T_amb) (the bench vessel's numbers, docs/models.md).
C_J_PER_K, UA_W_PER_K, T_AMB = 5440.0, 0.6, 20.0


def _simulate(pid: Pid, setpoint: float, t0: float, seconds: int, dt: float = 60.0, ff: bool = True) -> list[float]:
    temps, temp = [], t0
    for _ in range(int(seconds / dt)):
        power = pid.update(setpoint, temp, dt, UA_W_PER_K * (setpoint - T_AMB) if ff else 0.0)
        temp += dt * (power - UA_W_PER_K * (temp - T_AMB)) / C_J_PER_K
        temps.append(temp)
    return temps


def test_tracks_a_setpoint_shift_within_a_tenth_of_a_degree() -> None:
    pid = Pid(PidConfig(kp=20.0, ki=0.011, out_min=0.0, out_max=200.0))
    temps = _simulate(pid, 36.5, 36.5, 6 * 3600)
    assert abs(temps[-1] - 36.5) < 1e-3
    temps = _simulate(pid, 32.0, temps[-1], 6 * 3600)  # the shift: heater off, the vessel cools
    assert abs(temps[-1] - 32.0) < 0.1
    assert min(temps) > 32.0 - 0.5  # no deep undershoot on the way down


def test_output_stays_within_limits() -> None:
    pid = Pid(PidConfig(kp=1000.0, ki=1.0, out_min=0.0, out_max=200.0))
    outs = [pid.update(37.0, 20.0 + k * 0.01, 60.0) for k in range(100)]
    assert min(outs) >= 0.0 and max(outs) <= 200.0


def test_back_calculation_keeps_the_integral_from_winding_up() -> None:
    # Held at the upper limit for 10 h (heater too weak): without anti-windup the integral would reach
    # ki * e * t = 0.011 * 10 * 36000 = 3960 W, and the loop would overshoot for hours after.
    cfg = PidConfig(kp=20.0, ki=0.011, out_min=0.0, out_max=50.0)
    pid = Pid(cfg)
    for _ in range(600):
        assert pid.update(40.0, 30.0, 60.0) == pytest.approx(50.0)
    assert abs(pid.integral) < 2 * cfg.out_max
    # The error changes sign: the output leaves the limit at once.
    assert pid.update(40.0, 40.5, 60.0) < 50.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kp": -1.0}, r"^pid\.kp: must be a non-negative number"),
        ({"kp": 0.0, "ki": 0.0}, r"^pid: kp and ki cannot both be 0$"),
        ({"kp": 1.0, "out_min": 5.0, "out_max": 5.0}, r"^pid: out_min 5.0 must be < out_max 5.0$"),
        ({"kp": 1.0, "kd": math.nan}, r"^pid\.kd: must be a non-negative number"),
    ],
)
def test_config_errors_are_one_line(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ScenarioError, match=message):
        PidConfig(**kwargs)
