"""The gateway against the Modbus emulator, each in its own process, over loopback TCP.

Every data type and word order round trip (checked at the register level with an independent pymodbus
client), readback mismatch, rate limit, driver loss and reconnect, fail-safe reaching the registers.
"""

from __future__ import annotations

import struct
import time
from pathlib import Path

import pytest
from pymodbus.client import ModbusTcpClient

from hil.client import ZmqPlant
from hil.gateway.backend import GatewayBackend
from hil.gateway.config import load_gateway_config
from plant_models.errors import ProtocolError
from plant_models.registry import resolve_model

from .conftest import example_config
from .procs import bioimp, free_port

ROUND_TRIP = """
name = "codec"
[drivers.plc]
kind = "modbus"
host = "127.0.0.1"
port = {port}
poll_period_s = 0.05
"""
#: (name, type, word order, scale, offset, value, expected registers); limits [-400, 200] (int16),
#: [10, 30000] (uint16), [-1e5, 1e5] (others): representable in each type.
CODECS = [
    ("a_int16", "int16", "big", 0.01, -100.0, -123.45, [(-2345) & 0xFFFF]),
    ("a_uint16", "uint16", "big", 0.5, 10.0, 20010.0, [40000]),
    ("a_int32_big", "int32", "big", 0.001, 0.0, -70000.5, list(struct.unpack(">HH", struct.pack(">i", -70000500)))),
    ("a_int32_little", "int32", "little", 0.001, 0.0, -70000.5, [0xE08C, 0xFBD3]),
    ("a_f32_big", "float32", "big", 2.0, 1.0, 12.5, list(struct.unpack(">HH", struct.pack(">f", 5.75)))),
    ("a_f32_little", "float32", "little", 2.0, 1.0, 12.5, list(struct.unpack(">HH", struct.pack(">f", 5.75)))[::-1]),
]


def _round_trip_config(tmp_path: Path, port: int) -> Path:
    text = ROUND_TRIP.format(port=port)
    limits = {"int16": (-400.0, 200.0), "uint16": (10.0, 30000.0)}
    for i, (name, data_type, order, scale, offset, _, _) in enumerate(CODECS):
        lo, hi = limits.get(data_type, (-1e5, 1e5))
        text += f"""
[devices.{name}]
kind = "actuator"
driver = "plc"
unit = "u"
min = {lo!r}
max = {hi!r}
safe = {lo!r}
address = {10 * i}
type = "{data_type}"
word_order = "{order}"
scale = {scale!r}
offset = {offset!r}
readback_address = {100 + 10 * i}
"""
    # Model sensors, decoded as the example file encodes them (float32 little, int32 scaled).
    text += """
[devices.X_s]
kind = "sensor"
driver = "plc"
unit = "g/L"
address = 200
type = "float32"
word_order = "little"
[devices.V_s]
kind = "sensor"
driver = "plc"
unit = "L"
address = 210
type = "int32"
scale = 0.001
"""
    path = tmp_path / "codec.toml"
    path.write_text(text)
    return path


def test_every_data_type_and_word_order_round_trips(tmp_path: Path) -> None:
    port = free_port()
    path = _round_trip_config(tmp_path, port)
    config = load_gateway_config(path)
    spec = resolve_model("fedbatch_haldane")
    with bioimp(["emulate", "modbus", "--model", "fedbatch_haldane", "--config", str(path)]) as emulator:
        assert emulator.ready == ["modbus", f"tcp://127.0.0.1:{port}"]
        with GatewayBackend(config) as backend:
            backend.apply({name: value for name, *_, value, _ in CODECS})
            applied = backend.applied()
            raw = ModbusTcpClient("127.0.0.1", port=port)
            assert raw.connect()
            try:
                for i, (name, _, _, _, _, value, registers) in enumerate(CODECS):
                    assert applied[name] == value
                    count = len(registers)
                    # The setpoint registers hold exactly the standard layout, and the emulated device
                    # decoded it back to the value (its readback register is encoded the same way).
                    assert raw.read_holding_registers(10 * i, count=count).registers == registers, name
                    assert raw.read_input_registers(100 + 10 * i, count=count).registers == registers, name
            finally:
                raw.close()
            time.sleep(0.15)  # a few poll periods
            readings = backend.read()
    for name, _, _, scale, _, value, _ in CODECS:
        assert readings[name].quality == "good"
        assert readings[name].value == pytest.approx(value, abs=abs(scale) * 0.5 + 1e-6 * abs(value))
    # Sensors: the plant barely moves in a few wall seconds at time scale 1 (hours-scale model).
    assert readings["X_s"].value == pytest.approx(spec.x0["X_s"], rel=1e-4)
    assert readings["V_s"].value == pytest.approx(spec.x0["V_s"], abs=0.0015)


