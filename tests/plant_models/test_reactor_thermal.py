"""reactor_thermal: step response with tau = m cp / UA, steady state, feed and metabolic heat, vessel data."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest

from plant_models import ModelError
from plant_models.reactor_thermal import VESSELS, reactor_thermal
from twin.simulator import Simulator, SimulatorConfig

DATA = Path(__file__).parents[1] / "data"


def _rows() -> dict[float, dict[str, float]]:
    with (DATA / "vessel_thermal_estimates.csv").open() as fh:
        rows = csv.DictReader(line for line in fh if not line.startswith("#"))
        return {float(r["volume_l"]): {k: float(v) for k, v in r.items()} for r in rows}


@pytest.mark.parametrize("vessel", sorted(VESSELS))
def test_heater_step_is_first_order_with_tau_m_cp_over_ua(vessel: str) -> None:
    spec = reactor_thermal(vessel)
    par = spec.nominal_params
    V = spec.x0["V"]
    heat_capacity = par["rho"] * V * par["cp"] + par["C_vessel"]  # J/K: broth plus vessel
    tau_h = heat_capacity / par["UA"] / 3600.0
    power = 0.5 * spec.input_bounds["P_heater"][1]
    gain = power / par["UA"]  # K: final rise above ambient
    sim = Simulator(spec, SimulatorConfig(rtol=1e-10, atol=1e-10))
    p = np.array(spec.vector("params", par))
    x = np.array([par["T_amb"], V])  # start at room temperature, pump stopped, no culture
    t = 0.0
    for k in (0.25, 1.0, 2.0, 5.0):
        x = sim.step(x, np.array([power, 0.0, 0.0]), p, k * tau_h - t)
        t = k * tau_h
        assert x[0] - par["T_amb"] == pytest.approx(gain * (1.0 - math.exp(-k)), rel=1e-7)
    assert x[1] == V  # no feed, no volume change


@pytest.mark.parametrize("vessel", sorted(VESSELS))
def test_holding_power_is_ua_times_temperature_difference(vessel: str) -> None:
    spec = reactor_thermal(vessel)
    par = spec.nominal_params
    p = spec.vector("params", par)
    x = [36.5, spec.x0["V"]]
    hold = par["UA"] * (36.5 - par["T_amb"])
    assert float(spec.f(x, [hold, 0.0, 0.0], p)[0]) == pytest.approx(0.0, abs=1e-12)
    # Feed at T_feed cools by rho F cp (T - T_feed); metabolic heat warms, each per total heat capacity.
    heat_capacity = par["rho"] * x[1] * par["cp"] + par["C_vessel"]
    F = 0.5 * spec.input_bounds["F"][1]
    feed_w = par["rho"] * F / 3600.0 * par["cp"] * (36.5 - par["T_feed"])
    got = float(spec.f(x, [hold, F, 2.0], p)[0])
    assert got == pytest.approx(3600.0 * (2.0 - feed_w) / heat_capacity, rel=1e-12)
    assert float(spec.f(x, [hold, F, 0.0], p)[1]) == F


def test_vessel_data_lie_in_the_reference_ranges() -> None:
    ref = _rows()
    for vessel, size in (("bench_2l", 2.0), ("pilot_200l", 200.0)):
        v = VESSELS[vessel]
        ua = v.params["UA"].value
        assert ref[size]["ua_ambient_min_w_per_k"] <= ua <= ref[size]["ua_ambient_max_w_per_k"]
        # Broth heat capacity of the full vessel, as the reference tabulates it (kJ/K).
        m_cp = v.params["rho"].value * v.max_volume_l * v.params["cp"].value / 1e3
        assert m_cp == pytest.approx(ref[size]["m_cp_kj_per_k"], rel=0.01)
        assert v.max_volume_l == size and v.params["UA"].assumption


def test_heater_off_is_safe_and_unknown_vessel_refused() -> None:
    spec = reactor_thermal()
    assert spec.input_safe == {"P_heater": 0.0, "F": 0.0, "Q_met": 0.0}
    assert spec.units["P_heater"] == "W" and spec.units["T"] == "degC"
    with pytest.raises(ModelError, match="unknown vessel 'tank'"):
        reactor_thermal("tank")
