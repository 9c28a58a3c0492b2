"""The seam between a running batch and its operator console (``bioimp run --publish/--operator-endpoint``).

A console sees the batch while it runs: every controller step (to publish the plan over the horizon) and
one call per period in the loop's own thread (to serve operator requests). Operator actions therefore
happen between two steps, in the thread that owns the plant client, the controller and the batch record
(the record has exactly one writer). The transport (ZeroMQ, CURVE) lives in :mod:`hil.console`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from plant_models.spec import ModelSpec
from twin.batch_record import BatchRecord
from twin.interfaces import Controller, ControlStep, Plant, PlantState
from twin.record import Recorder, RecorderTap

__all__ = ["Armable", "ConsoleTap", "LiveBatch", "LoopConsole"]


@runtime_checkable
class Armable(Protocol):
    """A plant that can be re-armed after a fail-safe (the wire protocol's ``arm``)."""

    def arm(self) -> tuple[float, PlantState]:
        """Re-arm; return plant time and state."""
        ...


@dataclass(frozen=True)
class LiveBatch:
    """What an operator action may touch: the running batch's parts (used from the loop's thread only)."""

    spec: ModelSpec
    plant: Plant
    controller: Controller
    record: BatchRecord
    period_s: float


class LoopConsole(Protocol):
    """An operator console attached to a running batch."""

    def attach(self, batch: LiveBatch) -> None:
        """Called once before the loop starts."""
        ...

    def poll(self) -> None:
        """Called once per period in the loop's thread: serve pending operator requests, never block."""
        ...

    def plan(self, step: int, t_s: float, result: ControlStep) -> None:
        """Called after every controller step with its result (plan over the horizon included)."""
        ...


class ConsoleTap(RecorderTap):
    """A :class:`Recorder` that forwards everything to ``inner`` and shows each controller step to ``console``."""

    def __init__(self, inner: Recorder, console: LoopConsole) -> None:
        """Args: inner: the batch record; console: who sees the controller steps."""
        super().__init__(inner)
        self.console = console

    def control(self, step: int, t_s: float, result: ControlStep) -> None:
        """Forward, then show the step to the console."""
        self.inner.control(step, t_s, result)
        self.console.plan(step, t_s, result)
