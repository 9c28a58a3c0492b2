"""The message layer: decoding requests, encoding replies, framing. Pure functions, no sockets."""

from __future__ import annotations

import json
import math

import pytest

from hil.protocol import (
    Advance,
    Heartbeat,
    Hello,
    Read,
    RequestError,
    Write,
    decode_request,
    device_to_wire,
    encode_error,
    encode_json,
    encode_reply,
    readings_to_wire,
    split_envelope,
)
from twin.interfaces import DeviceInfo, Reading


def _req(**fields: object) -> bytes:
    return json.dumps({"v": 1, "id": 3, **fields}).encode()


def test_decodes_every_op_into_its_typed_request() -> None:
    assert decode_request(_req(op="hello")) == Hello(3)
    assert decode_request(_req(op="heartbeat")) == Heartbeat(3)
    assert decode_request(_req(op="read")) == Read(3, None)
    assert decode_request(_req(op="read", names=["a", "b"])) == Read(3, ("a", "b"))
    assert decode_request(_req(op="advance", dt=60)) == Advance(3, 60.0)
    write = decode_request(_req(op="write", setpoints={"inp": 0.1}, seq=7, valid_until=12.5))
    assert write == Write(3, {"inp": 0.1}, 7, 12.5)
    assert decode_request(_req(op="write", setpoints={}, seq=1)) == Write(3, {}, 1, None)


@pytest.mark.parametrize("request_id", ["abc", 42, 1.5, True, None, -(10**30)])
def test_any_json_scalar_is_a_request_id(request_id: object) -> None:
    frame = json.dumps({"v": 1, "id": request_id, "op": "hello"}).encode()
    assert decode_request(frame) == Hello(request_id)  # type: ignore[arg-type]


def test_numbers_beyond_double_range_decode_to_infinity_for_the_handler_to_refuse() -> None:
    write = decode_request(b'{"v":1,"id":1,"op":"write","seq":1,"setpoints":{"a":1e400,"b":-' + b"9" * 400 + b"}}")
    assert isinstance(write, Write)
    assert write.setpoints == {"a": math.inf, "b": -math.inf}


@pytest.mark.parametrize(
    ("frame", "code", "request_id"),
    [
        (b"\xff\xfe", "bad_request", None),
        (b"", "bad_request", None),
        (b"[1]", "bad_request", None),
        (b'{"v":1,"op":"hello"}', "bad_request", None),
        (b'{"v":1,"id":{"x":1},"op":"hello"}', "bad_request", None),
        (b'{"v":1,"id":NaN,"op":"hello"}', "bad_request", None),
        (b'{"v":1,"id":1,"id":2,"op":"hello"}', "bad_request", None),
        (b'{"id":"q","op":"hello"}', "bad_request", "q"),
        (b'{"v":1.0,"id":"q","op":"hello"}', "bad_request", "q"),
        (b'{"v":3,"id":"q","op":"hello"}', "unsupported_version", "q"),
        (b'{"v":1,"id":"q","op":"HELLO"}', "unknown_op", "q"),
        (b'{"v":1,"id":"q","op":"write","setpoints":{"a":false},"seq":1}', "bad_request", "q"),
        (b'{"v":1,"id":"q","op":"write","setpoints":{"a":1},"seq":1.0}', "bad_request", "q"),
        (b'{"v":1,"id":"q","op":"write","setpoints":{"a":1},"seq":1,"valid_until":"x"}', "bad_request", "q"),
        (b'{"v":1,"id":"q","op":"advance","dt":null}', "bad_request", "q"),
        (b'{"v":1,"id":"q","op":"read","names":["a",2]}', "bad_request", "q"),
        (b"[" * 200_000, "bad_request", None),
    ],
)
def test_malformed_requests_name_their_code_and_keep_the_id_when_known(
    frame: bytes, code: str, request_id: object
) -> None:
    with pytest.raises(RequestError) as info:
        decode_request(frame)
    assert (info.value.code, info.value.request_id) == (code, request_id)


def test_error_messages_do_not_echo_huge_inputs() -> None:
    with pytest.raises(RequestError) as info:
        decode_request(_req(op="x" * 100_000))
    assert info.value.code == "unknown_op"
    assert len(info.value.message) < 200


def test_replies_are_compact_v1_json_and_refuse_nan() -> None:
    assert json.loads(encode_reply("a", {"time": 1.5})) == {"v": 1, "id": "a", "ok": True, "time": 1.5}
    assert json.loads(encode_error(None, "stale", "late")) == {
        "v": 1,
        "id": None,
        "ok": False,
        "error": {"code": "stale", "message": "late"},
    }
    with pytest.raises(ValueError):
        encode_json({"time": math.nan})


def test_unbounded_limits_and_non_finite_readings_are_json_null() -> None:
    dev = DeviceInfo("V", "sensor", "L", -math.inf, math.inf)
    assert device_to_wire(dev) == {"name": "V", "kind": "sensor", "unit": "L", "min": None, "max": None, "safe": None}
    body = readings_to_wire(2.0, {"V": Reading(math.nan, 1.0, 4)})
    assert body == {"time": 2.0, "values": {"V": {"value": None, "t": 1.0, "seq": 4, "quality": "good"}}}
    encode_json(body)  # valid JSON


@pytest.mark.parametrize(
    ("frames", "expected"),
    [
        ([b"p"], (False, b"p")),
        ([b"", b"p"], (True, b"p")),
        ([b"a", b"b"], (False, None)),
        ([b"", b"a", b"b"], (True, None)),
        ([], (False, None)),
    ],
)
def test_envelope_accepts_one_frame_with_or_without_the_empty_delimiter(
    frames: list[bytes], expected: tuple[bool, bytes | None]
) -> None:
    assert split_envelope(frames) == expected
