"""The simulated plant is not the model: its true parameters, process noise and instruments.

A scenario's ``[plant]`` table says how the plant differs from the twin's model:

* ``seed``: one integer from which everything random about the plant follows (true parameters, process
  noise, sensor noise): the same seed gives the same plant and the same readings;
* ``uncertainty``: ``"documented"`` (the model's published uncertainty, :data:`DOCUMENTED_UNCERTAINTY`),
  ``"none"``, or a table of relative half-widths (``{ mu_m = 0.2 }``); the true parameters are drawn
  with :func:`plant_models.draw` around the ``[plant] params`` (nominal where not given);
* ``process_noise``: state -> relative standard deviation per sqrt(model time unit) (see
  :class:`twin.simulated_plant.SimulatedPlant`);
* ``[plant.sensors]``: the instruments (:mod:`twin.sensors`).

Without any of these the plant is the model with the ``[plant] params`` (the first issues' behaviour).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING

import numpy as np

from plant_models.cho_fedbatch import CHO_UNCERTAINTY
from plant_models.cho_fedbatch_thermal import UNCERTAINTY as CHO_THERMAL_UNCERTAINTY
from plant_models.errors import ModelError, ScenarioError
from plant_models.spec import ModelSpec
from plant_models.uncertainty import ParameterUncertainty, draw
from twin.sensors import SensorConfig
from twin.simulated_plant import SimulatedPlant
from twin.simulator import SimulatorConfig

if TYPE_CHECKING:
    from twin.scenario import _Table

__all__ = ["DOCUMENTED_UNCERTAINTY", "PlantMismatch", "build_plant", "parse_mismatch", "parse_seed_only", "true_params"]

#: Built-in model name -> the uncertainty its documentation gives (docs/models.md).
DOCUMENTED_UNCERTAINTY: Mapping[str, ParameterUncertainty] = MappingProxyType(
    {"cho_fedbatch": CHO_UNCERTAINTY, "cho_fedbatch_thermal": CHO_THERMAL_UNCERTAINTY}
)


@dataclass(frozen=True)
class PlantMismatch:
    """How the simulated plant differs from the model.

    Attributes:
        seed: seeds the parameter draw, the process noise and the sensor noise (separate streams).
        uncertainty: relative half-widths of the parameter draw.
        process_noise: state name -> relative standard deviation per sqrt(model time unit).
    """

    seed: int = 0
    uncertainty: ParameterUncertainty = field(default_factory=ParameterUncertainty)
    process_noise: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))


def true_params(spec: ModelSpec, params: Mapping[str, float], mismatch: PlantMismatch | None) -> dict[str, float]:
    """The plant's true parameters: ``params`` (over nominal), drawn around when there is a mismatch."""
    centre = {**spec.nominal_params, **params}
    if mismatch is None:
        return centre
    # Stream 0 of the seed is the parameter draw (the plant uses streams 1 and 2 for noise).
    return draw(spec, mismatch.uncertainty, np.random.default_rng([mismatch.seed, 0]), nominal=centre)


def build_plant(
    spec: ModelSpec,
    *,
    params: Mapping[str, float] | None = None,
    x0: Mapping[str, float] | None = None,
    sim_config: SimulatorConfig | None = None,
    mismatch: PlantMismatch | None = None,
    sensors: SensorConfig | None = None,
) -> SimulatedPlant:
    """The simulated plant of a scenario (what ``bioimp plant serve`` serves).

    Raises:
        ModelError: an unknown parameter, state or uncertainty name.
        ScenarioError: the sensors do not fit the model.
    """
    return SimulatedPlant(
        spec,
        true_params(spec, params or {}, mismatch),
        x0,
        sim_config,
        sensors=sensors,
        process_noise=None if mismatch is None else mismatch.process_noise,
        seed=0 if mismatch is None else mismatch.seed,
    )


def parse_seed_only(model: str, seed: int) -> PlantMismatch:
    """The mismatch of ``bioimp plant serve --model M --seed N``: the model's documented uncertainty.

    Raises:
        ScenarioError: the model has no documented uncertainty.
    """
    if model not in DOCUMENTED_UNCERTAINTY:
        known = ", ".join(DOCUMENTED_UNCERTAINTY)
        raise ScenarioError(f"--seed: model {model!r} has no documented uncertainty (known for: {known})")
    return PlantMismatch(seed=seed, uncertainty=DOCUMENTED_UNCERTAINTY[model])


def parse_mismatch(table: _Table, spec: ModelSpec, model: str) -> PlantMismatch | None:
    """Read ``seed``, ``uncertainty`` and ``process_noise`` of a ``[plant]`` table (None if none is given).

    Raises:
        ScenarioError: naming the offending key.
    """
    if not any(k in table.data for k in ("seed", "uncertainty", "process_noise")):
        for k in ("seed", "uncertainty", "process_noise"):
            table.seen.add(k)
        return None
    seed = table.integer("seed", 0, minimum=0)
    raw = table._raw("uncertainty", "documented")
    key = table.key("uncertainty")
    if isinstance(raw, str):
        if raw == "none":
            uncertainty = ParameterUncertainty()
        elif raw == "documented":
            if model not in DOCUMENTED_UNCERTAINTY:
                known = ", ".join(DOCUMENTED_UNCERTAINTY)
                raise ScenarioError(
                    f"{key}: model {model!r} has no documented uncertainty (known for: {known}); "
                    "give a table of relative half-widths"
                )
            uncertainty = DOCUMENTED_UNCERTAINTY[model]
        else:
            raise ScenarioError(f'{key}: expected "documented", "none" or a table, got {raw!r}')
    else:
        widths = table.numbers("uncertainty", spec.params)
        try:
            uncertainty = ParameterUncertainty(relative=widths)
        except ModelError as exc:
            raise ScenarioError(f"{key}: {exc}") from None
    noise = table.numbers("process_noise", spec.states)
    for name, value in noise.items():
        if value < 0:
            raise ScenarioError(f"{table.key('process_noise')}.{name}: must be >= 0, got {value}")
    return PlantMismatch(seed=seed, uncertainty=uncertainty, process_noise=noise)
