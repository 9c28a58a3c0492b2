"""What the dashboard shows, gathered on one thread: the batch record's new rows, the plant's telemetry
and the controller's plan.

Three sources, none of which the dashboard can change:

* the batch record (``DIR/record.sqlite``), opened **read-only** and polled for rows past the last
  ``rec`` seen in each table (the record has one writer, ``bioimp run``; SQLite's WAL lets a reader in);
* the plant's telemetry (``meas``, ``event``): liveness ("no data since ..."), the plant state, the
  latest readings;
* the ``plan`` messages of ``bioimp run --publish``: the controller's prediction over its horizon.

Everything becomes an *item* (a short JSON list) appended to one growing log; a browser connection
reads the log from its own cursor, so a reconnecting browser simply starts again at 0.
"""

from __future__ import annotations

import json
import logging
import math
import sqlite3
import threading
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import zmq

from hil.console import TOPIC_PLAN
from hil.protocol import TOPIC_EVENT, TOPIC_MEAS
from hil.security import ClientKeys, apply_client_keys
from twin.batch_record import RECORD_FILE, decode_vector
from twin.record_read import read_run

__all__ = ["ALARM_KINDS", "FeedConfig", "LiveFeed", "Status"]

log = logging.getLogger("bioimp.dashboard")

#: Event kinds the page shows as alarms (red); others are information.
ALARM_KINDS = frozenset(
    {
        "plant_failsafe",
        "setpoint_refused",
        "deadline_miss",
        "period_overrun",
        "controller_fallback",
        "plant_unreachable",
        "measurement_rejected",
        "gap",
        "controller_outage",
        "operator_action_failed",
    }
)
_RECORD_POLL_S = 0.5
_SOCKET_POLL_MS = 100


@dataclass(frozen=True)
class FeedConfig:
    """Where the dashboard's data comes from.

    Attributes:
        record_dir: the run directory (holds ``record.sqlite``; it may not exist yet).
        telemetry: the plant's telemetry endpoint (PUB), or None.
        plan: ``bioimp run --publish`` endpoint, or None.
        telemetry_keys: CURVE keys for a plant whose telemetry needs them.
        stale_after_s: wall seconds without telemetry after which the page says "no data since ...".
    """

    record_dir: Path
    telemetry: str | None = None
    plan: str | None = None
    telemetry_keys: ClientKeys | None = None
    stale_after_s: float = 5.0


@dataclass
class Status:
    """The latest state of things (sent with every update)."""

    plant_state: str = "unknown"
    plant_reason: str = ""
    plant_state_wall: float | None = None
    last_data_wall: float | None = None
    last_data_t: float | None = None
    latest: dict[str, float | None] = field(default_factory=dict)
    record: str = "waiting for the batch record"


