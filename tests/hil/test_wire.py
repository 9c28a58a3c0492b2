"""Wire protocol v1 through real sockets, against ``bioimp plant serve`` running in its own process."""

from __future__ import annotations

import json
import random
import threading
from collections.abc import Iterator

import pytest
import zmq

from hil.client import TelemetrySubscriber, ZmqPlant
from hil.handler import ProtocolHandler
from hil.inprocess import InProcessPlant
from hil.launch import PlantProcess, spawn_plant_server
from hil.server import PlantServer
from plant_models.errors import ProtocolError
from plant_models.registry import resolve_model
from tests.hil.conftest import NO_WATCHDOG
from tests.hil.rawclient import RawClient
from twin.simulated_plant import SimulatedPlant

HELLO = b'{"v":1,"id":"h","op":"hello"}'


@pytest.fixture
def plant(fedbatch_server: PlantProcess) -> Iterator[ZmqPlant]:
    with ZmqPlant(fedbatch_server.command, timeout_s=5.0) as client:
        yield client


@pytest.fixture
def raw(fedbatch_server: PlantProcess) -> Iterator[RawClient]:
    client = RawClient(fedbatch_server.command)
    yield client
    client.close()


# ------------------------------------------------------------------------------------------------
# Framing


def test_req_client_with_empty_delimiter_is_answered(fedbatch_server: PlantProcess) -> None:
    req = RawClient(fedbatch_server.command, kind=zmq.REQ)
    try:
        [reply] = req.exchange([b'{"v":1,"id":17,"op":"hello"}'])  # REQ adds and strips the delimiter
    finally:
        req.close()
    obj = json.loads(reply)
    assert (obj["id"], obj["ok"], obj["plant"]) == (17, True, "fedbatch_haldane")


def test_dealer_is_answered_in_the_framing_it_used(raw: RawClient) -> None:
    bare = raw.exchange([HELLO])
    delimited = raw.exchange([b"", HELLO])
    assert len(bare) == 1 and json.loads(bare[0])["ok"] is True
    assert delimited[0] == b"" and len(delimited) == 2 and json.loads(delimited[1])["ok"] is True


@pytest.mark.parametrize(
    ("frames", "reply_prefix"),
    [
        ([b"a", b"b", b"c"], []),
        ([b'{"v":1,"id":1,"op":"hello"}', HELLO], []),
        ([b"", b"x", b"\xff", b"y"], [b""]),
    ],
)
def test_multi_frame_garbage_gets_bad_request(
    raw: RawClient, plant: ZmqPlant, frames: list[bytes], reply_prefix: list[bytes]
) -> None:
    before = plant.read()
    reply = raw.exchange(frames)
    assert reply[:-1] == reply_prefix
    obj = json.loads(reply[-1])
    assert (obj["ok"], obj["id"], obj["error"]["code"]) == (False, None, "bad_request")
    assert plant.read() == before
    assert json.loads(raw.exchange([HELLO])[0])["ok"] is True


def test_req_multipart_garbage_gets_bad_request(fedbatch_server: PlantProcess) -> None:
    req = RawClient(fedbatch_server.command, kind=zmq.REQ)
    try:
        [reply] = req.exchange([HELLO, b"extra"])
    finally:
        req.close()
    assert json.loads(reply)["error"]["code"] == "bad_request"


# ------------------------------------------------------------------------------------------------
# Bad input: exact code, nothing changed, server still answers

W = b'{"v":1,"id":9,"op":"write","seq":1,"setpoints":'
A = b'{"v":1,"id":9,"op":"advance","dt":'

