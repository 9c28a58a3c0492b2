"""The protocol handler: wire protocol v1 semantics on top of any :class:`~hil.backend.PlantBackend`.

It turns one request frame from one client into one reply frame plus the telemetry to publish. It owns
everything that must be the same for a simulated plant and a hardware gateway:

* validation against the devices: unknown device, non-finite value, outside ``[min, max]`` (inclusive);
  a write to a *sensor* is refused as ``unknown_device`` (there is no actuator of that name);
* all-or-nothing writes: every setpoint is checked before any is applied;
* idempotent sequence numbers per client (clients are told apart by their ZeroMQ routing id);
* ``valid_until`` → ``stale``;
* the plant state (``armed`` / ``failsafe``) and ``watchdog_s``.

Order of the checks on ``write``: a repeated seq gets the earlier reply (even in fail-safe: it applies
nothing), then fail-safe, then a lower seq is ``stale``, then ``valid_until``, then device names,
finiteness, limits. A failed write does not use up
its seq: the client may send the same seq again, corrected.

The watchdog lives here too, so the simulated plant and the hardware gateway share it: the handler
starts with every actuator at its safe value; the first valid ``write``, ``heartbeat`` or ``arm`` starts
the watchdog, each later one feeds it, and :meth:`ProtocolHandler.check_watchdog` (called by the server
on its monotonic wall clock) puts the plant in fail-safe once it has gone ``watchdog_s`` unfed. Only an
``arm`` request leaves fail-safe. Read-only clients (``hello``, ``read``) never feed it: a dashboard that
is still watching must not keep a plant armed whose controller died.

It has no sockets; :mod:`hil.server` moves its bytes, :class:`hil.inprocess.InProcessPlant` calls it
directly.
"""

from __future__ import annotations

import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from hil.backend import PlantBackend
from hil.protocol import (
    ERROR_CODES,
    FAILSAFE,
    INTERNAL,
    NOT_FINITE,
    OUT_OF_RANGE,
    PROTOCOL_VERSION,
    STALE,
    TOPIC_EVENT,
    TOPIC_MEAS,
    UNKNOWN_DEVICE,
    UNSUPPORTED,
    Advance,
    Arm,
    Heartbeat,
    Hello,
    Read,
    Request,
    RequestError,
    Write,
    decode_request,
    device_to_wire,
    encode_error,
    encode_json,
    encode_reply,
    readings_to_wire,
)
from plant_models.errors import BioimpError, ProtocolError
from twin.interfaces import DeviceInfo, PlantState

__all__ = [
    "INSECURE_WARNING",
    "MAX_ADVANCE_S",
    "ClockKind",
    "LaterTelemetry",
    "ProtocolHandler",
    "Security",
    "Telemetry",
]

log = logging.getLogger("bioimp.hil")

ClockKind = Literal["virtual", "realtime"]
#: How the transport is protected: CurveZMQ, no keys on a local-only endpoint, or no keys by override.
Security = Literal["curve", "none", "insecure"]
INSECURE_WARNING = "no authentication or encryption on a network endpoint (--insecure)"
#: A telemetry message to publish: (topic, payload).
Telemetry = tuple[str, bytes]
#: The telemetry of a request, built when called (see :meth:`ProtocolHandler.handle_deferred`).
LaterTelemetry = Callable[[], list[Telemetry]]
#: The longest span one ``advance`` may move a virtual clock (a year; a 14-day batch is 1.2e6 s). The span
#: is integrated in one go and, with assays configured, sampled at every assay instant in it, all in the
#: server's one thread: ``dt`` = 1e15 s held the plant server (and its watchdog) for hours, 1e308 s made
#: the integrator fail. Found by tests/faults/test_fuzz_handler.py.
MAX_ADVANCE_S = 366 * 86_400.0


@dataclass(frozen=True)
class _ClientSeq:
    """The last write a client had applied: its seq and the reply body (time, applied) it got."""

    seq: int
    result: Mapping[str, Any]


