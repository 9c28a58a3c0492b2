"""A batch with a durable record: what ``bioimp run`` runs.

The loop writes to the SQLite :class:`~twin.batch_record.BatchRecord` (and keeps nothing else it would
need later): the KPI summary and the run directory's files are computed from the record once the batch
ends, so a batch that was killed and resumed (:mod:`twin.resume`) is summarised from the same place.
"""

from __future__ import annotations

import contextlib
import getpass
import importlib.metadata
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from plant_models.errors import PlantTimeout
from plant_models.spec import ModelSpec
from twin.batch_figure import batch_figure as batch_figure_spec
from twin.batch_figure import replay_truth
from twin.batch_record import RECORD_FILE, BatchRecord, Durability, RecordConfig, RunMeta
from twin.checkpoint import snapshot
from twin.clock import loop_clock
from twin.console import ConsoleTap, LiveBatch, LoopConsole
from twin.estimator_config import build_estimator
from twin.figure_worker import FigureWorker
from twin.harvest import harvest_kpis
from twin.interfaces import (
    Controller,
    ControlStep,
    Estimate,
    Estimator,
    FloatArray,
    Measurements,
    Plant,
    PlantInfo,
)
from twin.kpis import trajectory
from twin.loop import LoopResult, run_loop
from twin.outputs import trajectory_figure, write_summary, write_trajectory_csv
from twin.read_ahead import read_ahead
from twin.record import EventRow, MemoryRecord, Recorder, SetpointRow
from twin.record_read import has_event, last_read_time_s, load_history
from twin.runner import RunResult, build_controller, run_summary, twin_params
from twin.scenario import Scenario
from twin.truth_replay import ReplayError, ReplayTap, TruthReplay

__all__ = [
    "BatchSetup",
    "StepOffset",
    "durability_for",
    "finish_batch",
    "loop_result_from_history",
    "operator_name",
    "patient_hello",
    "run_batch",
    "software_versions",
]

#: Events that count as deadline misses in the summary.
MISS_EVENTS = ("deadline_miss", "period_overrun")
#: How long a batch keeps asking a plant that does not answer ``hello`` before giving up (s). Over a
#: lossy link each attempt may time out (tests/faults); at the client's default timeout (2 s, 3 resends)
#: this is a single call, so an absent plant is still reported after 8 s.
HELLO_PATIENCE_S = 8.0


def patient_hello(plant: Plant, patience_s: float = HELLO_PATIENCE_S) -> PlantInfo:
    """The plant's ``hello``, asked again after a timeout until ``patience_s`` seconds have passed.

    Raises:
        PlantTimeout: still no answer after ``patience_s`` (the last call's error).
    """
    deadline = time.monotonic() + patience_s
    while True:
        try:
            return plant.hello()
        except PlantTimeout:
            if time.monotonic() >= deadline:
                raise


@dataclass(frozen=True)
class BatchSetup:
    """Who runs the batch and how the plant is reached (written to the record's run row).

    Attributes:
        operator: the person (or service account) responsible for the batch.
        plant_endpoint: the plant server's command endpoint.
        plant_client_id: this controller's ZeroMQ routing id, hex; a resumed run reconnects with it so the
            plant recognises its sequence numbers (a repeated seq is answered, not applied again).
    """

    operator: str
    plant_endpoint: str
    plant_client_id: str


