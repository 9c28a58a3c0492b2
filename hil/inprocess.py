"""A :class:`twin.interfaces.Plant` that calls a :class:`~hil.handler.ProtocolHandler` directly.

No sockets, no threads: each call encodes a real protocol v1 request frame, hands it to the handler and
decodes the reply frame, exactly as :class:`hil.client.ZmqPlant` does over ZeroMQ. Fast tests and offline
batch studies use it and get the same semantics (validation, idempotent seq, ``stale``, ...).

Example::

    plant = InProcessPlant(ProtocolHandler(SimulatedPlant(resolve_model("fedbatch_haldane"))))
    plant.write({"inp": 0.05}, seq=1)
    plant.advance(3600.0)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from hil.client_base import RequestPlant, check_reply
from hil.handler import ProtocolHandler

__all__ = ["InProcessPlant"]


class InProcessPlant(RequestPlant):
    """The handler's plant as a Plant, in this process."""

    def __init__(
        self,
        handler: ProtocolHandler,
        client_id: bytes = b"local",
        *,
        on_telemetry: Callable[[str, bytes], None] | None = None,
    ) -> None:
        """Args:
        handler: the protocol handler serving the plant (it may be shared by several clients).
        client_id: this client's id (the routing id a ZeroMQ client would have): seqs are per id.
        on_telemetry: called with (topic, payload) for each telemetry message (``meas`` after an
            ``advance``); dropped when None.
        """
        super().__init__()
        self.handler = handler
        self.client_id = client_id
        self._on_telemetry = on_telemetry

    def _exchange(self, request_id: str, frame: bytes, *, idempotent: bool) -> Mapping[str, Any]:
        reply, telemetry = self.handler.handle(self.client_id, frame)
        if self._on_telemetry is not None:
            for topic, payload in telemetry:
                self._on_telemetry(topic, payload)
        return check_reply(reply)[1]

    def close(self) -> None:
        """Nothing to release: the handler belongs to whoever made it."""
