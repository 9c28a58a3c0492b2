"""A fault-injecting ZeroMQ relay between a controller and a plant server (or gateway), for the fault tests.

Clients connect their DEALER to the proxy's ROUTER; for each client routing id the proxy opens its own
DEALER to the plant **with the same routing id**, so the plant still sees one client per controller (its
per-client seq memory and idempotency work through the proxy exactly as without it).

Every message, in both directions, passes the fault model with a seeded random generator:

* ``drop``: lost (the sender's timeout and retry must cover it);
* ``duplicate``: delivered twice (each copy with its own delay);
* ``reorder``: held back and delivered just after the next message in the same direction;
* ``delay``: delivered after a uniform random delay in ``[0, delay_max_s]`` (the others at once).

A *partition* (:meth:`FaultProxy.partition`) holds every message in both directions while it lasts and
delivers them all when it heals, as a TCP connection that stalled and recovered does: the harshest case
for stale setpoints, because a write sent during the partition reaches the plant late.

The relay runs in a thread of the test process; the controller and the plant are separate processes.
"""

from __future__ import annotations

import heapq
import itertools
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass
from types import TracebackType
from typing import Self

import zmq

__all__ = ["FaultProxy", "LinkFaults"]

_UP, _DOWN = "up", "down"  # client → plant, plant → client
_REORDER_HOLD_S = 0.2  # a held-back message with no successor is delivered after this long anyway


@dataclass(frozen=True)
class LinkFaults:
    """Per-message fault probabilities (0..1), the delay bound (wall seconds) and the seed."""

    drop: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0
    delay: float = 0.0
    delay_max_s: float = 0.0
    seed: int = 0


