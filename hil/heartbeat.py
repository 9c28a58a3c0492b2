"""The controller's heartbeat: a thread of its own that keeps the plant's watchdog fed.

The loop's thread may spend a long time in a solver step; the watchdog must not trip for that. A dead
controller process, on the other hand, takes this thread with it, and the plant goes to fail-safe.
The thread has its own socket (ZeroMQ sockets belong to one thread) and its own routing id, so its
requests never interleave with the loop's.

A controller that is alive but hung (a solver that never returns, a deadlock) would keep the plant
armed through this thread. With ``stall_s`` (``bioimp run --stall-s``) the thread withholds its
heartbeats while the loop has sent the plant nothing for that long, and the plant's watchdog takes over.
The limit must exceed the longest legitimate silence: a wall-clock period plus the slowest solve.
"""

from __future__ import annotations

import logging
import math
import secrets
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Self

import zmq

from hil.client import ZmqPlant
from hil.security import ClientKeys
from plant_models.errors import PlantTimeout, ProtocolError
from twin.interfaces import PlantState

__all__ = ["HeartbeatSender", "heartbeat_period_s"]

log = logging.getLogger("bioimp.hil")


def heartbeat_period_s(watchdog_s: float) -> float:
    """A heartbeat period that survives two lost heartbeats (and their timeouts) within the watchdog."""
    return max(0.02, watchdog_s / 4)


class HeartbeatSender:
    """Sends ``heartbeat`` every ``period_s`` on its own thread until stopped; keeps the last state seen.

    Example::

        with HeartbeatSender("tcp://127.0.0.1:5555", period_s=1.0):
            run_the_loop()
    """

    def __init__(
        self,
        endpoint: str,
        period_s: float,
        *,
        keys: ClientKeys | None = None,
        progress: Callable[[], float] | None = None,
        stall_s: float | None = None,
    ) -> None:
        """Args: endpoint: the plant's command endpoint; period_s: seconds between heartbeats;
        keys: CURVE keys when the server has them; progress: the monotonic time of the loop's last sign
        of life (its plant client's last request); stall_s: stop the heartbeats while ``progress`` is
        older than this, so the plant's watchdog puts a hung controller's plant in fail-safe (None: never).
        """
        if not period_s > 0:
            raise ValueError(f"period_s must be > 0, not {period_s}")
        if (stall_s is None) != (progress is None) or (stall_s is not None and not 0 < stall_s < math.inf):
            raise ValueError(f"stall_s needs progress and must be a positive number of seconds, not {stall_s}")
        self.endpoint = endpoint
        self.period_s = period_s
        self.stalled = False  # the loop showed no sign of life for stall_s: heartbeats withheld
        self._progress = progress
        self._stall_s = stall_s
        self.state: PlantState | None = None
        self.sent = 0
        self._changes: list[tuple[float, PlantState]] = []  # (plant time s, new state), not yet taken
        self._lock = threading.Lock()
        self._keys = keys
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bioimp-heartbeat", daemon=True)

    def start(self) -> Self:
        """Start the thread (returns self)."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the thread and wait for it."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def state_changes(self) -> list[tuple[float, PlantState]]:
        """The plant's state changes seen since the last call, as (plant time s, new state)."""
        with self._lock:
            changes, self._changes = self._changes, []
        return changes

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _loop_stalled(self) -> bool:
        """Whether the loop has shown no sign of life for ``stall_s`` (logged when it changes)."""
        if self._progress is None or self._stall_s is None:
            return False
        silent_s = time.monotonic() - self._progress()
        stalled = silent_s > self._stall_s
        if stalled != self.stalled:
            if stalled:
                log.error(
                    "control loop silent for %.1f s (stall limit %g s): heartbeats withheld, the plant's "
                    "watchdog will put it in fail-safe",
                    silent_s,
                    self._stall_s,
                )
            else:
                log.warning("control loop alive again: heartbeats resumed (the plant stays in fail-safe until armed)")
        self.stalled = stalled
        return stalled

    def _run(self) -> None:
        identity = b"bioimp-hb-" + secrets.token_hex(6).encode()
        context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        try:
            with ZmqPlant(
                self.endpoint, timeout_s=self.period_s, retries=0, identity=identity, keys=self._keys, context=context
            ) as plant:
                while not self._stop.is_set():
                    if self._loop_stalled():
                        self._stop.wait(self.period_s)
                        continue
                    try:
                        t_s, state = plant.heartbeat()
                        self.sent += 1
                        if self.state is not None and state != self.state:
                            with self._lock:
                                self._changes.append((t_s, state))
                        self.state = state
                    except (PlantTimeout, ProtocolError) as exc:
                        log.warning("heartbeat to %s failed: %s", self.endpoint, exc)
                    self._stop.wait(self.period_s)
        finally:
            context.term()
