"""ZmqPlant's transport behaviour against a scripted fake server: retries, late replies, timeouts."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import zmq

from hil.client import ZmqPlant
from plant_models.errors import PlantTimeout, ProtocolError

#: What the fake server does with the n-th request (0-based): a list of reply payloads (maybe none).
Script = Callable[[int, dict[str, Any]], list[bytes]]


def _reply(request: dict[str, Any], request_id: Any = None, **fields: Any) -> bytes:
    rid = request["id"] if request_id is None else request_id
    return json.dumps({"v": 1, "id": rid, "ok": True, **fields}).encode()


def _write_reply(request: dict[str, Any], request_id: Any = None, value: float | None = None) -> bytes:
    applied = request["setpoints"] if value is None else {k: value for k in request["setpoints"]}
    return _reply(request, request_id, time=0.0, applied=applied)


class FakeServer:
    """A ROUTER in a thread that records every request and answers as ``script`` says."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.received: list[list[bytes]] = []
        self._stop = threading.Event()
        self.socket: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.bind("tcp://127.0.0.1:*")
        self.endpoint: str = self.socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            if not self.socket.poll(20, zmq.POLLIN):
                continue
            frames = self.socket.recv_multipart()
            self.received.append(frames)
            for payload in self.script(len(self.received) - 1, json.loads(frames[-1])):
                self.socket.send_multipart([frames[0], payload])

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5.0)
        assert not self._thread.is_alive()
        self.socket.close(linger=0)


@pytest.fixture
def fake() -> Iterator[Callable[[Script], FakeServer]]:
    servers: list[FakeServer] = []

    def make(script: Script) -> FakeServer:
        servers.append(FakeServer(script))
        return servers[-1]

    yield make
    for server in servers:
        server.close()


def test_a_timed_out_request_is_resent_identically_and_the_retry_answered(
    fake: Callable[[Script], FakeServer],
) -> None:
    server = fake(lambda n, req: [] if n == 0 else [_write_reply(req)])
    with ZmqPlant(server.endpoint, timeout_s=0.2, retries=2, identity=b"ctl-1") as plant:
        assert plant.write({"inp": 0.1}, seq=5).applied == {"inp": 0.1}
    assert len(server.received) == 2
    assert server.received[0] == server.received[1]  # same routing id, same id, same seq: idempotent
    assert server.received[0][0] == b"ctl-1"
    sent = json.loads(server.received[0][-1])
    assert (sent["op"], sent["seq"], sent["setpoints"]) == ("write", 5, {"inp": 0.1})


def test_late_replies_to_other_requests_are_discarded(fake: Callable[[Script], FakeServer]) -> None:
    server = fake(lambda n, req: [_write_reply(req, "stale-id", 0.0), _write_reply(req)])
    with ZmqPlant(server.endpoint, timeout_s=2.0) as plant:
        assert plant.write({"inp": 0.1}, seq=1).applied == {"inp": 0.1}
    assert len(server.received) == 1


def test_no_reply_raises_plant_timeout_after_the_retries(fake: Callable[[Script], FakeServer]) -> None:
    server = fake(lambda n, req: [])
    with ZmqPlant(server.endpoint, timeout_s=0.1, retries=2) as plant:
        start = time.monotonic()
        with pytest.raises(PlantTimeout):
            plant.read()
        elapsed = time.monotonic() - start
    assert len(server.received) == 3
    assert 0.3 <= elapsed < 3.0


def test_advance_is_not_resent_because_it_is_not_idempotent(fake: Callable[[Script], FakeServer]) -> None:
    server = fake(lambda n, req: [])
    with ZmqPlant(server.endpoint, timeout_s=0.1, retries=3) as plant, pytest.raises(PlantTimeout):
        plant.advance(60.0)
    assert len(server.received) == 1


def test_no_server_at_all_times_out_instead_of_hanging() -> None:
    probe: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.ROUTER)
    probe.bind("tcp://127.0.0.1:*")
    endpoint = probe.getsockopt_string(zmq.LAST_ENDPOINT)
    probe.close(linger=0)  # now nothing listens there
    with ZmqPlant(endpoint, timeout_s=0.1, retries=1) as plant:
        start = time.monotonic()
        with pytest.raises(PlantTimeout):
            plant.hello()
        assert time.monotonic() - start < 3.0


def test_error_replies_raise_protocol_error_with_the_plant_code(fake: Callable[[Script], FakeServer]) -> None:
    def script(n: int, req: dict[str, Any]) -> list[bytes]:
        error = {"code": "out_of_range", "message": "inp=9 outside [0, 0.2]"}
        return [json.dumps({"v": 1, "id": req["id"], "ok": False, "error": error}).encode()]

    server = fake(script)
    with ZmqPlant(server.endpoint) as plant, pytest.raises(ProtocolError) as info:
        plant.write({"inp": 9.0}, seq=1)
    assert (info.value.code, info.value.message) == ("out_of_range", "inp=9 outside [0, 0.2]")


@pytest.mark.parametrize(
    "payload",
    [b"\xffnot json", b'{"v":1,"ok":true}', b"[1]"],
)
def test_malformed_replies_raise_bad_reply(fake: Callable[[Script], FakeServer], payload: bytes) -> None:
    server = fake(lambda n, req: [payload])
    with ZmqPlant(server.endpoint) as plant, pytest.raises(ProtocolError) as info:
        plant.hello()
    assert info.value.code == "bad_reply"


def test_non_finite_setpoints_are_refused_before_sending(fake: Callable[[Script], FakeServer]) -> None:
    server = fake(lambda n, req: [_write_reply(req)])
    with ZmqPlant(server.endpoint) as plant:
        with pytest.raises(ProtocolError) as info:
            plant.write({"inp": float("nan")}, seq=1)
        assert info.value.code == "not_finite"
        plant.write({"inp": 0.1}, seq=1)  # the next request goes through
    assert [json.loads(f[-1])["setpoints"] for f in server.received] == [{"inp": 0.1}]


@pytest.mark.parametrize("identity", [b"", b"\x00abc", b"x" * 256])
def test_invalid_routing_ids_are_refused(identity: bytes) -> None:
    with pytest.raises(ValueError, match="identity"):
        ZmqPlant("tcp://127.0.0.1:1", identity=identity)


def test_a_closed_client_refuses_requests() -> None:
    plant = ZmqPlant("tcp://127.0.0.1:1")
    plant.close()
    plant.close()  # idempotent
    with pytest.raises(ValueError, match="closed"):
        plant.hello()
