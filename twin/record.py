"""What the loop records, as it happens: the seam between the loop and a batch record.

``Recorder`` is the protocol the loop writes to, in the order the data flow happens. ``MemoryRecord``
keeps everything in memory (offline runs, tests); the durable batch record
(:class:`twin.batch_record.BatchRecord`, SQLite) implements the same protocol.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol

from twin.interfaces import ControlStep, Estimate, Measurements

SetpointState = Literal["intended", "applied", "refused"]


@dataclass(frozen=True)
class SetpointRow:
    """One setpoint message: what the controller intended, and then what the plant said."""

    step: int
    seq: int
    t_s: float
    state: SetpointState
    values: Mapping[str, float]
    error: str | None = None


@dataclass(frozen=True)
class EventRow:
    """Something that happened: a rejected measurement, a solver fallback, a refused write."""

    t_s: float
    kind: str
    message: str


class Recorder(Protocol):
    """Receives every arrow of the loop's data flow, in order."""

    def measurements(self, step: int, meas: Measurements) -> None:
        """A ``read`` reply arrived."""
        ...

    def estimate(self, step: int, est: Estimate) -> None:
        """The estimator produced an estimate."""
        ...

    def control(self, step: int, t_s: float, result: ControlStep) -> None:
        """The controller decided."""
        ...

    def setpoint(self, row: SetpointRow) -> None:
        """A setpoint was intended, applied or refused."""
        ...

    def event(self, row: EventRow) -> None:
        """An event or alarm."""
        ...


class RecorderTap:
    """A :class:`Recorder` that forwards every row to ``inner``; a tap overrides the rows it also watches."""

    def __init__(self, inner: Recorder) -> None:
        """Args: inner: where every row goes."""
        self.inner = inner

    def measurements(self, step: int, meas: Measurements) -> None:
        """Forward."""
        self.inner.measurements(step, meas)

    def estimate(self, step: int, est: Estimate) -> None:
        """Forward."""
        self.inner.estimate(step, est)

    def control(self, step: int, t_s: float, result: ControlStep) -> None:
        """Forward."""
        self.inner.control(step, t_s, result)

    def setpoint(self, row: SetpointRow) -> None:
        """Forward."""
        self.inner.setpoint(row)

    def event(self, row: EventRow) -> None:
        """Forward."""
        self.inner.event(row)


@dataclass
class MemoryRecord:
    """Everything recorded, kept in lists (index = arrival order)."""

    reads: list[tuple[int, Measurements]] = field(default_factory=list)
    estimates: list[tuple[int, Estimate]] = field(default_factory=list)
    controls: list[tuple[int, float, ControlStep]] = field(default_factory=list)
    setpoints: list[SetpointRow] = field(default_factory=list)
    events: list[EventRow] = field(default_factory=list)

    def measurements(self, step: int, meas: Measurements) -> None:
        """Keep a ``read`` reply."""
        self.reads.append((step, meas))

    def estimate(self, step: int, est: Estimate) -> None:
        """Keep an estimate."""
        self.estimates.append((step, est))

    def control(self, step: int, t_s: float, result: ControlStep) -> None:
        """Keep a controller decision."""
        self.controls.append((step, t_s, result))

    def setpoint(self, row: SetpointRow) -> None:
        """Keep a setpoint row."""
        self.setpoints.append(row)

    def event(self, row: EventRow) -> None:
        """Keep an event."""
        self.events.append(row)
