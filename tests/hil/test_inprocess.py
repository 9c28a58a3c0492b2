"""InProcessPlant: the Plant protocol through the handler, without sockets."""

from __future__ import annotations

import json
import math

import pytest

from hil.handler import ProtocolHandler
from hil.inprocess import InProcessPlant
from plant_models.errors import ProtocolError
from tests.hil.two_input_model import two_input
from twin.conformance import check_plant
from twin.simulated_plant import SimulatedPlant


def test_two_actuator_plant_conforms_including_all_or_nothing() -> None:
    tank = SimulatedPlant(two_input())
    check_plant(InProcessPlant(ProtocolHandler(tank)), dt_s=5.0)
    assert tank.applied() == {"heat": 0.0, "feed": 0.0}  # check_plant ends at the safe values
    assert tank.time_s == 5.0


def test_all_or_nothing_refusal_keeps_the_good_setpoint_out() -> None:
    tank = SimulatedPlant(two_input())
    plant = InProcessPlant(ProtocolHandler(tank))
    with pytest.raises(ProtocolError) as info:
        plant.write({"heat": 50.0, "feed": 3.0}, seq=1)
    assert info.value.code == "out_of_range"
    assert plant.read(("heat", "feed")).values["heat"].value == 0.0


def test_clients_sharing_a_handler_have_their_own_seqs() -> None:
    handler = ProtocolHandler(SimulatedPlant(two_input()))
    a, b = InProcessPlant(handler, b"a"), InProcessPlant(handler, b"b")
    assert a.write({"heat": 10.0}, seq=1).applied["heat"] == 10.0
    assert b.write({"heat": 20.0}, seq=1).applied["heat"] == 20.0
    assert a.write({"heat": 30.0}, seq=1).applied["heat"] == 10.0  # a's earlier reply
    assert a.read(("heat",)).values["heat"].value == 20.0


def test_telemetry_goes_to_the_callback() -> None:
    seen: list[tuple[str, dict[str, object]]] = []
    plant = InProcessPlant(
        ProtocolHandler(SimulatedPlant(two_input())), on_telemetry=lambda t, p: seen.append((t, json.loads(p)))
    )
    plant.write({"heat": 100.0}, seq=1)
    t = plant.advance(10.0)
    assert [topic for topic, _ in seen] == ["meas"]
    assert seen[0][1]["time"] == t
    temperature = plant.read(("T",)).values["T"]
    # dT/dt = 0.01 K/J * 100 W - 0.001/s * (T - 20): from 20 degC, T(10 s) = 20 + 1000 * (1 - exp(-0.01)).
    assert temperature.value == pytest.approx(20.0 + 1000.0 * (1.0 - math.exp(-0.01)), rel=1e-8)
    assert temperature.t_s == 10.0


def test_heartbeat_reports_time_and_state() -> None:
    handler = ProtocolHandler(SimulatedPlant(two_input()))
    plant = InProcessPlant(handler)
    plant.advance(2.5)
    assert plant.heartbeat() == (2.5, "armed")
    handler.enter_failsafe("test")
    assert plant.heartbeat() == (2.5, "failsafe")
    with pytest.raises(ProtocolError) as info:
        plant.write({"heat": 1.0}, seq=1)
    assert info.value.code == "failsafe"
