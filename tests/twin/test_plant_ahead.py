"""SimulatedPlant.prepare_advance: integrating ahead changes nothing, bit for bit, and is used when it fits."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from plant_models.registry import resolve_model
from twin.plant_setup import build_plant
from twin.scenario import CHO_SCENARIO, load_scenario
from twin.simulated_plant import SimulatedPlant
from twin.simulator import SimulatorConfig


def _cho_plant() -> SimulatedPlant:
    """The default scenario's plant: drawn parameters, process noise, probes, daily assays."""
    scenario = load_scenario(CHO_SCENARIO)
    sp = scenario.plant
    return build_plant(
        resolve_model(scenario.model),
        params=sp.params,
        x0=sp.x0,
        sim_config=SimulatorConfig(sp.rtol, sp.atol),
        mismatch=sp.mismatch,
        sensors=sp.sensors,
    )


def _count_steps(plant: SimulatedPlant) -> list[float]:
    """Record the span of every CVODES integration the plant makes."""
    spans: list[float] = []
    step: Callable[..., np.ndarray] = plant._sim.step

    def counted(x: np.ndarray, u: np.ndarray, p: np.ndarray, dt: float) -> np.ndarray:
        spans.append(dt)
        return step(x, u, p, dt)

    plant._sim.step = counted  # type: ignore[method-assign]
    return spans


def test_integrating_ahead_gives_the_same_plant_bit_for_bit_and_is_used_when_it_fits() -> None:
    ahead, plain = _cho_plant(), _cho_plant()
    spans = _count_steps(ahead)
    # 26 h of 5-min steps, through the assay at 24 h (its sample leaves the vessel). Every fourth step
    # changes the inputs after preparing, so that the preparation is stale.
    for k in range(26 * 12):
        setpoints = {"F": 0.002 * (k % 7), "P_heater": 2.0 + (k % 5)}
        for plant in (ahead, plain):
            plant.apply(setpoints)
        ahead.prepare_advance(300.0)
        if k % 4 == 3:
            for plant in (ahead, plain):
                plant.apply({"F": 0.001})
        before = len(spans)
        assert ahead.advance(300.0) == plain.advance(300.0)
        # One integration in prepare_advance; the advance adds none when it fitted, one when stale.
        assert len(spans) - before == (1 if k % 4 == 3 else 0)
        assert ahead.true_state.tobytes() == plain.true_state.tobytes()
        assert ahead.read() == plain.read()
    assert ahead.assay_times_s == plain.assay_times_s == [0.0, 86_400.0]


def test_integrating_ahead_for_another_span_is_not_used() -> None:
    ahead, plain = _cho_plant(), _cho_plant()
    spans = _count_steps(ahead)
    ahead.prepare_advance(300.0)
    assert ahead.advance(600.0) == plain.advance(600.0) == 600.0
    assert len(spans) == 2  # prepared 300 s, then integrated the 600 s afresh
    assert ahead.true_state.tobytes() == plain.true_state.tobytes()
    assert ahead.read() == plain.read()
