"""``bioimp fit`` on the record of a real ``bioimp run`` (the default fed-batch: NMPC, plant server over
ZeroMQ in its own process). The plant is the model itself with exact sensors, so the fit must return the
model's nominal parameters, up to the RK4 discretisation of the shooting intervals."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from hil.cli import main
from plant_models.registry import resolve_model
from twin.scenario import HALDANE_SCENARIO

SPEC = """\
model = "fedbatch_haldane"
[estimate]
mu_m = { bounds = [0.005, 0.1] }
Y_x = { bounds = [0.1, 2.0] }
Y_p = { bounds = [0.2, 5.0] }
v = { bounds = [0.0005, 0.02] }
[noise]
X_s = { rel_sigma = 0.01, sigma = 0.01 }
S_s = { rel_sigma = 0.01, sigma = 0.01 }
P_s = { rel_sigma = 0.01, sigma = 0.01 }
"""


def test_fit_of_a_bioimp_run_record_returns_the_plant_parameters(tmp_path: Path) -> None:
    run = tmp_path / "runs" / "h1"
    done = subprocess.run(
        [sys.executable, "-m", "hil.cli", "run", str(HALDANE_SCENARIO), "--out", str(run)],
        capture_output=True, text=True, timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    (tmp_path / "spec.toml").write_text(SPEC, encoding="utf-8")
    args = ["fit", str(tmp_path / "spec.toml"), "--data", str(tmp_path / "runs"), "--out", str(tmp_path / "fit")]
    assert main(args) == 0
    report = json.loads((tmp_path / "fit" / "fit.json").read_text())
    nominal = resolve_model("fedbatch_haldane").nominal_params
    assert report["batches"][0]["n_samples"] == {"X_s": 151, "S_s": 151, "P_s": 151}
    for name, p in report["parameters"].items():
        assert p["estimate"] == pytest.approx(nominal[name], rel=2e-3), name
        assert p["ci95"][0] <= nominal[name] <= p["ci95"][1], name
        assert p["identifiable"], (name, p["flags"])
