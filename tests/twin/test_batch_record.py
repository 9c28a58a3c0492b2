"""The SQLite batch record: commit-before-act, append-only, hash chain, verify, cut-off recovery, export,
report. Real SQLite files, real processes where a process must die."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import struct
import subprocess
import sys
import textwrap
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hil.handler import ProtocolHandler
from hil.inprocess import InProcessPlant
from plant_models.fedbatch_haldane import fedbatch_haldane
from twin.batch import BatchSetup, durability_for, run_batch
from twin.batch_record import RECORD_FILE, BatchRecord, RecordConfig, RecordError, RunMeta
from twin.interfaces import Measurements, Reading, WriteResult
from twin.record import EventRow, SetpointRow
from twin.record_export import export_record
from twin.record_read import load_history, open_readonly
from twin.record_verify import verify_record
from twin.report import figure_json, render_report
from twin.scenario import HALDANE_SCENARIO, parse_scenario
from twin.simulated_plant import SimulatedPlant

SPEC = fedbatch_haldane()
STEPS = 6


def scenario_text(steps: int = STEPS) -> str:
    text = HALDANE_SCENARIO.read_text()
    return text.replace("steps = 150", f"steps = {steps}").replace("horizon = 20", "horizon = 8")


def meta(steps: int = STEPS) -> RunMeta:
    return RunMeta(
        operator="tester",
        scenario_name="t",
        scenario_sha256="0" * 64,
        scenario_source=scenario_text(steps),
        software={"bioimp": "test"},
        model=SPEC.name,
        controller="nmpc",
        plant_endpoint="inproc",
        plant_client_id=b"me".hex(),
        plant_hello={"plant": SPEC.name},
        states=SPEC.states,
        inputs=SPEC.inputs,
        params=SPEC.params,
        period_s=3600.0,
        steps=steps,
    )


class WatchingPlant(InProcessPlant):
    """An in-process plant that, before acting on a write or an advance, looks at the record through a
    second connection: what the loop committed is what another process would see."""

    def __init__(self, handler: ProtocolHandler, db: Path) -> None:
        super().__init__(handler)
        self.db = db
        self.seen_intended: list[int] = []
        self.previous_acked: list[int] = []

    def _query(self, sql: str, args: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        with open_readonly(self.db) as conn:
            return list(conn.execute(sql, args))

    def write(self, setpoints: Mapping[str, float], seq: int, valid_until_s: float | None = None) -> WriteResult:
        rows = self._query("SELECT seq FROM setpoints WHERE seq = ? AND state = 'intended'", (seq,))
        if rows:
            self.seen_intended.append(seq)
        acked = self._query("SELECT seq FROM setpoints WHERE seq = ? AND state = 'applied'", (seq - 1,))
        if acked:
            self.previous_acked.append(seq - 1)
        return super().write(setpoints, seq, valid_until_s)


def run_in_process(out: Path, steps: int = STEPS) -> WatchingPlant:
    scenario = parse_scenario(scenario_text(steps))
    handler = ProtocolHandler(SimulatedPlant(SPEC, x0=dict(scenario.plant.x0)))
    plant = WatchingPlant(handler, out / RECORD_FILE)
    run_batch(scenario, plant, out, BatchSetup("tester", "inproc", b"local".hex()))
    return plant


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, WatchingPlant]:
    out = tmp_path_factory.mktemp("run")
    return out, run_in_process(out)


def test_every_step_is_committed_before_the_loop_acts_on_it(recorded: tuple[Path, WatchingPlant]) -> None:
    out, plant = recorded
    assert plant.seen_intended == list(range(1, STEPS + 1))  # intended on disk before each write
    # An accelerated run commits an ack with the next read: on disk before the next write at the latest.
    assert plant.previous_acked == list(range(1, STEPS))
    with open_readonly(out / RECORD_FILE) as conn:
        history = load_history(conn)
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert [s for s, _ in history.reads] == list(range(STEPS + 1))
    assert [s for s, _ in history.estimates] == list(range(STEPS))
    assert [(r.seq, r.state) for r in history.setpoints] == [
        (seq, state) for seq in range(1, STEPS + 1) for state in ("intended", "applied")
    ]
    assert history.events[-1].kind == "run_end"
    # Estimates hold the measured states exactly (full-state feedback) and a zero covariance diagonal.
    for (_, est), (_, meas) in zip(history.estimates, history.reads, strict=False):
        assert est.x.tolist() == [meas.values[n].value for n in SPEC.states]
        assert est.x_std.tolist() == [0.0] * SPEC.nx
    assert verify_record(out / RECORD_FILE).ok


def test_rows_cannot_be_updated_or_deleted(recorded: tuple[Path, WatchingPlant], tmp_path: Path) -> None:
    db = tmp_path / "copy.sqlite"
    db.write_bytes((recorded[0] / RECORD_FILE).read_bytes())
    conn = sqlite3.connect(db)
    try:
        for sql in ("UPDATE samples SET value = 0 WHERE rec = 3", "DELETE FROM events", "UPDATE run SET operator='x'"):
            with pytest.raises(sqlite3.IntegrityError, match="append-only"):
                conn.execute(sql)
    finally:
        conn.close()
    assert verify_record(db).ok


def test_a_value_corrupted_in_the_file_is_named_by_verify(recorded: tuple[Path, WatchingPlant], tmp_path: Path) -> None:
    db = tmp_path / "corrupt.sqlite"
    db.write_bytes((recorded[0] / RECORD_FILE).read_bytes())
    with open_readonly(db) as conn:
        rec, value = conn.execute(
            "SELECT rec, value FROM samples WHERE device = 'S_s' AND step = 3"
        ).fetchone()
    raw = db.read_bytes()
    needle = struct.pack(">d", value)  # SQLite stores a REAL as a big-endian IEEE double
    assert raw.count(needle) == 1
    corrupted = struct.pack(">d", value * 1.0001)
    db.write_bytes(raw.replace(needle, corrupted))

    result = verify_record(db)
    assert not result.ok
    assert (result.table, result.rec) == ("samples", rec)
    assert result.rows == rec - 1
    done = subprocess.run(
        [sys.executable, "-m", "hil.cli", "record", "verify", str(db)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 1
    assert f"samples rec {rec} (step=3, device='S_s')" in done.stdout


def test_a_deleted_row_breaks_the_sequence(recorded: tuple[Path, WatchingPlant], tmp_path: Path) -> None:
    db = tmp_path / "deleted.sqlite"
    db.write_bytes((recorded[0] / RECORD_FILE).read_bytes())
    conn = sqlite3.connect(db)
    conn.execute("DROP TRIGGER controls_no_delete")  # someone with file access can do this; the chain tells
    rec = conn.execute("SELECT rec FROM controls WHERE step = 2").fetchone()[0]
    conn.execute("DELETE FROM controls WHERE step = 2")
    conn.commit()
    conn.close()
    result = verify_record(db)
    assert not result.ok and result.problem.startswith(f"row {rec} is missing")


WRITER = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from tests.twin.test_batch_record import meta
    from twin.batch_record import BatchRecord, RecordConfig
    from twin.record import EventRow
    record = BatchRecord.create(Path(sys.argv[1]), meta(), RecordConfig())
    record.connection.execute("PRAGMA wal_autocheckpoint=0")  # keep every commit in the WAL
    for i in range(int(sys.argv[2])):
        record.event(EventRow(float(i), "note", f"event {i}"))
    os.kill(os.getpid(), signal.SIGKILL)  # no clean close: the WAL stays as it is
    """
)


