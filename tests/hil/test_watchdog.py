"""Watchdog, fail-safe and ``arm``: the handler's rules on an injected clock, then real processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from typing import Any

import pytest

from hil.client import TelemetrySubscriber, ZmqPlant
from hil.handler import ProtocolHandler
from hil.heartbeat import HeartbeatSender
from hil.launch import spawn_plant_server
from hil.plant_events import PlantEventListener
from plant_models.errors import ProtocolError
from plant_models.registry import resolve_model
from tests.hil.conftest import REPO
from twin.simulated_plant import SimulatedPlant

WATCHDOG_S = 2.0


class FakeMonotonic:
    """A wall clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _call(handler: ProtocolHandler, op: str, **fields: Any) -> dict[str, Any]:
    reply, _ = handler.handle(b"ctrl", json.dumps({"v": 1, "id": 1, "op": op, **fields}).encode())
    obj: dict[str, Any] = json.loads(reply)
    return obj


def _write(handler: ProtocolHandler, seq: int, inp: float = 0.05) -> dict[str, Any]:
    return _call(handler, "write", setpoints={"inp": inp}, seq=seq)


@pytest.fixture
def clock() -> FakeMonotonic:
    return FakeMonotonic()


@pytest.fixture
def tank() -> SimulatedPlant:
    return SimulatedPlant(resolve_model("fedbatch_haldane"))


@pytest.fixture
def handler(tank: SimulatedPlant, clock: FakeMonotonic) -> ProtocolHandler:
    return ProtocolHandler(tank, watchdog_s=WATCHDOG_S, monotonic=clock)


def test_server_starts_safe_and_the_watchdog_waits_for_a_first_feed(
    handler: ProtocolHandler, tank: SimulatedPlant, clock: FakeMonotonic
) -> None:
    assert tank.applied() == {"inp": 0.0}
    clock.now += 10 * WATCHDOG_S
    _call(handler, "hello")
    _call(handler, "read")  # read-only requests do not start (or feed) the watchdog
    assert handler.check_watchdog() == []
    assert handler.state == "armed"


def test_silence_puts_actuators_safe_refuses_writes_until_arm(
    handler: ProtocolHandler, tank: SimulatedPlant, clock: FakeMonotonic
) -> None:
    assert _write(handler, 1, 0.1)["ok"] is True
    clock.now += WATCHDOG_S - 0.01
    assert handler.check_watchdog() == []
    clock.now += 0.05
    [(topic, payload)] = handler.check_watchdog()
    assert topic == "event" and json.loads(payload)["state"] == "failsafe"
    assert tank.applied() == {"inp": 0.0} and handler.state == "failsafe"
    assert handler.last_failsafe_latency_s == pytest.approx(WATCHDOG_S + 0.04, abs=1e-9)
    hello = _call(handler, "hello")
    assert (hello["state"], hello["last_failsafe_latency_s"]) == ("failsafe", handler.last_failsafe_latency_s)
    # A new seq is refused; the last applied seq is answered from memory (applying nothing, its time
    # is when it was applied); the heartbeat does not re-arm.
    assert _write(handler, 2)["error"]["code"] == "failsafe"
    retry = _write(handler, 1, 0.1)
    assert (retry["ok"], retry["time"], retry["applied"]) == (True, 0.0, {"inp": 0.1})
    assert _call(handler, "heartbeat")["state"] == "failsafe"
    assert tank.applied() == {"inp": 0.0}

    assert _call(handler, "arm") | {"id": None} == {"v": 1, "id": None, "ok": True, "time": 0.0, "state": "armed"}
    assert tank.applied() == {"inp": 0.0}  # arming applies nothing by itself
    assert _write(handler, 2, 0.07)["ok"] is True
    assert tank.applied() == {"inp": 0.07}


