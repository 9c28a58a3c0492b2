"""GATEWAY.toml: which drivers reach which hardware, and which registers/nodes are which devices.

Parsed strictly into frozen dataclasses. Anything doubtful is refused at start with a one-line
:class:`~plant_models.errors.ScenarioError` naming the entry (``devices.heater.max: ...``): an unknown
key, a missing address, overlapping registers, min > max, a safe value outside [min, max], an OPC UA
connection without security that the file does not explicitly allow.

Engineering value and raw register value (Modbus): ``value = raw * scale + offset``.

Times: ``timeout_s``, ``poll_period_s``, ``readback_timeout_s`` and ``max_age_s`` are wall-clock
seconds; ``max_rate`` is per second of plant time (the same thing unless ``server.time_scale`` is set
for emulated hardware).
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from hil.security import check_private
from plant_models.errors import ScenarioError

__all__ = [
    "DATA_TYPES",
    "REGISTER_COUNT",
    "DeviceConfig",
    "DriverConfig",
    "GatewayConfig",
    "ModbusDeviceConfig",
    "ModbusDriverConfig",
    "OpcUaDeviceConfig",
    "OpcUaDriverConfig",
    "ServerSection",
    "load_gateway_config",
    "parse_gateway_config",
]

DataType = Literal["int16", "uint16", "int32", "float32"]
RegisterType = Literal["holding", "input"]
WordOrder = Literal["big", "little"]
#: Modbus registers (16 bit) per data type.
REGISTER_COUNT: Mapping[str, int] = {"int16": 1, "uint16": 1, "int32": 2, "float32": 2}
DATA_TYPES = tuple(REGISTER_COUNT)
#: Raw ranges of the integer types.
_INT_RANGE = {"int16": (-(2**15), 2**15 - 1), "uint16": (0, 2**16 - 1), "int32": (-(2**31), 2**31 - 1)}
_FLOAT32_MAX = 3.4028234663852886e38
SECURITY_POLICIES = ("None", "Basic256Sha256")
SECURITY_MODES = ("Sign", "SignAndEncrypt")
_REQUIRED: Any = object()


@dataclass(frozen=True)
class ServerSection:
    """``[server]``: where the gateway serves wire protocol v1 (command-line flags override these).

    Attributes:
        command, telemetry: endpoints to bind (``None``: the command line's default).
        watchdog_s: client silence before fail-safe (``None``: the command line's default).
        sample_period_s: seconds between published ``meas`` messages.
        server_key: CurveZMQ secret key file; allow_dir: folder of allowed client public keys.
        insecure: allow a network endpoint without keys.
        time_scale: plant seconds per wall second; 1 for real hardware, >1 only for an emulator that
            runs its plant in accelerated time (so that plant times and rates agree with it).
    """

    command: str | None = None
    telemetry: str | None = None
    watchdog_s: float | None = None
    sample_period_s: float | None = None
    server_key: Path | None = None
    allow_dir: Path | None = None
    insecure: bool = False
    time_scale: float = 1.0


@dataclass(frozen=True)
class ModbusDriverConfig:
    """A Modbus TCP connection (one PLC or drive)."""

    name: str
    host: str
    port: int = 502
    unit_id: int = 1
    timeout_s: float = 1.0
    poll_period_s: float = 1.0
    kind: Literal["modbus"] = "modbus"


@dataclass(frozen=True)
class OpcUaDriverConfig:
    """An OPC UA client connection. Security ``None`` needs ``allow_insecure = true`` in the file."""

    name: str
    url: str
    security_policy: Literal["None", "Basic256Sha256"] = "Basic256Sha256"
    security_mode: Literal["Sign", "SignAndEncrypt"] = "SignAndEncrypt"
    certificate: Path | None = None
    private_key: Path | None = None
    server_certificate: Path | None = None
    allow_insecure: bool = False
    timeout_s: float = 2.0
    poll_period_s: float = 1.0
    kind: Literal["opcua"] = "opcua"


DriverConfig = ModbusDriverConfig | OpcUaDriverConfig


@dataclass(frozen=True)
class ModbusDeviceConfig:
    """Where a device lives in a Modbus server and how its value is encoded."""

    address: int
    register: RegisterType
    data_type: DataType = "float32"
    word_order: WordOrder = "big"
    scale: float = 1.0
    offset: float = 0.0
    readback_address: int | None = None
    readback_register: RegisterType = "input"

    @property
    def count(self) -> int:
        """Registers the value occupies."""
        return REGISTER_COUNT[self.data_type]


@dataclass(frozen=True)
class OpcUaDeviceConfig:
    """The node holding a device's value (and, optionally, the node to read an actuator back from)."""

    node: str
    readback_node: str | None = None


@dataclass(frozen=True)
class DeviceConfig:
    """One actuator or sensor.

    Attributes:
        name: device name on the wire.
        kind: ``actuator`` or ``sensor``.
        driver: name of the driver that reaches it.
        unit: engineering unit.
        min, max: inclusive limits (``None``: unbounded; actuators need both).
        safe: actuators: the fail-safe value.
        max_rate: actuators: largest allowed change per second of plant time (``None``: no limit).
        tolerance: actuators: largest accepted |readback - setpoint|.
        readback_timeout_s: actuators: how long the readback may take to reach the setpoint.
        max_age_s: older samples are reported ``stale``.
        address: the driver-specific location.
    """

    name: str
    kind: Literal["actuator", "sensor"]
    driver: str
    unit: str
    min: float | None
    max: float | None
    safe: float | None
    max_rate: float | None
    tolerance: float
    readback_timeout_s: float
    max_age_s: float
    address: ModbusDeviceConfig | OpcUaDeviceConfig


@dataclass(frozen=True)
class GatewayConfig:
    """A validated GATEWAY.toml."""

    name: str
    server: ServerSection
    drivers: Mapping[str, DriverConfig]
    devices: tuple[DeviceConfig, ...]
    source: Path | None = None


# --------------------------------------------------------------------------------------------------
# A strict TOML table reader: every key read is ticked off; the rest are "unknown key".


class _Table:
    def __init__(self, data: Any, path: str) -> None:
        if not isinstance(data, Mapping):
            raise ScenarioError(f"{path}: expected a table, got {data!r}")
        self.data: Mapping[str, Any] = data
        self.path = path
        self.seen: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def has(self, name: str) -> bool:
        return name in self.data

    def raw(self, name: str, default: Any = _REQUIRED) -> Any:
        self.seen.add(name)
        if name not in self.data:
            if default is _REQUIRED:
                raise ScenarioError(f"{self.key(name)}: required key is missing")
            return default
        return self.data[name]

    def string(self, name: str, default: Any = _REQUIRED, choices: tuple[str, ...] | None = None) -> Any:
        value = self.raw(name, default)
        if value is default:
            return value
        if not isinstance(value, str) or not value:
            raise ScenarioError(f"{self.key(name)}: expected a non-empty string, got {value!r}")
        if choices is not None and value not in choices:
            raise ScenarioError(f"{self.key(name)}: expected one of {', '.join(choices)}, got {value!r}")
        return value

    def boolean(self, name: str, default: bool) -> bool:
        value = self.raw(name, default)
        if not isinstance(value, bool):
            raise ScenarioError(f"{self.key(name)}: expected true or false, got {value!r}")
        return value

    def integer(self, name: str, default: Any = _REQUIRED, lo: int | None = None, hi: int | None = None) -> Any:
        value = self.raw(name, default)
        if value is default:
            return value
        if isinstance(value, bool) or not isinstance(value, int):
            raise ScenarioError(f"{self.key(name)}: expected an integer, got {value!r}")
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise ScenarioError(f"{self.key(name)}: must be in [{lo}, {hi}], got {value}")
        return value

    def number(self, name: str, default: Any = _REQUIRED, positive: bool = False) -> Any:
        value = self.raw(name, default)
        if value is default:
            return value
        key = self.key(name)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ScenarioError(f"{key}: expected a number, got {value!r}")
        value = float(value)
        if not math.isfinite(value):
            raise ScenarioError(f"{key}: must be finite, got {value}")
        if positive and value <= 0:
            raise ScenarioError(f"{key}: must be > 0, got {value}")
        return value

    def path_value(self, name: str, base: Path) -> Path | None:
        value = self.string(name, None)
        if value is None:
            return None
        path = Path(value).expanduser()
        return path if path.is_absolute() else base / path

    def finish(self) -> None:
        extra = [k for k in self.data if k not in self.seen]
        if extra:
            raise ScenarioError(f"{self.key(extra[0])}: unknown key")


# --------------------------------------------------------------------------------------------------


def _server(table: _Table, base: Path) -> ServerSection:
    section = ServerSection(
        command=table.string("command", None),
        telemetry=table.string("telemetry", None),
        watchdog_s=table.number("watchdog_s", None, positive=True),
        sample_period_s=table.number("sample_period_s", None, positive=True),
        server_key=table.path_value("server_key", base),
        allow_dir=table.path_value("allow_dir", base),
        insecure=table.boolean("insecure", False),
        time_scale=table.number("time_scale", 1.0, positive=True),
    )
    table.finish()
    if (section.server_key is None) != (section.allow_dir is None):
        raise ScenarioError(f"{table.key('server_key')}: server_key and allow_dir go together")
    return section


def _driver(name: str, table: _Table, base: Path) -> DriverConfig:
    kind = table.string("kind", choices=("modbus", "opcua"))
    timeout_s = table.number("timeout_s", None, positive=True)
    poll_period_s = table.number("poll_period_s", 1.0, positive=True)
    driver: DriverConfig
    if kind == "modbus":
        driver = ModbusDriverConfig(
            name=name,
            host=table.string("host"),
            port=table.integer("port", 502, lo=1, hi=65535),
            unit_id=table.integer("unit_id", 1, lo=0, hi=255),
            timeout_s=timeout_s if timeout_s is not None else 1.0,
            poll_period_s=poll_period_s,
        )
    else:
        url = table.string("url")
        if not url.startswith("opc.tcp://"):
            raise ScenarioError(f"{table.key('url')}: expected an opc.tcp:// URL, got {url!r}")
        policy = table.string("security_policy", "Basic256Sha256", choices=SECURITY_POLICIES)
        mode = table.string("security_mode", "SignAndEncrypt", choices=SECURITY_MODES)
        driver = OpcUaDriverConfig(
            name=name,
            url=url,
            security_policy=policy,
            security_mode=mode,
            certificate=table.path_value("certificate", base),
            private_key=table.path_value("private_key", base),
            server_certificate=table.path_value("server_certificate", base),
            allow_insecure=table.boolean("allow_insecure", False),
            timeout_s=timeout_s if timeout_s is not None else 2.0,
            poll_period_s=poll_period_s,
        )
        if policy == "None" and not driver.allow_insecure:
            raise ScenarioError(
                f"{table.key('security_policy')}: 'None' (no signing, no encryption) needs allow_insecure = true"
            )
        if policy != "None":
            for key in ("certificate", "private_key"):
                if getattr(driver, key) is None:
                    raise ScenarioError(f"{table.key(key)}: required with security_policy {policy!r}")
            assert driver.private_key is not None
            check_private(driver.private_key, table.key("private_key"))
    table.finish()
    return driver


def _check_raw_range(key: str, data_type: str, scale: float, offset: float, value: float) -> None:
    """The engineering value must be representable in the register's data type."""
    raw = (value - offset) / scale
    if data_type in _INT_RANGE:
        lo, hi = _INT_RANGE[data_type]
        if not lo <= round(raw) <= hi:
            raise ScenarioError(f"{key}: {value} encodes to {raw:g}, outside {data_type} [{lo}, {hi}]")
    elif abs(raw) > _FLOAT32_MAX:
        raise ScenarioError(f"{key}: {value} encodes to {raw:g}, outside float32")


def _device(name: str, table: _Table, drivers: Mapping[str, DriverConfig]) -> DeviceConfig:
    kind = table.string("kind", choices=("actuator", "sensor"))
    driver_name = table.string("driver")
    driver = drivers.get(driver_name)
    if driver is None:
        known = ", ".join(drivers) or "none"
        raise ScenarioError(f"{table.key('driver')}: no driver named {driver_name!r} (known: {known})")
    unit = table.string("unit")
    lo = table.number("min", None)
    hi = table.number("max", None)
    if lo is not None and hi is not None and lo > hi:
        raise ScenarioError(f"{table.key('min')}: min {lo} > max {hi}")
    actuator = kind == "actuator"
    safe = max_rate = None
    if actuator:
        if lo is None or hi is None:
            raise ScenarioError(f"{table.key('min' if lo is None else 'max')}: required for an actuator")
        safe = table.number("safe")
        if not lo <= safe <= hi:
            raise ScenarioError(f"{table.key('safe')}: safe value {safe} outside [min, max] = [{lo}, {hi}]")
        max_rate = table.number("max_rate", None, positive=True)
    max_age_s = table.number("max_age_s", 3.0 * driver.poll_period_s + driver.timeout_s, positive=True)

    address: ModbusDeviceConfig | OpcUaDeviceConfig
    default_tolerance: float
    if isinstance(driver, ModbusDriverConfig):
        if not table.has("address"):
            raise ScenarioError(f"{table.key('address')}: required key is missing (the register address)")
        register = table.string("register", "holding" if actuator else "input", choices=("holding", "input"))
        if actuator and register != "holding":
            raise ScenarioError(f"{table.key('register')}: an actuator is written, so it must be 'holding'")
        data_type = table.string("type", "float32", choices=DATA_TYPES)
        scale = table.number("scale", 1.0)
        if scale == 0:
            raise ScenarioError(f"{table.key('scale')}: must not be 0")
        offset = table.number("offset", 0.0)
        address = ModbusDeviceConfig(
            address=table.integer("address", lo=0, hi=65536 - REGISTER_COUNT[data_type]),
            register=register,
            data_type=data_type,
            word_order=table.string("word_order", "big", choices=("big", "little")),
            scale=scale,
            offset=offset,
            readback_address=(
                table.integer("readback_address", None, lo=0, hi=65536 - REGISTER_COUNT[data_type])
                if actuator
                else None
            ),
            readback_register=table.string("readback_register", "input", choices=("holding", "input"))
            if actuator
            else "input",
        )
        for bound_key, bound in (("min", lo), ("max", hi), ("safe", safe)):
            if bound is not None:
                _check_raw_range(table.key(bound_key), data_type, scale, offset, bound)
        # One count of an integer register; float32 keeps ~7 significant digits.
        span = max(1.0, abs(lo or 0.0), abs(hi or 0.0))
        default_tolerance = abs(scale) if data_type != "float32" else 1e-6 * span
    else:
        if not table.has("node"):
            raise ScenarioError(f"{table.key('node')}: required key is missing (the OPC UA node id)")
        address = OpcUaDeviceConfig(
            node=table.string("node"), readback_node=table.string("readback_node", None) if actuator else None
        )
        default_tolerance = 1e-9 * max(1.0, abs(lo or 0.0), abs(hi or 0.0))
    tolerance = table.number("tolerance", default_tolerance) if actuator else 0.0
    if tolerance < 0:
        raise ScenarioError(f"{table.key('tolerance')}: must be >= 0, got {tolerance}")
    readback_timeout_s = table.number("readback_timeout_s", 1.0, positive=True) if actuator else 0.0
    table.finish()
    return DeviceConfig(
        name=name,
        kind=kind,
        driver=driver_name,
        unit=unit,
        min=lo,
        max=hi,
        safe=safe,
        max_rate=max_rate,
        tolerance=tolerance,
        readback_timeout_s=readback_timeout_s,
        max_age_s=max_age_s,
        address=address,
    )


def _check_overlaps(devices: tuple[DeviceConfig, ...]) -> None:
    """No two register spans (values and readbacks) may share a register of one table of one driver."""
    owners: dict[tuple[str, str, int], str] = {}
    for device in devices:
        addr = device.address
        if not isinstance(addr, ModbusDeviceConfig):
            continue
        spans = [(f"devices.{device.name}.address", addr.register, addr.address)]
        if addr.readback_address is not None:
            spans.append((f"devices.{device.name}.readback_address", addr.readback_register, addr.readback_address))
        for key, register, start in spans:
            for reg in range(start, start + addr.count):
                slot = (device.driver, register, reg)
                if slot in owners:
                    raise ScenarioError(
                        f"{key}: {register} register {reg} of driver {device.driver!r} overlaps {owners[slot]}"
                    )
                owners[slot] = key


def _check_nodes(devices: tuple[DeviceConfig, ...]) -> None:
    owners: dict[tuple[str, str], str] = {}
    for device in devices:
        addr = device.address
        if not isinstance(addr, OpcUaDeviceConfig):
            continue
        for key, node in ((".node", addr.node), (".readback_node", addr.readback_node)):
            if node is None:
                continue
            slot = (device.driver, node)
            if slot in owners:
                raise ScenarioError(f"devices.{device.name}{key}: node {node!r} is also {owners[slot]}")
            owners[slot] = f"devices.{device.name}{key}"


def parse_gateway_config(text: str, origin: str = "<gateway>", base: Path | None = None) -> GatewayConfig:
    """Validate GATEWAY.toml text.

    Args:
        text: the TOML.
        origin: file name for messages.
        base: folder that relative certificate/key paths are relative to (default: current folder).

    Raises:
        ScenarioError: one line naming the entry at fault.
    """
    base = base if base is not None else Path.cwd()
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{origin}: not valid TOML: {exc}") from None
    root = _Table(data, "")
    name = root.string("name", "gateway")
    server = _server(_Table(root.raw("server", {}), "server"), base)
    drivers_table = _Table(root.raw("drivers"), "drivers")
    drivers: dict[str, DriverConfig] = {}
    for driver_name in drivers_table.data:
        drivers[driver_name] = _driver(
            driver_name, _Table(drivers_table.raw(driver_name), drivers_table.key(driver_name)), base
        )
    if not drivers:
        raise ScenarioError("drivers: at least one driver is needed")
    devices_table = _Table(root.raw("devices"), "devices")
    devices = tuple(
        _device(n, _Table(devices_table.raw(n), devices_table.key(n)), drivers) for n in devices_table.data
    )
    if not any(d.kind == "actuator" for d in devices):
        raise ScenarioError("devices: at least one actuator is needed")
    root.finish()
    _check_overlaps(devices)
    _check_nodes(devices)
    unused = [n for n in drivers if not any(d.driver == n for d in devices)]
    if unused:
        raise ScenarioError(f"drivers.{unused[0]}: no device uses this driver")
    return GatewayConfig(name=name, server=server, drivers=drivers, devices=devices)


def load_gateway_config(path: str | Path) -> GatewayConfig:
    """Read and validate a GATEWAY.toml; relative paths in it are relative to its folder.

    Raises:
        ScenarioError: unreadable file, or one line naming the entry at fault.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ScenarioError(f"{path}: cannot read: {exc.strerror}") from None
    config = parse_gateway_config(text, str(path), base=path.resolve().parent)
    return GatewayConfig(config.name, config.server, config.drivers, config.devices, source=path)
