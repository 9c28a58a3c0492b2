"""Wire protocol v1 messages: decode requests, encode replies, errors and telemetry. No sockets here.

This is the message layer (pymodbus keeps the same split: messages / handler / transport). Every function
is pure: bytes in, validated values out, or a :class:`RequestError` naming the protocol error code.

Decoding checks *structure and types* only (is it a JSON object, is ``seq`` an integer, is a setpoint a
number). Whether a number is finite, inside a device's limits or names an existing device is decided by
the handler (:mod:`hil.handler`), which knows the devices. Numbers too large for a double (``1e400``,
a 400-digit integer) decode to ``±inf`` so that the handler reports them as ``not_finite``.

The full specification for integrators is docs/protocol.md.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, TypeAlias

from plant_models.errors import ProtocolError
from twin.interfaces import DeviceInfo, Reading

__all__ = [
    "BAD_REQUEST",
    "DEVICE_UNAVAILABLE",
    "ERROR_CODES",
    "FAILSAFE",
    "INTERNAL",
    "NOT_FINITE",
    "OPS",
    "OUT_OF_RANGE",
    "PROTOCOL_VERSION",
    "READBACK_MISMATCH",
    "STALE",
    "TOPIC_EVENT",
    "TOPIC_MEAS",
    "UNKNOWN_DEVICE",
    "UNKNOWN_OP",
    "UNSUPPORTED",
    "UNSUPPORTED_VERSION",
    "Advance",
    "Arm",
    "Heartbeat",
    "Hello",
    "Read",
    "Request",
    "RequestError",
    "RequestId",
    "Write",
    "decode_request",
    "device_to_wire",
    "encode_error",
    "encode_json",
    "encode_reply",
    "readings_to_wire",
    "split_envelope",
]

PROTOCOL_VERSION: Final = 1

# Error codes (docs/protocol.md says when each occurs).
BAD_REQUEST: Final = "bad_request"
UNSUPPORTED_VERSION: Final = "unsupported_version"
UNKNOWN_OP: Final = "unknown_op"
UNKNOWN_DEVICE: Final = "unknown_device"
OUT_OF_RANGE: Final = "out_of_range"
NOT_FINITE: Final = "not_finite"
STALE: Final = "stale"
FAILSAFE: Final = "failsafe"
UNSUPPORTED: Final = "unsupported"
#: Not in the v1 issue's list: the backend itself failed (e.g. the plant integrator diverged). The server
#: reports it instead of crashing; nothing was changed.
INTERNAL: Final = "internal"
#: A hardware gateway wrote an actuator but its readback did not confirm the value in time.
READBACK_MISMATCH: Final = "readback_mismatch"
#: A hardware gateway cannot reach the device's driver (connection down, reconnecting).
DEVICE_UNAVAILABLE: Final = "device_unavailable"
ERROR_CODES: Final = frozenset(
    {
        READBACK_MISMATCH,
        DEVICE_UNAVAILABLE,
        BAD_REQUEST,
        UNSUPPORTED_VERSION,
        UNKNOWN_OP,
        UNKNOWN_DEVICE,
        OUT_OF_RANGE,
        NOT_FINITE,
        STALE,
        FAILSAFE,
        UNSUPPORTED,
        INTERNAL,
    }
)

TOPIC_MEAS: Final = "meas"
TOPIC_EVENT: Final = "event"

OPS: Final = ("hello", "read", "write", "advance", "heartbeat", "arm")

#: A request id: any JSON scalar, echoed in the reply.
RequestId: TypeAlias = str | int | float | bool | None


class RequestError(ProtocolError):
    """A request that cannot be served, with the request id to echo (``None`` when unknown)."""

    def __init__(self, code: str, message: str, request_id: RequestId = None) -> None:
        """Args: code: protocol error code; message: what is wrong; request_id: the id to echo."""
        super().__init__(code, message)
        self.request_id = request_id


@dataclass(frozen=True)
class Hello:
    """``hello``: describe the plant."""

    id: RequestId


@dataclass(frozen=True)
class Read:
    """``read``: latest readings of the named devices (all when ``names`` is None)."""

    id: RequestId
    names: tuple[str, ...] | None


@dataclass(frozen=True)
class Write:
    """``write``: apply setpoints all or nothing, at most once per (client, seq)."""

    id: RequestId
    setpoints: Mapping[str, float]
    seq: int
    valid_until_s: float | None


@dataclass(frozen=True)
class Advance:
    """``advance``: integrate a virtual-clock plant by ``dt_s`` seconds."""

    id: RequestId
    dt_s: float


@dataclass(frozen=True)
class Heartbeat:
    """``heartbeat``: I am alive; tell me the time and the plant state."""

    id: RequestId


@dataclass(frozen=True)
class Arm:
    """``arm``: leave fail-safe and accept writes again (an explicit operator action)."""

    id: RequestId


Request: TypeAlias = Hello | Read | Write | Advance | Heartbeat | Arm


# --------------------------------------------------------------------------------------------------
# Framing


def split_envelope(frames: list[bytes]) -> tuple[bool, bytes | None]:
    """Split the frames after the routing id into (had empty delimiter, payload).

    A REQ client sends ``["", payload]``, a DEALER client may send ``[payload]``. Anything else is not a
    v1 message: the payload is then ``None`` (reply ``bad_request``), and the delimiter flag says in
    which form to reply.
    """
    if len(frames) == 1:
        return False, frames[0]
    if len(frames) == 2 and frames[0] == b"":
        return True, frames[1]
    return bool(frames) and frames[0] == b"", None


# --------------------------------------------------------------------------------------------------
# Decoding requests


class _DuplicateKey(ValueError):
    pass


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # A JSON object with a repeated key is ambiguous (which setpoint wins?); refuse it.
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise _DuplicateKey(f"duplicate key {_short(key)}")
        obj[key] = value
    return obj


#: One decoder for every request (``json.loads`` with a hook builds a new one per call).
_DECODER = json.JSONDecoder(object_pairs_hook=_no_duplicate_keys)


def _short(value: object, limit: int = 60) -> str:
    """repr() cut to ``limit`` characters, so an error message never echoes a huge input."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_number(value: object) -> bool:
    # bool is an int subclass in Python, but true/false are not numbers on the wire.
    return isinstance(value, int | float) and not isinstance(value, bool)


