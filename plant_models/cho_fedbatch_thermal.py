"""CHO fed-batch in a heated vessel: ``cho_fedbatch`` composed with ``reactor_thermal``.

Not a third hand-written model: the culture's temperature input is wired to the vessel's broth
temperature, the vessel's metabolic-heat input to the culture's heat output, and the feed flow ``F`` and
volume ``V`` are shared. What is left as inputs are the wire protocol's actuators: feed pump flow ``F``
(L/h) and heater power ``P_heater`` (W).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from plant_models.cho_fedbatch import CHO_UNCERTAINTY, cho_fedbatch
from plant_models.compose import compose
from plant_models.errors import ModelError
from plant_models.reactor_thermal import VESSELS, reactor_thermal
from plant_models.spec import ModelSpec
from plant_models.uncertainty import ParameterUncertainty

# The simulated plant's uncertainty: the culture's, plus the vessel's heat loss (UA is an engineering
# estimate with a range of about ±33 % around its midpoint in reference §3.3).
UNCERTAINTY = ParameterUncertainty(relative=MappingProxyType({**CHO_UNCERTAINTY.relative, "UA": 0.3}))

CONNECTIONS: Mapping[str, str] = MappingProxyType({"T": "T", "Q_met": "Q_met"})
SHARED = ("F", "V")


def cho_fedbatch_thermal(vessel: str = "bench_2l", temperature_set: str = "moderate") -> ModelSpec:
    """Build the CHO fed-batch + heated vessel composition.

    Args:
        vessel: name in ``reactor_thermal.VESSELS`` (``bench_2l`` or ``pilot_200l``).
        temperature_set: name in ``cho_fedbatch.TEMPERATURE_SETS``.

    Raises:
        ModelError: unknown vessel or temperature set.
    """
    if vessel not in VESSELS:
        raise ModelError(f"unknown vessel {vessel!r} (known: {', '.join(VESSELS)})")
    culture = cho_fedbatch(temperature_set, scale=VESSELS[vessel].start_volume_l)
    return compose(
        culture,
        reactor_thermal(vessel),
        name="cho_fedbatch_thermal",
        description=(
            f"CHO fed-batch (cho_fedbatch, {temperature_set!r} temperature set) in a heated vessel "
            f"(reactor_thermal, {vessel}); inputs: feed pump flow F and heater power P_heater."
        ),
        connections=CONNECTIONS,
        shared=SHARED,
    )


def cho_fedbatch_thermal_pilot() -> ModelSpec:
    """The composition in the 200 L pilot vessel (``plant_models.cho_fedbatch_thermal:cho_fedbatch_thermal_pilot``)."""
    return cho_fedbatch_thermal("pilot_200l")
