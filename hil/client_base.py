"""The client half of wire protocol v1, independent of the transport.

:class:`RequestPlant` implements the :class:`twin.interfaces.Plant` protocol by building request frames
and parsing reply frames; a subclass only says how one request frame is exchanged for one reply frame
(:class:`hil.client.ZmqPlant` over a DEALER socket, :class:`hil.inprocess.InProcessPlant` by calling the
handler directly). Both therefore behave identically.

Replies are validated: a malformed reply raises ``ProtocolError("bad_reply", ...)`` (a client-side code,
never sent on the wire).
"""

from __future__ import annotations

import json
import math
import secrets
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, Literal, cast

from hil.protocol import NOT_FINITE, PROTOCOL_VERSION, RequestId, encode_json
from plant_models.errors import ProtocolError
from twin.interfaces import DeviceInfo, Measurements, PlantInfo, PlantState, Quality, Reading, WriteResult

__all__ = [
    "BAD_REPLY",
    "RequestPlant",
    "check_reply",
    "measurements_from_wire",
    "plant_info_from_wire",
    "raise_if_error",
    "read_fields",
    "time_from_wire",
    "write_result_from_wire",
]

#: Client-side error code: the plant's reply does not follow protocol v1.
BAD_REPLY = "bad_reply"


def _bad(message: str) -> ProtocolError:
    return ProtocolError(BAD_REPLY, message)


def _number(obj: Mapping[str, Any], key: str) -> float:
    value = obj.get(key)
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise _bad(f"reply field {key!r} is not a number: {value!r}")
    return float(value)


def _optional_number(obj: Mapping[str, Any], key: str) -> float | None:
    return None if obj.get(key) is None else _number(obj, key)


