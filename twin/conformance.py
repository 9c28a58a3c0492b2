"""``check_plant``: does a Plant behave as wire protocol v1 says? (Gymnasium's ``check_env`` for plants.)

It drives the plant only through the :class:`~twin.interfaces.Plant` protocol, so it checks any
implementation the same way: the in-process client, the ZeroMQ client against a server process, a
hardware gateway. What it checks:

* ``hello``: protocol 1, a known clock and state, unique device names, consistent limits and safe values;
* ``read``: every device, finite plant and sample times, applied actuator values; ``unknown_device``;
* ``write``: applied values, all or nothing (one out-of-range value among good ones applies none),
  ``not_finite``, ``unknown_device`` (also for a sensor), ``stale`` (``valid_until`` in the past, and a
  seq lower than the last applied), the same seq again returns the earlier reply and is applied once, a
  refused write does not use up its seq;
* time: ``advance`` moves a virtual clock by exactly ``dt``, refuses a negative ``dt``; a real-time plant
  answers ``advance`` with ``unsupported``.

It changes the plant: it writes setpoints (ending at the safe values) and, with a virtual clock, advances
time by ``dt_s``. The client's sequence numbers must be fresh from ``first_seq`` on.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from functools import partial

from plant_models.errors import ConformanceError, ProtocolError
from twin.interfaces import DeviceInfo, Measurements, Plant, PlantInfo

__all__ = ["ConformanceError", "check_plant"]

_NO_SUCH_DEVICE = "__check_plant_no_such_device__"


def _fail(message: str) -> ConformanceError:
    return ConformanceError(f"check_plant: {message}")


def _close(a: float | None, b: float | None, rtol: float, atol: float) -> bool:
    return a is not None and b is not None and math.isclose(a, b, rel_tol=rtol, abs_tol=atol)


def _expect_error(code: str, what: str, call: Callable[[], object]) -> None:
    try:
        call()
    except ProtocolError as exc:
        if exc.code != code:
            raise _fail(f"{what}: expected error {code!r}, got {exc.code!r} ({exc.message})") from None
        return
    raise _fail(f"{what}: expected error {code!r}, but it succeeded")


def _check_hello(plant: Plant) -> PlantInfo:
    info = plant.hello()
    if info.protocol != 1:
        raise _fail(f"hello: protocol {info.protocol}, expected 1")
    if info.clock not in ("virtual", "realtime"):
        raise _fail(f"hello: clock {info.clock!r}")
    if info.state not in ("armed", "failsafe"):
        raise _fail(f"hello: state {info.state!r}")
    if not math.isfinite(info.time_s):
        raise _fail(f"hello: time {info.time_s} is not finite")
    if info.watchdog_s is not None and not info.watchdog_s > 0:
        raise _fail(f"hello: watchdog_s {info.watchdog_s} must be positive or null")
    names = [d.name for d in info.devices]
    if not names or len(set(names)) != len(names):
        raise _fail(f"hello: device names must be present and unique, got {names}")
    for dev in info.devices:
        if dev.kind not in ("actuator", "sensor"):
            raise _fail(f"hello: device {dev.name!r} has kind {dev.kind!r}")
        if dev.min is not None and dev.max is not None and dev.min > dev.max:
            raise _fail(f"hello: device {dev.name!r} has min {dev.min} > max {dev.max}")
        if dev.kind == "actuator":
            if dev.safe is None or not math.isfinite(dev.safe):
                raise _fail(f"hello: actuator {dev.name!r} has no finite safe value")
            if not _within(dev, dev.safe):
                raise _fail(f"hello: safe value {dev.safe} of {dev.name!r} is outside its limits")
    return info


def _within(dev: DeviceInfo, value: float) -> bool:
    return (dev.min is None or value >= dev.min) and (dev.max is None or value <= dev.max)


def _check_read(plant: Plant, info: PlantInfo) -> Measurements:
    meas = plant.read()
    expected = {d.name for d in info.devices}
    if set(meas.values) != expected:
        raise _fail(f"read: devices {sorted(meas.values)}, expected {sorted(expected)}")
    if not math.isfinite(meas.time_s):
        raise _fail(f"read: time {meas.time_s} is not finite")
    for name, reading in meas.values.items():
        if not math.isfinite(reading.t_s):
            raise _fail(f"read: sample time of {name!r} is not finite ({reading.t_s})")
        if reading.t_s > meas.time_s:
            raise _fail(f"read: {name!r} sampled at t={reading.t_s} s, after the plant time {meas.time_s} s")
        if not isinstance(reading.seq, int):
            raise _fail(f"read: sample seq of {name!r} is not an integer")
    for dev in info.devices:
        value = meas.values[dev.name].value
        if dev.kind == "actuator" and (value is None or not math.isfinite(value)):
            raise _fail(f"read: actuator {dev.name!r} reports no applied value")
    sensors = tuple(d.name for d in info.devices if d.kind == "sensor")[:1]
    if sensors and set(plant.read(sensors).values) != set(sensors):
        raise _fail(f"read({sensors}) returned other devices")
    _expect_error("unknown_device", "read of an unknown device", lambda: plant.read((_NO_SUCH_DEVICE,)))
    return meas


def _target(dev: DeviceInfo, avoid: float, fraction: float) -> float:
    """A value inside the limits of ``dev``, different from ``avoid``."""
    if dev.min is not None and dev.max is not None:
        if dev.min == dev.max:
            return dev.min
        value = dev.min + fraction * (dev.max - dev.min)
        return value if value != avoid else dev.min + (1 - fraction) * (dev.max - dev.min)
    base = dev.min if dev.min is not None else dev.max if dev.max is not None else 0.0
    step = fraction * max(1.0, abs(base))
    value = base + step if dev.min is not None else base - step
    return value if value != avoid else value + (step if dev.min is not None else -step)


def _outside(dev: DeviceInfo) -> float | None:
    """A finite value outside the limits of ``dev`` (None if it is unbounded)."""
    if dev.max is not None:
        return dev.max + max(1.0, abs(dev.max))
    if dev.min is not None:
        return dev.min - max(1.0, abs(dev.min))
    return None


class _WriteChecker:
    """The write checks, sharing the plant, its actuators and the tolerances."""

    def __init__(self, plant: Plant, actuators: list[DeviceInfo], rtol: float, atol: float) -> None:
        self.plant = plant
        self.actuators = actuators
        self.names = tuple(d.name for d in actuators)
        self.rtol = rtol
        self.atol = atol

    def applied_now(self) -> dict[str, float | None]:
        return {n: r.value for n, r in self.plant.read(self.names).values.items()}

    def expect_applied(self, what: str, expected: Mapping[str, float], got: Mapping[str, float | None]) -> None:
        for name, value in expected.items():
            if not _close(got.get(name), value, self.rtol, self.atol):
                raise _fail(f"{what}: {name!r} is {got.get(name)}, expected {value}")

    def expect_unchanged(self, what: str, before: Mapping[str, float | None]) -> None:
        after = self.applied_now()
        if after != before:
            raise _fail(f"{what} changed the applied values: {before} -> {after}")

    def refused(self, code: str, what: str, call: Callable[[], object]) -> None:
        before = self.applied_now()
        _expect_error(code, what, call)
        self.expect_unchanged(f"refused {what}", before)


def _check_writes(plant: Plant, info: PlantInfo, seq: int, rtol: float, atol: float) -> None:
    actuators = [d for d in info.devices if d.kind == "actuator"]
    sensors = [d for d in info.devices if d.kind == "sensor"]
    w = _WriteChecker(plant, actuators, rtol, atol)
    current = w.applied_now()
    good = {d.name: _target(d, current[d.name] or 0.0, 0.25) for d in actuators}
    other = {d.name: _target(d, good[d.name], 0.75) for d in actuators}

    first = plant.write(good, seq)
    w.expect_applied(f"write seq {seq} reply", good, first.applied)
    w.expect_applied(f"read after write seq {seq}", good, w.applied_now())

    again = plant.write(other, seq)
    if dict(again.applied) != dict(first.applied) or again.time_s != first.time_s:
        raise _fail(f"write with the same seq {seq} again: reply {again}, expected the earlier {first}")
    w.expect_applied(f"write with the same seq {seq} again (must not be applied)", good, w.applied_now())
    w.refused("stale", f"write with a lower seq {seq - 1}", lambda: plant.write(other, seq - 1))

    seq += 1
    a0 = actuators[0]
    for dev in actuators:
        bad = _outside(dev)
        if bad is not None:
            mixed = {**other, dev.name: bad}
            w.refused("out_of_range", f"write {mixed} (one value out of range)", partial(plant.write, mixed, seq))
            break
    for bad_value in (math.nan, math.inf):
        w.refused("not_finite", f"write {a0.name}={bad_value}", partial(plant.write, {a0.name: bad_value}, seq))
    w.refused(
        "unknown_device",
        "write to an unknown device",
        lambda: plant.write({**other, _NO_SUCH_DEVICE: 0.0}, seq),
    )
    if sensors:
        w.refused(
            "unknown_device", f"write to sensor {sensors[0].name!r}", lambda: plant.write({sensors[0].name: 0.0}, seq)
        )
    now = plant.read().time_s
    w.refused("stale", "write with valid_until in the past", lambda: plant.write(other, seq, valid_until_s=now - 1.0))

    # Refused writes did not use up the seq.
    result = plant.write(other, seq, valid_until_s=now + 1e6)
    w.expect_applied(f"write seq {seq} after refused writes with that seq", other, result.applied)
    safe = {d.name: d.safe for d in actuators if d.safe is not None}
    w.expect_applied("write of the safe values", safe, plant.write(safe, seq + 1).applied)


def _check_time(plant: Plant, info: PlantInfo, dt_s: float, rtol: float, atol: float) -> None:
    before = plant.read()
    if info.clock == "realtime":
        _expect_error("unsupported", "advance on a real-time plant", lambda: plant.advance(dt_s))
        return
    _expect_error("out_of_range", "advance by a negative dt", lambda: plant.advance(-dt_s))
    if plant.read().time_s != before.time_s:
        raise _fail("a refused advance moved the plant time")
    t1 = plant.advance(dt_s)
    if not _close(t1, before.time_s + dt_s, rtol, atol):
        raise _fail(f"advance({dt_s}) from t={before.time_s} s returned t={t1} s")
    after = plant.read()
    if not _close(after.time_s, t1, rtol, atol):
        raise _fail(f"read after advance: time {after.time_s} s, advance returned {t1} s")
    for dev in info.devices:
        old, new = before.values[dev.name], after.values[dev.name]
        if dev.kind == "sensor" and not (new.t_s > old.t_s and new.seq > old.seq):
            raise _fail(f"advance gave sensor {dev.name!r} no new sample (t {old.t_s} -> {new.t_s})")


def check_plant(
    plant: Plant, *, first_seq: int = 1, dt_s: float = 60.0, rtol: float = 1e-9, atol: float = 1e-9
) -> None:
    """Check that ``plant`` behaves as wire protocol v1 says; see the module docstring for the list.

    Args:
        plant: the plant, armed, through a client whose seqs are fresh from ``first_seq`` on.
        first_seq: first sequence number to write (uses ``first_seq - 1 .. first_seq + 2``).
        dt_s: seconds to advance a virtual-clock plant.
        rtol: relative tolerance on applied values and times.
        atol: absolute tolerance on applied values and times.

    Raises:
        ConformanceError: naming the first check that failed.
    """
    info = _check_hello(plant)
    _check_read(plant, info)
    if any(d.kind == "actuator" for d in info.devices):
        if info.state != "armed":
            raise _fail("the plant must be armed to check writes")
        _check_writes(plant, info, first_seq, rtol, atol)
    _check_time(plant, info, dt_s, rtol, atol)
