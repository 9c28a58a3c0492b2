"""A :class:`twin.interfaces.Plant` over ZeroMQ (wire protocol v1), and a telemetry subscriber.

:class:`ZmqPlant` talks to a plant server's command socket (ROUTER) through a DEALER socket:

* an explicit routing id (random unless given): the server keeps sequence numbers per routing id, so a
  client that reconnects with the same ``identity`` is the same client and its seq space survives;
* ``ZMQ_IMMEDIATE`` (requests are not queued for a connection that is not up yet) and linger 0;
* every send and receive bounded by ``timeout_s``. On a timeout the *same* request (same id, same seq) is
  resent up to ``retries`` times - safe because writes are idempotent per seq - then
  :class:`~plant_models.errors.PlantTimeout` is raised. ``advance`` is not idempotent and is never resent.
* a reply whose id is not the one awaited (a late reply to an earlier request) is discarded.

Like every ZeroMQ socket, a ZmqPlant belongs to one thread at a time.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import zmq

from hil.client_base import (
    BAD_REPLY,
    RequestPlant,
    check_reply,
    measurements_from_wire,
    raise_if_error,
    read_fields,
    time_from_wire,
)
from hil.protocol import TOPIC_EVENT, TOPIC_MEAS
from hil.security import ClientKeys, apply_client_keys
from plant_models.errors import PlantTimeout, ProtocolError
from twin.interfaces import Measurements

__all__ = ["TelemetryMessage", "TelemetrySubscriber", "ZmqPlant"]


class _SocketOwner:
    """Owns one ZeroMQ socket: ``close()`` (linger 0, idempotent) and use as a context manager."""

    _socket: zmq.Socket[bytes]
    _closed: bool

    def close(self) -> None:
        """Close the socket (linger 0). Idempotent."""
        if not self._closed:
            self._closed = True
            self._socket.close(linger=0)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class ZmqPlant(_SocketOwner, RequestPlant):
    """A plant server reached over ZeroMQ, as a :class:`twin.interfaces.Plant`.

    Example::

        with ZmqPlant("tcp://127.0.0.1:5555") as plant:
            info = plant.hello()
            plant.write({"inp": 0.05}, seq=1)
            t_s = plant.advance(60.0)
    """

    def __init__(
        self,
        command_endpoint: str,
        *,
        timeout_s: float = 2.0,
        retries: int = 3,
        identity: bytes | None = None,
        keys: ClientKeys | None = None,
        context: zmq.Context[zmq.Socket[bytes]] | None = None,
    ) -> None:
        """Connect (lazily, as ZeroMQ does) to ``command_endpoint``.

        Args:
            command_endpoint: the server's command endpoint, e.g. ``tcp://127.0.0.1:5555``.
            timeout_s: how long to wait for each attempt's reply (and to be able to send).
            retries: resends of an idempotent request after a timeout before giving up.
            identity: the ZeroMQ routing id (1-255 bytes, not starting with a zero byte); random when
                None. Reuse it to reconnect as the same client.
            keys: CURVE keys for a server that has them; None connects in the clear.
            context: ZeroMQ context; the process-wide one when None.

        Raises:
            ValueError: a non-positive timeout, negative retries, or an invalid identity.
        """
        super().__init__()
        if not timeout_s > 0 or retries < 0:
            raise ValueError("timeout_s must be > 0 and retries >= 0")
        if identity is not None and not (1 <= len(identity) <= 255 and identity[0] != 0):
            raise ValueError("identity must be 1-255 bytes and must not start with a zero byte")
        self.command_endpoint = command_endpoint
        self.identity = identity if identity is not None else b"bioimp-" + secrets.token_hex(8).encode()
        self.timeout_s = timeout_s
        self.retries = retries
        ctx = context if context is not None else zmq.Context.instance()
        self._socket: zmq.Socket[bytes] = ctx.socket(zmq.DEALER)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.setsockopt(zmq.IMMEDIATE, 1)
        self._socket.setsockopt(zmq.ROUTING_ID, self.identity)
        apply_client_keys(self._socket, keys)
        # With IMMEDIATE and no connection yet, send blocks; bound it like every receive.
        self._socket.setsockopt(zmq.SNDTIMEO, max(1, round(timeout_s * 1000)))
        self._socket.connect(command_endpoint)
        self._poller = zmq.Poller()
        self._poller.register(self._socket, zmq.POLLIN)
        self._closed = False
        #: Monotonic time of the last request this client sent: the loop's sign of life (HeartbeatSender).
        self.last_request_s = time.monotonic()

    def _exchange(self, request_id: str, frame: bytes, *, idempotent: bool) -> Mapping[str, Any]:
        if self._closed:
            raise ValueError("I/O on a closed ZmqPlant")
        attempts = 1 + (self.retries if idempotent else 0)
        self.last_request_s = time.monotonic()
        for _ in range(attempts):
            if not self._send(frame):
                continue  # not connected within timeout_s: counts as a timed-out attempt
            reply = self._receive(request_id)
            if reply is not None:
                return reply
        raise self._timeout(attempts)

    def advance_and_read(self, dt_s: float, names: tuple[str, ...] | None = None) -> tuple[float, Measurements]:
        """:meth:`advance`, then :meth:`read`, waiting for the plant once: both requests are sent first.

        The plant serves them in order, so the readings are those the advance left. The advance is
        sent once (it is not idempotent); if the read's reply is lost it is asked again as
        :meth:`read` would. When the advance is refused, its error is raised and the read's reply,
        arriving later, is dropped as a late reply.

        Raises:
            ProtocolError: the advance was refused (no reading is returned), or the read was.
            PlantTimeout: no reply to the advance, or none to the read after retries.
        """
        if self._closed:
            raise ValueError("I/O on a closed ZmqPlant")
        advance_id, advance_frame = self._request("advance", {"dt": float(dt_s)})
        read_id, read_frame = self._request("read", read_fields(names))
        self.last_request_s = time.monotonic()
        advanced: Mapping[str, Any] | None = None
        read_sent = False
        if self._send(advance_frame):
            read_sent = self._send(read_frame)
            advanced = self._receive(advance_id)
        if advanced is None:
            raise self._timeout(1)
        raise_if_error(advanced)
        time_s = time_from_wire(advanced)
        reading = self._receive(read_id) if read_sent else None
        if reading is None:
            reading = self._exchange(read_id, read_frame, idempotent=True)
        raise_if_error(reading)
        return time_s, measurements_from_wire(reading)

    def _send(self, frame: bytes) -> bool:
        """Send one request; False when it cannot be sent within ``timeout_s`` (not connected)."""
        try:
            self._socket.send(frame)
        except zmq.Again:
            return False
        return True

    def _timeout(self, attempts: int) -> PlantTimeout:
        return PlantTimeout(f"no reply from {self.command_endpoint} after {attempts} attempt(s) of {self.timeout_s} s")

    def _receive(self, request_id: str) -> Mapping[str, Any] | None:
        """The reply with id ``request_id`` (decoded), or None when ``timeout_s`` passes first."""
        deadline = time.monotonic() + self.timeout_s
        while (remaining := deadline - time.monotonic()) > 0:
            if not self._poller.poll(max(1, round(remaining * 1000))):
                return None
            frames = self._socket.recv_multipart(zmq.NOBLOCK)
            # A server replying with an empty delimiter is tolerated; a malformed reply raises bad_reply.
            reply_id, body = check_reply(frames[-1])
            if reply_id == request_id:
                return body
            # A late reply to a request we already gave up on (or retried): drop it.
        return None



@dataclass(frozen=True)
class TelemetryMessage:
    """One telemetry message: its topic (``meas`` or ``event``) and decoded JSON payload."""

    topic: str
    payload: Mapping[str, Any]

    def measurements(self) -> Measurements:
        """The payload of a ``meas`` message as :class:`Measurements`.

        Raises:
            ProtocolError: not a ``meas`` message, or a malformed one (``bad_reply``).
        """
        if self.topic != TOPIC_MEAS:
            raise ProtocolError(BAD_REPLY, f"a {self.topic!r} message holds no measurements")
        return measurements_from_wire(self.payload)


class TelemetrySubscriber(_SocketOwner):
    """Subscribes to a plant server's telemetry (PUB) socket.

    Like every PUB/SUB subscription, messages published before the subscription reaches the server are
    not received ("slow joiner").
    """

    def __init__(
        self,
        telemetry_endpoint: str,
        *,
        topics: tuple[str, ...] = (TOPIC_MEAS, TOPIC_EVENT),
        keys: ClientKeys | None = None,
        context: zmq.Context[zmq.Socket[bytes]] | None = None,
    ) -> None:
        """Connect to ``telemetry_endpoint`` (with CURVE ``keys`` if given) and subscribe to ``topics``."""
        ctx = context if context is not None else zmq.Context.instance()
        self.telemetry_endpoint = telemetry_endpoint
        self._socket: zmq.Socket[bytes] = ctx.socket(zmq.SUB)
        self._socket.setsockopt(zmq.LINGER, 0)
        apply_client_keys(self._socket, keys)
        for topic in topics:
            self._socket.setsockopt(zmq.SUBSCRIBE, topic.encode())
        self._socket.connect(telemetry_endpoint)
        self._closed = False

    def receive(self, timeout_s: float) -> TelemetryMessage | None:
        """The next message, or None if none arrives within ``timeout_s`` seconds.

        Raises:
            ProtocolError: ``bad_reply`` when the message is not ``[topic, JSON object]``.
        """
        if not self._socket.poll(max(0, round(timeout_s * 1000)), zmq.POLLIN):
            return None
        frames = self._socket.recv_multipart(zmq.NOBLOCK)
        if len(frames) != 2:
            raise ProtocolError(BAD_REPLY, f"telemetry message has {len(frames)} frames, expected 2")
        try:
            topic = frames[0].decode("utf-8")
            payload = json.loads(frames[1].decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise ProtocolError(BAD_REPLY, "telemetry payload is not UTF-8 JSON") from None
        if not isinstance(payload, dict):
            raise ProtocolError(BAD_REPLY, "telemetry payload is not a JSON object")
        return TelemetryMessage(topic, payload)