BAD_INPUTS = [
    # (label, frame, code, echoed id)
    ("non-utf8", b"\xff\xfe\x00\x81garbage", "bad_request", None),
    ("random bytes", random.Random(0).randbytes(4096), "bad_request", None),
    ("empty", b"", "bad_request", None),
    ("not json", b"hello plant", "bad_request", None),
    ("json array", b"[1, 2, 3]", "bad_request", None),
    ("json string", b'"hello"', "bad_request", None),
    ("empty object", b"{}", "bad_request", None),
    ("no id", b'{"v":1,"op":"hello"}', "bad_request", None),
    ("object id", b'{"v":1,"id":{"a":1},"op":"hello"}', "bad_request", None),
    ("NaN id", b'{"v":1,"id":NaN,"op":"hello"}', "bad_request", None),
    ("deep nesting", b"[" * 100_000, "bad_request", None),
    ("deep objects", b'{"a":' * 50_000, "bad_request", None),
    ("truncated", b'{"v":1,"id":9,"op":"hel', "bad_request", None),
    ("no version", b'{"id":9,"op":"hello"}', "bad_request", 9),
    ("bool version", b'{"v":true,"id":9,"op":"hello"}', "bad_request", 9),
    ("string version", b'{"v":"1","id":9,"op":"hello"}', "bad_request", 9),
    ("version 2", b'{"v":2,"id":9,"op":"hello"}', "unsupported_version", 9),
    ("no op", b'{"v":1,"id":9}', "bad_request", 9),
    ("numeric op", b'{"v":1,"id":9,"op":7}', "bad_request", 9),
    ("unknown op", b'{"v":1,"id":9,"op":"self_destruct"}', "unknown_op", 9),
    ("1e400", W + b'{"inp":1e400}}', "not_finite", 9),
    ("NaN literal", W + b'{"inp":NaN}}', "not_finite", 9),
    ("Infinity literal", W + b'{"inp":Infinity}}', "not_finite", 9),
    ("-Infinity literal", W + b'{"inp":-Infinity}}', "not_finite", 9),
    ("400-digit int", W + b'{"inp":1' + b"0" * 400 + b"}}", "not_finite", 9),
    ("5000-digit int", W + b'{"inp":1' + b"0" * 5000 + b"}}", "bad_request", None),
    ("bool as number", W + b'{"inp":true}}', "bad_request", 9),
    ("string as number", W + b'{"inp":"0.1"}}', "bad_request", 9),
    ("null setpoint", W + b'{"inp":null}}', "bad_request", 9),
    ("setpoints list", W + b"[0.1]}", "bad_request", 9),
    ("duplicate key", W + b'{"inp":0.05,"inp":0.15}}', "bad_request", None),
    ("above max", W + b'{"inp":0.2000001}}', "out_of_range", 9),
    ("below min", W + b'{"inp":-0.01}}', "out_of_range", 9),
    ("unknown device", W + b'{"pump_9":0.1}}', "unknown_device", 9),
    ("good and unknown", W + b'{"inp":0.15,"pump_9":0.1}}', "unknown_device", 9),
    ("write to sensor", W + b'{"X_s":2.0}}', "unknown_device", 9),
    ("no setpoints", b'{"v":1,"id":9,"op":"write","seq":1}', "bad_request", 9),
    ("no seq", b'{"v":1,"id":9,"op":"write","setpoints":{"inp":0.1}}', "bad_request", 9),
    ("float seq", b'{"v":1,"id":9,"op":"write","seq":1.5,"setpoints":{"inp":0.1}}', "bad_request", 9),
    ("bool seq", b'{"v":1,"id":9,"op":"write","seq":true,"setpoints":{"inp":0.1}}', "bad_request", 9),
    ("valid_until past", W + b'{"inp":0.15},"valid_until":-1.0}', "stale", 9),
    ("valid_until NaN", W + b'{"inp":0.15},"valid_until":NaN}', "not_finite", 9),
    ("valid_until string", W + b'{"inp":0.15},"valid_until":"soon"}', "bad_request", 9),
    ("dt NaN", A + b"NaN}", "not_finite", 9),
    ("dt 1e400", A + b"1e400}", "not_finite", 9),
    ("dt negative", A + b"-1}", "out_of_range", 9),
    ("dt string", A + b'"60"}', "bad_request", 9),
    ("dt bool", A + b"true}", "bad_request", 9),
    ("no dt", b'{"v":1,"id":9,"op":"advance"}', "bad_request", 9),
    ("read unknown", b'{"v":1,"id":9,"op":"read","names":["nope"]}', "unknown_device", 9),
    ("read names string", b'{"v":1,"id":9,"op":"read","names":"inp"}', "bad_request", 9),
    ("read names numbers", b'{"v":1,"id":9,"op":"read","names":[1]}', "bad_request", 9),
]


