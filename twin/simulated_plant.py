"""The simulated plant: a ModelSpec integrated with its own "true" parameters, seen through devices.

This is the device-level backend that a protocol server (``bioimp plant serve``) exposes. It knows
nothing about the wire: validation of setpoints against device limits, idempotent sequence numbers and
fail-safe handling belong to the protocol layer (hil/), so that a hardware gateway gets them too.

Each model input is an actuator; each model output is a sensor. The plant starts with every actuator at
its safe value.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import numpy as np

from plant_models.spec import ModelSpec
from twin.interfaces import DeviceInfo, FloatArray, Reading
from twin.simulator import Simulator, SimulatorConfig


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


class SimulatedPlant:
    """A virtual-clock plant integrating ``spec`` with true parameters ``params`` from ``x0``.

    Attributes:
        spec: the model.
        time_s: plant time in seconds.
        true_state: the plant's true state vector (for tests and studies, never for the controller).
    """

    def __init__(
        self,
        spec: ModelSpec,
        params: Mapping[str, float] | None = None,
        x0: Mapping[str, float] | None = None,
        sim_config: SimulatorConfig | None = None,
    ) -> None:
        """Create the plant at time 0 with actuators at their safe values.

        Args:
            spec: the model to integrate.
            params: true parameters (defaults to the nominal ones); unnamed ones stay nominal.
            x0: initial state overrides (others from ``spec.x0``).
            sim_config: integrator tolerances.
        """
        self.spec = spec
        self.name = spec.name
        self._sim = Simulator(spec, sim_config)
        self._p = np.array(spec.vector("params", {**spec.nominal_params, **(params or {})}))
        self.true_state: FloatArray = np.array(spec.vector("states", {**spec.x0, **(x0 or {})}))
        self._u = np.array([spec.input_safe[n] for n in spec.inputs])
        self.time_s = 0.0
        self._sample_seq = 0
        self._devices = tuple(
            DeviceInfo(n, "actuator", spec.units[n], *spec.input_bounds[n], safe=spec.input_safe[n])
            for n in spec.inputs
        ) + tuple(
            DeviceInfo(
                n,
                "sensor",
                spec.units[n],
                *(_finite_or_none(b) for b in spec.state_bounds.get(n, (-math.inf, math.inf))),
            )
            for n in spec.outputs
        )

    def devices(self) -> tuple[DeviceInfo, ...]:
        """Actuators (one per model input) then sensors (one per model output)."""
        return self._devices

    def read(self, names: Iterable[str] | None = None) -> dict[str, Reading]:
        """Latest value of each named device (all when ``names`` is None), with its sample time."""
        y = self._sim.outputs(self.true_state, self._u, self._p)
        values = {n: float(v) for n, v in zip(self.spec.outputs, y, strict=True)}
        values.update({n: float(v) for n, v in zip(self.spec.inputs, self._u, strict=True)})
        wanted = list(values) if names is None else list(names)
        return {n: Reading(values[n], self.time_s, self._sample_seq) for n in wanted}

    def apply(self, setpoints: Mapping[str, float]) -> dict[str, float]:
        """Hold the given actuator values from now on; return every actuator's applied value.

        The caller (the protocol layer) has already checked names, finiteness and limits.
        """
        for name, value in setpoints.items():
            self._u[self.spec.inputs.index(name)] = float(value)
        return self.applied()

    def applied(self) -> dict[str, float]:
        """Currently applied value of every actuator."""
        return {n: float(v) for n, v in zip(self.spec.inputs, self._u, strict=True)}

    def apply_safe(self) -> dict[str, float]:
        """Put every actuator at its safe value (fail-safe)."""
        return self.apply(self.spec.input_safe)

    def advance(self, dt_s: float) -> float:
        """Integrate ``dt_s`` seconds with the applied inputs held; a new sample is then available."""
        self.true_state = self._sim.step(
            self.true_state, self._u, self._p, dt_s / self.spec.seconds_per_time_unit
        )
        self.time_s += dt_s
        self._sample_seq += 1
        return self.time_s
