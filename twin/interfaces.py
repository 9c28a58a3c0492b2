"""The seams of the loop: the values that cross them and the protocols on either side.

Conventions (see docs/architecture.md, "Conventions"): time on these interfaces is **seconds** of plant time; values are
in the model's units; vectors are numpy float64 in the ModelSpec's name order; signal order is
``(t, x, u, p)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, Protocol

from controllers.interfaces import Controller, ControlStep, FloatArray

__all__ = [
    "Clock",
    "ControlStep",
    "Controller",
    "DeviceInfo",
    "Estimate",
    "Estimator",
    "FloatArray",
    "Measurements",
    "Plant",
    "PlantInfo",
    "Reading",
    "WriteResult",
]
DeviceKind = Literal["actuator", "sensor"]
PlantState = Literal["armed", "failsafe"]
#: How far a reading can be trusted: fresh, older than its max age, or from a failed sensor/driver.
Quality = Literal["good", "stale", "bad"]


@dataclass(frozen=True)
class DeviceInfo:
    """One device a plant exposes: an actuator (an input) or a sensor (an output).

    ``min``/``max`` are ``None`` where the device is unbounded (JSON has no infinity).
    ``safe`` is the fail-safe value of an actuator, ``None`` for sensors.
    """

    name: str
    kind: DeviceKind
    unit: str
    min: float | None
    max: float | None
    safe: float | None = None


@dataclass(frozen=True)
class PlantInfo:
    """What a plant says about itself (the ``hello`` reply of wire protocol v1)."""

    protocol: int
    plant: str
    clock: Literal["virtual", "realtime"]
    time_s: float
    state: PlantState
    watchdog_s: float | None
    devices: tuple[DeviceInfo, ...]
    #: plant seconds per wall second of a real-time plant (1 for real hardware; more for an emulator)
    time_scale: float = 1.0


@dataclass(frozen=True)
class Reading:
    """One value with its own sample time (seconds) and sample sequence number.

    ``quality``: ``"good"``; ``"stale"`` (a gateway's sample older than the device's max age; the value
    is the last one read); ``"bad"`` (the driver failed; ``value`` is None).
    """

    value: float | None
    t_s: float
    seq: int
    quality: Quality = "good"


@dataclass(frozen=True)
class Measurements:
    """A ``read``: plant time and the latest reading of each device."""

    time_s: float
    values: Mapping[str, Reading]


@dataclass(frozen=True)
class WriteResult:
    """A ``write`` accepted by the plant: plant time and the values now applied."""

    time_s: float
    applied: Mapping[str, float]


class Plant(Protocol):
    """Anything that answers wire protocol v1: a simulated plant, a ZeroMQ client, a gateway.

    Errors are raised as :class:`plant_models.errors.ProtocolError` carrying the protocol's error
    code (``out_of_range``, ``stale``, ...) and :class:`plant_models.errors.PlantTimeout`.
    """

    def hello(self) -> PlantInfo:
        """Describe the plant and its devices."""
        ...

    def read(self, names: tuple[str, ...] | None = None) -> Measurements:
        """Latest reading of every (or the named) device."""
        ...

    def write(
        self, setpoints: Mapping[str, float], seq: int, valid_until_s: float | None = None
    ) -> WriteResult:
        """Apply setpoints, all or nothing. A seq already applied is not applied again."""
        ...

    def advance(self, dt_s: float) -> float:
        """Integrate a virtual-clock plant by ``dt_s`` seconds; return the new plant time."""
        ...

    def heartbeat(self) -> tuple[float, PlantState]:
        """Feed the plant's watchdog; return (plant time s, ``"armed"`` or ``"failsafe"``)."""
        ...

    def close(self) -> None:
        """Release the connection (idempotent)."""
        ...


@dataclass(frozen=True)
class Estimate:
    """The twin's state (and parameter) estimate at time ``t_s``, with its uncertainty.

    ``rejected`` names the measurements the estimator refused to use in this update (missing, not
    finite, implausible), so the loop can record them.
    """

    t_s: float
    x: FloatArray
    p: FloatArray
    x_std: FloatArray
    rejected: tuple[str, ...] = ()


class Estimator(Protocol):
    """Keeps the twin in sync with the plant from its measurements."""

    def update(self, meas: Measurements, u_applied: FloatArray | None) -> Estimate:
        """Fuse a new set of measurements; ``u_applied`` is the input held since the last update."""
        ...


class Clock(Protocol):
    """Moves loop time forward by one period (virtual: advance the plant; real time: sleep)."""

    kind: Literal["virtual", "realtime"]

    def wait_next_period(self) -> float:
        """Block until the next period starts; return the seconds the wait overran (0 if on time)."""
        ...
