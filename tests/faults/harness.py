"""Shared parts of the fault tests: an accelerated real-time Haldane batch, its plant, and the checks.

Time scaling (written down in docs/reliability.md): the Haldane batch keeps its plant period of 3600 s;
the plant server runs on a real-time clock accelerated by ``TIME_SCALE`` plant seconds per wall second,
so one period lasts ``WALL_PERIOD_S`` of wall time. The watchdog, the client timeout, delays and
partitions are wall-clock quantities and are set relative to that wall period.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from hil.plant_log import read_plant_log
from twin.scenario import HALDANE_SCENARIO

WALL_PERIOD_S = 0.4  # one control period (3600 s of plant time) in wall seconds
PLANT_PERIOD_S = 3600.0
TIME_SCALE = PLANT_PERIOD_S / WALL_PERIOD_S
CLIENT_TIMEOUT_S = 0.1  # each reply awaited this long before the same request is resent (3 resends)
INP_LIMITS = (0.0, 0.2)  # the feed pump's [min, max] (L/h), from the model's device limits


def haldane_scenario(tmp_path: Path, steps: int, *, name: str = "faults_haldane") -> Path:
    """The default Haldane scenario shortened to ``steps`` hours, horizon 10, budget a quarter period.

    The culture starts without substrate (``S_s = 0``): it does not grow until the controller feeds it,
    so the wall time between the plant server's start and the loop's first read (process start-up,
    hours of plant time at this time scale) does not change the batch.
    """
    text = (
        HALDANE_SCENARIO.read_text()
        .replace("S_s = 0.5,", "S_s = 0.0,")
        .replace('name = "fedbatch_haldane"', f'name = "{name}"')
        .replace("steps = 150", f"steps = {steps}")
        .replace("horizon = 20", "horizon = 10")
        .replace("budget_s = 1.0", f"budget_s = {WALL_PERIOD_S / 4}")
    )
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    return path


def plant_args(scenario: Path, log: Path, *, watchdog_s: float = 0.0, command: str | None = None) -> list[str]:
    """``plant serve`` options: the scenario's plant, real-time at TIME_SCALE, a plant log, the watchdog."""
    args = [
        "--scenario",
        str(scenario),
        "--time-scale",
        repr(TIME_SCALE),
        "--sample-period",
        repr(WALL_PERIOD_S),
        "--log",
        str(log),
    ]
    args += ["--watchdog", repr(watchdog_s)]
    if command is not None:
        args += ["--command", command]
    return args


def bioimp_run(scenario: Path, endpoint: str, out: Path, *, timeout_s: float = 120.0) -> subprocess.Popen[str]:
    """Start ``bioimp run`` against ``endpoint`` (its own process)."""
    argv = [sys.executable, "-m", "hil.cli", "run", str(scenario), "--plant", endpoint, "--out", str(out)]
    argv += ["--timeout", repr(CLIENT_TIMEOUT_S)]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen[str], timeout_s: float = 180.0) -> str:
    """Wait for a ``bioimp run``; assert it exited 0 without a traceback; return its stderr."""
    out, err = proc.communicate(timeout=timeout_s)
    assert proc.returncode == 0, f"bioimp run exited {proc.returncode}:\n{err}\n{out}"
    assert "Traceback" not in err, err
    return err