def test_heartbeats_and_writes_feed_refused_writes_do_not(handler: ProtocolHandler, clock: FakeMonotonic) -> None:
    _write(handler, 1)
    for _ in range(5):
        clock.now += 0.9 * WATCHDOG_S
        _call(handler, "heartbeat")
        assert handler.check_watchdog() == []
    clock.now += 0.9 * WATCHDOG_S
    assert _write(handler, 2, 99.0)["error"]["code"] == "out_of_range"  # refused: not a feed
    clock.now += 0.2 * WATCHDOG_S
    assert handler.check_watchdog() != []
    assert handler.state == "failsafe"


def test_arm_starts_the_watchdog(handler: ProtocolHandler, clock: FakeMonotonic) -> None:
    _call(handler, "arm")
    clock.now += WATCHDOG_S
    assert handler.check_watchdog() != [] and handler.state == "failsafe"


def test_no_watchdog_never_fails_safe(tank: SimulatedPlant, clock: FakeMonotonic) -> None:
    handler = ProtocolHandler(tank, watchdog_s=None, monotonic=clock)
    _write(handler, 1)
    clock.now += 1e6
    assert handler.check_watchdog() == [] and handler.state == "armed"


# ------------------------------------------------------------------------------------------------
# Real processes: a controller process is killed; the plant server's own clock and poll loop act.

_CONTROLLER = """
import sys, time
from hil.client import ZmqPlant
from hil.heartbeat import HeartbeatSender, heartbeat_period_s
endpoint, watchdog_s = sys.argv[1], float(sys.argv[2])
with ZmqPlant(endpoint, timeout_s=2.0) as plant:
    plant.write({"inp": 0.1}, seq=1)
    with HeartbeatSender(endpoint, heartbeat_period_s(watchdog_s)):
        print("running", flush=True)
        time.sleep(3600)  # a controller stuck in a long solve: its heartbeat thread keeps going
"""


