"""Limits hold at the gateway whatever the controller does (issue 8, "Hostile input").

A real :class:`~hil.gateway.backend.GatewayBackend` (the shipped examples/gateway/modbus.toml) behind the
protocol handler talks Modbus TCP to the emulator (``bioimp emulate modbus``, its own process) through
a tap: a TCP relay in this test that decodes every Modbus write on its way to the device. Hypothesis
plays the controller: any floats (NaN, ±inf, 1e308, far outside the range, close to the current value),
any device names (actuators, sensors, unknown), any seq, arms and heartbeats, with a short watchdog
putting the plant in fail-safe between bursts. Checked on what actually reached the registers, not on
what the gateway says it did:

* every value written is finite and inside its device's ``[min, max]``;
* the heater (``max_rate`` 10 %/s) never moves faster than that: between the first write of a value
  and the next different write, the change is at most ``max_rate`` x elapsed wall time (time scale 1)
  plus one register count. The fail-safe's own writes of the safe value are the one exemption: taking
  the heater off is never rate-limited.
"""

from __future__ import annotations

import contextlib
import json
import math
import socket
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hil.gateway.backend import GatewayBackend
from hil.gateway.config import DeviceConfig, GatewayConfig, ModbusDeviceConfig, load_gateway_config
from hil.gateway.drivers.registers import decode
from hil.handler import ProtocolHandler
from tests.hil.gateway.conftest import example_config
from tests.hil.gateway.procs import bioimp, free_port

from .test_fuzz_handler import EDGE_NUMBERS, FUZZ, MESSAGE_BUDGET, check_reply_frame

EXAMPLES = 40
STEPS = 30  # messages per example: EXAMPLES x STEPS = 1,200
WATCHDOG_S = 0.15


@dataclass
class ModbusTap:
    """A TCP relay to a Modbus server that records every register write (function codes 6 and 16) with
    the monotonic time it passed through: (time, first register, register values)."""

    target_port: int
    writes: list[tuple[float, int, list[int]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._sockets: list[socket.socket] = [self._listener]
        self._closed = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.target_port))
            self._sockets += [client, server]
            threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, requests: bool) -> None:
        buffer = b""
        try:
            while data := src.recv(65536):
                if requests:
                    buffer = self._parse(buffer + data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def _parse(self, buffer: bytes) -> bytes:
        # Modbus TCP: MBAP header (transaction 2, protocol 2, length 2, unit 1), then the PDU.
        while len(buffer) >= 7:
            end = 6 + int.from_bytes(buffer[4:6], "big")
            if len(buffer) < end:
                break
            pdu, buffer = buffer[7:end], buffer[end:]
            now = time.monotonic()
            if pdu[0] == 6:
                address, value = struct.unpack(">HH", pdu[1:5])
                self._record(now, address, [value])
            elif pdu[0] == 16:
                address, count = struct.unpack(">HH", pdu[1:5])
                self._record(now, address, list(struct.unpack(f">{count}H", pdu[6 : 6 + 2 * count])))
        return buffer

    def _record(self, now: float, address: int, registers: list[int]) -> None:
        with self.lock:
            self.writes.append((now, address, registers))

    def close(self) -> None:
        self._closed.set()
        for sock in self._sockets:
            sock.close()


def device_writes(tap: ModbusTap, device: DeviceConfig) -> list[tuple[float, float]]:
    """(time, engineering value) of every write that covered ``device``'s setpoint registers."""
    addr = device.address
    assert isinstance(addr, ModbusDeviceConfig)
    with tap.lock:
        writes = list(tap.writes)
    out = []
    for t, start, registers in writes:
        if start <= addr.address and addr.address + addr.count <= start + len(registers):
            offset = addr.address - start
            out.append((t, decode(addr, registers[offset : offset + addr.count])))
        else:
            assert start + len(registers) <= addr.address or start >= addr.address + addr.count, "partial write"
    return out


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ProtocolHandler, ModbusTap, GatewayConfig]]:
    tmp = tmp_path_factory.mktemp("gateway-fuzz")
    emulator_port = free_port()
    emulator_config = example_config(tmp, "modbus", port=emulator_port)
    with bioimp(["emulate", "modbus", "--model", "fedbatch_haldane", "--config", str(emulator_config)]):
        tap = ModbusTap(emulator_port)
        gateway_dir = tmp / "gw"
        gateway_dir.mkdir()
        config = load_gateway_config(example_config(gateway_dir, "modbus", port=tap.port))
        backend = GatewayBackend(config)
        backend.start()
        try:
            handler = ProtocolHandler(backend, clock="realtime", watchdog_s=WATCHDOG_S)
            yield handler, tap, config
        finally:
            backend.close()
            tap.close()