def _raw_register(port: int, address: int, kind: str = "holding") -> list[int]:
    client = ModbusTcpClient("127.0.0.1", port=port)
    assert client.connect()
    try:
        read = client.read_holding_registers if kind == "holding" else client.read_input_registers
        return list(read(address, count=1).registers)
    finally:
        client.close()


def test_readback_mismatch_is_an_error_and_an_event(tmp_path: Path) -> None:
    """The pump ignores its setpoint (a drive left in local mode): the write is an error reply."""
    port = free_port()
    path = example_config(tmp_path, "modbus", port=port)
    with bioimp(["emulate", "modbus", "--model", "fedbatch_haldane", "--config", str(path), "--stuck", "inp"]):
        with bioimp(["gateway", str(path)]) as gateway, ZmqPlant(gateway.ready[0], timeout_s=5.0) as plant:
            started = time.monotonic()
            with pytest.raises(ProtocolError) as info:
                plant.write({"inp": 0.1}, seq=1)
            elapsed = time.monotonic() - started
            assert info.value.code == "readback_mismatch" and "'inp'" in info.value.message
            assert 1.0 <= elapsed < 3.0  # the configured readback_timeout_s, then the refusal
            assert plant.read(("inp",)).values["inp"].value == pytest.approx(0.0)
            # The heater is fine: a small step is written and verified.
            plant.write({"heater": 0.5}, seq=1)
        # The same through the backend directly: the mismatch is also a queued event.
        with GatewayBackend(load_gateway_config(path)) as backend:
            with pytest.raises(ProtocolError) as info:
                backend.apply({"inp": 0.05})
            events = backend.take_events()
    assert info.value.code == "readback_mismatch"
    assert any(e.get("device") == "inp" and e["reason"].startswith("readback_mismatch") for e in events), events


def test_rate_limit_refuses_and_writes_nothing(tmp_path: Path) -> None:
    port = free_port()
    path = example_config(tmp_path, "modbus", port=port)
    with (
        bioimp(["emulate", "modbus", "--model", "fedbatch_haldane", "--config", str(path)]),
        GatewayBackend(load_gateway_config(path)) as backend,
    ):
        time.sleep(0.3)
        # heater: max 10 %/s, safe 0 at start: 50 % within a second is refused, not clamped.
        with pytest.raises(ProtocolError) as info:
            backend.apply({"heater": 50.0})
        assert info.value.code == "out_of_range" and "max rate 10 %/s" in info.value.message
        assert backend.applied()["heater"] == 0.0
        assert _raw_register(port, 2) == [0]
        backend.apply({"heater": 2.0})  # 2 % after >= 0.3 s is within 10 %/s
        assert _raw_register(port, 2) == [20]
        # All or nothing: a refused heater step does not write the pump either.
        with pytest.raises(ProtocolError):
            backend.apply({"inp": 0.1, "heater": 60.0})
        assert _raw_register(port, 0) == [0]


def test_rate_limit_on_the_wire_is_out_of_range(tmp_path: Path) -> None:
    port = free_port()
    path = example_config(tmp_path, "modbus", port=port)
    with (
        bioimp(["emulate", "modbus", "--model", "fedbatch_haldane", "--config", str(path)]),
        bioimp(["gateway", str(path)]) as gateway,
        ZmqPlant(gateway.ready[0], timeout_s=5.0) as plant,
        pytest.raises(ProtocolError) as info,
    ):
        plant.write({"heater": 100.0}, seq=1)
    assert info.value.code == "out_of_range"


