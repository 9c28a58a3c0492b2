"""The simulated plant: a ModelSpec integrated with its own "true" parameters, seen through devices.

This is the device-level backend that a protocol server (``bioimp plant serve``) exposes. It knows
nothing about the wire: validation of setpoints against device limits, idempotent sequence numbers and
fail-safe handling belong to the protocol layer (hil/), so that a hardware gateway gets them too.

Each model input is an actuator (its reading is the applied value: the readback). The sensors are
either

* every model output, exact, sampled at each ``advance`` (no :class:`~twin.sensors.SensorConfig`: the
  behaviour of the first issues, kept for ``fedbatch_haldane``), or
* the instruments of a :class:`~twin.sensors.SensorConfig`: noisy online probes on a fixed sample grid,
  feed totalizers, and offline assays reported late with their true sample time, each assay removing
  its sample volume from the vessel.

With ``process_noise`` the true state also wanders: after each integration segment of ``dt`` model time
units, state ``i`` is multiplied by ``exp(s_i·sqrt(dt)·N(0,1) − s_i²·dt/2)`` (a mean-preserving
log-normal step: a geometric random walk, which keeps concentrations positive) — the batch-to-batch
and within-batch biological variability no model has. The plant starts with every actuator at its safe
value. All randomness comes from ``seed`` (separate streams for process and sensor noise).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from plant_models.errors import SolverFailed
from plant_models.spec import ModelSpec
from twin.interfaces import DeviceInfo, FloatArray, Reading
from twin.sensors import SensorConfig, SensorDevice
from twin.simulator import Simulator, SimulatorConfig

# Two event times closer than this (s) are the same instant (grids are computed in floating point).
_SAME_TIME_S = 1e-6
_NOT_YET = Reading(None, 0.0, 0, "bad")  # a device that has not sampled yet


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


@dataclass(frozen=True)
class _PendingAssay:
    """An assay sample drawn at ``t_s`` whose result is reported at ``release_s``."""

    t_s: float
    release_s: float
    values: Mapping[str, float | None]


# What an advance with sensors changes besides the time and the two random streams
# (SimulatedPlant.advance puts it back when a segment fails).
_ADVANCE_STATE = (
    "true_state", "_readings", "_seq", "_totals", "_pending", "_faults_left", "_last_measured", "assay_times_s"
)


class SimulatedPlant:
    """A virtual-clock plant integrating ``spec`` with true parameters ``params`` from ``x0``.

    Attributes:
        spec: the model.
        time_s: plant time in seconds.
        true_state: the plant's true state vector (for tests and studies, never for the controller).
        true_params: the plant's true parameter vector (ditto).
    """

    def __init__(
        self,
        spec: ModelSpec,
        params: Mapping[str, float] | None = None,
        x0: Mapping[str, float] | None = None,
        sim_config: SimulatorConfig | None = None,
        *,
        sensors: SensorConfig | None = None,
        process_noise: Mapping[str, float] | None = None,
        seed: int = 0,
    ) -> None:
        """Create the plant at time 0 with actuators at their safe values.

        Args:
            spec: the model to integrate.
            params: true parameters (defaults to the nominal ones); unnamed ones stay nominal.
            x0: initial state overrides (others from ``spec.x0``).
            sim_config: integrator tolerances.
            sensors: the plant's instruments; None: every output, exact (see the module docstring).
            process_noise: state name -> relative standard deviation per sqrt(model time unit).
            seed: seeds the process and sensor noise.

        Raises:
            ScenarioError: the sensor configuration does not fit the model.
            ModelError: unknown parameter, state or process-noise name.
        """
        self.spec = spec
        self.name = spec.name
        self._sim = Simulator(spec, sim_config)
        self._p = np.array(spec.vector("params", {**spec.nominal_params, **(params or {})}))
        self.true_params: FloatArray = self._p.copy()
        self.true_state: FloatArray = np.array(spec.vector("states", {**spec.x0, **(x0 or {})}))
        self._u = np.array([spec.input_safe[n] for n in spec.inputs])
        self._input_index = {n: i for i, n in enumerate(spec.inputs)}
        self.time_s = 0.0
        #: Plant seconds per wall second when served on a real-time clock (``plant serve --time-scale``).
        self.time_scale = 1.0
        self._sample_seq = 0
        # An integration done ahead by prepare_advance: (what it started from and spans, the state it reached).
        self._ahead: tuple[tuple[float, float, bytes, bytes], FloatArray] | None = None
        noise = dict(process_noise or {})
        spec.vector("states", {**dict.fromkeys(spec.states, 0.0), **noise})  # rejects unknown names
        self._noise_std = np.array([float(noise.get(n, 0.0)) for n in spec.states])
        self._noisy = bool(np.any(self._noise_std > 0))
        self._rng_process = np.random.default_rng([seed, 1])
        self._rng_sensor = np.random.default_rng([seed, 2])
        self.sensors = sensors
        actuators = tuple(
            DeviceInfo(n, "actuator", spec.units[n], *spec.input_bounds[n], safe=spec.input_safe[n])
            for n in spec.inputs
        )
        if sensors is None:
            self._devices = actuators + tuple(self._sensor_info(n, n) for n in spec.outputs)
            return
        sensors.validate(spec)
        per_time = f"/{spec.time_unit}"
        totals = tuple(
            DeviceInfo(name, "sensor", spec.units[src].removesuffix(per_time), 0.0, None)
            for name, src in sensors.totalizers.items()
        )
        self._devices = actuators + tuple(self._sensor_info(d.name, d.measures) for d in sensors.devices) + totals
        self._readings: dict[str, Reading] = {d.name: _NOT_YET for d in sensors.devices}
        self._readings.update({n: _NOT_YET for n in sensors.totalizers})
        self._seq: dict[str, int] = dict.fromkeys(self._readings, 0)
        self._totals = dict.fromkeys(sensors.totalizers, 0.0)
        self._pending: list[_PendingAssay] = []
        self._faults_left = list(sensors.faults)
        self._last_measured: dict[str, float | None] = {}  # each device's last reading (a stuck probe repeats it)
        self.assay_times_s: list[float] = []  # sample times of the assays drawn so far (tests)
        self._sample_events(0.0)

    def _sensor_info(self, device: str, signal: str) -> DeviceInfo:
        bounds = self.spec.state_bounds.get(signal, (-math.inf, math.inf))
        return DeviceInfo(device, "sensor", self.spec.units[signal], *(_finite_or_none(b) for b in bounds))

    def devices(self) -> tuple[DeviceInfo, ...]:
        """Actuators (one per model input) then sensors."""
        return self._devices

    def read(self, names: Iterable[str] | None = None) -> dict[str, Reading]:
        """Latest reading of each named device (all when ``names`` is None), with its sample time."""
        actuators = {
            n: Reading(float(v), self.time_s, self._sample_seq) for n, v in zip(self.spec.inputs, self._u, strict=True)
        }
        if self.sensors is None:
            y = self._sim.outputs(self.true_state, self._u, self._p)
            values = {
                n: Reading(float(v), self.time_s, self._sample_seq) for n, v in zip(self.spec.outputs, y, strict=True)
            }
        else:
            values = dict(self._readings)
        values.update(actuators)
        wanted = list(values) if names is None else list(names)
        return {n: values[n] for n in wanted}

    def apply(self, setpoints: Mapping[str, float]) -> dict[str, float]:
        """Hold the given actuator values from now on; return every actuator's applied value.

        The caller (the protocol layer) has already checked names, finiteness and limits.
        """
        for name, value in setpoints.items():
            self._u[self._input_index[name]] = float(value)
        return self.applied()

    def applied(self) -> dict[str, float]:
        """Currently applied value of every actuator."""
        return {n: float(v) for n, v in zip(self.spec.inputs, self._u, strict=True)}

    def apply_safe(self) -> dict[str, float]:
        """Put every actuator at its safe value (fail-safe)."""
        return self.apply(self.spec.input_safe)

    def advance(self, dt_s: float) -> float:
        """Integrate ``dt_s`` seconds with the applied inputs held; samples due meanwhile are taken."""
        t_end = self.time_s + dt_s
        if self.sensors is None:
            self._integrate(t_end)  # one step: it fails before it changes anything
        else:
            # Integrate segment by segment, stopping at each sample instant in (time_s, t_end]. A failed
            # segment must not leave the plant part of the way (the protocol: time does not move on a
            # failed advance), so the state the segments change is put back.
            saved = {k: getattr(self, k).copy() for k in _ADVANCE_STATE}  # shallow: the items are immutable
            draws = (self._rng_process.bit_generator.state, self._rng_sensor.bit_generator.state)
            time_s = self.time_s
            try:
                for t_event in self._event_times(self.time_s, t_end):
                    self._integrate(t_event)
                    self._sample_events(t_event)
                self._integrate(t_end)
                self._release_assays()
            except BaseException:
                self.__dict__.update(saved)
                self.time_s = time_s
                self._rng_process.bit_generator.state, self._rng_sensor.bit_generator.state = draws
                raise
        self.time_s = t_end
        self._sample_seq += 1
        return self.time_s

    def prepare_advance(self, dt_s: float) -> None:
        """Integrate ahead, changing nothing, the first segment of an ``advance(dt_s)`` expected next.

        A plant server calls it while it waits for the next request (after a write, a loop's next
        request is the advance of its period). That advance takes the result only if it integrates
        exactly this segment, from exactly this state with these inputs; otherwise it integrates afresh.
        Either way its result is the same, bit for bit.
        """
        t_to_s = self.time_s + dt_s
        if self.sensors is not None:
            t_to_s = min(self._event_times(self.time_s, t_to_s), default=t_to_s)
        dt_s = t_to_s - self.time_s
        if dt_s <= 0.0:
            return
        try:
            x_next = self._sim.step(self.true_state, self._u, self._p, dt_s / self.spec.seconds_per_time_unit)
        except SolverFailed:
            return  # the advance itself will fail, and say so
        self._ahead = (self._segment(t_to_s), x_next)

    def _segment(self, t_to_s: float) -> tuple[float, float, bytes, bytes]:
        """What an integration to ``t_to_s`` from now depends on (the true parameters never change)."""
        return self.time_s, t_to_s, self.true_state.tobytes(), self._u.tobytes()

    # --- integration -------------------------------------------------------------------------------

    def _integrate(self, t_to_s: float) -> None:
        dt_s = t_to_s - self.time_s
        if dt_s <= 0.0:
            return
        dt = dt_s / self.spec.seconds_per_time_unit
        ahead, self._ahead = self._ahead, None
        if ahead is not None and ahead[0] == self._segment(t_to_s):
            self.true_state = ahead[1]  # prepare_advance integrated this very segment
        else:
            self.true_state = self._sim.step(self.true_state, self._u, self._p, dt)
        if self.sensors is not None:
            for name, src in self.sensors.totalizers.items():
                self._totals[name] += float(self._u[self._input_index[src]]) * dt
        if self._noisy:
            s = self._noise_std
            z = self._rng_process.standard_normal(self.spec.nx)
            self.true_state = self.true_state * np.exp(s * math.sqrt(dt) * z - 0.5 * s * s * dt)
        self.time_s = t_to_s

    # --- instruments -------------------------------------------------------------------------------

    def _event_times(self, t_from: float, t_to: float) -> list[float]:
        """Sample instants in ``(t_from, t_to]``: every assay, and the last online sample (only the
        latest online sample is ever read, so earlier ones need not be taken)."""
        cfg = self.sensors
        assert cfg is not None
        times: set[float] = set()
        k_online = math.floor(t_to / cfg.online_period_s + 1e-9)
        if k_online * cfg.online_period_s > t_from + _SAME_TIME_S:
            times.add(k_online * cfg.online_period_s)
        if cfg.assays:
            k = max(0, math.ceil((t_from - cfg.assay_first_s) / cfg.assay_period_s - 1e-9))
            while (t := cfg.assay_first_s + k * cfg.assay_period_s) <= t_to + _SAME_TIME_S:
                if t > t_from + _SAME_TIME_S:
                    times.add(t)
                k += 1
        return sorted(times)

    def _sample_events(self, t_s: float) -> None:
        """Take the samples due at ``t_s`` (the plant's current time)."""
        cfg = self.sensors
        assert cfg is not None
        k_online = round(t_s / cfg.online_period_s)
        if abs(t_s / cfg.online_period_s - k_online) * cfg.online_period_s < _SAME_TIME_S:
            # Only the latest online sample is ever read, so the ones in between are not simulated; the
            # seq is still the sample's number on the grid (k + 1), so a reader sees how many it missed.
            for d in cfg.online:
                self._publish(d.name, self._measure(d, t_s), t_s, k_online + 1)
            for name in cfg.totalizers:
                self._publish(name, self._totals[name], t_s, k_online + 1)
        k = (t_s - cfg.assay_first_s) / cfg.assay_period_s
        if cfg.assays and k > -1e-9 and abs(k - round(k)) * cfg.assay_period_s < _SAME_TIME_S:
            values = {d.name: self._measure(d, t_s) for d in cfg.assays}
            self._pending.append(_PendingAssay(t_s, t_s + cfg.assay_delay_s, values))
            self.assay_times_s.append(t_s)
            if cfg.assay_volume > 0:
                # The sample leaves the vessel: volume drops, concentrations do not change.
                i = self.spec.states.index(cfg.volume_state)
                self.true_state[i] = max(0.0, self.true_state[i] - cfg.assay_volume)
            self._release_assays()

    def _measure(self, device: SensorDevice, t_s: float) -> float | None:
        """One noisy sample of ``device`` now (after any scripted fault)."""
        true = self._true_signal(device.measures)
        value: float | None = true + device.std(true) * float(self._rng_sensor.standard_normal())
        for fault in self._faults_left:
            if fault.device == device.name and t_s >= fault.at_s - _SAME_TIME_S:
                if fault.until_s is None or t_s >= fault.until_s - _SAME_TIME_S:
                    self._faults_left.remove(fault)  # a one-sample fault, or its window's last sample
                if fault.stuck:
                    value = self._last_measured.get(device.name, value)
                elif fault.drift_per_s is not None:
                    value = None if value is None else value + fault.drift_per_s * (t_s - fault.at_s)
                else:
                    value = fault.value if fault.factor is None else true * fault.factor
                break
        self._last_measured[device.name] = value
        return value

    def _true_signal(self, name: str) -> float:
        if name in self.spec.states:
            return float(self.true_state[self.spec.states.index(name)])
        y = self._sim.outputs(self.true_state, self._u, self._p)
        return float(y[self.spec.outputs.index(name)])

    def _publish(self, device: str, value: float | None, t_s: float, seq: int | None = None) -> None:
        self._seq[device] = self._seq[device] + 1 if seq is None else seq
        finite = value is not None and math.isfinite(value)
        self._readings[device] = Reading(value if finite else None, t_s, self._seq[device], "good" if finite else "bad")

    def _release_assays(self) -> None:
        """Report every assay whose result is due by now, oldest first (a device shows the latest)."""
        due = [a for a in self._pending if a.release_s <= self.time_s + _SAME_TIME_S]
        for assay in sorted(due, key=lambda a: a.t_s):
            for name, value in assay.values.items():
                self._publish(name, value, assay.t_s)
            self._pending.remove(assay)
