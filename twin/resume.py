"""Resume a batch whose controller process died (SIGKILL, power loss) from its record.

The record says how far the loop got; the plant's time says whether the period was already advanced:

1. verify the record (a broken chain is not continued), reconnect to the plant with the run's ZeroMQ
   routing id, ``read`` it; record the outage as an event;
2. finish the interrupted step k, redoing only what was not committed — the estimate and controller
   step (from the recorded measurements, the estimator and controller restored to their state after
   step k-1), the ``intended`` setpoint (from the recorded controller step), the write: a setpoint
   whose ack was never recorded is **resent with the same seq** (the plant answers a repeated seq with
   its earlier reply and does not apply it again); then advance the plant if it was not advanced;
3. continue the loop at step k+1 with the estimator and controller in their state after step k (warm
   start included) and the next seq, up to the batch's last step; then write the run directory.

The plant's time decides between "step k in progress" (plant time = step k's read time) and "step k
over" (later). The loop advances the plant only after the plant answered the write; with ``full``
durability that answer is committed first, with ``normal`` durability an ``applied`` ack is committed
with the next read, so a plant already past step k may have applied a write whose ack was lost: that
seq is resent too (:func:`_ack_lost`). A real-time plant's time always moves on: it is always "over".
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from plant_models.errors import ProtocolError
from twin.batch import HeldInput, StepOffset, finish_batch, inputs_vector, new_parts
from twin.batch_record import RECORD_FILE, BatchRecord, RecordError, has_run
from twin.checkpoint import restore, snapshot
from twin.clock import loop_clock
from twin.console import ConsoleTap, LiveBatch, LoopConsole
from twin.interfaces import Controller, ControlStep, Estimator, FloatArray, Measurements, Plant
from twin.loop import REJECTED, run_loop
from twin.record import EventRow, MemoryRecord, SetpointRow
from twin.record_read import RunInfo, load_history, read_run
from twin.record_verify import verify_record
from twin.runner import RunResult
from twin.scenario import Scenario, parse_scenario

__all__ = ["PlantConnector", "ResumePoint", "resume_batch"]

#: Events a resume writes about itself (not the loop's).
RESUME_EVENTS = ("controller_outage", "setpoint_resent", "resume_cold_start")

#: Connects to a plant: (command endpoint, ZeroMQ routing id) → Plant.
PlantConnector = Callable[[str, bytes], Plant]


@dataclass(frozen=True)
class ResumePoint:
    """Where the killed loop was: its last step with recorded measurements and what it had committed."""

    step: int  # -1: nothing of the loop was recorded
    read_t_s: float | None
    estimated: bool
    controlled: ControlStep | None
    intended: SetpointRow | None
    acked: bool
    next_seq: int
    u_applied: dict[str, float] | None


def find_point(history: MemoryRecord) -> ResumePoint:
    """The resume point of a recorded history."""
    seqs = [s.seq for s in history.setpoints]
    applied = [s for s in history.setpoints if s.state == "applied"]
    u_applied = dict(applied[-1].values) if applied else None
    if not history.reads:
        return ResumePoint(-1, None, False, None, None, False, max(seqs, default=0) + 1, u_applied)
    step, meas = history.reads[-1]
    controls = [c for s, _, c in history.controls if s == step]
    rows = [s for s in history.setpoints if s.step == step]
    intended = next((s for s in rows if s.state == "intended"), None)
    return ResumePoint(
        step=step,
        read_t_s=meas.time_s,
        estimated=any(s == step for s, _ in history.estimates),
        controlled=controls[-1] if controls else None,
        intended=intended,
        acked=any(s.state in ("applied", "refused") for s in rows),
        next_seq=max(seqs, default=0) + 1,
        u_applied=u_applied,
    )


def _restore_after(record: BatchRecord, step: int, estimator: Estimator, controller: Controller) -> None:
    """Estimator and controller as they were after ``step`` (fresh for step -1).

    When the step has no saved state (it made no controller step, e.g. the plant was in fail-safe), the
    latest earlier one is used, or none: that is recorded as an event, since the run is then no longer
    exactly the uninterrupted one.
    """
    if step < 0:
        return
    row = record.connection.execute(
        "SELECT step, state FROM resume_state WHERE step <= ? ORDER BY step DESC LIMIT 1", (step,)
    ).fetchone()
    if row is not None and int(row[0]) == step:
        restore(bytes(row[1]), estimator, controller)
        return
    if row is None:
        message = f"no estimator/controller state saved up to step {step}: cold start"
    else:
        restore(bytes(row[1]), estimator, controller)
        message = f"no estimator/controller state saved after step {step}: continued from step {row[0]}'s"
    record.event(EventRow(float("nan"), "resume_cold_start", message))


def _finish_step(
    *,
    record: BatchRecord,
    scenario: Scenario,
    plant: Plant,
    point: ResumePoint,
    meas: Measurements,
    estimator: Estimator,
    controller: Controller,
) -> int:
    """Redo what step ``point.step`` had not committed and send its setpoint; return the next seq."""
    spec = scenario.spec()
    k, period = point.step, scenario.loop.period_s
    t_k = meas.time_s
    u_prev = None if point.u_applied is None else inputs_vector(spec, point.u_applied)
    seq = point.next_seq
    intended = point.intended
    if intended is None:
        result = point.controlled
        if result is None:
            _restore_after(record, k - 1, estimator, controller)
            est = estimator.update(meas, u_prev)
            if not point.estimated:
                record.estimate(k, est)
                for name in est.rejected:
                    record.event(EventRow(t_k, "measurement_rejected", f"{name}: {REJECTED}"))
            result = controller.step(t_k, est.x, est.p)
            record.control(k, t_k, result)
            if result.fallback is not None:
                record.event(EventRow(t_k, "controller_fallback", f"{result.status}: {result.fallback}"))
        else:
            _restore_after(record, k, estimator, controller)
        setpoints = {n: float(v) for n, v in zip(spec.inputs, result.u, strict=True)}
        intended = SetpointRow(k, seq, t_k, "intended", setpoints)
        record.setpoint(intended)
        seq += 1
    else:
        _restore_after(record, k, estimator, controller)
        record.event(EventRow(t_k, "setpoint_resent", f"seq {intended.seq}: no ack was recorded; sent again"))
    _send(record, plant, intended, t_k + period)
    return seq


def _send(record: BatchRecord, plant: Plant, intended: SetpointRow, valid_until_s: float) -> None:
    """Write ``intended`` with its own seq and record the plant's answer (its earlier one for a resent seq)."""
    try:
        reply = plant.write(intended.values, intended.seq, valid_until_s=valid_until_s)
    except ProtocolError as exc:
        record.setpoint(SetpointRow(intended.step, intended.seq, intended.t_s, "refused", intended.values, exc.code))
        record.event(EventRow(intended.t_s, "setpoint_refused", str(exc)))
    else:
        record.setpoint(SetpointRow(intended.step, intended.seq, reply.time_s, "applied", dict(reply.applied)))


