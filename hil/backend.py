"""What the protocol handler needs from a plant: the device-level backend seam.

:class:`twin.simulated_plant.SimulatedPlant` implements it; a hardware gateway (Modbus TCP, OPC UA) will
implement the same methods over its drivers, and then gets validation, idempotent sequence numbers,
fail-safe and the whole wire protocol from :class:`hil.handler.ProtocolHandler` for free.

A backend trusts its caller: names, finiteness and limits have been checked before ``apply``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Protocol, runtime_checkable

from twin.interfaces import DeviceInfo, Reading

__all__ = ["PlantBackend"]


@runtime_checkable
class PlantBackend(Protocol):
    """Device-level access to one plant. Time is seconds of plant time."""

    @property
    def name(self) -> str:
        """The plant's name (the ``plant`` field of ``hello``)."""
        ...

    @property
    def time_s(self) -> float:
        """Current plant time in seconds."""
        ...

    def devices(self) -> tuple[DeviceInfo, ...]:
        """Every actuator and sensor, with units, limits and (actuators) safe values."""
        ...

    def read(self, names: Iterable[str] | None = None) -> Mapping[str, Reading]:
        """Latest reading of each named device (all when None); actuators report their applied value."""
        ...

    def apply(self, setpoints: Mapping[str, float]) -> Mapping[str, float]:
        """Hold these (already validated) actuator values; return every actuator's applied value."""
        ...

    def applied(self) -> Mapping[str, float]:
        """Currently applied value of every actuator."""
        ...

    def apply_safe(self) -> Mapping[str, float]:
        """Put every actuator at its safe value; return the applied values."""
        ...

    def advance(self, dt_s: float) -> float:
        """Move plant time on by ``dt_s`` seconds (integrate, or sample the hardware); return the time."""
        ...
