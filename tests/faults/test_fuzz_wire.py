"""Hostile input over a real ZeroMQ socket: multi-frame garbage against ``bioimp plant serve``.

The server runs in its own process (``python -m hil.cli plant serve``, the two-actuator test plant,
``--log`` keeping every value the plant applied, a 0.5 s watchdog so that fail-safe and re-arming happen
in the middle of the garbage). Hypothesis draws messages of one to four frames, each frame anything the
in-process fuzzer draws (test_fuzz_handler.py) or an empty frame; each drawn message is followed by
seeded variants (frames mutated, added, dropped). They go out pipelined from DEALER sockets with fixed
routing ids (so seqs pile up across examples: repeated and decreasing seqs are common) and in lockstep
from a REQ socket. Every message must get exactly one reply, in the framing the request used, that
passes the protocol's own reply checks; at the end the server is alive and answers, and its plant log
shows that no value outside ``[min, max]`` was ever applied.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq
from hypothesis import given, settings
from hypothesis import strategies as st

from hil.client import ZmqPlant
from hil.launch import PlantProcess, spawn_plant_server
from hil.server import MAX_REQUEST_BYTES
from tests.hil.conftest import TWO_INPUT_MODEL, env_with_test_models

from .test_fuzz_handler import DEVICES, FUZZ, MESSAGE_BUDGET, check_reply_frame, messages, variant, within_limits

REPLY_TIMEOUT_MS = 10_000
EXAMPLES = 250
FRAMES_PER_EXAMPLE = 8  # drawn messages per example (at most)
PER_EXAMPLE = 64  # messages per example: the drawn ones, seeded variants of them, one over REQ


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[PlantProcess, Path]]:
    log = tmp_path_factory.mktemp("wire") / "plant.jsonl"
    args = ("--watchdog", "0.5", "--log", str(log))
    with spawn_plant_server(TWO_INPUT_MODEL, env=env_with_test_models(), extra_args=args) as plant:
        yield plant, log
        assert plant.process.poll() is None, "the plant server died"


def _socket(kind: int, endpoint: str, identity: bytes | None = None) -> zmq.Socket[bytes]:
    sock: zmq.Socket[bytes] = zmq.Context.instance().socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    if identity is not None:
        sock.setsockopt(zmq.ROUTING_ID, identity)
    sock.connect(endpoint)
    return sock


def _receive(sock: zmq.Socket[bytes], request: list[bytes]) -> list[bytes]:
    if not sock.poll(REPLY_TIMEOUT_MS, zmq.POLLIN):
        raise AssertionError(f"no reply within {REPLY_TIMEOUT_MS} ms to {request!r:.300}")
    return sock.recv_multipart()


def check_framed_reply(request: list[bytes], reply: list[bytes]) -> None:
    """The reply to a DEALER message: ``[reply]`` for ``[payload]``, ``["", reply]`` for ``["", payload]``
    and for anything else a ``bad_request`` in the form its first frame suggests (docs/protocol.md)."""
    delimited = len(request) > 1 and request[0] == b""  # a lone empty frame is an empty payload
    assert reply[:-1] == ([b""] if delimited else []), (request, reply)
    if len(request) == 1 or (len(request) == 2 and delimited):
        check_reply_frame(request[-1], reply[-1])
    else:
        body = check_reply_frame(b"", reply[-1])  # no request id is read from a malformed envelope
        assert body["error"]["code"] == "bad_request", body


def _reshape(message: list[bytes], rng: random.Random) -> list[bytes]:
    """A seeded variant of a multi-frame message: one frame mutated, a frame added or one dropped."""
    frames = list(message)
    how = rng.randrange(4)
    if how == 0 and len(frames) > 1:
        del frames[rng.randrange(len(frames))]
    elif how == 1 and len(frames) < 5:
        frames.insert(rng.randrange(len(frames) + 1), rng.choice([b"", b"{}", message[-1]]))
    else:
        i = rng.randrange(len(frames))
        frames[i] = variant(frames[i], rng)
    return frames


framed_messages = st.one_of(
    messages.map(lambda m: [m]),  # a DEALER's plain message
    messages.map(lambda m: [b"", m]),  # a REQ-style envelope
    st.lists(st.one_of(messages, st.just(b""), st.binary(max_size=8)), min_size=1, max_size=4),
)


def test_any_frames_over_zeromq_get_one_well_formed_reply_each(server: tuple[PlantProcess, Path]) -> None:
    plant, log = server
    dealers = [_socket(zmq.DEALER, plant.command, identity) for identity in (b"fuzz-a", b"fuzz-b", b"\x00\xff")]
    req = _socket(zmq.REQ, plant.command)
    sent = {"messages": 0, "drawn": 0}

    @settings(FUZZ, max_examples=EXAMPLES)
    @given(
        batch=st.lists(framed_messages, min_size=1, max_size=FRAMES_PER_EXAMPLE),
        lockstep=framed_messages,
        seed=st.integers(0, 2**32 - 1),
    )
    def run(batch: list[list[bytes]], lockstep: list[bytes], seed: int) -> None:
        rng = random.Random(seed)
        outgoing = [(rng.choice(dealers), message) for message in batch]
        while len(outgoing) < PER_EXAMPLE - 1:  # a fixed count per example (the last is the REQ's)
            dealer, message = outgoing[len(outgoing) % len(batch)]
            outgoing.append((dealer, _reshape(message, rng)))
        # Pipelined: everything out, then every reply back (per socket, in order), then the checks: a
        # failed check must not leave replies behind for the next example (hypothesis replays it).
        for dealer, frames in outgoing:
            dealer.send_multipart(frames)
        replies = [_receive(dealer, frames) for dealer, frames in outgoing]
        # A REQ socket adds the empty delimiter itself and gets the reply without it.
        req.send_multipart(lockstep)
        reply = _receive(req, lockstep)
        for (_, frames), framed_reply in zip(outgoing, replies, strict=True):
            check_framed_reply(frames, framed_reply)
        assert len(reply) == 1, reply
        if len(lockstep) == 1:
            check_reply_frame(lockstep[0], reply[0])
        else:
            assert check_reply_frame(b"", reply[0])["error"]["code"] == "bad_request"
        assert len(outgoing) + 1 == PER_EXAMPLE
        sent["messages"] += len(outgoing) + 1
        sent["drawn"] += len(batch) + 1

    try:
        run()
        # Nothing is left over: every message had exactly one reply.
        for sock in [*dealers, req]:
            assert not sock.poll(50, zmq.POLLIN)
    finally:
        for sock in [*dealers, req]:
            sock.close(linger=0)
    with ZmqPlant(plant.command, timeout_s=5.0) as client:
        assert client.hello().plant == "two_input"  # still serving
    applied = _applied_values(log)
    print(f"wire: {sent['drawn']} drawn + variants = {sent['messages']} messages; {len(applied)} applications logged")
    assert sent["messages"] >= MESSAGE_BUDGET["wire"], sent
    assert len(applied) >= 6  # the safe values at start, and writes that got through the garbage
    for values in applied:
        within_limits(DEVICES, values)


def _applied_values(log: Path) -> list[dict[str, float]]:
    """Every set of values the plant applied (``apply`` and ``apply_safe`` lines of its log)."""
    out = []
    for line in log.read_text().splitlines():
        entry = json.loads(line)
        if entry["op"] in ("apply", "apply_safe"):
            values = {k: float(v) for k, v in entry["values"].items()}
            assert all(math.isfinite(v) for v in values.values()), entry
            out.append(values)
    return out


def test_an_oversized_frame_is_dropped_unanswered_and_the_server_keeps_serving(
    server: tuple[PlantProcess, Path],
) -> None:
    """Found while fuzzing "huge JSON": a 180 MB request held the server (and its watchdog) for 20 s at
    2.7 GB of memory. Requests are now capped at MAX_REQUEST_BYTES: libzmq drops the sender's connection."""
    plant, _ = server
    big = _socket(zmq.DEALER, plant.command, b"big")
    other = _socket(zmq.DEALER, plant.command, b"other")
    try:
        just_fits = _encode_id("x" * (MAX_REQUEST_BYTES - 100))
        assert len(just_fits) <= MAX_REQUEST_BYTES
        big.send(just_fits)
        check_reply_frame(just_fits, _receive(big, [just_fits])[0])  # up to the cap: served as usual
        big.send(_encode_id("x" * (2 * MAX_REQUEST_BYTES)))
        started = time.monotonic()
        other.send(HELLO)
        check_reply_frame(HELLO, _receive(other, [HELLO])[0])
        assert time.monotonic() - started < 1.0  # nobody waited for the big one
        assert not big.poll(500, zmq.POLLIN)  # dropped, unanswered
        big.send(HELLO)  # the DEALER reconnects by itself; the next request is served
        check_reply_frame(HELLO, _receive(big, [HELLO])[0])
    finally:
        big.close(linger=0)
        other.close(linger=0)
    assert plant.process.poll() is None


HELLO = b'{"v":1,"id":"h","op":"hello"}'


def _encode_id(request_id: str) -> bytes:
    return json.dumps({"v": 1, "id": request_id, "op": "heartbeat"}).encode()
