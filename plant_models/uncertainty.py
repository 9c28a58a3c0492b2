"""Parameter uncertainty of a simulated plant: the plant's "true" parameters are not the model's.

A ``ParameterUncertainty`` says, per parameter, how far the truth may lie from the nominal value, as a
relative half-width ``r``: the true value is drawn uniformly from ``nominal * [1 - r, 1 + r]``. Uniform
because the published spread of these parameters (different cell lines, sites, fits) gives a range, not
a distribution; with ``r < 1`` every drawn value keeps the sign of its nominal value. ``draw`` is
reproducible: the same spec, uncertainty and seed give the same parameters.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np

from plant_models.errors import ModelError
from plant_models.spec import ModelSpec


@dataclass(frozen=True)
class ParameterUncertainty:
    """Relative half-widths of uniform uncertainty, per parameter name.

    Attributes:
        relative: parameter name -> r, with 0 <= r < 1 (0.2 means ±20 %). Unnamed parameters are exact.

    Raises:
        ModelError: a width is outside [0, 1) or not finite.
    """

    relative: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        for name, r in self.relative.items():
            if not (math.isfinite(r) and 0.0 <= r < 1.0):
                raise ModelError(f"uncertainty of {name!r}: relative half-width must be in [0, 1), got {r}")
        object.__setattr__(self, "relative", MappingProxyType(dict(self.relative)))


def draw(
    spec: ModelSpec,
    uncertainty: ParameterUncertainty,
    seed: int | np.random.Generator,
    nominal: Mapping[str, float] | None = None,
) -> dict[str, float]:
    """Draw one set of "true" parameters around the nominal ones.

    Args:
        spec: the model; every parameter of it is in the result.
        uncertainty: which parameters are uncertain and by how much.
        seed: an integer seed or a numpy Generator (consumed in the spec's parameter order).
        nominal: centre values (default ``spec.nominal_params``); unnamed ones stay as in the spec.

    Returns:
        parameter name -> value, for every parameter of ``spec``.

    Raises:
        ModelError: the uncertainty names a parameter the model does not have.
    """
    unknown = sorted(set(uncertainty.relative) - set(spec.params))
    if unknown:
        raise ModelError(f"uncertainty names {unknown[0]!r}, which model {spec.name!r} does not have")
    centre = {**spec.nominal_params, **(nominal or {})}
    spec.vector("params", centre)  # rejects unknown names in ``nominal``
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    out = {}
    for name in spec.params:  # fixed order, so a seed always maps to the same values
        r = uncertainty.relative.get(name, 0.0)
        out[name] = float(centre[name]) * (1.0 + r * rng.uniform(-1.0, 1.0)) if r else float(centre[name])
    return out
