"""ReadAhead: the loop's read after an advance is the one a separate read gives, and is never stale."""

from __future__ import annotations

from hil.handler import ProtocolHandler
from hil.inprocess import InProcessPlant
from plant_models.registry import resolve_model
from twin.interfaces import Measurements, PlantInfo
from twin.read_ahead import ReadAhead, read_ahead
from twin.simulated_plant import SimulatedPlant


def _plant() -> InProcessPlant:
    return InProcessPlant(ProtocolHandler(SimulatedPlant(resolve_model("fedbatch_haldane"))))


class _Counting(InProcessPlant):
    """Counts the reads asked for on their own (not as part of an advance_and_read)."""

    reads = 0
    _inside = False

    def read(self, names: tuple[str, ...] | None = None) -> Measurements:
        self.reads += not self._inside
        return super().read(names)

    def advance_and_read(self, dt_s: float, names: tuple[str, ...] | None = None) -> tuple[float, Measurements]:
        self._inside = True
        try:
            return super().advance_and_read(dt_s, names)
        finally:
            self._inside = False


def test_reads_after_each_advance_equal_a_separate_read_and_are_taken_once() -> None:
    reference = _plant()
    counting = _Counting(ProtocolHandler(SimulatedPlant(resolve_model("fedbatch_haldane"))))
    plant = ReadAhead(counting)
    for seq, feed in enumerate([0.02, 0.1, 0.0, 0.05], 1):
        assert plant.write({"inp": feed}, seq) == reference.write({"inp": feed}, seq)
        assert plant.advance(600.0) == reference.advance(600.0)
        assert plant.read() == reference.read()
    assert counting.reads == 0  # every read came with its advance
    assert plant.read() == reference.read() and counting.reads == 1  # taken once, then read afresh


def test_a_write_or_any_other_call_between_advance_and_read_drops_the_kept_reading() -> None:
    reference = _plant()
    plant = ReadAhead(_plant())
    plant.advance(600.0)
    reference.advance(600.0)
    # A write changes what the actuators report: the kept reading would now be stale.
    assert plant.write({"inp": 0.07}, 1) == reference.write({"inp": 0.07}, 1)
    assert plant.read() == reference.read()
    assert plant.read().values["inp"].value == 0.07
    plant.advance(60.0)
    reference.advance(60.0)
    plant.heartbeat()
    plant.arm()  # through __getattr__: dropped too
    assert plant.read() == reference.read()


def test_only_a_virtual_clock_plant_is_wrapped() -> None:
    plant = _plant()
    info = plant.hello()
    assert isinstance(read_ahead(plant, info), ReadAhead)
    realtime = PlantInfo(**{**info.__dict__, "clock": "realtime"})
    assert read_ahead(plant, realtime) is plant