def _safe_after(plant: ZmqPlant, deadline_s: float) -> float | None:
    """Seconds until the pump reads its safe value (polling), None if not within ``deadline_s``."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < deadline_s:
        if plant.read(("inp",)).values["inp"].value == 0.0:
            return time.monotonic() - t0
        time.sleep(0.01)
    return None


def test_killed_controller_puts_the_plant_safe_within_two_watchdogs_and_arm_is_needed() -> None:
    watchdog_s = 0.5
    with spawn_plant_server("fedbatch_haldane", clock="realtime", extra_args=["--watchdog", str(watchdog_s)]) as server:
        env = dict(os.environ, PYTHONPATH=str(REPO))
        controller = subprocess.Popen(
            [sys.executable, "-c", _CONTROLLER, server.command, str(watchdog_s)],
            stdout=subprocess.PIPE,
            env=env,
        )
        try:
            assert controller.stdout is not None and controller.stdout.readline() == b"running\n"
            with ZmqPlant(server.command, timeout_s=2.0) as observer, TelemetrySubscriber(server.telemetry) as sub:
                # The heartbeat thread keeps the plant armed through 4 watchdog periods of a blocked loop.
                time.sleep(4 * watchdog_s)
                assert observer.hello().state == "armed"
                assert observer.read(("inp",)).values["inp"].value == 0.1
                controller.send_signal(signal.SIGKILL)
                controller.wait(5)
                elapsed = _safe_after(observer, 2 * watchdog_s)
                assert elapsed is not None, "pump not at its safe value within 2 x watchdog_s of the kill"
                info = observer.hello()
                assert info.state == "failsafe"
                event = sub.receive(timeout_s=1.0)
                while event is not None and event.topic != "event":
                    event = sub.receive(timeout_s=1.0)
                assert event is not None and event.payload["state"] == "failsafe"
                with pytest.raises(ProtocolError) as refused:
                    observer.write({"inp": 0.05}, seq=1)
                assert refused.value.code == "failsafe"

                # The operator re-arms with the CLI; then writes are accepted again.
                arm = subprocess.run(
                    [sys.executable, "-m", "hil.cli", "arm", server.command],
                    capture_output=True,
                    text=True,
                    env=env,
                    timeout=30,
                )
                assert arm.returncode == 0, arm.stderr
                assert "armed" in arm.stdout
                assert observer.write({"inp": 0.05}, seq=1).applied == {"inp": 0.05}
        finally:
            controller.kill()
            controller.wait(5)
        latency = _hello_field(server.command, "last_failsafe_latency_s")
        assert watchdog_s <= latency <= watchdog_s + 0.25, latency


def _hello_field(endpoint: str, key: str) -> float:
    import zmq

    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    try:
        sock.send(b'{"v":1,"id":1,"op":"hello"}')
        assert sock.poll(5000)
        value = json.loads(sock.recv())[key]
    finally:
        sock.close()
    assert isinstance(value, float)
    return value


def test_heartbeat_sender_reports_the_plant_state() -> None:
    with spawn_plant_server("fedbatch_haldane", extra_args=["--watchdog", "0.3"]) as server:
        with HeartbeatSender(server.command, 0.05) as sender:
            time.sleep(0.5)
            assert sender.state == "armed" and sender.sent >= 3
        time.sleep(0.6)  # no more heartbeats: the watchdog fires
        with ZmqPlant(server.command) as plant:
            assert plant.hello().state == "failsafe"


def test_plant_event_listener_hands_the_failsafe_event_to_the_record() -> None:
    with (
        spawn_plant_server("fedbatch_haldane", extra_args=["--watchdog", "0.2"]) as server,
        PlantEventListener(server.telemetry) as listener,
        ZmqPlant(server.command) as plant,
    ):
        time.sleep(0.3)  # slow joiner: let the subscription reach the server first
        plant.write({"inp": 0.05}, seq=1)
        deadline = time.monotonic() + 3.0
        events = []
        while not events and time.monotonic() < deadline:
            time.sleep(0.05)
            events = listener.drain()
        assert [e.kind for e in events] == ["plant_event"]
        assert "state=failsafe" in events[0].message and "watchdog" in events[0].message
        assert events[0].t_s == 0.0  # plant time (virtual clock, never advanced)
        assert listener.drain() == []  # handed over once


def test_a_hung_loop_stops_its_heartbeat_and_the_plant_goes_to_failsafe() -> None:
    """``bioimp run --stall-s``: a controller alive but hung (its loop sends nothing) must not keep the plant
    armed through its heartbeat thread. While the loop talks to the plant the heartbeat feeds the watchdog
    (longer than the watchdog); once the loop is silent past the stall limit the heartbeats stop, the
    watchdog trips, and the plant stays in fail-safe when the loop comes back, until armed."""
    watchdog_s, stall_s = 0.5, 1.0
    with (
        spawn_plant_server("fedbatch_haldane", extra_args=["--watchdog", str(watchdog_s)]) as server,
        ZmqPlant(server.command) as loop_client,
        ZmqPlant(server.command) as observer,  # hello is read-only: it never feeds the watchdog
    ):
        loop_client.write({"inp": 0.01}, seq=1)
        with HeartbeatSender(
            server.command, 0.1, progress=lambda: loop_client.last_request_s, stall_s=stall_s
        ) as beat:
            for _ in range(6):  # the loop at work: a request every 0.3 s, for 3.6 watchdogs
                time.sleep(0.3)
                loop_client.read()
            assert observer.hello().state == "armed" and not beat.stalled
            hung_at = time.monotonic()
            while observer.hello().state != "failsafe":
                assert time.monotonic() - hung_at < stall_s + 2 * watchdog_s + 1.0, "still armed: hang not caught"
                time.sleep(0.05)
            assert time.monotonic() - hung_at >= stall_s  # not before the stall limit
            assert beat.stalled
            loop_client.read()  # the loop is back: heartbeats resume, the plant stays safe until armed
            time.sleep(0.3)
            assert not beat.stalled and observer.hello().state == "failsafe"


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf"])
def test_bioimp_run_refuses_a_bad_stall_limit_in_one_line(value: str, tmp_path: Any) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "hil.cli", "run", "--stall-s", value, "--out", str(tmp_path / "run")],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 2
    message = f"bioimp: error: --stall-s must be a positive number of seconds, not {float(value)}"
    assert done.stderr.strip().splitlines() == [message]
    assert not (tmp_path / "run").exists()  # nothing started, nothing written