def _to_float(value: int | float) -> float:
    """Float of a JSON number; integers beyond the double range become ±inf (reported as not_finite)."""
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


def _is_scalar_id(value: object) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    return value is None or isinstance(value, str | int | bool)


def _number_field(obj: Mapping[str, Any], key: str, request_id: RequestId) -> float:
    value = obj[key]
    if not _is_number(value):
        raise RequestError(BAD_REQUEST, f"{key!r} must be a number, got {_short(value)}", request_id)
    return _to_float(value)


def decode_request(frame: bytes) -> Request:
    """Decode and type-check one request frame.

    Args:
        frame: the message payload (UTF-8 JSON object).

    Returns:
        The typed request.

    Raises:
        RequestError: ``bad_request`` (not UTF-8, not JSON, not an object, duplicate key, missing or
            mistyped field), ``unsupported_version`` or ``unknown_op``; ``request_id`` is the id when it
            could be read.
    """
    try:
        text = frame.decode("utf-8")
    except UnicodeDecodeError:
        raise RequestError(BAD_REQUEST, "frame is not UTF-8") from None
    try:
        if text.startswith("\ufeff"):  # as json.loads: a BOM is not JSON
            raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", text, 0)
        obj = _DECODER.decode(text)
    except _DuplicateKey as exc:
        raise RequestError(BAD_REQUEST, f"invalid JSON object: {exc}") from None
    except (ValueError, RecursionError) as exc:
        raise RequestError(BAD_REQUEST, f"frame is not JSON: {_short(str(exc), 120)}") from None
    if not isinstance(obj, dict):
        raise RequestError(BAD_REQUEST, f"a request is a JSON object, got {type(obj).__name__}")
    if "id" not in obj:
        raise RequestError(BAD_REQUEST, "missing field 'id'")
    request_id = obj["id"]
    if not _is_scalar_id(request_id):
        raise RequestError(BAD_REQUEST, "'id' must be a JSON scalar (string, number, boolean or null)")
    version = obj.get("v")
    if not isinstance(version, int) or isinstance(version, bool):
        raise RequestError(BAD_REQUEST, "field 'v' must be the integer protocol version", request_id)
    if version != PROTOCOL_VERSION:
        raise RequestError(UNSUPPORTED_VERSION, f"protocol version {_short(version)} (this plant speaks 1)", request_id)
    op = obj.get("op")
    if not isinstance(op, str):
        raise RequestError(BAD_REQUEST, "field 'op' must be a string", request_id)
    if op == "hello":
        return Hello(request_id)
    if op == "heartbeat":
        return Heartbeat(request_id)
    if op == "arm":
        return Arm(request_id)
    if op == "read":
        return _decode_read(obj, request_id)
    if op == "write":
        return _decode_write(obj, request_id)
    if op == "advance":
        if "dt" not in obj:
            raise RequestError(BAD_REQUEST, "advance needs 'dt' (seconds)", request_id)
        return Advance(request_id, _number_field(obj, "dt", request_id))
    raise RequestError(UNKNOWN_OP, f"unknown op {_short(op)} (known: {', '.join(OPS)})", request_id)


