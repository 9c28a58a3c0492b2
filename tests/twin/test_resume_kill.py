"""Kill -9 ``bioimp run`` at random points of a batch, resume each time, and check nothing was lost or
actuated twice — against the plant's own log (``plant serve --log``) and an uninterrupted run.

The plant runs as its own ``bioimp plant serve`` process and outlives every controller process, as a
real plant outlives a crashed controller.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from hil.launch import spawn_plant_server
from hil.plant_log import read_plant_log
from twin.record_verify import verify_record
from twin.resume import RESUME_EVENTS
from twin.scenario import HALDANE_SCENARIO

KILLS = int(os.environ.get("BIOIMP_KILL_POINTS", "20"))
STEPS = max(30, 3 * KILLS)  # room for the kill points: each lands up to a few steps after its target (fast loop)
# Events that only an interrupted run has (they document the outage).
OUTAGE_EVENTS = set(RESUME_EVENTS)


def short_scenario(tmp_path: Path) -> Path:
    text = (
        HALDANE_SCENARIO.read_text()
        .replace("steps = 150", f"steps = {STEPS}")
        .replace("horizon = 20", "horizon = 10")
    )
    path = tmp_path / "short.toml"
    path.write_text(text)
    return path


def bioimp(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "hil.cli", *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )


def last_rec(db: Path) -> int:
    """The last committed row's rec (0 while the record does not exist yet)."""
    if not db.exists():
        return 0
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1.0)
        try:
            union = " UNION ALL ".join(
                f"SELECT MAX(rec) AS r FROM {t}"
                for t in ("run", "samples", "estimates", "controls", "setpoints", "events", "audit")
            )
            row = conn.execute(f"SELECT MAX(r) FROM ({union})").fetchone()
            return int(row[0] or 0)
        finally:
            conn.close()
    except sqlite3.Error:
        return 0  # being created


def last_row_kind(db: Path) -> str:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = [
            conn.execute(f"SELECT rec, '{t}' || {extra} FROM {t} ORDER BY rec DESC LIMIT 1").fetchone()
            for t, extra in (
                ("samples", "''"),
                ("estimates", "''"),
                ("controls", "''"),
                ("setpoints", "':' || state"),
                ("events", "':' || kind"),
            )
        ]
        return max((r for r in rows if r is not None), default=(0, "nothing"))[1]
    finally:
        conn.close()


