"""The closed loop: one step is read → record → estimate → record → decide → record → write → record.

The loop knows only protocols (Plant, Estimator, Controller, Clock, Recorder), never concrete classes,
so the same code drives a simulated plant in-process, a plant server over ZeroMQ, or a hardware gateway.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from plant_models.errors import ProtocolError
from plant_models.spec import ModelSpec
from twin.interfaces import Clock, Controller, Estimator, FloatArray, Measurements, Plant
from twin.record import EventRow, Recorder, SetpointRow


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
        budget_s: controller compute budget per step; a slower step counts as a deadline miss.
        first_seq: sequence number of the first setpoint (so a resumed run continues the sequence).
    """
    misses = refused = fallbacks = 0
    u_applied: FloatArray | None = None
    seq = first_seq
    for step in range(steps):
        meas = plant.read()
        recorder.measurements(step, meas)
        est = estimator.update(meas, u_applied)
        recorder.estimate(step, est)
        for name in est.rejected:
            recorder.event(EventRow(meas.time_s, "measurement_rejected", f"{name}: missing or not finite"))

        result = controller.step(meas.time_s, est.x, est.p)
        recorder.control(step, meas.time_s, result)
        if budget_s is not None and result.compute_s > budget_s:
            misses += 1
            recorder.event(
                EventRow(meas.time_s, "deadline_miss", f"controller took {result.compute_s:.3f} s > {budget_s} s")
            )
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
        else:
            recorder.setpoint(SetpointRow(step, seq, reply.time_s, "applied", dict(reply.applied)))
            u_applied = np.array([reply.applied[n] for n in spec.inputs])
        seq += 1
        overrun = clock.wait_next_period()
        if overrun > 0:
            misses += 1
            recorder.event(EventRow(meas.time_s, "period_overrun", f"late by {overrun:.3f} s"))
    final = plant.read()
    recorder.measurements(steps, final)
    return LoopResult(steps, final, misses, refused, fallbacks)

