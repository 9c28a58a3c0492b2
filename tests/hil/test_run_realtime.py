"""``bioimp run`` against a real-time plant server with CURVE keys and a watchdog, all separate processes."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from hil.launch import spawn_plant_server
from tests.hil.conftest import REPO

PERIOD_S = 0.1
STEPS = 20


def _scenario(tmp_path: Path) -> Path:
    """The default scenario, shortened to 20 periods of 0.1 s of (wall-clock) plant time."""
    text = (REPO / "twin" / "scenarios" / "fedbatch_haldane.toml").read_text()
    text = text.replace('name = "fedbatch_haldane"', 'name = "realtime_haldane"')
    text = text.replace("steps = 150", f"steps = {STEPS}").replace("period_s = 3600.0", f"period_s = {PERIOD_S}")
    text = text.replace("budget_s = 1.0", f"budget_s = {PERIOD_S}")
    path = tmp_path / "realtime_haldane.toml"
    path.write_text(text)
    return path


def test_run_follows_the_wall_clock_keeps_the_plant_armed_and_uses_keys(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    cli = [sys.executable, "-m", "hil.cli"]
    subprocess.run([*cli, "keys", "generate", str(keys)], check=True, capture_output=True, timeout=30)
    (keys / "allowed").mkdir()
    (keys / "allowed" / "client.key").write_bytes((keys / "client.key").read_bytes())
    serve = ["--server-key", str(keys / "server.key_secret"), "--allow", str(keys / "allowed"), "--watchdog", "0.3"]
    with spawn_plant_server("fedbatch_haldane", clock="realtime", extra_args=serve) as server:
        client = ["--client-key", str(keys / "client.key_secret"), "--server-public-key", str(keys / "server.key")]
        out = tmp_path / "run"
        t0 = time.monotonic()
        run = subprocess.run(
            [*cli, "run", str(_scenario(tmp_path)), "--plant", server.command, "--out", str(out), *client],
            capture_output=True,
            text=True,
            timeout=120,
        )
        wall_s = time.monotonic() - t0
        assert run.returncode == 0, run.stderr
        summary = json.loads((out / "summary.json").read_text())
        assert summary["steps"] == STEPS
        assert summary["refused_writes"] == 0  # the heartbeat kept the 0.3 s watchdog fed throughout
        assert wall_s >= STEPS * PERIOD_S  # a real-time loop: no faster than the wall clock
        # Without the keys the same run cannot even say hello: one line, exit 2.
        refused = subprocess.run(
            [*cli, "run", str(_scenario(tmp_path)), "--plant", server.command, "--out", str(tmp_path / "x")],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert refused.returncode == 2
        assert refused.stderr.startswith("bioimp: error: no reply from"), refused.stderr
