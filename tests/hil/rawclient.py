"""A raw ZeroMQ client for the wire tests: sends exact frames, returns exact frames, never hangs."""

from __future__ import annotations

import json
import secrets
from typing import Any

import zmq


class RawClient:
    """A DEALER (or REQ) socket sending raw frames to a plant server's command endpoint."""

    def __init__(self, endpoint: str, kind: int = zmq.DEALER, identity: bytes | None = None) -> None:
        self.identity = identity or b"raw-" + secrets.token_hex(6).encode()
        self.socket: zmq.Socket[bytes] = zmq.Context.instance().socket(kind)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.ROUTING_ID, self.identity)
        self.socket.connect(endpoint)

    def exchange(self, frames: list[bytes], timeout_s: float = 5.0) -> list[bytes]:
        """Send ``frames`` as one message; return the reply's frames (AssertionError on timeout)."""
        self.socket.send_multipart(frames)
        if not self.socket.poll(round(timeout_s * 1000), zmq.POLLIN):
            raise AssertionError(f"no reply within {timeout_s} s to {frames!r:.200}")
        return self.socket.recv_multipart()

    def send_raw(self, payload: bytes) -> dict[str, Any]:
        """Send one frame, return the decoded single-frame reply."""
        reply = self.exchange([payload])
        assert len(reply) == 1, reply
        obj = json.loads(reply[0])
        assert isinstance(obj, dict)
        return obj

    def call(self, request: dict[str, Any]) -> dict[str, Any]:
        """Send a request object (``v`` defaults to 1), return the reply object."""
        return self.send_raw(json.dumps({"v": 1, **request}).encode())

    def close(self) -> None:
        self.socket.close(linger=0)
