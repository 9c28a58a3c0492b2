"""The emulated reactor: a simulated plant running in accelerated wall-clock time, seen as devices.

Hardware does not wait for ``advance``: the emulator's plant time is the wall time since start times
``time_scale``. Each access (a Modbus request, an OPC UA scan) first integrates the plant up to now with
the actuators held, so the model "runs between polls".

Devices of the gateway config whose names are model inputs/outputs are the model's actuators/sensors;
other devices are plain memory (an actuator's readback follows its setpoint; a sensor reads 0).
A *stuck* actuator ignores writes (its readback stays): the fault a readback check must catch.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterable

from hil.gateway.config import DeviceConfig
from plant_models.spec import ModelSpec
from twin.simulated_plant import SimulatedPlant

__all__ = ["EmulatedReactor"]


class EmulatedReactor:
    """A :class:`~twin.simulated_plant.SimulatedPlant` on an accelerated wall clock. Thread-safe."""

    def __init__(
        self,
        spec: ModelSpec,
        devices: Iterable[DeviceConfig],
        *,
        time_scale: float = 1.0,
        stuck: Iterable[str] = (),
        x0: dict[str, float] | None = None,
        params: dict[str, float] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        """Start the plant at time 0 with actuators at the model's safe values (plain ones at 0)."""
        self.spec = spec
        self.plant = SimulatedPlant(spec, params=params, x0=x0)
        self.time_scale = time_scale
        self.devices = {d.name: d for d in devices}
        self.stuck = frozenset(stuck)
        unknown = self.stuck - {n for n, d in self.devices.items() if d.kind == "actuator"}
        if unknown:
            raise ValueError(f"--stuck {sorted(unknown)[0]!r}: no such actuator")
        self._memory: dict[str, float] = {
            n: (d.safe if d.safe is not None else 0.0)
            for n, d in self.devices.items()
            if n not in spec.inputs and n not in spec.outputs
        }
        self._monotonic = monotonic
        self._wall0 = monotonic()
        self._lock = threading.Lock()

    @property
    def time_s(self) -> float:
        """Emulated plant time (seconds)."""
        return self.plant.time_s

    def sync(self) -> None:
        """Integrate the plant up to the accelerated wall time, inputs held."""
        with self._lock:
            target = (self._monotonic() - self._wall0) * self.time_scale
            dt = target - self.plant.time_s
            if dt > 0:
                self.plant.advance(dt)

    def set_actuator(self, name: str, value: float) -> None:
        """The hardware takes a new setpoint (clipped to its physical range; ignored when stuck)."""
        if name in self.stuck or not math.isfinite(value):
            return
        with self._lock:
            if name in self.spec.inputs:
                lo, hi = self.spec.input_bounds[name]
                self.plant.apply({name: min(max(value, lo), hi)})
            elif name in self._memory:
                self._memory[name] = value

    def value(self, name: str) -> float:
        """An actuator's actual value or a sensor's measurement (0.0 for a plain sensor)."""
        with self._lock:
            if name in self.spec.inputs:
                return self.plant.applied()[name]
            if name in self.spec.outputs:
                reading = self.plant.read([name])[name].value
                return reading if reading is not None else math.nan
            return self._memory.get(name, 0.0)