def _object(obj: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = obj.get(key)
    if not isinstance(value, dict):
        raise _bad(f"reply field {key!r} is not an object")
    return value


def check_reply(frame: bytes) -> tuple[RequestId, Mapping[str, Any]]:
    """Decode a reply frame into (id, body).

    Returns:
        The echoed request id and the reply object (``ok`` true).

    Raises:
        ProtocolError: the plant's error (its code and message) or ``bad_reply``.
    """
    try:
        obj = json.loads(frame.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise _bad("reply is not UTF-8 JSON") from None
    if not isinstance(obj, dict) or obj.get("v") != PROTOCOL_VERSION or "id" not in obj:
        raise _bad("reply is not a protocol v1 object")
    return obj["id"], obj


def raise_if_error(body: Mapping[str, Any]) -> None:
    """Raise the plant's error if the reply says ``ok: false``.

    Raises:
        ProtocolError: with the plant's code and message, or ``bad_reply``.
    """
    ok = body.get("ok")
    if ok is True:
        return
    if ok is False:
        error = body.get("error")
        if isinstance(error, dict) and isinstance(error.get("code"), str):
            raise ProtocolError(error["code"], str(error.get("message", "")))
    raise _bad("reply has no valid 'ok'/'error'")


def plant_info_from_wire(body: Mapping[str, Any]) -> PlantInfo:
    """The ``hello`` reply as a :class:`PlantInfo`."""
    clock = body.get("clock")
    state = body.get("state")
    devices = body.get("devices")
    if clock not in ("virtual", "realtime") or state not in ("armed", "failsafe"):
        raise _bad("hello reply has an invalid 'clock' or 'state'")
    if not isinstance(devices, list) or not all(isinstance(d, dict) for d in devices):
        raise _bad("hello reply 'devices' is not a list of objects")
    infos = []
    for dev in devices:
        if dev.get("kind") not in ("actuator", "sensor") or not isinstance(dev.get("name"), str):
            raise _bad(f"hello reply has an invalid device: {dev!r}")
        infos.append(
            DeviceInfo(
                name=dev["name"],
                kind=dev["kind"],
                unit=str(dev.get("unit", "")),
                min=_optional_number(dev, "min"),
                max=_optional_number(dev, "max"),
                safe=_optional_number(dev, "safe"),
            )
        )
    protocol = body.get("protocol")
    if not isinstance(protocol, int) or isinstance(protocol, bool):
        raise _bad("hello reply 'protocol' is not an integer")
    return PlantInfo(
        protocol=protocol,
        plant=str(body.get("plant", "")),
        clock=cast(Literal["virtual", "realtime"], clock),
        time_s=_number(body, "time"),
        state=cast(PlantState, state),
        watchdog_s=_optional_number(body, "watchdog_s"),
        time_scale=_optional_number(body, "time_scale") or 1.0,
        devices=tuple(infos),
    )


_QUALITIES: frozenset[Quality] = frozenset(("good", "stale", "bad"))


def measurements_from_wire(body: Mapping[str, Any]) -> Measurements:
    """A ``read`` reply or ``meas`` telemetry payload as :class:`Measurements`."""
    values = {}
    # Every read of the loop comes through here: a float (what JSON numbers with a fraction decode to)
    # is taken as it is; anything else goes through the full checks of _number.
    for name, item in _object(body, "values").items():
        if not isinstance(item, dict):
            raise _bad(f"reading of {name!r} is not an object")
        seq = item.get("seq")
        if not isinstance(seq, int) or isinstance(seq, bool):
            raise _bad(f"reading of {name!r} has no integer 'seq'")
        quality = item.get("quality", "good")  # absent: a server older than the quality flag
        if quality not in _QUALITIES:
            raise _bad(f"reading of {name!r} has an invalid 'quality'")
        value, t_s = item.get("value"), item.get("t")
        if value is not None and type(value) is not float:
            value = _number(item, "value")
        if type(t_s) is not float:
            t_s = _number(item, "t")
        values[name] = Reading(value, t_s, seq, quality)
    return Measurements(_number(body, "time"), values)


def time_from_wire(body: Mapping[str, Any]) -> float:
    """The plant time (s) of a reply (an ``advance`` reply is nothing else)."""
    return _number(body, "time")


def read_fields(names: tuple[str, ...] | None) -> dict[str, Any]:
    """The fields of a ``read`` request of ``names`` (every device when None)."""
    return {} if names is None else {"names": list(names)}


def write_result_from_wire(body: Mapping[str, Any]) -> WriteResult:
    """A ``write`` reply as :class:`WriteResult`."""
    applied = {name: _number(_object(body, "applied"), name) for name in _object(body, "applied")}
    return WriteResult(_number(body, "time"), applied)


class RequestPlant(ABC):
    """A :class:`twin.interfaces.Plant` speaking protocol v1 through :meth:`_exchange`.

    Request ids are ``"<random token>:<counter>"``, so replies to another client instance (or to an
    earlier request of this one) are recognised and discarded by the transport.
    """

    def __init__(self) -> None:
        self._id_prefix = secrets.token_hex(4)
        self._counter = 0

    @abstractmethod
    def _exchange(self, request_id: str, frame: bytes, *, idempotent: bool) -> Mapping[str, Any]:
        """Send ``frame`` and return the reply whose id is ``request_id``, decoded by :func:`check_reply`.

        ``idempotent`` says whether the transport may resend the request on a timeout.

        Raises:
            ProtocolError: ``bad_reply`` (from :func:`check_reply`).
        """

    def _request(self, op: str, fields: Mapping[str, Any]) -> tuple[str, bytes]:
        """A fresh request id and the request frame."""
        self._counter += 1
        request_id = f"{self._id_prefix}:{self._counter}"
        try:
            frame = encode_json({"v": PROTOCOL_VERSION, "id": request_id, "op": op, **fields})
        except ValueError:
            # NaN/inf cannot be written as JSON; the plant would refuse them as not_finite anyway.
            raise ProtocolError(NOT_FINITE, f"{op}: a value is not a finite number") from None
        return request_id, frame

    def _call(self, op: str, fields: Mapping[str, Any], *, idempotent: bool = True) -> Mapping[str, Any]:
        request_id, frame = self._request(op, fields)
        body = self._exchange(request_id, frame, idempotent=idempotent)
        raise_if_error(body)
        return body

    def hello(self) -> PlantInfo:
        """Describe the plant and its devices."""
        return plant_info_from_wire(self._call("hello", {}))

    def read(self, names: tuple[str, ...] | None = None) -> Measurements:
        """Latest reading of every (or the named) device; actuators report their applied value."""
        return measurements_from_wire(self._call("read", read_fields(names)))

    def write(self, setpoints: Mapping[str, float], seq: int, valid_until_s: float | None = None) -> WriteResult:
        """Apply setpoints all or nothing; resending the same ``seq`` is safe (applied once).

        Raises:
            ProtocolError: refused (``out_of_range``, ``not_finite``, ``unknown_device``, ``stale``,
                ``failsafe``, ...); nothing was applied.
            PlantTimeout: no reply after the transport's retries.
        """
        fields: dict[str, Any] = {"setpoints": {k: float(v) for k, v in setpoints.items()}, "seq": seq}
        if valid_until_s is not None:
            fields["valid_until"] = float(valid_until_s)
        if not all(math.isfinite(v) for v in fields["setpoints"].values()):
            raise ProtocolError(NOT_FINITE, "a setpoint is not a finite number; nothing was sent")
        return write_result_from_wire(self._call("write", fields))

    def advance(self, dt_s: float) -> float:
        """Integrate a virtual-clock plant by ``dt_s`` seconds; return the new plant time.

        Not idempotent, so never resent: on a timeout, :meth:`read` tells whether it happened.
        """
        return time_from_wire(self._call("advance", {"dt": float(dt_s)}, idempotent=False))

    def advance_and_read(self, dt_s: float, names: tuple[str, ...] | None = None) -> tuple[float, Measurements]:
        """:meth:`advance`, then :meth:`read`: the new plant time and the readings right after it.

        Here two exchanges; a transport that can send both requests before it waits
        (:class:`hil.client.ZmqPlant`) waits for the plant once instead of twice. The plant serves them
        in order, so the readings are those the advance left, as with the two calls.

        Raises:
            ProtocolError: the advance was refused (no reading is returned), or the read was.
            PlantTimeout: no reply to the advance (never resent), or none to the read after retries.
        """
        return self.advance(dt_s), self.read(names)

    def heartbeat(self) -> tuple[float, PlantState]:
        """Tell the plant this client is alive (feeds its watchdog); return (plant time s, plant state)."""
        return self._state_call("heartbeat")

    def arm(self) -> tuple[float, PlantState]:
        """Leave fail-safe (an operator action); return (plant time s, plant state)."""
        return self._state_call("arm")

    def _state_call(self, op: str) -> tuple[float, PlantState]:
        body = self._call(op, {})
        state = body.get("state")
        if state not in ("armed", "failsafe"):
            raise _bad(f"{op} reply has an invalid 'state'")
        return _number(body, "time"), cast(PlantState, state)

    @abstractmethod
    def close(self) -> None:
        """Release the connection (idempotent)."""