class ProtocolHandler:
    """Serves wire protocol v1 requests against a backend.

    Attributes:
        backend: the device-level plant.
        clock: ``"virtual"`` (time moves only on ``advance``) or ``"realtime"`` (the server moves it with
            the wall clock via :meth:`advance_to`; the ``advance`` op is ``unsupported``).
        watchdog_s: seconds without a feeding request before fail-safe; ``None``: no watchdog.
    """

    def __init__(
        self,
        backend: PlantBackend,
        *,
        clock: ClockKind = "virtual",
        watchdog_s: float | None = None,
        max_clients: int = 10_000,
        security: Security = "none",
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        """Serve ``backend``, starting with every actuator at its safe value.

        Args:
            backend: the plant (simulated or a gateway).
            clock: who moves plant time (see the class docstring).
            watchdog_s: seconds without a valid ``write``/``heartbeat``/``arm`` before fail-safe;
                ``None`` disables the watchdog (in-process offline runs).
            max_clients: remembered per-client seqs; the least recently written client is forgotten
                beyond this (its next write is accepted whatever its seq).
            security: how the transport is protected, reported in ``hello`` (``"insecure"`` adds a
                warning there).
            monotonic: the wall clock the watchdog runs on (injectable for tests).
        """
        if clock not in ("virtual", "realtime"):
            raise ValueError(f"clock must be 'virtual' or 'realtime', not {clock!r}")
        if watchdog_s is not None and not (math.isfinite(watchdog_s) and watchdog_s > 0):
            raise ValueError(f"watchdog_s must be a positive number of seconds, not {watchdog_s}")
        self.backend = backend
        self.clock: ClockKind = clock
        self.watchdog_s = watchdog_s
        self.security: Security = security
        self.last_failsafe_latency_s: float | None = None
        self._monotonic = monotonic
        self._fed_at: float | None = None  # None: the watchdog has not started (or fired) yet
        self._state: PlantState = "armed"
        self._devices: dict[str, DeviceInfo] = {d.name: d for d in backend.devices()}
        self._clients: OrderedDict[bytes, _ClientSeq] = OrderedDict()
        self._max_clients = max_clients
        #: Whether anyone listens to ``meas`` telemetry; when not, an ``advance`` does not build it (every
        #: reading, as JSON). A server that knows its subscribers replaces it (:class:`hil.server.PlantServer`).
        self.meas_listened: Callable[[], bool] = lambda: True
        self._advance_dt_s: float | None = None  # the last advance's span; an advance of it may follow a write
        self._after_write = False
        backend.apply_safe()

    @property
    def state(self) -> PlantState:
        """``"armed"`` (writes accepted) or ``"failsafe"`` (actuators safe, writes refused)."""
        return self._state

    # ----------------------------------------------------------------------------------------------
    # Requests

    def handle(self, client_id: bytes, frame: bytes) -> tuple[bytes, list[Telemetry]]:
        """Serve one request frame from one client.

        Never raises: any bad input becomes an error reply and changes nothing.

        Args:
            client_id: who sent it (the ZeroMQ routing id); seq numbers are per client.
            frame: the request payload.

        Returns:
            The reply frame and the telemetry messages to publish (``meas`` after an ``advance``).
        """
        reply, later = self.handle_deferred(client_id, frame)
        return reply, later()

    def handle_deferred(self, client_id: bytes, frame: bytes) -> tuple[bytes, LaterTelemetry]:
        """:meth:`handle`, with the telemetry built only when the returned function is called.

        A server sends the reply first and then calls it: the ``meas`` message of an ``advance`` (every
        reading, as JSON) is then not part of the time the client waits. It must be called before the
        next request is handled, so that it reports the state this request left.
        """
        request_id = None
        try:
            request = decode_request(frame)
            request_id = request.id
            fields, later = self._dispatch(client_id, request)
            return encode_reply(request_id, fields), later
        except RequestError as exc:
            return encode_error(exc.request_id, exc.code, exc.message), list
        except ProtocolError as exc:
            # A backend refusal with its own code (a gateway's readback mismatch, a driver that is down,
            # a rate limit): nothing was applied; the client gets the code, not a generic failure.
            code = exc.code if exc.code in ERROR_CODES else INTERNAL
            log.warning("backend refused: %s", exc)
            events = self.backend_events()
            return encode_error(request_id, code, exc.message), lambda: events
        except BioimpError as exc:
            # The backend failed (e.g. the integrator diverged): report it, keep serving.
            log.error("backend failed: %s", exc)
            return encode_error(request_id, INTERNAL, f"plant backend failed: {exc}"), list
        except Exception as exc:  # a bug must not stop the plant server
            log.exception("unexpected error while handling a request")
            return encode_error(request_id, INTERNAL, f"internal error: {type(exc).__name__}"), list

    def _dispatch(self, client_id: bytes, request: Request) -> tuple[dict[str, Any], LaterTelemetry]:
        # ``list`` (called: an empty list) is the telemetry of every request but advance and arm.
        if isinstance(request, Read):
            return self._read(request), list
        if isinstance(request, Write):
            fields = self._write(client_id, request)
            self._after_write = True
            return fields, list
        if isinstance(request, Advance):
            return self._advance(request), self._meas
        if isinstance(request, Hello):
            return self._hello(), list
        if isinstance(request, Heartbeat):
            self._feed()
            return {"time": self.backend.time_s, "state": self._state}, list
        if isinstance(request, Arm):
            telemetry = self.arm("armed by operator request")
            self._feed()
            return {"time": self.backend.time_s, "state": self._state}, lambda: telemetry
        raise AssertionError(f"unhandled request type {type(request).__name__}")

    def _hello(self) -> dict[str, Any]:
        return {
            "protocol": PROTOCOL_VERSION,
            "plant": self.backend.name,
            "clock": self.clock,
            "time": self.backend.time_s,
            "state": self._state,
            "watchdog_s": self.watchdog_s,
            "time_scale": float(getattr(self.backend, "time_scale", 1.0)),
            "last_failsafe_latency_s": self.last_failsafe_latency_s,
            "security": self.security,
            **({"warning": INSECURE_WARNING} if self.security == "insecure" else {}),
            "devices": [device_to_wire(d) for d in self._devices.values()],
        }

    def _read(self, request: Read) -> dict[str, Any]:
        if request.names is not None:
            for name in request.names:
                if name not in self._devices:
                    raise RequestError(UNKNOWN_DEVICE, f"no device named {name!r}", request.id)
        return readings_to_wire(self.backend.time_s, self.backend.read(request.names))

    def _write(self, client_id: bytes, request: Write) -> dict[str, Any]:
        rid = request.id
        last = self._clients.get(client_id)
        if last is not None and request.seq == last.seq:
            # Idempotent retry: the earlier reply (its time is when it was applied), applied once. Also in
            # fail-safe, where it applies nothing: a controller resuming after a crash learns that its
            # last setpoint did land, instead of recording an applied setpoint as refused.
            if self._state == "armed":
                self._feed()
            return dict(last.result)
        if self._state == "failsafe":
            raise RequestError(FAILSAFE, "the plant is in fail-safe; writes are refused until re-armed", rid)
        if last is not None and request.seq < last.seq:
            raise RequestError(STALE, f"seq {request.seq} is not greater than the last applied seq {last.seq}", rid)
        now = self.backend.time_s
        if request.valid_until_s is not None:
            if not math.isfinite(request.valid_until_s):
                raise RequestError(NOT_FINITE, "'valid_until' must be finite", rid)
            if now > request.valid_until_s:
                raise RequestError(STALE, f"valid until t={request.valid_until_s} s but the plant is at t={now} s", rid)
        self._check_setpoints(request)
        applied = self.backend.apply(request.setpoints)
        result = {"time": self.backend.time_s, "applied": dict(applied)}
        self._remember(client_id, _ClientSeq(request.seq, result))
        self._feed()
        return dict(result)

    def _check_setpoints(self, request: Write) -> None:
        """All checks before anything is applied: that is what makes a write all or nothing."""
        rid = request.id
        for name in request.setpoints:
            device = self._devices.get(name)
            if device is None:
                raise RequestError(UNKNOWN_DEVICE, f"no actuator named {name!r}", rid)
            if device.kind != "actuator":
                raise RequestError(UNKNOWN_DEVICE, f"{name!r} is a sensor, not an actuator", rid)
        for name, value in request.setpoints.items():
            if not math.isfinite(value):
                raise RequestError(NOT_FINITE, f"setpoint {name!r} is not a finite number", rid)
        for name, value in request.setpoints.items():
            device = self._devices[name]
            if (device.min is not None and value < device.min) or (device.max is not None and value > device.max):
                raise RequestError(
                    OUT_OF_RANGE,
                    f"setpoint {name!r}={value} outside [{device.min}, {device.max}] {device.unit}",
                    rid,
                )

    def _remember(self, client_id: bytes, entry: _ClientSeq) -> None:
        self._clients[client_id] = entry
        self._clients.move_to_end(client_id)
        while len(self._clients) > self._max_clients:
            self._clients.popitem(last=False)

    def _advance(self, request: Advance) -> dict[str, Any]:
        rid = request.id
        if self.clock != "virtual":
            raise RequestError(UNSUPPORTED, "advance needs a virtual clock; this plant runs in real time", rid)
        if not math.isfinite(request.dt_s):
            raise RequestError(NOT_FINITE, "'dt' must be a finite number of seconds", rid)
        if request.dt_s < 0:
            raise RequestError(OUT_OF_RANGE, f"'dt' must be >= 0 s, got {request.dt_s}", rid)
        if request.dt_s > MAX_ADVANCE_S:
            raise RequestError(OUT_OF_RANGE, f"'dt' must be <= {MAX_ADVANCE_S:g} s (a year), got {request.dt_s:g}", rid)
        self._after_write = False
        time_s = self.backend.advance(request.dt_s)
        self._advance_dt_s = request.dt_s
        return {"time": time_s}

    def work_ahead(self) -> None:
        """Use a server's idle moment: after a write, integrate ahead the advance that usually follows.

        A virtual-clock loop writes its setpoints and then advances by its period; a backend that can
        (``prepare_advance``, the simulated plant) integrates that span now, while the client records
        the write's reply, so that the advance's reply is not kept waiting for it. The advance's result
        is the same either way. At most once per write.
        """
        if not self._after_write or self._advance_dt_s is None or self.clock != "virtual":
            return
        self._after_write = False
        prepare = getattr(self.backend, "prepare_advance", None)
        if prepare is not None:
            try:
                prepare(self._advance_dt_s)
            except Exception:  # only ever a head start: the advance does the work itself if this fails
                log.exception("integrating ahead failed")

    def _meas(self) -> list[Telemetry]:
        if not self.meas_listened():
            return []
        try:
            return [self.sample()]
        except Exception:  # the reply has gone already; a failed reading must not stop the plant server
            log.exception("could not build the meas telemetry after an advance")
            return []

    # ----------------------------------------------------------------------------------------------
    # Called by the server (real-time clock) and, from the watchdog issue on, by the watchdog.

    def advance_to(self, t_s: float) -> None:
        """Move plant time on to ``t_s`` (real-time clock); nothing happens if it is already there.

        Raises:
            SolverFailed: the backend could not integrate.
        """
        dt_s = t_s - self.backend.time_s
        if dt_s > 0:
            self.backend.advance(dt_s)

    def sample(self) -> Telemetry:
        """A ``meas`` telemetry message with the current readings of every device."""
        return TOPIC_MEAS, encode_json(
            {"v": PROTOCOL_VERSION, **readings_to_wire(self.backend.time_s, self.backend.read())}
        )

    def backend_events(self) -> list[Telemetry]:
        """``event`` telemetry for what the backend noticed since the last call (a gateway's readback
        mismatch, a driver lost or back); backends without events (the simulated plant) give none."""
        take = getattr(self.backend, "take_events", None)
        if take is None:
            return []
        return [(TOPIC_EVENT, encode_json({"v": PROTOCOL_VERSION, "state": self._state, **e})) for e in take()]

    def _feed(self) -> None:
        self._fed_at = self._monotonic()

    def watchdog_deadline(self) -> float | None:
        """Monotonic time at which the watchdog fires if not fed; ``None`` when it is not running."""
        if self.watchdog_s is None or self._fed_at is None or self._state == "failsafe":
            return None
        return self._fed_at + self.watchdog_s

    def check_watchdog(self) -> list[Telemetry]:
        """Enter fail-safe if the watchdog has expired; return the ``event`` telemetry (or nothing).

        The latency from the last feed to safe values applied is kept in ``last_failsafe_latency_s``
        (and reported by ``hello``): it is ``watchdog_s`` plus how late the server noticed.
        """
        deadline = self.watchdog_deadline()
        if deadline is None or self._monotonic() < deadline:
            return []
        assert self._fed_at is not None and self.watchdog_s is not None
        fed_at, self._fed_at = self._fed_at, None
        reason = f"watchdog: no write or heartbeat for {self.watchdog_s:g} s"
        self.backend.apply_safe()
        self.last_failsafe_latency_s = self._monotonic() - fed_at
        log.warning("%s; actuators at safe values after %.3f s", reason, self.last_failsafe_latency_s)
        return self._set_state("failsafe", reason)

    def enter_failsafe(self, reason: str) -> list[Telemetry]:
        """Put every actuator at its safe value and refuse writes until :meth:`arm`.

        Returns:
            The ``event`` telemetry announcing the state change (empty if already in fail-safe).
        """
        self.backend.apply_safe()
        return self._set_state("failsafe", reason)

    def arm(self, reason: str = "armed") -> list[Telemetry]:
        """Accept writes again (the actuators stay where they are until the next write)."""
        return self._set_state("armed", reason)

    def _set_state(self, state: PlantState, reason: str) -> list[Telemetry]:
        if state == self._state:
            return []
        self._state = state
        event = {"v": PROTOCOL_VERSION, "time": self.backend.time_s, "state": state, "reason": reason}
        return [(TOPIC_EVENT, encode_json(event))]