def operator_name() -> str:
    """The login name of whoever runs this process ('unknown' if there is none)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def software_versions() -> dict[str, str]:
    """bioimp and its numerical dependencies' versions, and the git commit when run from a checkout."""
    versions = {"python": platform.python_version()}
    for package in ("bioimp", "casadi", "numpy", "pyzmq"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = "not installed"
    try:
        root = Path(__file__).resolve().parents[1]
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        versions["git"] = commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return versions


class StepOffset:
    """A :class:`Recorder` that adds ``offset`` to every step number (a resumed loop starts at 0)."""

    def __init__(self, inner: Recorder, offset: int) -> None:
        """Args: inner: where rows go; offset: the batch's step number of the loop's step 0."""
        self.inner = inner
        self.offset = offset

    def measurements(self, step: int, meas: Measurements) -> None:
        """Forward with the batch's step number."""
        self.inner.measurements(step + self.offset, meas)

    def estimate(self, step: int, est: Estimate) -> None:
        """Forward with the batch's step number."""
        self.inner.estimate(step + self.offset, est)

    def control(self, step: int, t_s: float, result: ControlStep) -> None:
        """Forward with the batch's step number."""
        self.inner.control(step + self.offset, t_s, result)

    def setpoint(self, row: SetpointRow) -> None:
        """Forward with the batch's step number."""
        self.inner.setpoint(SetpointRow(row.step + self.offset, row.seq, row.t_s, row.state, row.values, row.error))

    def event(self, row: EventRow) -> None:
        """Forward unchanged."""
        self.inner.event(row)


class HeldInput:
    """An :class:`Estimator` whose first update gets ``u0`` when the loop has no applied input yet.

    A resumed loop starts with no input of its own; the plant has been holding the last applied one.
    """

    def __init__(self, inner: Estimator, u0: FloatArray | None) -> None:
        """Args: inner: the estimator; u0: the input applied before the loop starts (None if none)."""
        self.inner = inner
        self._u0 = u0

    def update(self, meas: Measurements, u_applied: FloatArray | None) -> Estimate:
        """Forward, with ``u0`` in place of the loop's first ``None``."""
        if u_applied is None:
            u_applied = self._u0
        self._u0 = None
        return self.inner.update(meas, u_applied)


def loop_result_from_history(history: MemoryRecord, steps: int) -> LoopResult:
    """The loop's counters as the record shows them (what a killed and resumed loop cannot count)."""
    final = history.reads[-1][1]
    misses = sum(1 for e in history.events if e.kind in MISS_EVENTS)
    refused = sum(1 for s in history.setpoints if s.state == "refused")
    fallbacks = sum(1 for _, _, c in history.controls if c.fallback is not None)
    return LoopResult(steps, final, misses, refused, fallbacks)


def finish_batch(
    record: BatchRecord,
    scenario: Scenario,
    out_dir: Path,
    controller_name: str,
    *,
    batch_figure: bool = False,
    own_plant: bool = False,
    replay: TruthReplay | None = None,
    figures: FigureWorker | None = None,
) -> RunResult:
    """Mark the batch complete (``run_end`` event, once) and write the run directory from the record.

    Always summary.json, trajectory.csv and trajectory.png. With ``batch_figure`` and a scenario with
    instruments (``[plant.sensors]``), also batch.png (:mod:`twin.batch_figure`) and, for a two-level
    batch, the harvest in summary.json (:mod:`twin.harvest`); with ``own_plant`` (the batch ran against
    the scenario's simulated plant) both show the true plant, replayed: by ``replay``, which has
    replayed it while the loop ran (:mod:`twin.truth_replay`), or else here from the record.

    The figures are drawn by child processes: ``figures``, started before the loop so matplotlib is
    imported by the time it ends (:func:`run_batch`), or else started here first, importing while this
    process reads the record. summary.json is written once, complete.
    """
    with contextlib.ExitStack() as stack:
        if figures is None:
            figures = stack.enter_context(FigureWorker(_figure_count(scenario, batch_figure)))
        spec = scenario.spec()
        conn = record.connection
        if not has_event(conn, "run_end"):
            t_end = last_read_time_s(conn)
            assert t_end is not None, "a finished batch has read the plant"
            record.event(EventRow(t_end, "run_end", f"batch complete: {scenario.loop.steps} steps"))
        history = load_history(conn)
        traj = trajectory(spec, history)
        out_dir.mkdir(parents=True, exist_ok=True)
        title = f"{scenario.name} — {controller_name}"
        figures.submit(out_dir / "trajectory.png", trajectory_figure(spec, traj, title))
        harvest: dict[str, object] = {}
        if batch_figure and scenario.plant.sensors is not None:
            # Instruments, not states: estimate, assays and (our own plant only) the replayed truth, ready
            # at once from a replay that ran beside the loop. The KPIs and the CSV below are written while
            # the workers draw.
            truth = _truth(scenario, history, replay) if own_plant else None
            figures.submit(out_dir / "batch.png", batch_figure_spec(scenario, history, truth))
            harvest = harvest_kpis(scenario, history, None if truth is None else truth[1])
        loop = loop_result_from_history(history, scenario.loop.steps)
        kpis = run_summary(scenario, spec, history, traj, loop, controller_name, twin_params(spec, scenario))
        write_trajectory_csv(out_dir / "trajectory.csv", spec, traj)
        record_kpis = {"file": RECORD_FILE, "rows": record.last_rec, "head_sha256": record.head.hex()}
        if harvest:  # the file names the record only with a harvest (as it always has)
            kpis["record"] = record_kpis
            kpis.update(harvest)
            write_summary(out_dir / "summary.json", kpis)
        else:
            write_summary(out_dir / "summary.json", kpis)
            kpis["record"] = record_kpis
        figures.finish()
    return RunResult(kpis, history, loop)


def _figure_count(scenario: Scenario, batch_figure: bool) -> int:
    """How many figures :func:`finish_batch` draws (one child process each, drawn at once)."""
    return 2 if batch_figure and scenario.plant.sensors is not None else 1


def _truth(scenario: Scenario, history: MemoryRecord, replay: TruthReplay | None) -> tuple[FloatArray, FloatArray]:
    """The true plant at each step: from the replay that ran alongside the loop, else replayed here."""
    if replay is not None:
        try:
            return replay.result(scenario.loop.steps)
        except ReplayError as exc:  # the same truth, only later: the run directory is still complete
            print(f"bioimp: note: {exc}; replaying the plant after the batch instead", file=sys.stderr)
    return replay_truth(scenario, history)


def durability_for(clock: str) -> Durability:
    """``full`` (fsync every commit) against a real-time plant, ``normal`` for a virtual (accelerated) one."""
    return "full" if clock == "realtime" else "normal"


def new_parts(scenario: Scenario) -> tuple[ModelSpec, FloatArray, Estimator, Controller]:
    """The spec, the twin's parameters, a fresh estimator (the scenario's ``[estimator]``) and controller."""
    spec = scenario.spec()
    p = twin_params(spec, scenario)
    estimator = build_estimator(spec, p, scenario.estimator, scenario.plant.sensors)
    return spec, p, estimator, build_controller(scenario, spec, p)


def run_batch(
    scenario: Scenario,
    plant: Plant,
    out_dir: Path,
    setup: BatchSetup,
    *,
    plant_events: Callable[[], Iterable[EventRow]] | None = None,
    console: LoopConsole | None = None,
    batch_figure: bool = False,
    own_plant: bool = False,
    after_loop: Callable[[], None] | None = None,
) -> RunResult:
    """Run the scenario's batch against ``plant``, recorded durably in ``out_dir/record.sqlite``.

    Durability follows the plant's clock: ``full`` for a real-time plant, ``normal`` for a virtual one.
    A ``console`` (the operator channel) sees every controller step and serves operator requests once
    per period, in the loop's thread (:mod:`twin.console`). ``batch_figure`` and ``own_plant``: what the
    run directory gets besides the summary and the trajectory (:func:`finish_batch`). ``after_loop`` is
    called once the loop has ended, before the run directory is written (the plant is no longer needed).

    Raises:
        RecordError: ``out_dir`` already holds a batch record.
    """
    spec, _, estimator, controller = new_parts(scenario)
    info = patient_hello(plant)
    config = RecordConfig(durability=durability_for(info.clock), period_s=scenario.loop.period_s)
    meta = RunMeta(
        operator=setup.operator,
        scenario_name=scenario.name,
        scenario_sha256=scenario.sha256,
        scenario_source=scenario.source,
        software=software_versions(),
        model=spec.name,
        controller=controller.name,
        plant_endpoint=setup.plant_endpoint,
        plant_client_id=setup.plant_client_id,
        plant_hello={"plant": info.plant, "protocol": info.protocol, "clock": info.clock, "time_s": info.time_s},
        states=spec.states,
        inputs=spec.inputs,
        params=spec.params,
        period_s=scenario.loop.period_s,
        steps=scenario.loop.steps,
    )
    record = BatchRecord.create(out_dir / RECORD_FILE, meta, config)
    plant = read_ahead(plant, info)  # an accelerated plant: advance and the next read in one wait
    try:
        record.set_checkpoint(lambda: snapshot(estimator, controller))
        recorder: Recorder = record
        if console is not None:
            console.attach(LiveBatch(spec, plant, controller, record, scenario.loop.period_s))
            recorder = ConsoleTap(record, console)
        with contextlib.ExitStack() as stack:  # the replay process, stopped however the batch ends
            # The run directory's figures are drawn by children that import matplotlib while the loop runs.
            figures = stack.enter_context(FigureWorker(_figure_count(scenario, batch_figure)))
            replay = None
            if batch_figure and own_plant and scenario.plant.sensors is not None:
                # The truth for batch.png and the harvest, replayed on the second core while the loop runs.
                replay = stack.enter_context(TruthReplay(scenario))
                recorder = ReplayTap(recorder, replay)
            run_loop(
                spec=spec,
                plant=plant,
                estimator=estimator,
                controller=controller,
                clock=loop_clock(info, plant.advance, scenario.loop.period_s),
                recorder=recorder,
                steps=scenario.loop.steps,
                period_s=scenario.loop.period_s,
                budget_s=scenario.controller.budget_s,
                plant_events=plant_events,
                between_steps=None if console is None else console.poll,
            )
            if after_loop is not None:
                after_loop()
            return finish_batch(
                record,
                scenario,
                out_dir,
                controller.name,
                batch_figure=batch_figure,
                own_plant=own_plant,
                replay=replay,
                figures=figures,
            )
    finally:
        record.close()


def inputs_vector(spec: ModelSpec, values: dict[str, float]) -> FloatArray:
    """Setpoint values in the spec's input order."""
    return np.array([values[n] for n in spec.inputs], dtype=float)