class FaultProxy:
    """ROUTER (clients) ↔ one DEALER per client (plant), with seeded drop/duplicate/reorder/delay.

    Example::

        with FaultProxy(plant.command, LinkFaults(drop=0.1, seed=3)) as proxy:
            run_controller_against(proxy.endpoint)
        print(proxy.stats)
    """

    def __init__(self, upstream: str, faults: LinkFaults = LinkFaults(), *, bind: str = "tcp://127.0.0.1:*") -> None:
        """Args: upstream: the plant's command endpoint; faults: the fault model; bind: where clients connect."""
        self.upstream = upstream
        self.faults = faults
        self.stats: Counter[str] = Counter()
        self._rng = random.Random(faults.seed)
        self._ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self._front: zmq.Socket[bytes] = self._ctx.socket(zmq.ROUTER)
        self._front.setsockopt(zmq.LINGER, 0)
        self._front.setsockopt(zmq.ROUTER_HANDOVER, 1)  # a reconnecting controller keeps its routing id
        self._front.bind(bind)
        self.endpoint = self._front.getsockopt_string(zmq.LAST_ENDPOINT)
        self._backs: dict[bytes, zmq.Socket[bytes]] = {}
        self._owner: dict[zmq.Socket[bytes], bytes] = {}
        self._queue: list[tuple[float, int, str, bytes, list[bytes]]] = []  # (due, order, direction, client, frames)
        self._order = itertools.count()
        self._held: dict[str, tuple[bytes, list[bytes]] | None] = {_UP: None, _DOWN: None}
        self._held_since: dict[str, float] = {_UP: 0.0, _DOWN: 0.0}
        self._partition_until = 0.0
        self._partition_held: list[tuple[str, bytes, list[bytes]]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fault-proxy", daemon=True)

    # ---------------------------------------------------------------------------------------------
    # Control from the test

    def start(self) -> Self:
        """Start relaying (returns self)."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop relaying and close every socket."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
        for sock in [self._front, *self._backs.values()]:
            sock.close(linger=0)
        self._ctx.term()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def partition(self, duration_s: float) -> None:
        """Cut the link both ways for ``duration_s`` wall seconds from now; held messages flow at the end."""
        with self._lock:
            self._partition_until = time.monotonic() + duration_s
            self.stats["partitions"] += 1

    @property
    def partition_left_s(self) -> float:
        """Seconds until the current partition heals (0 when there is none)."""
        return max(0.0, self._partition_until - time.monotonic())

    # ---------------------------------------------------------------------------------------------
    # The relay thread

    def _back(self, client: bytes) -> zmq.Socket[bytes]:
        sock = self._backs.get(client)
        if sock is None:
            sock = self._ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.ROUTING_ID, client)
            sock.connect(self.upstream)
            self._backs[client] = sock
            self._owner[sock] = client
        return sock

    def _deliver(self, direction: str, client: bytes, frames: list[bytes]) -> None:
        try:
            if direction == _UP:
                self._back(client).send_multipart(frames, zmq.NOBLOCK)
            else:
                self._front.send_multipart([client, *frames], zmq.NOBLOCK)
            self.stats["delivered"] += 1
        except zmq.Again:
            self.stats["undeliverable"] += 1  # the far side is gone: lost, as on a real link

    def _schedule(self, direction: str, client: bytes, frames: list[bytes], now: float) -> None:
        delay = 0.0
        if self._rng.random() < self.faults.delay:
            delay = self._rng.uniform(0.0, self.faults.delay_max_s)
            self.stats["delayed"] += 1
        heapq.heappush(self._queue, (now + delay, next(self._order), direction, client, frames))

    def _inject(self, direction: str, client: bytes, frames: list[bytes]) -> None:
        """Apply the fault model to one message that just arrived."""
        now = time.monotonic()
        self.stats["messages"] += 1
        with self._lock:
            if now < self._partition_until:
                self._partition_held.append((direction, client, frames))
                self.stats["held_by_partition"] += 1
                return
        f = self.faults
        if self._rng.random() < f.drop:
            self.stats["dropped"] += 1
            return
        copies = 2 if self._rng.random() < f.duplicate else 1
        self.stats["duplicated"] += copies - 1
        if self._held[direction] is None and self._rng.random() < f.reorder:
            self._held[direction] = (client, frames)
            self._held_since[direction] = now
            self.stats["reordered"] += 1
            copies -= 1
        for _ in range(copies):
            self._schedule(direction, client, frames, now)
        held = self._held[direction]
        if held is not None and copies > 0:
            # This message overtakes the held one, which follows it.
            self._held[direction] = None
            heapq.heappush(self._queue, (now + 1e-6, next(self._order), direction, *held))

    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self._front, zmq.POLLIN)
        registered: set[zmq.Socket[bytes]] = set()
        while not self._stop.is_set():
            for sock in self._backs.values():
                if sock not in registered:
                    poller.register(sock, zmq.POLLIN)
                    registered.add(sock)
            now = time.monotonic()
            released: list[tuple[str, bytes, list[bytes]]] = []
            with self._lock:
                if now >= self._partition_until and self._partition_held:
                    released, self._partition_held = self._partition_held, []
            for direction, client, frames in released:  # the link healed: what it held flows now
                heapq.heappush(self._queue, (now, next(self._order), direction, client, frames))
            for direction in (_UP, _DOWN):
                pending = self._held[direction]
                if pending is not None and now - self._held_since[direction] > _REORDER_HOLD_S:
                    self._held[direction] = None
                    heapq.heappush(self._queue, (now, next(self._order), direction, *pending))
            while self._queue and self._queue[0][0] <= now:
                _, _, direction, client, frames = heapq.heappop(self._queue)
                self._deliver(direction, client, frames)
            wait_s = 0.01 if not self._queue else max(0.0, min(0.01, self._queue[0][0] - now))
            for sock, _ in poller.poll(max(1, round(wait_s * 1000))):
                while True:
                    try:
                        frames = sock.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    if sock is self._front:
                        self._inject(_UP, frames[0], frames[1:])
                    else:
                        self._inject(_DOWN, self._owner[sock], frames)