def test_driver_loss_is_bad_then_reconnects(tmp_path: Path) -> None:
    """Kill the PLC (emulator) hard: values go bad and writes fail; restart it: values come back."""
    port = free_port()
    path = example_config(tmp_path, "modbus", port=port)
    emulate = ["emulate", "modbus", "--model", "fedbatch_haldane", "--config", str(path)]
    with bioimp(["gateway", str(path), "--watchdog", "0"]) as gateway, ZmqPlant(gateway.ready[0]) as plant:
        assert plant.read().values["X_s"].value is None  # started before its hardware: bad, not an error
        with bioimp(emulate) as first:
            good_at = _wait(lambda: plant.read().values["X_s"].value is not None, 10.0)
            plant.write({"inp": 0.05}, seq=1)
            first.process.kill()  # power loss: no FIN from a clean shutdown needed
            killed = time.monotonic()
            _wait(lambda: plant.read().values["X_s"].value is None, 5.0)
            bad_after = time.monotonic() - killed
            with pytest.raises(ProtocolError) as info:
                plant.write({"inp": 0.0}, seq=2)
            assert info.value.code == "device_unavailable"
        with bioimp(emulate):
            restarted = time.monotonic()
            _wait(lambda: plant.read().values["X_s"].value is not None, 10.0)
            reconnect_s = time.monotonic() - restarted
            plant.write({"inp": 0.0}, seq=2)  # the loop continues: the same seq, now applied
            assert plant.read(("inp",)).values["inp"].value == pytest.approx(0.0)
    print(f"first good {good_at:.2f} s, bad {bad_after:.3f} s after kill, reconnect {reconnect_s:.2f} s after restart")
    assert bad_after < 1.0  # poll period 0.2 s
    assert reconnect_s < 6.0  # backoff is capped at 5 s


def test_failsafe_reaches_the_registers(tmp_path: Path) -> None:
    """A controller that goes quiet: the watchdog's safe values land in the PLC's registers."""
    port = free_port()
    path = example_config(tmp_path, "modbus", port=port)
    watchdog_s = 0.5
    with (
        bioimp(["emulate", "modbus", "--model", "fedbatch_haldane", "--config", str(path)]),
        bioimp(["gateway", str(path), "--watchdog", repr(watchdog_s)]) as gateway,
        ZmqPlant(gateway.ready[0]) as plant,
    ):
        time.sleep(0.2)
        plant.write({"inp": 0.1, "heater": 1.5}, seq=1)
        last_write = time.monotonic()
        assert _raw_register(port, 2) == [15]
        _wait(lambda: _raw_register(port, 2) == [0] and _raw_register(port, 0) == [0], 2 * watchdog_s + 1)
        latency_s = time.monotonic() - last_write
        assert plant.hello().state == "failsafe"
    print(f"safe values in the registers {latency_s:.3f} s after the last write (watchdog {watchdog_s} s)")
    assert latency_s <= 2 * watchdog_s


def _wait(condition: object, timeout_s: float) -> float:
    """Poll ``condition()`` every 20 ms until true; return the seconds it took."""
    assert callable(condition)
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout_s:
            raise AssertionError(f"condition not met within {timeout_s} s")
        time.sleep(0.02)
    return time.monotonic() - start


def test_old_samples_are_stale_with_their_value(tmp_path: Path) -> None:
    port = free_port()
    path = example_config(tmp_path, "modbus", port=port)
    text = path.read_text().replace("poll_period_s = 0.2", "poll_period_s = 1.0")
    path.write_text(text.replace("max_age_s = 2.0", "max_age_s = 0.3"))
    with (
        bioimp(["emulate", "modbus", "--model", "fedbatch_haldane", "--config", str(path)]),
        GatewayBackend(load_gateway_config(path)) as backend,
    ):
        fresh = backend.read(["X_s"])["X_s"]  # start() polls once at once
        time.sleep(0.45)
        old = backend.read(["X_s"])["X_s"]
    assert fresh.quality == "good" and old.quality == "stale"
    assert old.value == fresh.value and old.t_s == fresh.t_s and old.seq == fresh.seq


def test_a_stopped_gateway_leaves_the_plc_safe(tmp_path: Path) -> None:
    """SIGTERM to the gateway (maintenance, a clean stop): nobody watches the PLC any more, so it goes safe."""
    port = free_port()
    path = example_config(tmp_path, "modbus", port=port)
    with bioimp(["emulate", "modbus", "--model", "fedbatch_haldane", "--config", str(path)]):
        with bioimp(["gateway", str(path), "--watchdog", "0"]) as gateway, ZmqPlant(gateway.ready[0]) as plant:
            time.sleep(0.3)  # the heater's max rate counts from the gateway's start
            plant.write({"inp": 0.1, "heater": 1.5}, seq=1)
            assert _raw_register(port, 2) == [15] and _raw_register(port, 0) != [0]
        assert gateway.process.returncode == 0
        assert _raw_register(port, 2) == [0] and _raw_register(port, 0) == [0]