def test_a_cut_off_last_transaction_is_recovered_to_the_last_committed_row(tmp_path: Path) -> None:
    db = tmp_path / RECORD_FILE
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    done = subprocess.run([sys.executable, "-c", WRITER, str(db), "5"], env=env, capture_output=True, check=False)
    assert done.returncode == -signal.SIGKILL, done.stderr
    wal = db.with_name(db.name + "-wal")
    # The last transaction (one event row) is the WAL's last frame; cut it in the middle (a torn write).
    size = wal.stat().st_size
    page = 4096
    assert (size - 32) % (24 + page) == 0
    with wal.open("r+b") as f:
        f.truncate(size - page // 2)

    result = verify_record(db)
    assert result.ok, result.problem
    assert result.rows == 1 + 4  # the run row and the first four events; the fifth was never committed
    record = BatchRecord.open(db)
    record.event(EventRow(99.0, "note", "after recovery"))
    record.close()
    result = verify_record(db)
    assert result.ok and result.rows == 6
    with open_readonly(db) as conn:
        assert [r[0] for r in conn.execute("SELECT message FROM events ORDER BY rec")][-2:] == [
            "event 3",
            "after recovery",
        ]


def test_audit_entries_and_corrections_are_chained(tmp_path: Path) -> None:
    record = BatchRecord.create(tmp_path / RECORD_FILE, meta(), RecordConfig(period_s=3600.0))
    record.measurements(0, Measurements(0.0, {"X_s": Reading(1.0, 0.0, 0)}))
    record.measurements(1, Measurements(7200.0, {"X_s": Reading(1.1, 7200.0, 1)}))  # one period missed
    rec = record.audit(who="operator a", what="bounds.X_s", why="cell density cap raised", old="[0, 3.7]", new="[0, 4]")
    record.audit(who="qa b", what="bounds.X_s", why="typo in the new value", old="[0, 4]", new="[0, 4.0]", ref_rec=rec)
    with pytest.raises(RecordError, match="who and why"):
        record.audit(who=" ", what="x", why="", old=None, new=None)
    record.close()
    with open_readonly(tmp_path / RECORD_FILE) as conn:
        rows = conn.execute("SELECT who, what, old, new, ref_rec FROM audit ORDER BY rec").fetchall()
        gaps = conn.execute("SELECT t_s, message FROM events WHERE kind = 'gap'").fetchall()
    assert rows == [
        ("operator a", "bounds.X_s", "[0, 3.7]", "[0, 4]", None),
        ("qa b", "bounds.X_s", "[0, 4]", "[0, 4.0]", rec),
    ]
    assert gaps == [(7200.0, "no measurement for 7200 s (t=0 s to 7200 s), period 3600 s")]
    assert verify_record(tmp_path / RECORD_FILE).ok


def test_with_full_durability_an_ack_is_committed_at_once(tmp_path: Path) -> None:
    db = tmp_path / RECORD_FILE
    record = BatchRecord.create(db, meta(), RecordConfig(durability="full"))
    record.setpoint(SetpointRow(0, 1, 0.0, "intended", {"inp": 0.1}))
    record.setpoint(SetpointRow(0, 1, 0.0, "applied", {"inp": 0.1}))
    with open_readonly(db) as conn:  # another connection: what a power cut would leave
        assert conn.execute("SELECT seq, state FROM setpoints").fetchall() == [(1, "intended"), (1, "applied")]
    record.close()


def test_durability_follows_the_plant_clock(tmp_path: Path) -> None:
    assert durability_for("realtime") == "full" and durability_for("virtual") == "normal"
    for durability, level in (("full", 2), ("normal", 1)):
        record = BatchRecord.create(tmp_path / durability / RECORD_FILE, meta(), RecordConfig(durability=durability))
        assert record.connection.execute("PRAGMA synchronous").fetchone()[0] == level
        record.close()


def test_a_record_is_never_overwritten(recorded: tuple[Path, WatchingPlant]) -> None:
    with pytest.raises(RecordError, match="already holds a batch record"):
        BatchRecord.create(recorded[0] / RECORD_FILE, meta(), RecordConfig())
    done = subprocess.run(
        [sys.executable, "-m", "hil.cli", "run", str(HALDANE_SCENARIO), "--out", str(recorded[0])],
        capture_output=True, text=True, check=False,
    )
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert "already holds a batch record" in done.stderr


def test_export_parquet_opens_in_pandas_and_matches_the_record(
    recorded: tuple[Path, WatchingPlant], tmp_path: Path
) -> None:
    out, _ = recorded
    written = export_record(out / RECORD_FILE, tmp_path / "pq", "parquet")
    assert {t for t, _, _ in written} == {"run", "samples", "estimates", "controls", "setpoints", "events", "audit"}
    samples = pd.read_parquet(tmp_path / "pq" / "samples.parquet")
    estimates = pd.read_parquet(tmp_path / "pq" / "estimates.parquet")
    setpoints = pd.read_parquet(tmp_path / "pq" / "setpoints.parquet")
    with open_readonly(out / RECORD_FILE) as conn:
        history = load_history(conn)
    assert len(samples) == sum(len(m.values) for _, m in history.reads)
    assert len(estimates) == STEPS
    np.testing.assert_array_equal(estimates["x_P_s"].to_numpy(), [e.x[2] for _, e in history.estimates])
    applied = setpoints[setpoints["state"] == "applied"]
    assert applied["seq"].tolist() == list(range(1, STEPS + 1))
    assert applied["sp_inp"].tolist() == [r.values["inp"] for r in history.setpoints if r.state == "applied"]
    export_record(out / RECORD_FILE, tmp_path / "csv", "csv")
    assert pd.read_csv(tmp_path / "csv" / "controls.csv")["u_inp"].tolist() == pytest.approx(
        [c.u[0] for _, _, c in history.controls], rel=1e-15
    )


def test_report_html_holds_the_batch_figures(recorded: tuple[Path, WatchingPlant], tmp_path: Path) -> None:
    out, _ = recorded
    written = render_report(out / RECORD_FILE, tmp_path)
    page = (tmp_path / "report.html").read_text()
    assert [p.name for p in written] == ["report.html", "report_states.png", "report_control.png"]
    for png in written[1:]:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Plotly.newPlot" in page and "chain verified" in page and "<script src=" not in page  # self-contained
    with open_readonly(out / RECORD_FILE) as conn:
        history = load_history(conn)
    states = {t["name"]: t for t in figure_json(page, "states")["data"]}
    assert states["P_s estimate"]["x"] == [e.t_s / 3600.0 for _, e in history.estimates]
    assert states["P_s estimate"]["y"] == [float(e.x[2]) for _, e in history.estimates]
    assert len(states["X_s measured"]["y"]) == STEPS + 1
    sp = {t["name"]: t for t in figure_json(page, "setpoints")["data"]}
    assert sp["inp applied"]["y"] == [r.values["inp"] for r in history.setpoints if r.state == "applied"]
    assert sp["inp intended"]["y"] == [r.values["inp"] for r in history.setpoints if r.state == "intended"]
    compute = figure_json(page, "compute")["data"][0]
    assert compute["y"] == pytest.approx([c.compute_s * 1e3 for _, _, c in history.controls], rel=1e-12)
    events = {t["name"]: t for t in figure_json(page, "events")["data"]}
    assert events["run_end"]["x"] == [STEPS * 1.0]
    summary = json.loads((out / "summary.json").read_text())
    assert f"{summary['objective']:.6g}" in page


def test_resume_of_a_complete_batch_rewrites_its_outputs_and_adds_nothing(
    recorded: tuple[Path, WatchingPlant], tmp_path: Path
) -> None:
    out = tmp_path / "done"
    out.mkdir()
    (out / RECORD_FILE).write_bytes((recorded[0] / RECORD_FILE).read_bytes())
    before = verify_record(out / RECORD_FILE)
    done = subprocess.run(
        [sys.executable, "-m", "hil.cli", "run", "--resume", str(out)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    after = verify_record(out / RECORD_FILE)
    assert after.ok and (after.rows, after.head) == (before.rows, before.head)
    summary = json.loads((out / "summary.json").read_text())
    assert summary == json.loads((recorded[0] / "summary.json").read_text())


def test_a_broken_or_missing_record_is_not_resumed(recorded: tuple[Path, WatchingPlant], tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    raw = (recorded[0] / RECORD_FILE).read_bytes()
    with open_readonly(recorded[0] / RECORD_FILE) as conn:
        (value,) = conn.execute("SELECT value FROM samples WHERE device = 'P_s' AND step = 2").fetchone()
    needle = struct.pack(">d", value)
    assert raw.count(needle) == 1
    (broken / RECORD_FILE).write_bytes(raw.replace(needle, struct.pack(">d", value + 1.0)))
    for directory, message in ((broken, "fails verification"), (tmp_path / "empty", "no batch record to continue")):
        done = subprocess.run(
            [sys.executable, "-m", "hil.cli", "run", "--resume", str(directory)],
            capture_output=True, text=True, check=False,
        )
        assert done.returncode == 2, done.stderr
        assert done.stderr.startswith("bioimp: error: ") and message in done.stderr
        assert done.stderr.count("\n") == 1


def test_a_restored_nmpc_decides_exactly_as_the_original(tmp_path: Path) -> None:
    from twin.batch import new_parts
    from twin.checkpoint import restore, snapshot

    scenario = parse_scenario(scenario_text())
    _, _, est_a, ctrl_a = new_parts(scenario)
    plant = SimulatedPlant(SPEC, x0=dict(scenario.plant.x0))
    for _ in range(3):  # three steps, so the warm start is a real one
        meas = Measurements(plant.time_s, plant.read())
        e = est_a.update(meas, None)
        plant.apply({"inp": float(ctrl_a.step(plant.time_s, e.x, e.p).u[0])})
        plant.advance(3600.0)
    blob = snapshot(est_a, ctrl_a)
    _, _, est_b, ctrl_b = new_parts(scenario)
    restore(blob, est_b, ctrl_b)
    meas = Measurements(plant.time_s, plant.read())
    ea, eb = est_a.update(meas, None), est_b.update(meas, None)
    ua, ub = ctrl_a.step(plant.time_s, ea.x, ea.p).u, ctrl_b.step(plant.time_s, eb.x, eb.p).u
    np.testing.assert_array_equal(ua, ub)  # same warm start, same Ipopt iterations: bit for bit
    *_, cold = new_parts(scenario)
    uc = cold.step(plant.time_s, ea.x, ea.p).u
    assert abs(float(uc[0]) - float(ua[0])) > 0.0  # a cold start does not (so the restore is what matters)


def test_a_batch_against_a_real_time_plant_is_recorded_with_full_durability(tmp_path: Path) -> None:
    from hil.launch import spawn_plant_server

    text = scenario_text(5).replace("period_s = 3600.0", "period_s = 0.1").replace("budget_s = 1.0", "budget_s = 0.1")
    scenario = tmp_path / "rt.toml"
    scenario.write_text(text)
    with spawn_plant_server("fedbatch_haldane", clock="realtime", extra_args=["--watchdog", "0"]) as server:
        done = subprocess.run(
            [sys.executable, "-m", "hil.cli", "run", str(scenario), "--plant", server.command,
             "--out", str(tmp_path / "run")],
            capture_output=True, text=True, timeout=120, check=False,
        )
    assert done.returncode == 0, done.stderr
    with open_readonly(tmp_path / "run" / RECORD_FILE) as conn:
        durability, hello = conn.execute("SELECT durability, plant_hello FROM run").fetchone()
        acks = conn.execute("SELECT COUNT(*) FROM setpoints WHERE state = 'applied'").fetchone()[0]
    assert durability == "full" and json.loads(hello)["clock"] == "realtime"
    assert acks == 5
    assert verify_record(tmp_path / "run" / RECORD_FILE).ok


def test_run_into_a_folder_holding_a_non_record_file_is_one_line_and_changes_nothing(tmp_path: Path) -> None:
    (tmp_path / "record.sqlite").write_bytes(b"not a database, but someone's file" * 100)
    before = (tmp_path / "record.sqlite").read_bytes()
    done = subprocess.run(
        [sys.executable, "-m", "hil.cli", "run", str(HALDANE_SCENARIO), "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 2
    assert done.stderr.startswith("bioimp: error: ") and "not a batch record" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert (tmp_path / "record.sqlite").read_bytes() == before
