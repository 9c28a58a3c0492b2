"""The closed loop: one step is read → record → estimate → record → decide → record → write → record.

The loop knows only protocols (Plant, Estimator, Controller, Clock, Recorder), never concrete classes,
so the same code drives a simulated plant in-process, a plant server over ZeroMQ, or a hardware gateway.

What it does when things go wrong (each is recorded as an event):

* a step slower than its compute budget is a deadline miss; unless the controller already fell back,
  the previous plan's next move is applied instead of the late answer;
* a write refused with ``failsafe`` halts control: the loop keeps reading and estimating, sends no
  setpoint, and resumes only once the plant has been armed again (an operator action, ``bioimp arm``);
* a plant that does not answer a read, a write or (while halted) a heartbeat, after the client's
  idempotent retries, loses that period; the loop carries on with the next one;
* a clock overrun skips to the next period start, never bursts; the periods skipped are steps lost, so a
  batch of ``steps`` periods still ends on time (its harvest is due then, faults or not).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

import numpy as np

from plant_models.errors import PlantTimeout, ProtocolError
from plant_models.spec import ModelSpec
from twin.interfaces import Clock, Controller, Estimator, FloatArray, Measurements, Plant
from twin.record import EventRow, Recorder, SetpointRow

_FAILSAFE = "failsafe"  # the wire protocol's error code for a write refused in fail-safe
#: Why the estimator refuses a reading: the estimators' common rule (see twin/estimation.py, twin/ekf.py).
REJECTED = "rejected by the estimator (missing, not finite, outside its physical range, stuck or > 5 sigma)"


@dataclass(frozen=True)
class LoopResult:
    """Counters of a finished loop (the full history is in the recorder)."""

    steps: int
    final: Measurements
    deadline_misses: int
    refused_writes: int
    fallbacks: int


def run_loop(
    *,
    spec: ModelSpec,
    plant: Plant,
    estimator: Estimator,
    controller: Controller,
    clock: Clock,
    recorder: Recorder,
    steps: int,
    period_s: float,
    budget_s: float | None = None,
    first_seq: int = 1,
    plant_events: Callable[[], Iterable[EventRow]] | None = None,
    between_steps: Callable[[], None] | None = None,
) -> LoopResult:
    """Run ``steps`` periods of closed-loop control and a final read.

    Args:
        spec: the model (input names order the controller's ``u``).
        plant: where measurements come from and setpoints go.
        estimator: turns measurements into the twin's state.
        controller: decides inputs from the estimate.
        clock: moves time forward one period.
        recorder: receives every event of the data flow.
        steps: number of control periods.
        period_s: period length (s); each setpoint is valid until the end of its period.
        budget_s: controller compute budget per step; a slower step counts as a deadline miss, and unless
            the controller already fell back, the previous plan's next move is applied instead.
        first_seq: sequence number of the first setpoint (so a resumed run continues the sequence).
        plant_events: what the plant announced on its own (fail-safe, a gateway's device faults), drained
            into the recorder before each read.
        between_steps: called once at the start of every period, in the loop's thread (the operator
            channel of ``bioimp run``: a re-arm or a bound change takes effect between two steps).
    """
    misses = refused = fallbacks = 0
    u_applied: FloatArray | None = None
    plan: FloatArray | None = None  # the last applied step's plan over the horizon, for a late step
    halted = False  # the plant is in fail-safe: nothing is sent until it is armed again
    seq = first_seq
    t_last = float("nan")  # plant time of the last reading
    next_step = 0  # after an overrun, the first step whose period has not been skipped
    for step in range(steps):
        if step < next_step:
            continue  # this period passed while the loop was late: it is lost, not made up for
        if between_steps is not None:
            between_steps()
        _record_plant_events(plant_events, recorder)
        try:
            meas = plant.read()
        except PlantTimeout as exc:
            # A real-time loop rides through a short outage: the period is lost, the gap recorded.
            recorder.event(EventRow(t_last, "plant_unreachable", f"read: {exc}"))
            lost = _wait(clock, recorder, t_last)
            misses, next_step = misses + (lost > 0), step + 1 + lost
            continue
        recorder.measurements(step, meas)
        if meas.time_s < t_last:
            # A restarted plant server (or gateway) counts its time from zero again: say so in the record.
            reset = f"plant time went back from {t_last:g} s to {meas.time_s:g} s: the plant server restarted"
            recorder.event(EventRow(meas.time_s, "plant_time_reset", reset))
        t_last = meas.time_s
        est = estimator.update(meas, u_applied)
        recorder.estimate(step, est)
        for name in est.rejected:
            recorder.event(EventRow(meas.time_s, "measurement_rejected", f"{name}: {REJECTED}"))

        if halted:
            try:
                _, state = plant.heartbeat()
            except PlantTimeout as exc:
                # Still halted: the plant is asked again next period, as after a lost read.
                recorder.event(EventRow(meas.time_s, "plant_unreachable", f"heartbeat: {exc}"))
                state = "failsafe"
            if state == "failsafe":
                lost = _wait(clock, recorder, meas.time_s)
                misses, next_step = misses + (lost > 0), step + 1 + lost
                continue
            halted = False
            plan = None
            recorder.event(EventRow(meas.time_s, "plant_armed", "the plant was re-armed; control resumes"))

        result = controller.step(meas.time_s, est.x, est.p)
        if budget_s is not None and result.compute_s > budget_s:
            misses += 1
            late = f"controller took {result.compute_s:.3f} s > budget {budget_s} s"
            if result.fallback is None and plan is not None and len(plan) > 1:
                # Too late to trust as fresh: apply the previous plan's next move instead.
                result = replace(result, u=plan[1], fallback="previous_plan", predicted_x=None, planned_u=plan[1:])
                late += "; applied the previous plan's next move"
            recorder.event(EventRow(meas.time_s, "deadline_miss", late))
        recorder.control(step, meas.time_s, result)
        if result.fallback is not None:
            fallbacks += 1
            recorder.event(EventRow(meas.time_s, "controller_fallback", f"{result.status}: {result.fallback}"))

        setpoints = {n: float(v) for n, v in zip(spec.inputs, result.u, strict=True)}
        recorder.setpoint(SetpointRow(step, seq, meas.time_s, "intended", setpoints))
        try:
            reply = plant.write(setpoints, seq, valid_until_s=meas.time_s + period_s)
        except ProtocolError as exc:
            refused += 1
            recorder.setpoint(SetpointRow(step, seq, meas.time_s, "refused", setpoints, exc.code))
            recorder.event(EventRow(meas.time_s, "setpoint_refused", str(exc)))
            if exc.code == _FAILSAFE:
                # The plant now holds its safe values, not our last setpoint: the estimator must know.
                halted = True
                u_applied = _actuator_readings(spec, meas, u_applied)
                recorder.event(EventRow(meas.time_s, "plant_failsafe", "no setpoint is sent until the plant is armed"))
        except PlantTimeout as exc:
            recorder.event(EventRow(meas.time_s, "plant_unreachable", f"write seq {seq}: {exc}"))
        else:
            recorder.setpoint(SetpointRow(step, seq, reply.time_s, "applied", dict(reply.applied)))
            u_applied = np.array([reply.applied[n] for n in spec.inputs])
            plan = result.planned_u
        seq += 1
        lost = _wait(clock, recorder, meas.time_s)
        misses, next_step = misses + (lost > 0), step + 1 + lost
    _record_plant_events(plant_events, recorder)
    final = _final_read(plant, clock, recorder, t_last)
    recorder.measurements(steps, final)
    return LoopResult(steps, final, misses, refused, fallbacks)


#: Periods the loop keeps asking for the batch's last reading before it gives up.
FINAL_READ_PERIODS = 5


def _final_read(plant: Plant, clock: Clock, recorder: Recorder, t_s: float) -> Measurements:
    """The batch's closing reading, asked again for up to FINAL_READ_PERIODS periods over a lossy link.

    Raises:
        PlantTimeout: the plant stayed unreachable that long.
    """
    for attempt in range(FINAL_READ_PERIODS):
        try:
            return plant.read()
        except PlantTimeout as exc:
            recorder.event(EventRow(t_s, "plant_unreachable", f"final read: {exc}"))
            if attempt == FINAL_READ_PERIODS - 1:
                raise
            if clock.kind == "realtime":  # a virtual clock must not advance the plant past the batch
                clock.wait_next_period()
    raise AssertionError("unreachable")


def _actuator_readings(spec: ModelSpec, meas: Measurements, default: FloatArray | None) -> FloatArray | None:
    """The inputs the plant reports holding (its actuators' readings), or ``default`` if any is missing."""
    values = [meas.values[n].value if n in meas.values else None for n in spec.inputs]
    if any(v is None or not np.isfinite(v) for v in values):
        return default
    return np.array(values, dtype=float)


def _record_plant_events(plant_events: Callable[[], Iterable[EventRow]] | None, recorder: Recorder) -> None:
    if plant_events is not None:
        for row in plant_events():
            recorder.event(row)


def _wait(clock: Clock, recorder: Recorder, t_s: float) -> int:
    """Wait for the next period; record an overrun; return the number of periods skipped (0 if on time)."""
    overrun = clock.wait_next_period()
    if overrun > 0:
        skipped = max(1, int(getattr(clock, "skipped", 1)))  # a RealtimeClock says how many it skipped
        recorder.event(
            EventRow(t_s, "period_overrun", f"late by {overrun:.3f} s; skipped {skipped} period(s), lost as steps")
        )
        return skipped
    return 0