def _ack_lost(record: BatchRecord, seq: int) -> bool:
    """Whether seq's write was answered but the ack was not committed before the process died.

    The loop moves on only after the answer; an accelerated record commits the ``applied`` ack with the
    next row. So an ``intended`` row followed by nothing of the loop lost its ack; one followed by a loop
    event (e.g. ``plant_unreachable``: no answer came) did not. Events of earlier resumes do not count.
    """
    (rec,) = record.connection.execute(
        "SELECT rec FROM setpoints WHERE seq = ? AND state = 'intended'", (seq,)
    ).fetchone()
    marks = ", ".join("?" for _ in RESUME_EVENTS)
    later = record.connection.execute(
        f"SELECT COUNT(*) FROM events WHERE rec > ? AND kind NOT IN ({marks})", (rec, *RESUME_EVENTS)
    ).fetchone()[0]
    return int(later) == 0


def _last_applied(record: BatchRecord) -> dict[str, float] | None:
    row = record.connection.execute(
        "SELECT setpoints FROM setpoints WHERE state = 'applied' ORDER BY rec DESC LIMIT 1"
    ).fetchone()
    return None if row is None else dict(json.loads(row[0]))


def resume_batch(
    out_dir: Path,
    connect: PlantConnector,
    *,
    operator: str,
    endpoint: str | None = None,
    plant_events: Callable[[], Iterable[EventRow]] | None = None,
    console: LoopConsole | None = None,
) -> RunResult:
    """Continue the batch recorded in ``out_dir`` to its end and write the run directory.

    Args:
        out_dir: the run directory holding record.sqlite.
        connect: opens a Plant at an endpoint with a given ZeroMQ routing id.
        operator: who resumes (recorded).
        endpoint: the plant's command endpoint when it differs from the recorded one (an audited change).
        plant_events: the plant's own announcements to record (see :func:`twin.loop.run_loop`).
        console: the operator channel, as for a new batch (:func:`twin.batch.run_batch`).

    Raises:
        RecordError: no record, a record that fails verification, a different or rewound plant.
    """
    path = out_dir / RECORD_FILE
    if not has_run(path):
        raise RecordError(f"{path}: no batch record to continue (nothing was committed)")
    check = verify_record(path)
    if not check.ok:
        raise RecordError(f"{path}: {check.problem}; a record that fails verification is not continued")
    record = BatchRecord.open(path)
    try:
        run = read_run(record.connection)
        scenario = parse_scenario(run.scenario_source, f"{path} (run row)")
        if scenario.sha256 != run.scenario_sha256:
            raise RecordError(f"{path}: the recorded scenario does not match its recorded hash")
        return _resume(record, run, scenario, out_dir, connect, operator, endpoint, plant_events, console)
    finally:
        record.close()


