"""The plant's own announcements (telemetry ``event`` messages), collected for the batch record.

A plant announces what the loop would otherwise learn only at its next write: a watchdog fail-safe, a
re-arm, a gateway's readback mismatch or lost driver. A thread subscribes to the telemetry endpoint and
keeps them until the loop drains them into its record, once per period.
"""

from __future__ import annotations

import logging
import threading
from types import TracebackType
from typing import Self

import zmq

from hil.client import TelemetrySubscriber
from hil.protocol import TOPIC_EVENT
from hil.security import ClientKeys
from plant_models.errors import ProtocolError
from twin.record import EventRow

__all__ = ["PlantEventListener"]

log = logging.getLogger("bioimp.hil")


class PlantEventListener:
    """Subscribes to a plant's ``event`` telemetry on its own thread; :meth:`drain` hands them over.

    Like any subscription it misses what was published before it connected (the loop still learns of a
    fail-safe from the refused write).
    """

    def __init__(self, telemetry_endpoint: str, *, keys: ClientKeys | None = None) -> None:
        """Args: telemetry_endpoint: the plant's PUB endpoint; keys: CURVE keys when the server has them."""
        self.endpoint = telemetry_endpoint
        self._keys = keys
        self._events: list[EventRow] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bioimp-plant-events", daemon=True)

    def drain(self) -> list[EventRow]:
        """The events received since the last call, oldest first."""
        with self._lock:
            events, self._events = self._events, []
        return events

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        try:
            with TelemetrySubscriber(self.endpoint, topics=(TOPIC_EVENT,), keys=self._keys, context=context) as sub:
                while not self._stop.is_set():
                    try:
                        message = sub.receive(timeout_s=0.1)
                    except ProtocolError as exc:
                        log.warning("malformed plant event ignored: %s", exc)
                        continue
                    if message is not None:
                        with self._lock:
                            self._events.append(_event_row(message.payload))
        finally:
            context.term()


def _event_row(payload: dict[str, object] | object) -> EventRow:
    """An event payload as a record row: kind ``plant_event``, the payload's fields in the message."""
    fields = dict(payload) if isinstance(payload, dict) else {}
    t = fields.pop("time", None)
    fields.pop("v", None)
    message = ", ".join(f"{k}={v}" for k, v in sorted(fields.items()))
    return EventRow(float(t) if isinstance(t, int | float) else float("nan"), "plant_event", message)
