"""check_plant over every Plant implementation, and against plants that break the protocol."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping

import pytest

from hil.client import ZmqPlant
from hil.handler import ProtocolHandler
from hil.inprocess import InProcessPlant
from hil.launch import PlantProcess, spawn_plant_server
from plant_models.errors import ConformanceError, ProtocolError
from plant_models.registry import resolve_model
from twin.conformance import check_plant
from twin.interfaces import Measurements, PlantInfo, WriteResult
from twin.simulated_plant import SimulatedPlant


def _fedbatch() -> SimulatedPlant:
    return SimulatedPlant(resolve_model("fedbatch_haldane"))


@pytest.fixture(scope="module")
def server() -> Iterator[PlantProcess]:
    with spawn_plant_server("fedbatch_haldane") as proc:
        yield proc


def test_in_process_plant_conforms() -> None:
    backend = _fedbatch()
    check_plant(InProcessPlant(ProtocolHandler(backend)), dt_s=120.0)
    assert backend.time_s == 120.0
    assert backend.applied() == {"inp": 0.0}


def test_real_time_in_process_plant_conforms() -> None:
    check_plant(InProcessPlant(ProtocolHandler(_fedbatch(), clock="realtime")))


def test_zmq_plant_against_a_server_process_conforms(server: PlantProcess) -> None:
    with ZmqPlant(server.command) as plant:
        check_plant(plant)
        assert plant.read().time_s == pytest.approx(60.0, abs=1e-9)


def test_a_second_client_of_the_same_server_conforms_with_its_own_seqs(server: PlantProcess) -> None:
    with ZmqPlant(server.command) as plant:
        check_plant(plant)


class _Wrapped:
    """A Plant delegating to a conforming one; subclasses break one rule each."""

    def __init__(self) -> None:
        self.inner = InProcessPlant(ProtocolHandler(_fedbatch()))

    def hello(self) -> PlantInfo:
        return self.inner.hello()

    def read(self, names: tuple[str, ...] | None = None) -> Measurements:
        return self.inner.read(names)

    def write(self, setpoints: Mapping[str, float], seq: int, valid_until_s: float | None = None) -> WriteResult:
        return self.inner.write(setpoints, seq, valid_until_s)

    def advance(self, dt_s: float) -> float:
        return self.inner.advance(dt_s)

    def close(self) -> None:
        self.inner.close()


class _ClampsInsteadOfRefusing(_Wrapped):
    def write(self, setpoints: Mapping[str, float], seq: int, valid_until_s: float | None = None) -> WriteResult:
        return super().write({k: min(max(v, 0.0), 0.2) for k, v in setpoints.items()}, seq, valid_until_s)


class _ReappliesSameSeq(_Wrapped):
    def __init__(self) -> None:
        super().__init__()
        self.seq = 0

    def write(self, setpoints: Mapping[str, float], seq: int, valid_until_s: float | None = None) -> WriteResult:
        self.seq += 1  # ignores the caller's seq: every write is new
        return super().write(setpoints, self.seq, valid_until_s)


class _IgnoresValidUntil(_Wrapped):
    def write(self, setpoints: Mapping[str, float], seq: int, valid_until_s: float | None = None) -> WriteResult:
        return super().write(setpoints, seq, None)


class _WrongNotFiniteCode(_Wrapped):
    def write(self, setpoints: Mapping[str, float], seq: int, valid_until_s: float | None = None) -> WriteResult:
        if any(not math.isfinite(v) for v in setpoints.values()):
            raise ProtocolError("bad_request", "nan")
        return super().write(setpoints, seq, valid_until_s)


class _SlowClock(_Wrapped):
    def advance(self, dt_s: float) -> float:
        return super().advance(dt_s / 2) if dt_s >= 0 else super().advance(dt_s)


class _ForgetsADevice(_Wrapped):
    def read(self, names: tuple[str, ...] | None = None) -> Measurements:
        meas = super().read(names)
        return Measurements(meas.time_s, {k: v for k, v in meas.values.items() if k != "P_s"})


@pytest.mark.parametrize(
    ("plant_type", "message"),
    [
        (_ClampsInsteadOfRefusing, "expected error 'out_of_range', but it succeeded"),
        (_ReappliesSameSeq, "same seq 1 again"),
        (_IgnoresValidUntil, "valid_until in the past: expected error 'stale'"),
        (_WrongNotFiniteCode, "expected error 'not_finite', got 'bad_request'"),
        (_SlowClock, "advance(60.0) from t=0.0 s returned t=30.0 s"),
        (_ForgetsADevice, "read: devices"),
    ],
)
def test_broken_plants_are_caught_with_a_message_naming_the_rule(plant_type: type[_Wrapped], message: str) -> None:
    with pytest.raises(ConformanceError) as info:
        check_plant(plant_type())
    assert message in str(info.value)
    assert isinstance(info.value, AssertionError)