DEVICE_NAMES = st.sampled_from(["inp", "heater", "inp", "heater", "X_s", "V_s", "pump_9", ""])
ANY_FLOAT = st.one_of(st.floats(), st.sampled_from([*EDGE_NUMBERS, math.nan, math.inf, -math.inf, 1e308, 0.2, 10.0]))


@st.composite
def controller_step(draw: st.DrawFn) -> dict[str, Any]:
    """One thing a controller might send: mostly a write, sometimes an arm or a heartbeat."""
    op = draw(st.sampled_from(["write"] * 8 + ["arm", "heartbeat"]))
    if op != "write":
        return {"op": op}
    setpoints: dict[str, tuple[str, float]] = {}
    for name in draw(st.lists(DEVICE_NAMES, min_size=1, max_size=3, unique=True)):
        # Absolute (anything at all) or relative to the value the device holds now (a plausible next
        # setpoint, sometimes just within the rate limit, sometimes just beyond it).
        kind = draw(st.sampled_from(["absolute", "relative", "relative"]))
        amount = draw(ANY_FLOAT if kind == "absolute" else st.floats(-0.3, 0.3) | st.floats(-60.0, 60.0))
        setpoints[name] = (kind, amount)
    seq = draw(st.sampled_from(["next", "next", "next", "same", "lower", "jump"]))
    return {"op": "write", "setpoints": setpoints, "seq": seq}


def test_whatever_the_controller_sends_the_registers_stay_within_limits_and_rate(
    gateway: tuple[ProtocolHandler, ModbusTap, GatewayConfig],
) -> None:
    handler, tap, config = gateway
    backend = handler.backend
    assert isinstance(backend, GatewayBackend)
    sent = {"messages": 0, "ok_writes": 0, "examples": 0}

    @settings(FUZZ, max_examples=EXAMPLES)
    @given(steps=st.lists(controller_step(), min_size=STEPS, max_size=STEPS))
    def run(steps: list[dict[str, Any]]) -> None:
        sent["examples"] += 1
        client = f"ctl-{sent['examples']}".encode()
        seq = 0
        # The operator re-arms after the last burst's fail-safe (an arm is a message of the burst too).
        steps = [{"op": "arm"}, *steps[1:]]
        for i, step in enumerate(steps):
            request: dict[str, Any] = {"v": 1, "id": i, "op": step["op"]}
            if step["op"] == "write":
                seq = {"next": seq + 1, "same": seq, "lower": seq - 1, "jump": seq + 1000}[step["seq"]]
                held = backend.applied()
                request["seq"] = seq
                request["setpoints"] = {
                    name: amount if kind == "absolute" else held.get(name, 0.0) + amount
                    for name, (kind, amount) in step["setpoints"].items()
                }
            frame = json.dumps(request, allow_nan=True).encode()
            reply, _ = handler.handle(client, frame)
            body = check_reply_frame(frame, reply)
            sent["messages"] += 1
            sent["ok_writes"] += int(body["ok"] and step["op"] == "write")
            handler.check_watchdog()  # as the server's poll loop does
        if sent["examples"] % 3 == 0:
            time.sleep(WATCHDOG_S * 1.5)  # quiet: the watchdog puts the plant in fail-safe between bursts
            handler.check_watchdog()

    run()
    checked = 0
    for device in config.devices:
        if device.kind != "actuator":
            continue
        assert device.min is not None and device.max is not None and device.safe is not None
        addr = device.address
        assert isinstance(addr, ModbusDeviceConfig)
        writes = device_writes(tap, device)
        since_t, held = None, None
        for t, value in writes:
            assert math.isfinite(value) and device.min <= value <= device.max, (device.name, value)
            # Fail-safe writes of the safe value are exempt (see the module docstring).
            if (
                device.max_rate is not None
                and held is not None
                and since_t is not None
                and value not in (held, device.safe)
            ):
                allowed = device.max_rate * (t - since_t) + abs(addr.scale) + 1e-9
                assert abs(value - held) <= allowed, (device.name, held, value, t - since_t)
            if value != held:
                since_t, held = t, value
            checked += 1
    print(
        f"gateway: {sent['examples']} examples, {sent['messages']} messages, {sent['ok_writes']} writes accepted,"
        f" {checked} register writes checked"
    )
    assert sent["messages"] >= MESSAGE_BUDGET["gateway"], sent
    assert sent["ok_writes"] >= 50 and checked >= 100  # not only refusals: values did reach the device
    assert handler.state in ("armed", "failsafe")
