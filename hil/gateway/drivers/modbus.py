"""Modbus TCP driver (pymodbus synchronous client).

One TCP connection per ``[drivers.NAME]``. Any I/O failure closes the connection and raises
:class:`~hil.gateway.drivers.DriverError`; reconnecting is the backend's job (with backoff). A Modbus
exception reply (illegal address, device busy) is an error for that request only.
"""

from __future__ import annotations

import logging

from pymodbus.client import ModbusTcpClient
from pymodbus.exceptions import ModbusException

from hil.gateway.config import DeviceConfig, ModbusDeviceConfig, ModbusDriverConfig
from hil.gateway.drivers import DriverError
from hil.gateway.drivers.registers import decode, encode

__all__ = ["ModbusDriver"]

log = logging.getLogger("bioimp.gateway")


class ModbusDriver:
    """A Modbus TCP client for the devices of one driver entry."""

    def __init__(self, config: ModbusDriverConfig) -> None:
        """Configure (does not connect)."""
        self.config = config
        self.name = config.name
        self._client: ModbusTcpClient | None = None

    @property
    def connected(self) -> bool:
        """True while the TCP connection is up (as far as the client knows)."""
        return self._client is not None and self._client.connected

    def connect(self) -> None:
        """Open the TCP connection.

        Raises:
            DriverError: the server cannot be reached within ``timeout_s``.
        """
        self.close()
        cfg = self.config
        # retries=0: one attempt per call; the backend decides when to try again.
        client = ModbusTcpClient(cfg.host, port=cfg.port, timeout=cfg.timeout_s, retries=0)
        if not client.connect():
            client.close()
            raise DriverError(f"driver {self.name!r}: cannot connect to modbus tcp {cfg.host}:{cfg.port}")
        self._client = client

    def _require(self) -> ModbusTcpClient:
        if self._client is None or not self._client.connected:
            raise DriverError(f"driver {self.name!r}: not connected to {self.config.host}:{self.config.port}")
        return self._client

    def _read_registers(self, register: str, address: int, count: int) -> list[int]:
        client = self._require()
        try:
            if register == "holding":
                reply = client.read_holding_registers(address, count=count, device_id=self.config.unit_id)
            else:
                reply = client.read_input_registers(address, count=count, device_id=self.config.unit_id)
        except ModbusException as exc:
            self.close()
            raise DriverError(f"driver {self.name!r}: read of {register} {address} failed: {exc}") from None
        if reply.isError():
            raise DriverError(f"driver {self.name!r}: {register} register {address}: modbus exception {reply}")
        registers: list[int] = list(reply.registers)
        if len(registers) != count:
            raise DriverError(f"driver {self.name!r}: {register} {address}: got {len(registers)} registers")
        return registers

    @staticmethod
    def _address(device: DeviceConfig) -> ModbusDeviceConfig:
        if not isinstance(device.address, ModbusDeviceConfig):
            raise TypeError(f"device {device.name!r} has no modbus address")
        return device.address

    def read(self, device: DeviceConfig) -> float:
        """The device's value from its register(s)."""
        addr = self._address(device)
        return decode(addr, self._read_registers(addr.register, addr.address, addr.count))

    def read_back(self, device: DeviceConfig) -> float:
        """An actuator's readback register, or its setpoint register when it has none."""
        addr = self._address(device)
        if addr.readback_address is None:
            return self.read(device)
        return decode(addr, self._read_registers(addr.readback_register, addr.readback_address, addr.count))

    def write(self, device: DeviceConfig, value: float) -> None:
        """Write the setpoint register(s) (function code 16, all registers of the value at once)."""
        addr = self._address(device)
        try:
            registers = encode(addr, value)
        except ValueError as exc:
            raise DriverError(f"device {device.name!r}: {exc}") from None
        client = self._require()
        try:
            reply = client.write_registers(addr.address, registers, device_id=self.config.unit_id)
        except ModbusException as exc:
            self.close()
            raise DriverError(f"driver {self.name!r}: write of {device.name!r} failed: {exc}") from None
        if reply.isError():
            raise DriverError(f"driver {self.name!r}: write of {device.name!r}: modbus exception {reply}")

    def close(self) -> None:
        """Close the connection (idempotent)."""
        client, self._client = self._client, None
        if client is not None:
            client.close()
