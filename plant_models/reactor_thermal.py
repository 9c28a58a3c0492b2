"""Lumped energy balance of a heated culture vessel (one well-mixed temperature).

    (rho V cp + C_vessel) dT/dt = P_heater - UA (T - T_amb) + rho F cp (T_feed - T) + Q_met

Structure after the IndPenSim and Birol et al. 2002 balances (shared/reference §3.1) with the terms a
heater-driven bench or pilot vessel has: electric heater power, loss through wall/jacket to the room
(UA), sensible heat of the cold feed, metabolic heat (an input, so a culture model can supply it).
Evaporation, agitation and gassing heat are left out: at CHO scale they are small against the heater
(reference §3.2). The vessel volume is a state (dV/dt = F) so the heat capacity follows the fill.

Units: W, J/K, °C, L, L/h, h (time is hours like the culture models: the 3600 converts W = J/s).
The vessel parameter sets are engineering estimates from reference §3.3, flagged as assumptions.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

import casadi as ca

from plant_models.errors import ModelError
from plant_models.parameters import Param, spec_params
from plant_models.spec import ModelSpec, Symbols, build_spec

S_PER_H = 3600.0

WATER = "water at 37 degC; broth taken as water"


@dataclass(frozen=True)
class Vessel:
    """A vessel's thermal data and operating range.

    Attributes:
        name: key in ``VESSELS``.
        description: what the vessel is.
        start_volume_l: working volume at the start of a batch (L).
        max_volume_l: total volume (L): the physical bound of V.
        max_feed_l_per_h: feed pump capacity (L/h).
        max_heater_w: heater capacity (W).
        params: the vessel's parameter values (UA, C_vessel, ...), each with its source.
    """

    name: str
    description: str
    start_volume_l: float
    max_volume_l: float
    max_feed_l_per_h: float
    max_heater_w: float
    params: Mapping[str, Param]


def _common(ua: Param, c_vessel: Param) -> Mapping[str, Param]:
    return MappingProxyType(
        {
            "UA": ua,
            "C_vessel": c_vessel,
            "rho": Param(1.0, "kg/L", WATER),
            "cp": Param(4180.0, "J/kg/K", WATER + " (4.18 kJ/kg/K, reference §3.3)"),
            "T_amb": Param(20.0, "degC", "laboratory room temperature", assumption=True),
            "T_feed": Param(20.0, "degC", "feed stored at room temperature", assumption=True),
        }
    )


VESSELS: Mapping[str, Vessel] = MappingProxyType(
    {
        "bench_2l": Vessel(
            name="bench_2l",
            description="2 L glass bench vessel with a heating blanket, 1 L start",
            start_volume_l=1.0,
            max_volume_l=2.0,
            max_feed_l_per_h=0.1,
            max_heater_w=200.0,  # "a few hundred W" for bench blankets (reference §3.3, recalled)
            params=_common(
                Param(0.6, "W/K", "reference §3.3 table, 2 L: UA_ambient 0.4-0.8 W/K (midpoint)", True),
                # ~1.5 kg of glass at 0.84 kJ/kg/K
                Param(1260.0, "J/K", "1.5 kg glass x 840 J/kg/K (reference §3.3 cp of glass)", True),
            ),
        ),
        "pilot_200l": Vessel(
            name="pilot_200l",
            description="200 L stainless pilot vessel with an electric heater, 100 L start",
            start_volume_l=100.0,
            max_volume_l=200.0,
            max_feed_l_per_h=10.0,
            max_heater_w=5000.0,  # heats 100 L by ~0.7 K/min: our sizing assumption
            params=_common(
                Param(12.0, "W/K", "reference §3.3 table, 200 L: UA_ambient 8-17 W/K (midpoint)", True),
                Param(75000.0, "J/K", "150 kg stainless steel x 500 J/kg/K (reference §3.3 cp of SS)", True),
            ),
        ),
    }
)


def _rhs(x: Symbols, u: Symbols, p: Symbols) -> dict[str, ca.SX]:
    heat_capacity = p["rho"] * x["V"] * p["cp"] + p["C_vessel"]  # J/K: broth plus vessel wall
    loss = p["UA"] * (x["T"] - p["T_amb"])  # W through wall/jacket to the room
    # Feed enters at T_feed and must be warmed to T: rho F cp (T_feed - T), with F in L/h -> per second.
    feed = p["rho"] * u["F"] / S_PER_H * p["cp"] * (p["T_feed"] - x["T"])
    return {
        "T": S_PER_H * (u["P_heater"] - loss + feed + u["Q_met"]) / heat_capacity,
        "V": u["F"],
    }


def reactor_thermal(vessel: str = "bench_2l") -> ModelSpec:
    """Build the heated-vessel energy balance for a vessel in ``VESSELS``.

    Inputs are heater power ``P_heater`` (W), feed flow ``F`` (L/h) and metabolic heat ``Q_met`` (W);
    states are broth temperature ``T`` (°C) and volume ``V`` (L).

    Raises:
        ModelError: unknown vessel.
    """
    if vessel not in VESSELS:
        raise ModelError(f"unknown vessel {vessel!r} (known: {', '.join(VESSELS)})")
    v = VESSELS[vessel]
    return build_spec(
        name="reactor_thermal",
        description=f"Lumped energy balance of a heated vessel ({v.description}).",
        states={"T": "degC", "V": "L"},
        inputs={"P_heater": "W", "F": "L/h", "Q_met": "W"},
        params=spec_params(v.params),
        rhs=_rhs,
        x0={"T": 36.5, "V": v.start_volume_l},
        state_bounds={"T": (0.0, 60.0), "V": (0.0, v.max_volume_l)},
        input_bounds={"P_heater": (0.0, v.max_heater_w), "F": (0.0, v.max_feed_l_per_h), "Q_met": (0.0, 1e6)},
        input_safe={"P_heater": 0.0, "F": 0.0, "Q_met": 0.0},
        references=(
            "Goldrick S et al. (2015) J Biotechnol 193:70-82 (IndPenSim energy balance structure)",
            "Birol G, Ündey C, Çinar A (2002) Comput Chem Eng 26:1553 (energy balance structure)",
            "shared/reference/plant-models.md §3.3 (UA and heat capacity by vessel size, estimates)",
        ),
    )