class LiveFeed:
    """Collects the sources on a background thread; :meth:`since` hands items to each browser."""

    def __init__(self, config: FeedConfig) -> None:
        """Args: config: the sources."""
        self.config = config
        self.run: dict[str, Any] | None = None
        self.status = Status()
        self.plan: dict[str, Any] | None = None
        self.plan_version = 0
        self._items: list[list[Any]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._last_rec: dict[str, int] = {}
        self._conn: sqlite3.Connection | None = None
        self._thread = threading.Thread(target=self._run, name="bioimp-dashboard-feed", daemon=True)

    # -- reading -----------------------------------------------------------------------------------

    def since(self, cursor: int) -> tuple[list[list[Any]], int]:
        """The items from ``cursor`` on, and the new cursor."""
        with self._lock:
            items = self._items[cursor:]
            return items, cursor + len(items)

    def status_json(self) -> dict[str, Any]:
        """The status as sent to the page (with ``stale`` worked out now)."""
        with self._lock:
            s = self.status
            now = time.time()
            stale = s.last_data_wall is None or now - s.last_data_wall > self.config.stale_after_s
            return {
                "plant_state": s.plant_state,
                "plant_reason": s.plant_reason,
                "last_data_wall": s.last_data_wall,
                "last_data_t": s.last_data_t,
                "stale": stale,
                "latest": dict(s.latest),
                "record": s.record,
                "now_wall": now,
            }

    # -- lifecycle ---------------------------------------------------------------------------------

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        poller = zmq.Poller()
        sockets: list[zmq.Socket[bytes]] = []
        try:
            if self.config.telemetry is not None:
                sockets.append(self._subscribe(context, self.config.telemetry, (TOPIC_MEAS, TOPIC_EVENT), True))
            if self.config.plan is not None:
                sockets.append(self._subscribe(context, self.config.plan, (TOPIC_PLAN.decode(),), False))
            for sock in sockets:
                poller.register(sock, zmq.POLLIN)
            next_record = 0.0
            while not self._stop.is_set():
                if time.monotonic() >= next_record:
                    self._poll_record()
                    next_record = time.monotonic() + _RECORD_POLL_S
                if not sockets:
                    self._stop.wait(_SOCKET_POLL_MS / 1000)
                    continue
                for sock, _ in poller.poll(_SOCKET_POLL_MS):
                    while True:
                        try:
                            frames = sock.recv_multipart(zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        self._message(frames)
        except Exception:  # the page must keep showing what it has
            log.exception("dashboard feed stopped")
        finally:
            for sock in sockets:
                sock.close(linger=0)
            context.term()
            if self._conn is not None:
                self._conn.close()

    def _subscribe(
        self, context: zmq.Context[zmq.Socket[bytes]], endpoint: str, topics: tuple[str, ...], plant: bool
    ) -> zmq.Socket[bytes]:
        sock = context.socket(zmq.SUB)
        sock.linger = 0
        if plant:
            apply_client_keys(sock, self.config.telemetry_keys)
        for topic in topics:
            sock.setsockopt(zmq.SUBSCRIBE, topic.encode())
        sock.connect(endpoint)
        return sock

    # -- telemetry and plan ------------------------------------------------------------------------

    def _message(self, frames: list[bytes]) -> None:
        if len(frames) != 2:
            return
        try:
            payload = json.loads(frames[1])
        except (UnicodeDecodeError, json.JSONDecodeError):
            log.warning("malformed telemetry ignored")
            return
        if not isinstance(payload, dict):
            return
        topic = frames[0].decode("utf-8", "replace")
        now = time.time()
        with self._lock:
            if topic == TOPIC_MEAS:
                self.status.last_data_wall = now
                self.status.last_data_t = _number(payload.get("time"))
                values = payload.get("values")
                if isinstance(values, dict):
                    self.status.latest = {
                        str(k): _number(v.get("value")) if isinstance(v, dict) else None for k, v in values.items()
                    }
            elif topic == TOPIC_EVENT:
                state = payload.get("state")
                reason = str(payload.get("reason", payload.get("message", "")))
                t = _number(payload.get("time"))
                if isinstance(state, str):
                    self._set_plant_state(state, reason, now)
                detail = ", ".join(f"{k}={v}" for k, v in sorted(payload.items()) if k not in ("v", "time"))
                kind = "plant_failsafe" if state == "failsafe" else "plant_event"
                self._items.append(["v", t, kind, f"telemetry: {detail}", now])
            elif topic == TOPIC_PLAN.decode():
                self.plan = payload
                self.plan_version += 1

    def _set_plant_state(self, state: str, reason: str, wall: float) -> None:
        """Keep the newest word on the plant state (caller holds the lock)."""
        s = self.status
        if s.plant_state_wall is None or wall >= s.plant_state_wall:
            if state != s.plant_state:
                s.plant_state, s.plant_reason = state, reason
                self._items.append(["state", state, reason, wall])
            s.plant_state_wall = wall

    # -- the record --------------------------------------------------------------------------------

    def _open_record(self) -> sqlite3.Connection | None:
        path = self.config.record_dir / RECORD_FILE
        if not path.exists():
            return None
        try:
            conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
            info = read_run(conn)
        except (sqlite3.Error, TypeError):
            return None  # not created (committed) yet: try again at the next poll
        with self._lock:
            self.run = _run_json(info)
            self.status.record = "ok"
        return conn

    def _poll_record(self) -> None:
        if self._conn is None:
            self._conn = self._open_record()
            if self._conn is None:
                return
        try:
            self._read_new_rows(self._conn)
        except sqlite3.Error as exc:
            with self._lock:
                self.status.record = f"record unreadable: {exc}"

    def _rows(self, conn: sqlite3.Connection, table: str, columns: str) -> list[tuple[Any, ...]]:
        last = self._last_rec.get(table, 0)
        rows = conn.execute(f"SELECT rec, {columns} FROM {table} WHERE rec > ? ORDER BY rec", (last,)).fetchall()
        if rows:
            self._last_rec[table] = int(rows[-1][0])
        return rows

    def _read_new_rows(self, conn: sqlite3.Connection) -> None:
        items: list[list[Any]] = []
        states: list[tuple[str, str, float]] = []
        for _, device, value, sample_t, quality in self._rows(conn, "samples", "device, value, sample_t_s, quality"):
            if quality == "good" and value is not None:
                items.append(["s", device, sample_t, value])
        for _, t, x, x_var in self._rows(conn, "estimates", "t_s, x, x_var"):
            sd = [math.sqrt(v) if v >= 0 and math.isfinite(v) else None for v in decode_vector(x_var).tolist()]
            items.append(["e", t, _finite(decode_vector(x).tolist()), sd])
        for _, t, u, status, compute_s, fallback in self._rows(conn, "controls", "t_s, u, status, compute_s, fallback"):
            items.append(["c", t, compute_s, status, fallback, _finite(decode_vector(u).tolist())])
        for _, wall, t, state, setpoints, reply in self._rows(
            conn, "setpoints", "wall_s, t_s, state, setpoints, reply"
        ):
            error = json.loads(reply).get("error") if state == "refused" and reply else None
            items.append(["p", state, t, json.loads(setpoints), error])
            if state == "applied":  # the plant accepted a write: it was armed then
                states.append(("armed", "writes applied", wall))
        for _, wall, t, kind, message in self._rows(conn, "events", "wall_s, t_s, kind, message"):
            items.append(["v", t, kind, message, wall])
            if kind in ("plant_failsafe", "plant_armed"):
                states.append(("failsafe" if kind == "plant_failsafe" else "armed", message, wall))
        for _, wall, who, what, why, old, new in self._rows(conn, "audit", "wall_s, who, what, why, old, new"):
            items.append(["a", wall, who, what, why, old, new])
        if items or states:
            with self._lock:
                self._items.extend(items)
                for state, reason, wall in states:
                    self._set_plant_state(state, reason, wall)


def _finite(values: list[float]) -> list[float | None]:
    """Non-finite values as None: the page's JSON has no NaN (a diverged estimate must not break it)."""
    return [v if math.isfinite(v) else None for v in values]


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _run_json(info: Any) -> dict[str, Any]:
    """The run row as the page needs it: names, units, limits (when the model is known), budget."""
    run: dict[str, Any] = {
        "scenario": info.scenario_name,
        "controller": info.controller,
        "operator": info.operator,
        "model": info.model,
        "started_utc": info.started_utc,
        "states": list(info.states),
        "inputs": list(info.inputs),
        "period_s": info.period_s,
        "steps": info.steps,
        "units": {},
        "limits": {},
        "budget_s": None,
    }
    try:
        controller = tomllib.loads(info.scenario_source).get("controller", {})
        budget = controller.get("budget_s") if isinstance(controller, dict) else None
        run["budget_s"] = float(budget) if isinstance(budget, int | float) else None
    except tomllib.TOMLDecodeError:
        pass
    try:
        from plant_models.registry import resolve_model

        spec = resolve_model(info.model)
    except Exception:  # a model this process cannot import: the page goes without units and limits
        return run
    run["units"] = {n: spec.units.get(n, "") for n in (*spec.states, *spec.inputs, *spec.outputs)}
    limits = {n: spec.state_bounds.get(n, (-math.inf, math.inf)) for n in spec.states}
    limits |= {n: spec.input_bounds[n] for n in spec.inputs}
    run["limits"] = {n: [_json_bound(lo), _json_bound(hi)] for n, (lo, hi) in limits.items()}
    run["time_unit"] = spec.time_unit
    return run


def _json_bound(value: float) -> float | str:
    """A bound for JSON: infinities as the strings ``"inf"``/``"-inf"`` (JSON has no infinity)."""
    return value if math.isfinite(value) else ("inf" if value > 0 else "-inf")
