"""Which estimator keeps the twin in sync, with its tuning: the scenario's ``[estimator]`` table.

Configured and built are different types: :class:`EstimatorConfig` (frozen, validated) is turned into
an :class:`~twin.interfaces.Estimator` by :func:`build_estimator`.

What each device measures, and its noise, is the instruments' datasheet: the estimator takes it from the
scenario's ``[plant.sensors]`` (never anything else about the plant). Without sensors (the plant reports
every model output exactly) each output device is modelled with ``measurement_rel_std``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING

from plant_models.errors import ScenarioError
from plant_models.spec import ModelSpec
from twin.interfaces import Estimator, FloatArray
from twin.sensors import SensorConfig

if TYPE_CHECKING:
    from twin.scenario import _Table

__all__ = [
    "ESTIMATOR_KINDS",
    "EstimatorConfig",
    "MeasurementModel",
    "build_estimator",
    "measurement_models",
    "parse_estimator",
]

ESTIMATOR_KINDS = ("measured", "ekf", "mhe")


def _empty() -> Mapping[str, float]:
    return MappingProxyType({})


@dataclass(frozen=True)
class MeasurementModel:
    """A device the estimator uses: the state or output it measures and its noise (see twin.sensors)."""

    device: str
    measures: str
    sigma: float = 0.0
    rel_sigma: float = 0.0


@dataclass(frozen=True)
class EstimatorConfig:
    """Estimator kind and tuning. Relative values are fractions of the current value.

    Attributes:
        kind: ``measured`` (full-state feedback), ``ekf`` or ``mhe``.
        x0: the twin's initial belief (overrides of the model's x0).
        initial_std: state -> relative standard deviation of the initial belief (default 0.1).
        process_noise: state -> relative standard deviation per sqrt(model time unit) (default 0.005).
        augment: parameters estimated as random-walk states (e.g. ``mu_m``, ``q_P``).
        param_std: augmented parameter -> relative initial standard deviation (default 0.2).
        param_drift: augmented parameter -> relative random-walk standard deviation per sqrt(model time
            unit) (default 0.001).
        reject_sigma: a measurement whose normalised innovation exceeds this is rejected.
        history_s: how far back (s) states are kept for re-filtering late measurements (and for the MHE's
            window): 30 h covers a result reported a day late and the default 30-update window.
        max_step: longest RK4 step (model time units) of the estimator's prediction.
        horizon: MHE window, in estimator updates.
        measurement_rel_std: relative noise of exact output devices (scenarios without sensors).
    """

    kind: str = "measured"
    x0: Mapping[str, float] = field(default_factory=_empty)
    initial_std: Mapping[str, float] = field(default_factory=_empty)
    process_noise: Mapping[str, float] = field(default_factory=_empty)
    augment: tuple[str, ...] = ()
    param_std: Mapping[str, float] = field(default_factory=_empty)
    param_drift: Mapping[str, float] = field(default_factory=_empty)
    reject_sigma: float = 5.0
    history_s: float = 108000.0
    max_step: float = 0.0625
    horizon: int = 30
    measurement_rel_std: float = 0.01

    def validate(self, spec: ModelSpec, key: str = "estimator") -> None:
        """Check names and ranges against the model.

        Raises:
            ScenarioError: naming the offending key.
        """
        if self.kind not in ESTIMATOR_KINDS:
            raise ScenarioError(f"{key}.kind: unknown estimator {self.kind!r} (known: {', '.join(ESTIMATOR_KINDS)})")
        for name, table, known in (
            ("x0", self.x0, spec.states),
            ("initial_std", self.initial_std, spec.states),
            ("process_noise", self.process_noise, spec.states),
            ("param_std", self.param_std, self.augment),
            ("param_drift", self.param_drift, self.augment),
        ):
            for n, v in table.items():
                if n not in known:
                    raise ScenarioError(f"{key}.{name}.{n}: unknown name (known: {', '.join(known) or 'none'})")
                if not math.isfinite(v) or (name != "x0" and v < 0):
                    raise ScenarioError(f"{key}.{name}.{n}: must be a non-negative number, got {v}")
        for n in self.augment:
            if n not in spec.params:
                raise ScenarioError(f"{key}.augment: model {spec.name!r} has no parameter {n!r}")
        if len(set(self.augment)) != len(self.augment):
            raise ScenarioError(f"{key}.augment: a parameter is named twice")
        for name, value in (
            ("reject_sigma", self.reject_sigma),
            ("history_s", self.history_s),
            ("max_step", self.max_step),
            ("measurement_rel_std", self.measurement_rel_std),
        ):
            if not (math.isfinite(value) and value > 0):
                raise ScenarioError(f"{key}.{name}: must be a positive number, got {value}")
        if self.horizon < 2:
            raise ScenarioError(f"{key}.horizon: must be >= 2, got {self.horizon}")


def parse_estimator(table: _Table, spec: ModelSpec, sensors: SensorConfig | None = None) -> EstimatorConfig:
    """Read the ``[estimator]`` table (defaults when absent) for a plant with ``sensors``.

    Raises:
        ScenarioError: naming the offending key.
    """
    d = EstimatorConfig()
    augment = table._raw("augment", [])
    if not isinstance(augment, list) or not all(isinstance(a, str) for a in augment):
        raise ScenarioError(f"{table.key('augment')}: expected a list of parameter names, got {augment!r}")
    everything = spec.states + spec.params
    config = EstimatorConfig(
        kind=table.string("kind", d.kind),
        x0=table.numbers("x0", spec.states),
        initial_std=table.numbers("initial_std", spec.states),
        process_noise=table.numbers("process_noise", spec.states),
        augment=tuple(augment),
        param_std=table.numbers("param_std", everything),
        param_drift=table.numbers("param_drift", everything),
        reject_sigma=table.number("reject_sigma", d.reject_sigma, positive=True),
        history_s=table.number("history_s", d.history_s, positive=True),
        max_step=table.number("max_step", d.max_step, positive=True),
        horizon=table.integer("horizon", d.horizon, minimum=2),
        measurement_rel_std=table.number("measurement_rel_std", d.measurement_rel_std, positive=True),
    )
    table.finish()
    config.validate(spec, table.path)
    if config.kind == "measured" and sensors is not None:
        # Full-state feedback needs a device named after every state; instruments do not have that.
        names = {d.name for d in sensors.devices}
        missing = [n for n in spec.states if n not in names]
        if missing:
            raise ScenarioError(
                f"{table.key('kind')}: 'measured' needs a sensor named after every state (none for "
                f"{missing[0]!r} in [plant.sensors]); use 'ekf' or 'mhe'"
            )
    return config


def measurement_models(
    spec: ModelSpec, sensors: SensorConfig | None, config: EstimatorConfig
) -> tuple[MeasurementModel, ...]:
    """The devices an estimator fuses: the sensors' datasheet, or every model output (exact plant)."""
    if sensors is None:
        return tuple(MeasurementModel(n, n, 0.0, config.measurement_rel_std) for n in spec.outputs)
    return tuple(MeasurementModel(d.name, d.measures, d.sigma, d.rel_sigma) for d in sensors.devices)


def build_estimator(spec: ModelSpec, p: FloatArray, config: EstimatorConfig, sensors: SensorConfig | None) -> Estimator:
    """The configured estimator for ``spec`` with the twin's parameters ``p``."""
    if config.kind == "measured":
        from twin.estimation import MeasuredStateEstimator

        return MeasuredStateEstimator(spec, p)
    models = measurement_models(spec, sensors, config)
    if config.kind == "ekf":
        from twin.ekf import ExtendedKalmanFilter

        return ExtendedKalmanFilter(spec, p, config, models)
    from twin.mhe import MovingHorizonEstimator

    return MovingHorizonEstimator(spec, p, config, models)
