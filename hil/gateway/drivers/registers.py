"""Engineering values ↔ Modbus registers: data type, word order, scale and offset.

``value = raw * scale + offset``; integer types round to the nearest count. The bit-level packing is
pymodbus's own (``convert_to_registers`` / ``convert_from_registers``), so the gateway and the emulator
agree with every other pymodbus user on what "float32, little word order" means.
"""

from __future__ import annotations

from pymodbus.client import ModbusTcpClient

from hil.gateway.config import ModbusDeviceConfig

__all__ = ["decode", "encode"]

_DATATYPE = {
    "int16": ModbusTcpClient.DATATYPE.INT16,
    "uint16": ModbusTcpClient.DATATYPE.UINT16,
    "int32": ModbusTcpClient.DATATYPE.INT32,
    "float32": ModbusTcpClient.DATATYPE.FLOAT32,
}
_INT_RANGE = {"int16": (-(2**15), 2**15 - 1), "uint16": (0, 2**16 - 1), "int32": (-(2**31), 2**31 - 1)}


def encode(address: ModbusDeviceConfig, value: float) -> list[int]:
    """Registers holding ``value`` (engineering units).

    Raises:
        ValueError: the value does not fit the data type.
    """
    raw = (value - address.offset) / address.scale
    if address.data_type == "float32":
        return ModbusTcpClient.convert_to_registers(float(raw), _DATATYPE["float32"], address.word_order)
    count = round(raw)
    lo, hi = _INT_RANGE[address.data_type]
    if not lo <= count <= hi:
        raise ValueError(f"{value} encodes to {count}, outside {address.data_type} [{lo}, {hi}]")
    return ModbusTcpClient.convert_to_registers(count, _DATATYPE[address.data_type], address.word_order)


def decode(address: ModbusDeviceConfig, registers: list[int]) -> float:
    """The engineering value held in ``registers``."""
    raw = ModbusTcpClient.convert_from_registers(registers, _DATATYPE[address.data_type], address.word_order)
    assert isinstance(raw, int | float)
    return float(raw) * address.scale + address.offset
