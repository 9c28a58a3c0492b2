"""The operator channel survives a controller crash: ``bioimp run --resume`` serves it too.

A batch is killed (SIGKILL) mid-way and resumed with ``--operator-endpoint``; an operator's bound change
sent to the resumed run lands in the same record's audit trail, and the record still verifies.
"""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import time
from pathlib import Path

from hil.console import operator_request
from hil.launch import spawn_plant_server
from hil.security import ClientKeys, generate_keys
from tests.hil.conftest import REPO
from tests.hil.dashboard.test_dashboard_live import bioimp, free_port, live_scenario
from twin.record_verify import verify_record


def _controls(record: Path) -> int:
    try:
        with sqlite3.connect(f"file:{record}?mode=ro", uri=True) as conn:
            return int(conn.execute("SELECT COUNT(*) FROM controls").fetchone()[0])
    except sqlite3.Error:
        return 0  # not created yet


def test_resumed_run_serves_operator_actions_into_the_same_record(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    generate_keys(keys, ("run", "bob"))
    (keys / "allow").mkdir()
    (keys / "allow" / "bob.key").write_bytes((keys / "bob.key").read_bytes())
    out, endpoint = tmp_path / "run", f"tcp://127.0.0.1:{free_port()}"
    console = ["--operator-endpoint", endpoint, "--operator-server-key", str(keys / "run.key_secret"),
               "--operator-allow", str(keys / "allow")]  # fmt: skip
    with spawn_plant_server("fedbatch_haldane", extra_args=("--watchdog", "0")) as plant:
        scenario = live_scenario(tmp_path, steps=300, period_s=300.0)
        first = subprocess.Popen(
            bioimp("run", str(scenario), "--plant", plant.command, "--out", str(out), *console),
            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while _controls(out / "record.sqlite") < 30:
            assert time.monotonic() < deadline and first.poll() is None, "the batch did not get going"
            time.sleep(0.05)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        resumed = subprocess.Popen(
            bioimp("run", "--resume", str(out), *console), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        try:
            bob = ClientKeys.load(keys / "bob.key_secret", keys / "run.key")
            request = {"op": "set_bound", "name": "inp", "lo": 0.0, "hi": 0.15, "who": "Bob", "why": "after restart"}
            reply = operator_request(endpoint, bob, request, timeout_s=60)
            assert reply["ok"] is True and reply["old"] == [0.0, 0.2], reply
            _, err = resumed.communicate(timeout=120)
            assert resumed.returncode == 0, err
        finally:
            if resumed.poll() is None:
                resumed.kill()
                resumed.wait(10)
    with sqlite3.connect(f"file:{out / 'record.sqlite'}?mode=ro", uri=True) as conn:
        audit = conn.execute("SELECT who, what, why, old, new FROM audit").fetchall()
        outages = conn.execute("SELECT COUNT(*) FROM events WHERE kind = 'controller_outage'").fetchone()[0]
    assert outages == 1
    assert ("Bob (operator key bob)", "bound inp", "after restart", "[0.0, 0.2]", "[0.0, 0.15]") in audit
    assert verify_record(out / "record.sqlite").ok