def _resume(
    record: BatchRecord,
    run: RunInfo,
    scenario: Scenario,
    out_dir: Path,
    connect: PlantConnector,
    operator: str,
    endpoint: str | None,
    plant_events: Callable[[], Iterable[EventRow]] | None,
    console: LoopConsole | None = None,
) -> RunResult:
    history = load_history(record.connection)
    spec, _, estimator, controller = new_parts(scenario)
    if any(e.kind == "run_end" for e in history.events):
        return finish_batch(record, scenario, out_dir, controller.name)
    address = endpoint or run.plant_endpoint
    plant = connect(address, bytes.fromhex(run.plant_client_id))
    try:
        info = plant.hello()
        if info.plant != run.plant_hello.get("plant"):
            ran_on = run.plant_hello.get("plant")
            raise RecordError(f"plant at {address} is {info.plant!r}, the batch ran on {ran_on!r}")
        meas = plant.read()
        point = find_point(history)
        # Decided before this resume writes its own events (they would look like "the loop went on").
        lost_ack = point.intended is not None and not point.acked and _ack_lost(record, point.intended.seq)
        last_wall = record.connection.execute("SELECT MAX(wall_s) FROM events").fetchone()[0]
        rows_wall = record.connection.execute("SELECT MAX(wall_s) FROM samples").fetchone()[0]
        since = max(w for w in (last_wall, rows_wall, 0.0) if w is not None)
        record.event(
            EventRow(
                meas.time_s,
                "controller_outage",
                f"resumed by {operator} after {time.time() - since:.3f} s without a controller "
                f"(last step {point.step}, plant time then {point.read_t_s}, now {meas.time_s})",
            )
        )
        if endpoint is not None and endpoint != run.plant_endpoint:
            record.audit(who=operator, what="plant_endpoint", why="resume", old=run.plant_endpoint, new=endpoint)
        record.set_checkpoint(lambda: snapshot(estimator, controller))
        clock = loop_clock(info, plant.advance, scenario.loop.period_s)
        k, seq = point.step, point.next_seq
        if k >= 0 and point.read_t_s is not None and meas.time_s < point.read_t_s:
            raise RecordError(
                f"plant time {meas.time_s} s is before the last recorded read ({point.read_t_s} s): "
                "not this batch's plant"
            )
        if k >= 0 and k < scenario.loop.steps and meas.time_s == point.read_t_s:
            # Step k is in progress: the plant has not been advanced past it.
            if not point.acked:
                recorded = history.reads[-1][1]
                seq = _finish_step(
                    record=record,
                    scenario=scenario,
                    plant=plant,
                    point=point,
                    meas=recorded,
                    estimator=estimator,
                    controller=controller,
                )
            else:
                _restore_after(record, k, estimator, controller)
            clock.wait_next_period()
        elif k >= 0:
            # Step k's period is over (the plant was advanced). Its ack may be the one row lost.
            _restore_after(record, min(k, scenario.loop.steps - 1), estimator, controller)
            lost = point.intended
            if lost is not None and lost_ack:
                record.event(EventRow(lost.t_s, "setpoint_resent", f"seq {lost.seq}: ack not recorded; sent again"))
                _send(record, plant, lost, lost.t_s + scenario.loop.period_s)
        first = k + 1
        if first <= scenario.loop.steps:
            applied = _last_applied(record)
            u0: FloatArray | None = None if applied is None else inputs_vector(spec, applied)
            if console is not None:
                console.attach(LiveBatch(spec, plant, controller, record, scenario.loop.period_s))
            run_loop(
                spec=spec,
                plant=plant,
                estimator=HeldInput(estimator, u0),
                controller=controller,
                clock=clock,
                recorder=StepOffset(record if console is None else ConsoleTap(record, console), first),
                steps=scenario.loop.steps - first,
                period_s=scenario.loop.period_s,
                budget_s=scenario.controller.budget_s,
                first_seq=seq,
                plant_events=plant_events,
                between_steps=None if console is None else console.poll,
            )
    finally:
        plant.close()
    return finish_batch(record, scenario, out_dir, controller.name)
