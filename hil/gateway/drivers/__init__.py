"""Drivers: how the gateway reaches hardware. One :class:`Driver` per PLC/drive/OPC UA server.

A driver is a plain blocking connection; the gateway backend serialises calls to it (one lock per
driver), reconnects it with backoff and turns its errors into ``bad`` values and refused writes.
"""

from __future__ import annotations

from typing import Protocol

from hil.gateway.config import DeviceConfig, DriverConfig, ModbusDriverConfig
from plant_models.errors import BioimpError

__all__ = ["Driver", "DriverError", "build_driver"]


class DriverError(BioimpError, ConnectionError):
    """A driver could not reach its hardware or the hardware refused the request."""


class Driver(Protocol):
    """A blocking connection to one piece of hardware. Values are engineering units (floats)."""

    name: str

    @property
    def connected(self) -> bool:
        """True while the connection is believed up."""
        ...

    def connect(self) -> None:
        """Open the connection.

        Raises:
            DriverError: the hardware cannot be reached.
        """
        ...

    def read(self, device: DeviceConfig) -> float:
        """The device's current value.

        Raises:
            DriverError: read failed (on a lost connection ``connected`` becomes False).
        """
        ...

    def read_back(self, device: DeviceConfig) -> float:
        """An actuator's readback value (its readback register/node, else its own)."""
        ...

    def write(self, device: DeviceConfig, value: float) -> None:
        """Write an actuator's setpoint (no verification: the backend reads it back)."""
        ...

    def close(self) -> None:
        """Close the connection (idempotent)."""
        ...


def build_driver(config: DriverConfig) -> Driver:
    """The driver for one ``[drivers.NAME]`` entry (imports its library only when used)."""
    if isinstance(config, ModbusDriverConfig):
        from hil.gateway.drivers.modbus import ModbusDriver

        return ModbusDriver(config)
    from hil.gateway.drivers.opcua import OpcUaDriver

    return OpcUaDriver(config)
