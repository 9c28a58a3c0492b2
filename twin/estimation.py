"""State estimators. The first is the trivial one: every state is measured directly."""

from __future__ import annotations

import math

import numpy as np

from plant_models.errors import BioimpError
from plant_models.spec import ModelSpec
from twin.interfaces import Estimate, FloatArray, Measurements


class MeasurementRejected(BioimpError, ValueError):
    """A measurement the estimator cannot use (missing or not finite)."""


class MeasuredStateEstimator:
    """Full-state feedback: the estimate is the latest reading of the sensor named after each state.

    A missing or non-finite reading is not passed on: the previous estimate of that state is kept and
    the rejection is reported in the estimate's ``rejected`` so the loop can record it. With no previous estimate the
    update raises :class:`MeasurementRejected`.
    """

    def __init__(self, spec: ModelSpec, p: FloatArray) -> None:
        """Args: spec: the model; p: the parameter vector the twin believes."""
        self.spec = spec
        self.p = np.asarray(p, dtype=float)
        self._x: FloatArray | None = None

    def update(self, meas: Measurements, u_applied: FloatArray | None) -> Estimate:
        """Take the state readings from ``meas``."""
        x = np.empty(self.spec.nx) if self._x is None else self._x.copy()
        rejected = []
        for i, name in enumerate(self.spec.states):
            reading = meas.values.get(name)
            if reading is None or reading.value is None or not math.isfinite(reading.value):
                if self._x is None:
                    raise MeasurementRejected(f"no usable reading of state {name!r} for the first estimate")
                rejected.append(name)
            else:
                x[i] = reading.value
        self._x = x
        return Estimate(meas.time_s, x, self.p, np.zeros(self.spec.nx), tuple(rejected))