def query(db: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    """Rows of a read-only query on a record."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return list(conn.execute(sql, args))
    finally:
        conn.close()


def count_so_far(db: Path, table: str, where: str = "1") -> int:
    """Rows of ``table`` matching ``where`` in a record being written (0 while it is being created)."""
    try:
        return int(query(db, f"SELECT COUNT(*) FROM {table} WHERE {where}")[0][0])
    except sqlite3.Error:
        return 0


def event_kinds(db: Path) -> dict[str, int]:
    """How many events of each kind the record holds."""
    return {kind: n for kind, n in query(db, "SELECT kind, COUNT(*) FROM events GROUP BY kind")}


def check_plant_log_against_record(log: Path, db: Path) -> int:
    """The plant applied each seq at most once, in seq order, within its validity and limits.

    The plant log has one ``apply`` line per write that reached the actuators (a repeated seq is answered
    from memory and never reaches them), without the seq. Each application is matched, in order, to the
    next recorded ``intended`` seq with the same values whose period it falls in (plant time between the
    reading it answers and its ``valid_until``, one period later); the matched seqs must strictly
    increase (so no seq twice, none out of order), and every seq the record holds as ``applied`` must be
    matched at the time of the plant's reply. A write whose reply was lost may have been applied
    (matched) or not; a refused one never.

    Returns:
        The number of applications checked.
    """
    entries = read_plant_log(log)
    applications = [(e["t"], e["values"]) for e in entries if e["op"] == "apply"]
    rows = query(db, "SELECT seq, t_s, state, setpoints FROM setpoints ORDER BY rec")
    intended = [(int(seq), t, json.loads(v)) for seq, t, state, v in rows if state == "intended"]
    outcome = {int(seq): (state, t) for seq, t, state, _ in rows if state != "intended"}
    applied = [int(seq) for seq, _, state, _ in rows if state == "applied"]
    assert len(applied) == len(set(applied)), f"a seq recorded as applied twice: {applied}"
    assert applied == sorted(applied), f"seqs applied out of order: {applied}"
    matched: dict[int, float] = {}
    j = 0
    for t, values in applications:
        while j < len(intended):
            seq, t_read, want = intended[j]
            j += 1
            fits = want == values and t_read - 1e-6 <= t <= t_read + PLANT_PERIOD_S + 1e-6
            if fits and outcome.get(seq, ("lost", 0.0))[0] != "refused":
                matched[seq] = t
                break
        else:
            raise AssertionError(f"plant applied {values} at t={t} s: no recorded seq left to match it")
    for seq in applied:
        assert seq in matched, f"seq {seq} recorded as applied, but the plant log has no application of it"
        assert matched[seq] == outcome[seq][1], f"seq {seq}: applied at {matched[seq]}, recorded {outcome[seq]}"
    lo, hi = INP_LIMITS
    for e in entries:
        if e["op"] in ("apply", "apply_safe"):
            for value in e["values"].values():
                assert lo <= value <= hi, f"applied {value} outside [{lo}, {hi}]: {e}"
    return len(applications)


def kpis_at_batch_end(db: Path, steps: int) -> dict[str, float]:
    """Titer ``P_s`` and feed used (``V_s`` gained) at exactly ``steps`` periods after the first reading.

    Interpolated linearly between the recorded readings around that time, so that neither a late final
    read (retried over a lossy link) nor a lost reading shifts the figure. The summary's objective is not
    used: it sums a stage cost over the recorded readings, so each reading the faults cost drops a term.
    """
    rows = query(db, "SELECT read_t_s, device, value FROM samples WHERE device IN ('P_s', 'V_s') ORDER BY rec")
    series: dict[str, list[tuple[float, float]]] = {"P_s": [], "V_s": []}
    for t, device, value in rows:
        if value is not None and (not series[device] or t > series[device][-1][0]):
            series[device].append((float(t), float(value)))
    # The batch's start on the loop's period grid: a reading is never early, often late (a delayed or
    # resent request), and step 0's may be lost, so the grid is the earliest of (time - step · period).
    reads = query(db, "SELECT step, read_t_s FROM samples WHERE device = 'P_s'")
    t_end = min(float(t) - int(k) * PLANT_PERIOD_S for k, t in reads) + steps * PLANT_PERIOD_S

    def at(name: str, t: float) -> float:
        ts, vs = zip(*series[name], strict=True)
        if ts[-1] < t <= ts[-1] + 0.1 * PLANT_PERIOD_S:
            t = ts[-1]  # the final read came a little early (wall-clock jitter × the time scale)
        assert ts[0] <= t <= ts[-1], f"{name}: no reading around t = {t}"
        return float(np.interp(t, ts, vs))

    return {"titer": at("P_s", t_end), "feed_L": at("V_s", t_end) - series["V_s"][0][1]}


def summary(out: Path) -> dict[str, Any]:
    """The run directory's summary.json."""
    result: dict[str, Any] = json.loads((out / "summary.json").read_text())
    return result
