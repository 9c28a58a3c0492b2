"""The Modbus TCP face of the emulated reactor: a pymodbus server whose registers are its devices.

The register map is the gateway's own config (the same GATEWAY.toml), so the emulator and the gateway
agree on addresses, data types, word orders, scales and offsets by construction, and any encoding can be
tested end to end. Holding and input registers share one address space here (pymodbus's shared
blocks), so their spans must not overlap either. Unconfigured addresses answer "illegal address".

Each request first integrates the plant up to now; a write then moves the actuators; then readback and
sensor registers are refreshed from the plant, so a read sees the plant as it is at that moment.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Sequence
from typing import TextIO

from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from hil.emulator.reactor import EmulatedReactor
from hil.gateway.config import DeviceConfig, ModbusDeviceConfig
from hil.gateway.drivers.registers import decode, encode
from plant_models.errors import ScenarioError

__all__ = ["ModbusEmulator", "serve_modbus"]

log = logging.getLogger("bioimp.emulator")


def _spans(device: DeviceConfig) -> list[tuple[str, int, int]]:
    """(role, first register, count) of a device: its value and, for an actuator, its readback."""
    addr = device.address
    assert isinstance(addr, ModbusDeviceConfig)
    spans = [("value", addr.address, addr.count)]
    if addr.readback_address is not None:
        spans.append(("readback", addr.readback_address, addr.count))
    return spans


class ModbusEmulator:
    """The register image of an :class:`EmulatedReactor` and the pymodbus action that keeps it live."""

    def __init__(self, reactor: EmulatedReactor, devices: Sequence[DeviceConfig]) -> None:
        """Lay out the registers.

        Raises:
            ScenarioError: two spans share a register (holding and input share one space here).
        """
        self.reactor = reactor
        self.devices = [d for d in devices if isinstance(d.address, ModbusDeviceConfig)]
        owner: dict[int, str] = {}
        for device in self.devices:
            for role, start, count in _spans(device):
                for reg in range(start, start + count):
                    if reg in owner:
                        raise ScenarioError(
                            f"devices.{device.name}: register {reg} ({role}) is also {owner[reg]} "
                            "(the emulator keeps holding and input registers in one address space)"
                        )
                    owner[reg] = f"{device.name} {role}"
        self.simdata = [
            SimData(start, count=count, values=0, datatype=DataType.REGISTERS)
            for device in self.devices
            for _, start, count in _spans(device)
        ]

    def _image(self, registers: list[int], start_address: int) -> None:
        """Write every readback and sensor register (and initial setpoints) from the plant."""
        for device in self.devices:
            addr = device.address
            assert isinstance(addr, ModbusDeviceConfig)
            value = self.reactor.value(device.name)
            for role, start, count in _spans(device):
                if device.kind == "actuator" and role == "value":
                    continue  # the setpoint register holds what the client wrote
                try:
                    regs = encode(addr, value)
                except ValueError:
                    regs = [0xFFFF] * count  # out of the type's range: a saturated transmitter
                registers[start - start_address : start - start_address + count] = regs

    def initial_image(self, registers: list[int], start_address: int) -> None:
        """Setpoint registers at the actuators' initial values, the rest from the plant."""
        for device in self.devices:
            if device.kind == "actuator":
                addr = device.address
                assert isinstance(addr, ModbusDeviceConfig)
                offset = addr.address - start_address
                registers[offset : offset + addr.count] = encode(addr, self.reactor.value(device.name))
        self._image(registers, start_address)

    async def action(
        self,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        """pymodbus's per-request hook: integrate, apply writes, refresh the image."""
        self.reactor.sync()
        if set_values is not None and function_code in (6, 16):
            written = range(address, address + count)
            for device in self.devices:
                addr = device.address
                assert isinstance(addr, ModbusDeviceConfig)
                span = range(addr.address, addr.address + addr.count)
                if device.kind != "actuator" or not any(r in written for r in span):
                    continue
                # The setpoint as it will be once pymodbus has stored the request's values.
                image = list(registers[addr.address - start_address : addr.address - start_address + addr.count])
                for reg in range(addr.address, addr.address + addr.count):
                    if reg in written:
                        image[reg - addr.address] = int(set_values[reg - address])
                self.reactor.set_actuator(device.name, decode(addr, image))
        self._image(registers, start_address)
        return None


async def _serve(emulator: ModbusEmulator, host: str, port: int, out: TextIO) -> None:
    initialised = False

    async def action(
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        nonlocal initialised
        if not initialised:
            emulator.initial_image(registers, start_address)
            initialised = True
        return await emulator.action(function_code, start_address, address, count, registers, set_values)

    # id=0: answer every unit id (a gateway may use any).
    device = SimDevice(0, simdata=emulator.simdata, action=action)
    server = ModbusTcpServer(device, address=(host, port))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await server.serve_forever(background=True)
    except RuntimeError as exc:  # pymodbus: "Could not start listen" (port in use, bad address)
        raise OSError(f"cannot listen on {host}:{port}: {exc}") from None
    sockets = getattr(server.transport, "sockets", None) or []
    bound = sockets[0].getsockname()[1] if sockets else port
    print(f"ready modbus tcp://{host}:{bound}", file=out, flush=True)
    await stop.wait()
    await server.shutdown()


def serve_modbus(emulator: ModbusEmulator, host: str, port: int, out: TextIO) -> None:
    """Serve until SIGINT/SIGTERM; prints ``ready modbus tcp://HOST:PORT`` once listening."""
    asyncio.run(_serve(emulator, host, port, out))
