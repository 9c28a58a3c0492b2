"""A virtual-clock plant read in the same wait as its advance.

Each period of an accelerated batch ends with ``advance`` and the next begins with ``read``: two round
trips to the plant server, each a wait. :class:`ReadAhead` sends both at once when the clock advances
(:meth:`hil.client_base.RequestPlant.advance_and_read`) and hands the reading to the loop's next
``read``. The plant serves the two requests in order, so the reading is the one a separate read would
have returned; any other call to the plant in between (a write, an operator's re-arm) drops it and the
loop reads afresh.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from twin.interfaces import Measurements, Plant, PlantInfo, PlantState, WriteResult

__all__ = ["ReadAhead", "read_ahead"]


class _AdvanceAndRead(Plant, Protocol):
    def advance_and_read(self, dt_s: float) -> tuple[float, Measurements]: ...


class ReadAhead:
    """``plant`` with its ``advance`` also taking the next reading (a :class:`twin.interfaces.Plant`)."""

    def __init__(self, plant: _AdvanceAndRead) -> None:
        """Args: plant: a virtual-clock plant client that can advance and read in one wait."""
        self.plant = plant
        self._reading: Measurements | None = None

    def advance(self, dt_s: float) -> float:
        """Advance the plant by ``dt_s`` s and keep the reading right after it; return the new plant time."""
        self._reading = None  # dropped even if the exchange fails
        t_s, self._reading = self.plant.advance_and_read(dt_s)
        return t_s

    def read(self, names: tuple[str, ...] | None = None) -> Measurements:
        """The reading taken with the last advance (once), else a fresh one."""
        reading, self._reading = self._reading, None
        if reading is not None and names is None:
            return reading
        return self.plant.read(names)

    def write(self, setpoints: Mapping[str, float], seq: int, valid_until_s: float | None = None) -> WriteResult:
        """Apply setpoints (see :class:`twin.interfaces.Plant`)."""
        self._reading = None
        return self.plant.write(setpoints, seq, valid_until_s)

    def hello(self) -> PlantInfo:
        """Describe the plant."""
        self._reading = None
        return self.plant.hello()

    def heartbeat(self) -> tuple[float, PlantState]:
        """Feed the plant's watchdog."""
        self._reading = None
        return self.plant.heartbeat()

    def close(self) -> None:
        """Release the connection."""
        self._reading = None
        self.plant.close()

    def __getattr__(self, name: str) -> Any:
        # Anything else the plant offers (arm, the transport's statistics) goes to it, and since it may
        # change what a reading would say, the kept reading goes.
        self._reading = None
        return getattr(self.plant, name)


def read_ahead(plant: Plant, info: PlantInfo) -> Plant:
    """``plant`` as a :class:`ReadAhead` when its clock is virtual and it can advance and read at once."""
    if info.clock == "virtual" and callable(getattr(plant, "advance_and_read", None)):
        return ReadAhead(plant)  # type: ignore[arg-type]  # checked just above
    return plant
