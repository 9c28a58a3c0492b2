"""``bioimp simulate``: open-loop simulation through the real command line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

DATA = Path(__file__).parents[1] / "data"


def bioimp(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hil.cli", *args], capture_output=True, text=True, timeout=120, check=False
    )


def test_simulate_reproduces_dompc_open_loop(tmp_path: Path) -> None:
    ref = np.loadtxt(DATA / "dompc_batch_bioreactor_openloop.csv", delimiter=",", comments="#")
    rows = [f"{t:g},0.01" for t in ref[:, 0]]
    (tmp_path / "in.csv").write_text("# constant feed\nt,inp\n" + "\n".join(rows) + "\n")
    done = bioimp("simulate", "--model", "fedbatch_haldane", "--inputs", str(tmp_path / "in.csv"),
                  "--out", str(tmp_path / "out.csv"))
    assert done.returncode == 0, done.stderr
    lines = (tmp_path / "out.csv").read_text().splitlines()
    assert lines[0].startswith("#") and lines[1] == "t,X_s,S_s,P_s,V_s"
    out = np.loadtxt(tmp_path / "out.csv", delimiter=",", comments="#", skiprows=2)
    assert out.shape == (101, 5)
    np.testing.assert_array_equal(out[:, 0], ref[:, 0])
    np.testing.assert_allclose(out[1:, 1:], ref[1:, 1:5], rtol=1e-6)


def test_simulate_holds_each_input_until_the_next_row(tmp_path: Path) -> None:
    (tmp_path / "in.csv").write_text("t,inp\n0,0.1\n2,0.0\n5,999\n")
    done = bioimp("simulate", "--model", "fedbatch_haldane", "--inputs", str(tmp_path / "in.csv"),
                  "--out", str(tmp_path / "out.csv"), "--x0", "V_s=100")
    assert done.returncode == 0, done.stderr
    out = np.loadtxt(tmp_path / "out.csv", delimiter=",", comments="#", skiprows=2)
    # V integrates the feed: 0.1 L/h for 2 h, then nothing; the last row's 999 is never applied.
    np.testing.assert_allclose(out[:, 4], [100.0, 100.2, 100.2], rtol=1e-9)
    np.testing.assert_array_equal(out[:, 0], [0.0, 2.0, 5.0])


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("t,feed\n0,1\n1,1\n", "in.csv:1: model 'fedbatch_haldane' has no input 'feed'"),
        ("time,inp\n0,1\n1,1\n", "in.csv:1: header must start with 't'"),
        ("t,inp\n0,0.1\n0,0.1\n", "in.csv:3: t must be finite and strictly increasing"),
        ("t,inp\n0,abc\n1,0\n", "in.csv:2: not a number"),
        ("t,inp\n0,0.1,3\n1,0\n", "in.csv:2: expected 2 values, got 3"),
        ("t,inp\n0,0.1\n", "need at least two rows"),
        ("t,inp\n0,nan\n1,0\n", "inputs must be finite"),
    ],
)
def test_bad_inputs_csv_is_one_line_exit_2(tmp_path: Path, content: str, message: str) -> None:
    (tmp_path / "in.csv").write_text(content)
    done = bioimp("simulate", "--model", "fedbatch_haldane", "--inputs", str(tmp_path / "in.csv"),
                  "--out", str(tmp_path / "out.csv"))
    assert done.returncode == 2
    assert message in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
    assert not (tmp_path / "out.csv").exists()


def test_bad_x0_and_model_are_one_line_exit_2(tmp_path: Path) -> None:
    (tmp_path / "in.csv").write_text("t,inp\n0,0.1\n1,0\n")
    for extra, message in ((["--x0", "Q=1"], "no state named 'Q'"), (["--x0", "V_s"], "--x0 expects NAME=NUMBER")):
        done = bioimp("simulate", "--model", "fedbatch_haldane", "--inputs", str(tmp_path / "in.csv"),
                      "--out", str(tmp_path / "o.csv"), *extra)
        assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr
    done = bioimp("simulate", "--model", "nope", "--inputs", str(tmp_path / "in.csv"), "--out", "o.csv")
    assert done.returncode == 2 and "unknown model 'nope'" in done.stderr


def test_models_lists_signals_with_units() -> None:
    done = bioimp("models")
    assert done.returncode == 0
    assert "fedbatch_haldane" in done.stdout
    assert "X_s [g/L]" in done.stdout and "inp [L/h]" in done.stdout and "time     h" in done.stdout