def comparable(db: Path) -> list[tuple[Any, ...]]:
    """The record's content in order, without what differs between any two runs (wall times, compute
    times, hashes, rec numbers, the plant endpoint) and without the outage's own events."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows: list[tuple[int, tuple[Any, ...]]] = []
        queries = {
            "samples": "SELECT rec, step, read_t_s, device, value, sample_t_s, sample_seq, quality FROM samples",
            "estimates": "SELECT rec, step, t_s, x, x_var, p, rejected FROM estimates",
            "controls": "SELECT rec, step, t_s, u, status, fallback FROM controls",
            "setpoints": "SELECT rec, step, seq, t_s, state, setpoints, reply FROM setpoints",
            "events": "SELECT rec, t_s, kind, message FROM events WHERE kind != 'run_end'",
        }
        for table, query in queries.items():
            for row in conn.execute(query):
                if table == "events" and row[2] in OUTAGE_EVENTS:
                    continue
                rows.append((row[0], (table, *row[1:])))
        return [content for _, content in sorted(rows)]
    finally:
        conn.close()


def applied_rows(db: Path) -> list[tuple[int, float, dict[str, float]]]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return [
            (seq, t, json.loads(values))
            for seq, t, values in conn.execute(
                "SELECT seq, t_s, setpoints FROM setpoints WHERE state = 'applied' ORDER BY rec"
            )
        ]
    finally:
        conn.close()


def recorded_sample_seqs(db: Path) -> set[int]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return {int(r[0]) for r in conn.execute("SELECT DISTINCT sample_seq FROM samples")}
    finally:
        conn.close()


def serve_args(log: Path) -> list[str]:
    # No watchdog: a controller restart must not put the plant in fail-safe (that is another test's job).
    return ["--log", str(log), "--watchdog", "0"]


@pytest.mark.timeout(240)
def test_kill_9_at_random_points_then_resume_loses_nothing_and_actuates_nothing_twice(tmp_path: Path) -> None:
    scenario = short_scenario(tmp_path)

    # The uninterrupted batch, against its own plant.
    with spawn_plant_server("fedbatch_haldane", extra_args=serve_args(tmp_path / "ref.jsonl")) as ref_plant:
        done = subprocess.run(
            [sys.executable, "-m", "hil.cli", "run", str(scenario), "--plant", ref_plant.command,
             "--out", str(tmp_path / "ref")],
            capture_output=True, text=True, timeout=120, check=False,
        )
        assert done.returncode == 0, done.stderr
    ref_db = tmp_path / "ref" / "record.sqlite"
    total_rows = last_rec(ref_db)
    assert total_rows > 9 * STEPS

    rng = random.Random(6)
    run_dir = tmp_path / "run"
    db = run_dir / "record.sqlite"
    log = tmp_path / "plant.jsonl"
    kinds: list[str] = []
    kills = 0
    started = time.monotonic()
    with spawn_plant_server("fedbatch_haldane", extra_args=serve_args(log)) as plant:
        while kills < KILLS:
            # The next kill point: a random row ahead, spaced so that KILLS points cover the batch.
            reached = last_rec(db)
            span = max(2, (total_rows - 10 - reached) // (KILLS - kills + 2))
            target = min(reached + rng.randint(1, span), total_rows - 3)
            if target <= reached:
                break
            args = ["run", "--resume", str(run_dir)] if db.exists() else [
                "run", str(scenario), "--plant", plant.command, "--out", str(run_dir)
            ]
            proc = bioimp(*args)
            deadline = time.monotonic() + 60
            while last_rec(db) < target and proc.poll() is None:
                assert time.monotonic() < deadline, "the run made no progress"
                time.sleep(0.002)
            time.sleep(rng.uniform(0.0, 0.004))  # land anywhere between two commits, or inside one
            if proc.poll() is not None:
                err = proc.stderr.read().decode() if proc.stderr else ""
                pytest.fail(f"the run ended before its kill point: {proc.returncode} {err}")
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            assert proc.returncode == -signal.SIGKILL
            if proc.stderr is not None:
                proc.stderr.close()
            kills += 1
            kinds.append(last_row_kind(db))
        final = subprocess.run(
            [sys.executable, "-m", "hil.cli", "run", "--resume", str(run_dir)],
            capture_output=True, text=True, timeout=120, check=False,
        )
        assert final.returncode == 0, final.stderr
    print(f"{kills} kills in {time.monotonic() - started:.1f} s; last committed row at each kill: {Counter(kinds)}")

    # The batch completed and its record verifies.
    check = verify_record(db)
    assert check.ok, check.problem
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == STEPS

    # Every sample the plant produced is in the record.
    entries = read_plant_log(log)
    published = {e["seq"] for e in entries if e["op"] == "sample"}
    assert len(published) == STEPS
    assert published | {0} <= recorded_sample_seqs(db)

    # No seq was applied twice: one plant-side application per applied seq, at the time and with the
    # values the record holds.
    applications = [(e["t"], e["values"]) for e in entries if e["op"] == "apply"]
    recorded = applied_rows(db)
    seqs = [seq for seq, _, _ in recorded]
    assert len(seqs) == len(set(seqs)) == STEPS
    assert applications == [(t, values) for _, t, values in recorded]

    # The record is the uninterrupted run's, except for the outage events.
    got, want = comparable(db), comparable(ref_db)
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        assert a == b
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        outages = conn.execute("SELECT COUNT(*) FROM events WHERE kind = 'controller_outage'").fetchone()[0]
    finally:
        conn.close()
    # One per resume that got as far as reconnecting (a resume killed before that records none).
    assert 1 <= outages <= kills
    assert kills == KILLS, f"only {kills} kill points landed before the batch ended"
