"""The batch-record commands: ``bioimp run`` with its durable record and ``--resume``, ``bioimp record
verify|export``, ``bioimp report``.

Registered in :func:`hil.cli.build_parser` by :func:`add_batch_run_options` (on the ``run`` parser) and
:func:`add_record_parsers`. Errors are :class:`~plant_models.errors.BioimpError` subclasses: one line on
stderr, exit code 2. ``record verify`` exits 1 when the record does not verify.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import secrets
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from plant_models.errors import ScenarioError

if TYPE_CHECKING:
    from twin.record import EventRow

__all__ = ["add_batch_run_options", "add_record_parsers", "cmd_run"]

EXIT_BROKEN = 1
#: A plant `bioimp run` starts itself stops after this long without a request (a killed run's plant).
OWN_PLANT_IDLE_EXIT_S = 600.0


def cmd_run(args: argparse.Namespace) -> int:
    """``bioimp run``: a new batch (``--out DIR``) or the continuation of a killed one (``--resume DIR``)."""
    import zmq

    from hil.cli import client_keys_from_args
    from hil.client import ZmqPlant
    from hil.console import console_from_args
    from hil.heartbeat import HeartbeatSender, heartbeat_period_s
    from hil.launch import spawn_plant_server
    from hil.plant_events import PlantEventListener
    from twin.batch import BatchSetup, operator_name, patient_hello, run_batch
    from twin.batch_record import RECORD_FILE, RecordError, has_run
    from twin.resume import resume_batch
    from twin.scenario import DEFAULT_SCENARIO, load_scenario

    keys = client_keys_from_args(args)
    operator = args.operator or operator_name()
    timeout_s = args.timeout
    if not (timeout_s > 0 and timeout_s < float("inf")):
        raise ScenarioError(f"--timeout must be a positive number of seconds, not {timeout_s}")
    stall_s = args.stall_s
    if stall_s is not None and not (stall_s > 0 and stall_s < float("inf")):
        raise ScenarioError(f"--stall-s must be a positive number of seconds, not {stall_s}")
    with contextlib.ExitStack() as stack:

        def connect(endpoint: str, identity: bytes) -> ZmqPlant:
            try:
                plant = ZmqPlant(endpoint, timeout_s=timeout_s, identity=identity, keys=keys)
            except zmq.ZMQError as exc:
                raise ScenarioError(f"--plant {endpoint!r}: {exc}") from None
            watchdog_s = patient_hello(plant).watchdog_s
            if watchdog_s is not None:  # keep the plant's watchdog fed while the solver works
                progress = None if stall_s is None else (lambda: plant.last_request_s)
                beat = HeartbeatSender(
                    endpoint, heartbeat_period_s(watchdog_s), keys=keys, progress=progress, stall_s=stall_s
                )
                heartbeats.append(stack.enter_context(beat))
            return plant

        heartbeats: list[HeartbeatSender] = []

        def listen(telemetry: str | None) -> Callable[[], list[EventRow]]:
            """The plant's announcements (``--telemetry``) and the state changes its heartbeat found.

            The heartbeat's replies carry the plant's state: a fail-safe and re-arm that happened while the
            loop's own writes were lost (a partition, then an operator's arm) is recorded all the same.
            """
            from twin.record import EventRow

            listener = None if telemetry is None else stack.enter_context(PlantEventListener(telemetry, keys=keys))

            def drain() -> list[EventRow]:
                rows = [] if listener is None else listener.drain()
                for beat in heartbeats:
                    for t_s, state in beat.state_changes():
                        rows.append(EventRow(t_s, "plant_state", f"the heartbeat found the plant {state}"))
                return rows

            return drain

        console = console_from_args(args)  # --publish, --operator-endpoint (hil/console.py)
        if console is not None:
            stack.enter_context(console)
        if args.resume is not None:
            if args.scenario is not None or args.out is not None:
                raise ScenarioError("--resume DIR continues the recorded batch: give no scenario and no --out")
            out = Path(args.resume)
            events = listen(args.telemetry)
            result = resume_batch(
                out, connect, operator=operator, endpoint=args.plant, plant_events=events, console=console
            )
        else:
            scenario = load_scenario(args.scenario)
            out = Path(args.out) if args.out else Path("runs") / scenario.name
            if has_run(out / RECORD_FILE):
                raise RecordError(
                    f"{out} already holds a batch record; continue it with --resume {out} or choose another --out"
                )
            endpoint, telemetry = args.plant, args.telemetry
            own_server: subprocess.Popen[bytes] | None = None
            if endpoint is None:
                tolerances = ("--rtol", repr(scenario.plant.rtol), "--atol", repr(scenario.plant.atol))
                # The server reads the scenario's [plant] too: seed, mismatch, sensors (twin.plant_setup).
                plant_of = ("--scenario", str(Path(args.scenario) if args.scenario else DEFAULT_SCENARIO))
                server = spawn_plant_server(
                    scenario.model,
                    x0=dict(scenario.plant.x0),
                    params=dict(scenario.plant.params),
                    # It must outlive a killed controller for --resume, but not forever.
                    extra_args=(*tolerances, *plant_of, "--idle-exit", repr(OWN_PLANT_IDLE_EXIT_S)),
                )
                process = stack.enter_context(server)
                endpoint, telemetry = process.command, process.telemetry
                own_server = process.process
            identity = b"bioimp-" + secrets.token_hex(8).encode()
            plant = stack.enter_context(connect(endpoint, identity))
            setup = BatchSetup(operator=operator, plant_endpoint=endpoint, plant_client_id=identity.hex())

            def plant_done() -> None:
                """After the loop our own plant is no longer needed: it shuts down while the run directory
                is written (heartbeats stopped first: its watchdog has nothing left to guard); leaving the
                block then only reaps it."""
                if own_server is not None:
                    for beat in heartbeats:
                        beat.stop()
                    own_server.terminate()

            # With instruments the run directory gets batch.png (estimate, assays and, against our own
            # plant, the replayed truth) and a two-level batch's harvest (twin.batch.finish_batch).
            result = run_batch(
                scenario,
                plant,
                out,
                setup,
                plant_events=listen(telemetry),
                console=console,
                batch_figure=True,
                own_plant=args.plant is None,
                after_loop=plant_done,
            )
            if scenario.plant.sensors is not None:
                print(f"figure    {out}/batch.png")
    summary = result.summary
    ctrl, name, record = summary["controller"], summary["scenario"], summary["record"]
    assert isinstance(ctrl, dict) and isinstance(name, dict) and isinstance(record, dict)
    print(f"scenario  {name['name']} ({summary['steps']} steps, controller {ctrl['name']})")
    final = summary["final_states"]
    assert isinstance(final, dict)
    print("final     " + json.dumps({k: v for k, v in final.items() if math.isfinite(v)}) + " (measured)")
    harvested = summary.get("harvest")
    if isinstance(harvested, dict):  # a two-level batch: judged by its harvest, not the inner MPC's objective
        for signal, h in harvested.items():
            assert isinstance(h, dict)
            true = "" if h["true"] is None else f"true {h['true']:.1f}, "
            print(f"harvest   {signal}: {true}twin estimate {h['estimate']:.1f} ± {h['estimate_2sigma']:.1f} (2σ)")
    else:
        print(f"objective {summary['objective']:.6g}")
    ms = ctrl["step_ms"]
    print(f"step ms   p50 {ms['p50']:.2f}  p90 {ms['p90']:.2f}  p99 {ms['p99']:.2f}  max {ms['max']:.2f}")
    print(
        f"violation {summary['constraint_violation_max']:.3g}  deadline misses {summary['deadline_misses']}  "
        f"fallbacks {ctrl['fallbacks']}  refused writes {summary['refused_writes']}"
    )
    print(f"record    {out}/{record['file']}: {record['rows']} rows, head {record['head_sha256']}")
    print(f"wrote     {out}/summary.json, trajectory.csv, trajectory.png")
    return 0


def _record_path(directory: str) -> Path:
    from twin.batch_record import RECORD_FILE

    path = Path(directory)
    return path if path.is_file() else path / RECORD_FILE


def _cmd_verify(args: argparse.Namespace) -> int:
    from twin.record_verify import verify_record

    path = _record_path(args.dir)
    result = verify_record(path)
    if result.ok:
        print(f"ok        {path}: {result.rows} rows, chain intact, head {result.head}")
        return 0
    print(f"BROKEN    {path}: {result.problem}")
    print(f"verified  {result.rows} rows before it (head {result.head})")
    return EXIT_BROKEN


def _cmd_export(args: argparse.Namespace) -> int:
    from twin.record_export import export_record

    path = _record_path(args.dir)
    out = Path(args.out) if args.out else path.parent / "export"
    for table, file, rows in export_record(path, out, args.format):
        print(f"wrote     {file} ({rows} {table} rows)")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from twin.report import render_report

    path = _record_path(args.dir)
    out = Path(args.out) if args.out else path.parent
    written = render_report(path, out)
    for file in written:
        print(f"wrote     {file}")
    return 0


def add_batch_run_options(run: argparse.ArgumentParser) -> None:
    """Give ``bioimp run`` its batch record: ``--resume DIR`` and ``--operator``; dispatch to :func:`cmd_run`."""
    run.add_argument("--resume", metavar="DIR", help="continue the batch recorded in DIR after a crash")
    run.add_argument("--operator", help="who runs the batch (recorded; default: the login name)")
    run.add_argument(
        "--timeout",
        type=float,
        default=2.0,
        metavar="SECONDS",
        help="wait this long for each reply before resending (default 2; keep it well under a wall period)",
    )
    run.add_argument(
        "--stall-s",
        type=float,
        metavar="SECONDS",
        help="withhold heartbeats when the loop has sent the plant nothing for this long, so a hung "
        "controller's plant goes to fail-safe (default: off; set it above a wall period plus the slowest solve)",
    )
    run.set_defaults(func=cmd_run)


def add_record_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``record verify``, ``record export`` and ``report``."""
    record = sub.add_parser("record", help="batch record commands")
    record_sub = record.add_subparsers(dest="record_command", required=True)
    verify = record_sub.add_parser("verify", help="check the record's hash chain; name the first broken row")
    verify.add_argument("dir", help="run directory (or the record.sqlite file)")
    verify.set_defaults(func=_cmd_verify)
    export = record_sub.add_parser("export", help="write one file per table (Parquet or CSV)")
    export.add_argument("dir", help="run directory (or the record.sqlite file)")
    export.add_argument("--format", choices=("parquet", "csv"), default="parquet", help="file format")
    export.add_argument("--out", help="folder to write into (default: DIR/export)")
    export.set_defaults(func=_cmd_export)
    report = sub.add_parser("report", help="render the batch as an HTML report with plots, and PNGs")
    report.add_argument("dir", help="run directory (or the record.sqlite file)")
    report.add_argument("--out", help="folder to write into (default: DIR)")
    report.set_defaults(func=_cmd_report)
