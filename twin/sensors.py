"""The simulated plant's instruments: which devices it has, how often they sample, how noisy they are.

A pilot plant does not see its state. It has fast **online** probes (temperature, volume or weight, a
feed totalizer) sampled every minute, and slow **offline assays** (cell count, metabolites, titer): a
sample is drawn from the vessel once a day, analysed, and the result is reported hours later with the
time the sample was drawn. :class:`SensorConfig` describes such a set of instruments; the simulated
plant (:mod:`twin.simulated_plant`) implements it and the estimators (:mod:`twin.ekf`) read the same
description as the instruments' datasheet (what each device measures and its noise), never the plant's
true state.

Noise is Gaussian with standard deviation ``sqrt(sigma² + (rel_sigma · value)²)``: absolute for probes
(±0.05 °C), relative for assays (VCD ±5 %, metabolites ±3 %), read as one standard deviation.

Sequence numbers: every new sample of a device gets the next ``seq`` of that device, starting at 1. A
device that has not sampled yet reports ``value=None, seq=0`` (quality ``bad``). Until the next result
arrives a device repeats its last reading (same ``seq``): the seq tells a reader it is not new.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from plant_models.errors import ScenarioError
from plant_models.spec import ModelSpec

if TYPE_CHECKING:  # the scenario reader hands us its table type; no import cycle at run time
    from twin.scenario import _Table

__all__ = ["SensorConfig", "SensorDevice", "SensorFault", "parse_sensors"]


@dataclass(frozen=True)
class SensorDevice:
    """One sensor device on the wire.

    Attributes:
        name: the device name (e.g. ``T``, ``Xv_assay``).
        measures: the model state or output it measures.
        sigma: absolute noise standard deviation (model units).
        rel_sigma: relative noise standard deviation (fraction of the true value).
    """

    name: str
    measures: str
    sigma: float = 0.0
    rel_sigma: float = 0.0

    def std(self, value: float) -> float:
        """Noise standard deviation at ``value``."""
        return math.hypot(self.sigma, self.rel_sigma * value)


@dataclass(frozen=True)
class SensorFault:
    """A scripted fault: the first sample of ``device`` taken at or after ``at_s`` is corrupted, or, with
    ``until_s``, every sample from then until ``until_s``.

    Exactly one of ``value`` (replace the reading, NaN allowed), ``factor`` (multiply it: a spike),
    ``drift_per_s`` (add ``drift_per_s · (t - at_s)``: a probe losing its calibration) and ``stuck`` (the
    probe repeats its last reading before the fault, with new sequence numbers: a frozen transmitter).
    """

    device: str
    at_s: float
    value: float | None = None
    factor: float | None = None
    until_s: float | None = None
    drift_per_s: float | None = None
    stuck: bool = False


@dataclass(frozen=True)
class SensorConfig:
    """A plant's instruments.

    Attributes:
        online: probes sampled every ``online_period_s``.
        assays: offline assays; one sample every ``assay_period_s`` from ``assay_first_s``, each result
            reported ``assay_delay_s`` after its sample time (and carrying that sample time).
        totalizers: device name -> input integrated over time (a feed totalizer: L from L/h), exact,
            sampled with the online probes.
        assay_volume: volume each assay sample removes from the vessel (model volume units, e.g. L).
        volume_state: the state the sample volume is removed from.
        faults: scripted sensor faults (tests, demonstrations).
    """

    online: tuple[SensorDevice, ...] = ()
    assays: tuple[SensorDevice, ...] = ()
    totalizers: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    online_period_s: float = 60.0
    assay_period_s: float = 86400.0
    assay_first_s: float = 0.0
    assay_delay_s: float = 7200.0
    assay_volume: float = 0.002
    volume_state: str = "V"
    faults: tuple[SensorFault, ...] = ()

    @property
    def devices(self) -> tuple[SensorDevice, ...]:
        """Every noisy device: online probes then assays."""
        return self.online + self.assays

    def validate(self, spec: ModelSpec, key: str = "plant.sensors") -> None:
        """Check the configuration against the model.

        Raises:
            ScenarioError: naming the offending key.
        """
        for what, value, positive in (
            ("online_period_s", self.online_period_s, True),
            ("assay_period_s", self.assay_period_s, True),
            ("assay_first_s", self.assay_first_s, False),
            ("assay_delay_s", self.assay_delay_s, False),
            ("assay_volume", self.assay_volume, False),
        ):
            if not math.isfinite(value) or value < 0 or (positive and value == 0):
                kind = "positive" if positive else "non-negative"
                raise ScenarioError(f"{key}.{what}: must be a {kind} number, got {value}")
        if self.assays and self.assay_volume > 0 and self.volume_state not in spec.states:
            raise ScenarioError(f"{key}.volume_state: model {spec.name!r} has no state {self.volume_state!r}")
        names: set[str] = set()
        signals = set(spec.states) | set(spec.outputs)
        for table, devices in (("online", self.online), ("assays", self.assays)):
            for d in devices:
                where = f"{key}.{table}.{d.name}"
                if d.measures not in signals:
                    raise ScenarioError(f"{where}.measures: model {spec.name!r} has no state or output {d.measures!r}")
                if not (math.isfinite(d.sigma) and d.sigma >= 0 and math.isfinite(d.rel_sigma) and d.rel_sigma >= 0):
                    raise ScenarioError(f"{where}: sigma and rel_sigma must be non-negative numbers")
                if d.name in names or d.name in spec.inputs:
                    raise ScenarioError(f"{where}: device name {d.name!r} is used twice")
                names.add(d.name)
        for name, source in self.totalizers.items():
            if source not in spec.inputs:
                raise ScenarioError(f"{key}.totalizers.{name}: model {spec.name!r} has no input {source!r}")
            if name in names or name in spec.inputs:
                raise ScenarioError(f"{key}.totalizers.{name}: device name {name!r} is used twice")
            names.add(name)
        for i, f in enumerate(self.faults):
            where = f"{key}.faults[{i}]"
            if f.device not in names or f.device in self.totalizers:
                raise ScenarioError(f"{where}.device: no online or assay device {f.device!r}")
            kinds = (f.value is not None, f.factor is not None, f.drift_per_s is not None, f.stuck)
            if sum(kinds) != 1:
                raise ScenarioError(f"{where}: give exactly one of value, factor, drift_per_s and stuck")
            if f.until_s is not None and not f.until_s >= f.at_s:
                raise ScenarioError(f"{where}.until_s: must be a time at or after at_s ({f.at_s})")


def _device(key: str, name: str, raw: Any) -> SensorDevice:
    if not isinstance(raw, Mapping):
        raise ScenarioError(f'{key}: expected a table like {{ measures = "T", sigma = 0.05 }}, got {raw!r}')
    from twin.scenario import _Table  # deferred: the scenario module imports this one

    t = _Table(raw, key)
    device = SensorDevice(
        name=name,
        measures=t.string("measures"),
        sigma=t.number("sigma", 0.0),
        rel_sigma=t.number("rel_sigma", 0.0),
    )
    t.finish()
    return device


def parse_sensors(table: _Table, spec: ModelSpec) -> SensorConfig | None:
    """Read a ``[plant.sensors]`` table (None when the table is absent or empty).

    Raises:
        ScenarioError: naming the offending key.
    """
    if not table.data:
        return None
    defaults = SensorConfig()
    online_t, assays_t, totals_t = table.table("online"), table.table("assays"), table.table("totalizers")
    online = tuple(_device(online_t.key(n), n, v) for n, v in online_t.data.items())
    assays = tuple(_device(assays_t.key(n), n, v) for n, v in assays_t.data.items())
    totalizers = {}
    for name in totals_t.data:
        totalizers[name] = totals_t.string(name)
    faults_raw = table._raw("faults", [])
    if not isinstance(faults_raw, list):
        raise ScenarioError(f"{table.key('faults')}: expected an array of tables ([[plant.sensors.faults]])")
    faults = []
    from twin.scenario import _Table

    for i, raw in enumerate(faults_raw):
        key = f"{table.key('faults')}[{i}]"
        if not isinstance(raw, Mapping):
            raise ScenarioError(f"{key}: expected a table, got {raw!r}")
        ft = _Table(raw, key)
        value = ft._raw("value", None)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise ScenarioError(f"{key}.value: expected a number (nan allowed), got {value!r}")
        faults.append(
            SensorFault(
                device=ft.string("device"),
                at_s=ft.number("at_s"),
                value=None if value is None else float(value),
                factor=ft.number("factor", None),
                until_s=ft.number("until_s", None),
                drift_per_s=ft.number("drift_per_s", None),
                stuck=ft.boolean("stuck", False),
            )
        )
        ft.finish()
    config = SensorConfig(
        online=online,
        assays=assays,
        totalizers=MappingProxyType(totalizers),
        online_period_s=table.number("online_period_s", defaults.online_period_s),
        assay_period_s=table.number("assay_period_s", defaults.assay_period_s),
        assay_first_s=table.number("assay_first_s", defaults.assay_first_s),
        assay_delay_s=table.number("assay_delay_s", defaults.assay_delay_s),
        assay_volume=table.number("assay_volume", defaults.assay_volume),
        volume_state=table.string("volume_state", defaults.volume_state),
        faults=tuple(faults),
    )
    table.finish()
    config.validate(spec, table.path)
    return config
