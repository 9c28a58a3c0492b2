"""The plant's own log: every setpoint application and every new sample, as JSON lines.

``bioimp plant serve --log FILE`` wraps its backend in :class:`LoggedBackend`. The log is the plant's
side of the story, independent of the controller's record: the kill tests check against it that no
setpoint was applied twice and that every sample the plant produced reached the record.

Lines (appended, flushed one by one)::

    {"op": "apply", "t": 7200.0, "values": {"inp": 0.012}}     a write reached the actuators
    {"op": "apply_safe", "t": 0.0, "values": {"inp": 0.0}}      safe values (at start, on fail-safe)
    {"op": "sample", "t": 7200.0, "seq": 2}                      advance produced sample seq 2

A write answered from the handler's idempotency memory (a resent seq) never reaches the backend, so it
is not logged: one ``apply`` line per applied seq.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import IO, Any

from hil.backend import PlantBackend
from twin.interfaces import DeviceInfo, Reading

__all__ = ["LoggedBackend", "read_plant_log"]


class LoggedBackend:
    """A :class:`~hil.backend.PlantBackend` that appends what the plant did to a JSON-lines file."""

    def __init__(self, inner: PlantBackend, path: Path) -> None:
        """Args: inner: the backend that does the work; path: the log file (appended to)."""
        self.inner = inner
        self.path = path
        self._file: IO[str] = path.open("a", encoding="utf-8", buffering=1)

    def _log(self, entry: Mapping[str, Any]) -> None:
        self._file.write(json.dumps(entry, sort_keys=True) + "\n")
        self._file.flush()

    @property
    def name(self) -> str:
        """The inner backend's name."""
        return self.inner.name

    @property
    def time_s(self) -> float:
        """The inner backend's time (s)."""
        return self.inner.time_s

    @property
    def time_scale(self) -> float:
        """The inner backend's plant seconds per wall second (1 when it has none)."""
        return float(getattr(self.inner, "time_scale", 1.0))

    def devices(self) -> tuple[DeviceInfo, ...]:
        """The inner backend's devices."""
        return self.inner.devices()

    def read(self, names: Iterable[str] | None = None) -> Mapping[str, Reading]:
        """Forwarded (reads change nothing)."""
        return self.inner.read(names)

    def apply(self, setpoints: Mapping[str, float]) -> Mapping[str, float]:
        """Apply, then log the application."""
        applied = self.inner.apply(setpoints)
        self._log({"op": "apply", "t": self.inner.time_s, "values": dict(setpoints)})
        return applied

    def applied(self) -> Mapping[str, float]:
        """Forwarded."""
        return self.inner.applied()

    def apply_safe(self) -> Mapping[str, float]:
        """Apply the safe values, then log it."""
        applied = self.inner.apply_safe()
        self._log({"op": "apply_safe", "t": self.inner.time_s, "values": dict(applied)})
        return applied

    def advance(self, dt_s: float) -> float:
        """Advance, then log the new sample's time and sequence number."""
        t_s = self.inner.advance(dt_s)
        seqs = {r.seq for r in self.inner.read().values()}
        self._log({"op": "sample", "t": t_s, "seq": max(seqs) if seqs else None})
        return t_s

    def close(self) -> None:
        """Close the log file."""
        self._file.close()


def read_plant_log(path: Path) -> list[dict[str, Any]]:
    """The entries of a plant log, in order."""
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
