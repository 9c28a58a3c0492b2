"""``bioimp run`` end to end: a plant server process, ZeroMQ, the loop, the run directory."""

from __future__ import annotations

import csv
import itertools
import json
import subprocess
import sys
from pathlib import Path

import pytest

from twin.scenario import HALDANE_SCENARIO

DOMPC_FINAL_P = 1.681883


def bioimp(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hil.cli", *args], capture_output=True, text=True, timeout=300, check=False, cwd=cwd
    )


def test_haldane_run_matches_dompc_and_writes_the_run_directory(tmp_path: Path) -> None:
    done = bioimp("run", str(HALDANE_SCENARIO), "--out", str(tmp_path / "run"))
    assert done.returncode == 0, done.stderr
    assert "objective" in done.stdout and "step ms" in done.stdout
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["steps"] == 150
    assert summary["final_states"]["P_s"] == pytest.approx(DOMPC_FINAL_P, rel=5e-3)
    assert set(summary["controller"]["step_ms"]) == {"p50", "p90", "p99", "max"}
    assert summary["controller"]["name"] == "nmpc"
    assert summary["deadline_misses"] == 0 and summary["refused_writes"] == 0
    # Bounds are met up to the controller's discretisation error (see tests/controllers/test_nmpc.py).
    assert 0.0 <= summary["constraint_violation_max"] < 5e-4
    with (tmp_path / "run" / "trajectory.csv").open() as f:
        rows = [r for r in csv.reader(f) if not r[0].startswith("#")]
    assert rows[0] == ["t", "X_s", "S_s", "P_s", "V_s", "inp"]
    assert len(rows) == 152 and rows[-1][0] == "150.0" and rows[-1][5] == ""
    assert float(rows[-1][3]) == pytest.approx(summary["final_states"]["P_s"], rel=1e-12)
    # The objective, recomputed from the trajectory: -sum P_s(k<150) - P_s(150) + sum (u_k - u_k-1)^2,
    # with u_-1 = 0 (the pump starts at its safe value).
    p = [float(r[3]) for r in rows[1:]]
    u = [0.0] + [float(r[5]) for r in rows[1:-1]]
    expected = -sum(p[:-1]) - p[-1] + sum((b - a) ** 2 for a, b in itertools.pairwise(u))
    assert summary["objective"] == pytest.approx(expected, rel=1e-12)
    png = (tmp_path / "run" / "trajectory.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_unreachable_plant_endpoint_is_one_line_exit_2(tmp_path: Path) -> None:
    done = bioimp("run", "--plant", "not-an-endpoint", "--out", str(tmp_path / "run"))
    assert done.returncode == 2
    assert done.stderr.startswith("bioimp: error: --plant 'not-an-endpoint'")
    assert len(done.stderr.strip().splitlines()) == 1


def test_dompc_controller_runs_through_the_same_loop(tmp_path: Path) -> None:
    text = HALDANE_SCENARIO.read_text().replace('kind = "nmpc"', 'kind = "do-mpc"').replace("steps = 150", "steps = 5")
    (tmp_path / "dompc.toml").write_text(text)
    done = bioimp("run", str(tmp_path / "dompc.toml"), "--out", str(tmp_path / "run"))
    assert done.returncode == 0, done.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["controller"]["name"] == "do-mpc" and summary["steps"] == 5
    assert summary["final_states"]["V_s"] > 120.0  # it fed the reactor


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("horizon = 20", "horizn = 20", "controller.horizn: unknown key"),
        ('model = "fedbatch_haldane"', 'model = "nope"', "model: unknown model 'nope'"),
        ("X_s = [0.0, 3.7]", "X_s = [3.7, 0.0]", "bounds.X_s: [3.7, 0.0] admits no value"),
        ("X_s = [0.0, 3.7]", "X_s = [inf, inf]", "bounds.X_s: [inf, inf] admits no value"),
        ("stage = { P_s = -1.0 }", "stage = { P_s = inf }", "objective.stage.P_s: must be finite"),
        ("V_s = 120.0 }", "V_s = 0.0 }", "plant.params / plant.x0: the model's derivative is not finite"),
    ],
)
def test_broken_scenario_is_one_line_exit_2_and_writes_nothing(
    tmp_path: Path, old: str, new: str, message: str
) -> None:
    (tmp_path / "bad.toml").write_text(HALDANE_SCENARIO.read_text().replace(old, new))
    done = bioimp("run", str(tmp_path / "bad.toml"), "--out", str(tmp_path / "run"))
    assert done.returncode == 2
    assert done.stderr.startswith(f"bioimp: error: {message}")
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
    assert not (tmp_path / "run").exists()