@pytest.mark.parametrize(("frame", "code", "request_id"), [b[1:] for b in BAD_INPUTS], ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_is_refused_with_its_code_changes_nothing_and_the_server_keeps_serving(
    plant: ZmqPlant, raw: RawClient, frame: bytes, code: str, request_id: object
) -> None:
    plant.write({"inp": 0.1}, seq=1)  # a known applied value that a bad write must not touch
    before = plant.read()
    reply = raw.send_raw(frame)
    assert reply["v"] == 1 and reply["ok"] is False
    assert (reply["error"]["code"], reply["id"]) == (code, request_id)
    assert isinstance(reply["error"]["message"], str) and reply["error"]["message"]
    assert plant.read() == before  # same plant time, same sample, same applied value
    assert raw.send_raw(HELLO)["ok"] is True
    # The raw client's seq 1 was never used up by the refused write.
    assert raw.call({"id": 1, "op": "write", "seq": 1, "setpoints": {"inp": 0.1}})["applied"] == {"inp": 0.1}


# ------------------------------------------------------------------------------------------------
# Idempotency and routing ids


def test_same_seq_twice_gets_the_earlier_reply_and_is_applied_once(raw: RawClient, plant: ZmqPlant) -> None:
    first = raw.call({"id": "a", "op": "write", "seq": 7, "setpoints": {"inp": 0.05}})
    assert first["ok"] is True
    plant.advance(10.0)
    again = raw.call({"id": "b", "op": "write", "seq": 7, "setpoints": {"inp": 0.15}})
    assert again == {**first, "id": "b"}  # earlier time and applied values, this request's id
    assert plant.read(("inp",)).values["inp"].value == 0.05
    lower = raw.call({"id": "c", "op": "write", "seq": 6, "setpoints": {"inp": 0.15}})
    assert lower["error"]["code"] == "stale"
    assert plant.read(("inp",)).values["inp"].value == 0.05


def test_two_routing_ids_have_separate_seq_spaces(fedbatch_server: PlantProcess) -> None:
    with (
        ZmqPlant(fedbatch_server.command, identity=b"client-a") as a,
        ZmqPlant(fedbatch_server.command, identity=b"client-b") as b,
    ):
        assert a.write({"inp": 0.05}, seq=100).applied == {"inp": 0.05}
        assert b.write({"inp": 0.15}, seq=100).applied == {"inp": 0.15}  # b's seq 100 is new
        assert a.write({"inp": 0.10}, seq=100).applied == {"inp": 0.05}  # a's earlier reply, not applied
        assert a.read(("inp",)).values["inp"].value == 0.15


def test_reconnecting_with_the_same_routing_id_keeps_the_seq(fedbatch_server: PlantProcess) -> None:
    with ZmqPlant(fedbatch_server.command, identity=b"controller-7") as first:
        assert first.write({"inp": 0.05}, seq=40).applied == {"inp": 0.05}
    with ZmqPlant(fedbatch_server.command, identity=b"controller-7") as second:
        assert second.write({"inp": 0.15}, seq=40).applied == {"inp": 0.05}
        with pytest.raises(ProtocolError) as info:
            second.write({"inp": 0.15}, seq=39)
        assert info.value.code == "stale"
        assert second.read(("inp",)).values["inp"].value == 0.05
        assert second.write({"inp": 0.15}, seq=41).applied == {"inp": 0.15}
    with ZmqPlant(fedbatch_server.command, identity=b"controller-8") as other:
        assert other.write({"inp": 0.01}, seq=1).applied == {"inp": 0.01}


# ------------------------------------------------------------------------------------------------
# Time, staleness, telemetry


def test_valid_until_is_checked_against_plant_time(plant: ZmqPlant) -> None:
    now = plant.advance(30.0)
    with pytest.raises(ProtocolError) as info:
        plant.write({"inp": 0.12}, seq=1, valid_until_s=now - 1e-3)
    assert info.value.code == "stale"
    assert plant.write({"inp": 0.12}, seq=1, valid_until_s=now).applied == {"inp": 0.12}


def test_meas_is_published_after_every_advance(fedbatch_server: PlantProcess, plant: ZmqPlant) -> None:
    with TelemetrySubscriber(fedbatch_server.telemetry, topics=("meas",)) as sub:
        # PUB/SUB has no handshake: advance until the subscription has reached the server.
        for _ in range(200):
            plant.advance(0.5)
            if sub.receive(timeout_s=0.05) is not None:
                break
        else:
            pytest.fail("no meas message after 200 advances")
        while sub.receive(timeout_s=0.0) is not None:
            pass  # drain what is in flight; from here on every advance must publish exactly one meas
        for dt in (1.0, 2.0):
            t = plant.advance(dt)
            msg = sub.receive(timeout_s=5.0)
            assert msg is not None and msg.topic == "meas"
            assert msg.payload["v"] == 1
            assert msg.measurements().time_s == t
            assert msg.measurements() == plant.read()  # the read payload, exactly
        assert sub.receive(timeout_s=0.0) is None


def test_realtime_plant_refuses_advance(realtime_server: PlantProcess) -> None:
    with ZmqPlant(realtime_server.command) as rt:
        assert rt.hello().clock == "realtime"
        t0 = rt.read().time_s
        with pytest.raises(ProtocolError) as info:
            rt.advance(60.0)
        assert info.value.code == "unsupported"
        assert rt.read().time_s < t0 + 60.0


def test_realtime_plant_follows_the_wall_clock_and_samples(realtime_server: PlantProcess) -> None:
    with ZmqPlant(realtime_server.command) as rt, TelemetrySubscriber(realtime_server.telemetry) as sub:
        first = sub.receive(timeout_s=5.0)
        second = sub.receive(timeout_s=5.0)
        assert first is not None and second is not None
        t1, t2 = first.measurements().time_s, second.measurements().time_s
        # Sample period 0.05 s: consecutive samples are one period apart (generous bounds for slow CI).
        assert 0.02 < t2 - t1 < 1.0
        assert rt.read().time_s >= t2
        assert second.measurements().values["X_s"].t_s == t2


# ------------------------------------------------------------------------------------------------
# advance_and_read: advance and read with one wait


def test_advance_and_read_gives_exactly_what_advance_then_read_give() -> None:
    # Its own server (the shared one's time depends on the other tests), against the same plant driven
    # in process with the two separate calls.
    reference = InProcessPlant(ProtocolHandler(SimulatedPlant(resolve_model("fedbatch_haldane"))))
    with spawn_plant_server("fedbatch_haldane", extra_args=NO_WATCHDOG) as server, ZmqPlant(server.command) as plant:
        for seq, (feed, dt) in enumerate([(0.02, 600.0), (0.1, 3600.0), (0.0, 0.0), (0.05, 1800.0)], 1):
            assert plant.write({"inp": feed}, seq) == reference.write({"inp": feed}, seq)
            t_s, meas = plant.advance_and_read(dt)
            assert (t_s, meas) == (reference.advance(dt), reference.read())
            assert meas.time_s == t_s and meas == plant.read()  # the readings the advance left
        t_s, some = plant.advance_and_read(60.0, names=("X_s",))
        assert list(some.values) == ["X_s"] and some == reference.advance_and_read(60.0, ("X_s",))[1]


def test_advance_and_read_raises_a_refused_advance_and_drops_the_read(plant: ZmqPlant) -> None:
    before = plant.read().time_s
    with pytest.raises(ProtocolError) as info:
        plant.advance_and_read(-1.0)
    assert info.value.code == "out_of_range"
    # The read's reply arrived after the error: it is dropped as a late reply, not taken for the next one.
    assert plant.heartbeat()[0] == before
    assert plant.read().time_s == before
    with pytest.raises(ProtocolError) as info:
        plant.advance_and_read(10.0, names=("no_such_device",))
    assert info.value.code == "unknown_device"
    assert plant.read().time_s == before + 10.0  # the advance itself was served


# ------------------------------------------------------------------------------------------------
# Telemetry nobody subscribes to is not built


def test_meas_is_built_only_while_someone_subscribes_to_it() -> None:
    handler = ProtocolHandler(SimulatedPlant(resolve_model("fedbatch_haldane")))
    built: list[float] = []
    sample = handler.sample

    def counted_sample() -> tuple[str, bytes]:
        built.append(handler.backend.time_s)
        return sample()

    handler.sample = counted_sample  # type: ignore[method-assign]
    server = PlantServer(handler, "tcp://127.0.0.1:*", "tcp://127.0.0.1:*")
    thread = threading.Thread(target=server.run)
    thread.start()
    try:
        with ZmqPlant(server.command) as plant, TelemetrySubscriber(server.telemetry, topics=("event",)):
            for _ in range(20):
                plant.advance(1.0)
            plant.read()  # served after the last advance's telemetry: a barrier
            assert built == []  # only events are subscribed to
            with TelemetrySubscriber(server.telemetry, topics=("me",)) as sub:  # a prefix of "meas"
                for _ in range(200):
                    plant.advance(1.0)
                    if sub.receive(timeout_s=0.05) is not None:
                        break
                else:
                    pytest.fail("no meas message after 200 advances")
                while sub.receive(timeout_s=0.0) is not None:
                    pass  # drain what is in flight
                count = len(built)
                t_s = plant.advance(1.0)
                msg = sub.receive(timeout_s=5.0)
                while msg is not None and msg.measurements().time_s < t_s:
                    msg = sub.receive(timeout_s=5.0)  # one still in flight before this advance
                assert msg is not None and msg.measurements().time_s == t_s and len(built) == count + 1
            # The unsubscription reaches the server some time after the subscriber has gone.
            for _ in range(200):
                count = len(built)
                for _ in range(10):
                    plant.advance(1.0)
                plant.read()
                if len(built) == count:
                    break
            else:
                pytest.fail("meas still built 2000 advances after its subscriber left")
    finally:
        server.stop()
        thread.join(timeout=10.0)
        server.close()
    assert not thread.is_alive()