def _decode_read(obj: Mapping[str, Any], request_id: RequestId) -> Read:
    names = obj.get("names")
    if names is None:
        return Read(request_id, None)
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise RequestError(BAD_REQUEST, "'names' must be a list of device names", request_id)
    return Read(request_id, tuple(names))


def _decode_write(obj: Mapping[str, Any], request_id: RequestId) -> Write:
    setpoints = obj.get("setpoints")
    if not isinstance(setpoints, dict):
        raise RequestError(BAD_REQUEST, "'setpoints' must be an object {device: number}", request_id)
    for name, value in setpoints.items():
        if not _is_number(value):
            raise RequestError(
                BAD_REQUEST, f"setpoint {_short(name)} must be a number, got {_short(value)}", request_id
            )
    seq = obj.get("seq")
    if not isinstance(seq, int) or isinstance(seq, bool):
        raise RequestError(BAD_REQUEST, "'seq' must be an integer", request_id)
    valid_until = obj.get("valid_until")
    if valid_until is not None:
        valid_until = _number_field(obj, "valid_until", request_id)
    return Write(
        request_id,
        {name: _to_float(value) for name, value in setpoints.items()},
        seq,
        valid_until,
    )


# --------------------------------------------------------------------------------------------------
# Encoding replies and telemetry


def encode_json(obj: Mapping[str, Any]) -> bytes:
    """Compact UTF-8 JSON; refuses NaN/Infinity (they are not JSON).

    Raises:
        ValueError: a float in ``obj`` is not finite.
    """
    return json.dumps(obj, allow_nan=False, separators=(",", ":")).encode("utf-8")


def encode_reply(request_id: RequestId, fields: Mapping[str, Any]) -> bytes:
    """``{"v":1,"id":...,"ok":true, **fields}``."""
    return encode_json({"v": PROTOCOL_VERSION, "id": request_id, "ok": True, **fields})


def encode_error(request_id: RequestId, code: str, message: str) -> bytes:
    """``{"v":1,"id":...,"ok":false,"error":{"code":...,"message":...}}``."""
    error = {"code": code, "message": message}
    return encode_json({"v": PROTOCOL_VERSION, "id": request_id, "ok": False, "error": error})


def _finite_or_none(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def device_to_wire(device: DeviceInfo) -> dict[str, Any]:
    """A device as in the ``hello`` reply; unbounded limits (and a non-finite safe value) are null."""
    return {
        "name": device.name,
        "kind": device.kind,
        "unit": device.unit,
        "min": _finite_or_none(device.min),
        "max": _finite_or_none(device.max),
        "safe": _finite_or_none(device.safe),
    }


def readings_to_wire(time_s: float, readings: Mapping[str, Reading]) -> dict[str, Any]:
    """The body of a ``read`` reply and of a ``meas`` telemetry message; non-finite values are null."""
    return {
        "time": time_s,
        "values": {
            name: {"value": _finite_or_none(r.value), "t": r.t_s, "seq": r.seq, "quality": r.quality}
            for name, r in readings.items()
        },
    }
