"""The protocol handler over real simulated plants, in process (the wire tests repeat the key cases)."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from typing import Any

import pytest

from hil.backend import PlantBackend
from hil.handler import ProtocolHandler
from plant_models.errors import SolverFailed
from plant_models.registry import resolve_model
from tests.hil.two_input_model import two_input
from twin.interfaces import DeviceInfo, Reading
from twin.simulated_plant import SimulatedPlant


def _call(handler: ProtocolHandler, request: dict[str, Any], client: bytes = b"c1") -> dict[str, Any]:
    reply, _ = handler.handle(client, json.dumps({"v": 1, "id": 1, **request}).encode())
    obj = json.loads(reply)
    assert isinstance(obj, dict)
    return obj


def _code(reply: dict[str, Any]) -> str:
    assert reply["ok"] is False, reply
    code = reply["error"]["code"]
    assert isinstance(code, str)
    return code


@pytest.fixture
def tank() -> SimulatedPlant:
    return SimulatedPlant(two_input())


@pytest.fixture
def handler(tank: SimulatedPlant) -> ProtocolHandler:
    return ProtocolHandler(tank)


def test_simulated_plant_is_a_backend(tank: SimulatedPlant) -> None:
    assert isinstance(tank, PlantBackend)


def test_hello_describes_plant_devices_and_state() -> None:
    handler = ProtocolHandler(SimulatedPlant(resolve_model("fedbatch_haldane")))
    raw, _ = handler.handle(b"c", b'{"v":1,"id":"h","op":"hello"}')
    assert b'"watchdog_s":null' in raw  # no watchdog yet: JSON null
    reply = json.loads(raw)
    assert {k: reply[k] for k in ("protocol", "plant", "clock", "time", "state")} == {
        "protocol": 1,
        "plant": "fedbatch_haldane",
        "clock": "virtual",
        "time": 0.0,
        "state": "armed",
    }
    devices = {d["name"]: d for d in reply["devices"]}
    assert devices["inp"] == {"name": "inp", "kind": "actuator", "unit": "L/h", "min": 0.0, "max": 0.2, "safe": 0.0}
    assert devices["V_s"] == {"name": "V_s", "kind": "sensor", "unit": "L", "min": None, "max": None, "safe": None}


def test_write_is_all_or_nothing(handler: ProtocolHandler, tank: SimulatedPlant) -> None:
    assert _call(handler, {"op": "write", "setpoints": {"heat": 10.0}, "seq": 1})["ok"]
    reply = _call(handler, {"op": "write", "setpoints": {"heat": 50.0, "feed": 2.5}, "seq": 2})
    assert _code(reply) == "out_of_range"
    assert tank.applied() == {"heat": 10.0, "feed": 0.0}
    reply = _call(handler, {"op": "write", "setpoints": {"heat": 50.0, "feed": math.nan}, "seq": 2})
    assert _code(reply) == "not_finite"
    assert tank.applied() == {"heat": 10.0, "feed": 0.0}


def test_limits_are_inclusive_and_writes_to_sensors_are_unknown_devices(
    handler: ProtocolHandler, tank: SimulatedPlant
) -> None:
    reply = _call(handler, {"op": "write", "setpoints": {"heat": 100.0, "feed": 0.0}, "seq": 1})
    assert reply["applied"] == {"heat": 100.0, "feed": 0.0}
    assert _code(_call(handler, {"op": "write", "setpoints": {"T": 30.0}, "seq": 2})) == "unknown_device"
    assert tank.applied() == {"heat": 100.0, "feed": 0.0}


def test_same_seq_returns_the_earlier_reply_and_applies_once(handler: ProtocolHandler, tank: SimulatedPlant) -> None:
    first = _call(handler, {"op": "write", "setpoints": {"heat": 10.0}, "seq": 5})
    _call(handler, {"op": "advance", "dt": 30.0})
    again = _call(handler, {"id": 2, "op": "write", "setpoints": {"heat": 90.0}, "seq": 5})
    assert again == {**first, "id": 2}  # same time and applied: the earlier reply, with this request's id
    assert again["time"] == 0.0
    assert tank.applied()["heat"] == 10.0
    assert _code(_call(handler, {"op": "write", "setpoints": {"heat": 90.0}, "seq": 4})) == "stale"
    assert tank.applied()["heat"] == 10.0


def test_a_refused_write_does_not_use_up_its_seq(handler: ProtocolHandler, tank: SimulatedPlant) -> None:
    assert _code(_call(handler, {"op": "write", "setpoints": {"heat": 1e9}, "seq": 1})) == "out_of_range"
    assert _call(handler, {"op": "write", "setpoints": {"heat": 1.0}, "seq": 1})["applied"]["heat"] == 1.0


def test_each_client_has_its_own_seq_space(handler: ProtocolHandler, tank: SimulatedPlant) -> None:
    _call(handler, {"op": "write", "setpoints": {"heat": 10.0}, "seq": 3}, client=b"a")
    assert _call(handler, {"op": "write", "setpoints": {"heat": 20.0}, "seq": 3}, client=b"b")["ok"]
    assert tank.applied()["heat"] == 20.0


def test_forgotten_clients_beyond_max_clients_start_a_new_seq_space(tank: SimulatedPlant) -> None:
    handler = ProtocolHandler(tank, max_clients=2)
    for i, client in enumerate((b"a", b"b", b"c")):
        _call(handler, {"op": "write", "setpoints": {"heat": float(i)}, "seq": 10}, client=client)
    assert _call(handler, {"op": "write", "setpoints": {"heat": 50.0}, "seq": 1}, client=b"a")["ok"]  # forgotten
    assert _code(_call(handler, {"op": "write", "setpoints": {"heat": 60.0}, "seq": 1}, client=b"c")) == "stale"
    assert tank.applied()["heat"] == 50.0


def test_valid_until_in_the_past_is_stale_and_now_is_still_valid(handler: ProtocolHandler) -> None:
    _call(handler, {"op": "advance", "dt": 100.0})
    late = {"op": "write", "setpoints": {"heat": 5.0}, "seq": 1, "valid_until": 99.5}
    assert _code(_call(handler, late)) == "stale"
    assert _call(handler, {**late, "valid_until": 100.0})["ok"]


def test_advance_integrates_and_publishes_the_read_payload_as_meas(handler: ProtocolHandler) -> None:
    reply, telemetry = handler.handle(b"c", b'{"v":1,"id":1,"op":"advance","dt":12.5}')
    assert json.loads(reply)["time"] == 12.5
    [(topic, payload)] = telemetry
    read = _call(handler, {"op": "read"})
    assert topic == "meas"
    assert json.loads(payload) == {"v": 1, "time": read["time"], "values": read["values"]}


def test_advance_whose_readings_fail_is_answered_without_meas(
    handler: ProtocolHandler, tank: SimulatedPlant, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The meas is built after the reply (handle_deferred): a failure there must neither turn the served
    # advance into an error nor stop the server, which keeps serving.
    reply, later = handler.handle_deferred(b"c", b'{"v":1,"id":1,"op":"advance","dt":5.0}')
    assert json.loads(reply)["time"] == 5.0
    with monkeypatch.context() as patch:
        patch.setattr(tank, "read", lambda names=None: 1 / 0)
        assert later() == []
    assert _call(handler, {"op": "read"})["time"] == 5.0


def test_work_ahead_prepares_the_last_advance_after_a_write_only(
    handler: ProtocolHandler, tank: SimulatedPlant, monkeypatch: pytest.MonkeyPatch
) -> None:
    prepared: list[float] = []
    monkeypatch.setattr(tank, "prepare_advance", prepared.append)
    write = {"op": "write", "setpoints": {"heat": 5.0}}
    _call(handler, {**write, "seq": 1})
    handler.work_ahead()
    assert prepared == []  # no advance yet: no span to expect
    _call(handler, {"op": "advance", "dt": 7.5})
    _call(handler, {"op": "read"})
    handler.work_ahead()
    assert prepared == []  # not after a read
    _call(handler, {**write, "seq": 2})
    handler.work_ahead()
    handler.work_ahead()
    assert prepared == [7.5]  # once per write
    _call(handler, {"op": "advance", "dt": 7.5})
    assert _code(_call(handler, {**write, "seq": 1})) == "stale"
    handler.work_ahead()
    assert prepared == [7.5]  # not after a refused write


@pytest.mark.parametrize(("dt", "code"), [(-1.0, "out_of_range"), (math.inf, "not_finite"), (math.nan, "not_finite")])
def test_bad_advance_leaves_time_alone(handler: ProtocolHandler, tank: SimulatedPlant, dt: float, code: str) -> None:
    reply, telemetry = handler.handle(b"c", json.dumps({"v": 1, "id": 1, "op": "advance", "dt": dt}).encode())
    assert (json.loads(reply)["error"]["code"], telemetry, tank.time_s) == (code, [], 0.0)


def test_realtime_clock_refuses_advance_and_follows_advance_to(tank: SimulatedPlant) -> None:
    handler = ProtocolHandler(tank, clock="realtime")
    assert _code(_call(handler, {"op": "advance", "dt": 1.0})) == "unsupported"
    handler.advance_to(10.0)
    handler.advance_to(4.0)  # never backwards
    assert tank.time_s == 10.0
    assert _call(handler, {"op": "hello"})["clock"] == "realtime"


def test_failsafe_puts_actuators_safe_refuses_writes_until_armed(
    handler: ProtocolHandler, tank: SimulatedPlant
) -> None:
    _call(handler, {"op": "write", "setpoints": {"heat": 40.0, "feed": 1.0}, "seq": 1})
    [(topic, payload)] = handler.enter_failsafe("watchdog")
    assert (topic, json.loads(payload)) == ("event", {"v": 1, "time": 0.0, "state": "failsafe", "reason": "watchdog"})
    assert handler.enter_failsafe("again") == []  # no state change, no event
    assert tank.applied() == {"heat": 0.0, "feed": 0.0}
    hb = _call(handler, {"op": "heartbeat"})
    assert (hb["state"], hb["time"]) == ("failsafe", 0.0)
    assert _code(_call(handler, {"op": "write", "setpoints": {"heat": 40.0}, "seq": 2})) == "failsafe"
    # The idempotent retry of seq 1 gets its earlier reply (it did land, at t=0) and applies nothing.
    retry = _call(handler, {"op": "write", "setpoints": {"heat": 40.0, "feed": 1.0}, "seq": 1})
    assert (retry["ok"], retry["time"], retry["applied"]) == (True, 0.0, {"heat": 40.0, "feed": 1.0})
    assert tank.applied() == {"heat": 0.0, "feed": 0.0}
    assert [json.loads(p)["state"] for _, p in handler.arm("operator")] == ["armed"]
    assert _call(handler, {"op": "write", "setpoints": {"heat": 40.0}, "seq": 2})["applied"]["heat"] == 40.0


class _BrokenBackend:
    """A backend whose integration fails, whose readings include NaN, and whose read has a bug."""

    name = "broken"
    time_s = 0.0
    bug = False

    def devices(self) -> tuple[DeviceInfo, ...]:
        return (DeviceInfo("u", "actuator", "-", 0.0, 1.0, 0.0), DeviceInfo("y", "sensor", "-", None, None))

    def read(self, names: Iterable[str] | None = None) -> Mapping[str, Reading]:
        if self.bug:
            raise KeyError("bug")
        return {"u": Reading(0.0, 0.0, 0), "y": Reading(math.nan, 0.0, 0)}

    def apply(self, setpoints: Mapping[str, float]) -> Mapping[str, float]:
        return {"u": 0.0}

    def applied(self) -> Mapping[str, float]:
        return {"u": 0.0}

    def apply_safe(self) -> Mapping[str, float]:
        return {"u": 0.0}

    def advance(self, dt_s: float) -> float:
        raise SolverFailed("integrator diverged")


def test_backend_failures_are_internal_errors_and_the_handler_keeps_serving() -> None:
    backend = _BrokenBackend()
    handler = ProtocolHandler(backend)
    assert _call(handler, {"op": "read"})["values"]["y"]["value"] is None  # NaN reading -> null
    reply = _call(handler, {"op": "advance", "dt": 1.0})
    assert _code(reply) == "internal"
    assert "diverged" in reply["error"]["message"]
    backend.bug = True
    assert _code(_call(handler, {"op": "read"})) == "internal"
    assert _call(handler, {"op": "hello"})["ok"] is True
