"""``bioimp plant serve`` through its real entry point (``python -m hil.cli``), in separate processes."""

from __future__ import annotations

import selectors
import signal
import subprocess
import sys
import time

import pytest
import zmq

from hil.client import ZmqPlant
from hil.launch import PlantServerError, spawn_plant_server
from plant_models.errors import PlantTimeout
from tests.hil.conftest import REPO, env_with_test_models

SERVE = [sys.executable, "-m", "hil.cli", "plant", "serve"]


def _readline(proc: subprocess.Popen[str], timeout_s: float) -> str:
    """The child's next stdout line, without blocking past ``timeout_s``."""
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout_s):
            raise AssertionError(f"no output within {timeout_s} s")
    return proc.stdout.readline()


def test_serve_prints_the_bound_endpoints_and_sigterm_exits_0() -> None:
    with spawn_plant_server("fedbatch_haldane", x0={"X_s": 2.0}, params={"mu_m": 0.03}) as server:
        for endpoint in (server.command, server.telemetry):
            assert endpoint.startswith("tcp://127.0.0.1:") and not endpoint.endswith(":*")
        assert server.command != server.telemetry
        with ZmqPlant(server.command) as plant:
            assert plant.read(("X_s",)).values["X_s"].value == 2.0  # --x0 reached the plant
        assert server.process.poll() is None
    assert server.process.returncode == 0


def test_sigint_stops_the_server_cleanly() -> None:
    cmd = [*SERVE, "--model", "fedbatch_haldane", "--command", "tcp://127.0.0.1:*", "--telemetry", "tcp://127.0.0.1:*"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        line = _readline(proc, 30.0)
        assert line.startswith("ready tcp://127.0.0.1:")
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=10.0)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0
    assert err == ""


def _bound_endpoint() -> tuple[zmq.Socket[bytes], str]:
    sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind("tcp://127.0.0.1:*")
    return sock, sock.getsockopt_string(zmq.LAST_ENDPOINT)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "no_such_model"], "unknown model 'no_such_model'"),
        (["--model", "no_such_pkg.mod:factory"], "cannot load model"),
        (["--model", "fedbatch_haldane", "--x0", "X_s"], "--x0 expects NAME=NUMBER"),
        (["--model", "fedbatch_haldane", "--x0", "X_s=lots"], "--x0 expects NAME=NUMBER"),
        (["--model", "fedbatch_haldane", "--x0", "Q_s=1"], "no state named 'Q_s'"),
        (["--model", "fedbatch_haldane", "--x0", "X_s=nan"], "must be finite"),
        (["--model", "fedbatch_haldane", "--param", "speed=1"], "no param named 'speed'"),
        (["--model", "fedbatch_haldane", "--sample-period", "0"], "--sample-period must be a positive number"),
        (["--model", "fedbatch_haldane", "--watchdog", "-1"], "--watchdog must be a positive number"),
        (["--model", "fedbatch_haldane", "--watchdog", "nan"], "--watchdog must be a positive number"),
        (["--model", "fedbatch_haldane", "--idle-exit", "0"], "--idle-exit must be a positive number"),
        (["--model", "fedbatch_haldane", "--command", "tcp://0.0.0.0:*"], "binding a network endpoint"),
        (["--model", "fedbatch_haldane", "--telemetry", "tcp://*:*"], "--telemetry tcp://*:*: binding a network"),
        (["--model", "fedbatch_haldane", "--server-key", "x.key_secret"], "--server-key and --allow go together"),
        (["--model", "fedbatch_haldane", "--server-key", "nope", "--allow", "."], "not a readable ZeroMQ"),
        (["--model", "fedbatch_haldane", "--sample-period", "soon"], "--sample-period expects a number"),
        (["--model", "fedbatch_haldane", "--rtol", "0"], "tolerances and max_num_steps must be positive"),
        (["--model", "fedbatch_haldane", "--atol", "tight"], "--atol expects a number"),
        (["--model", "fedbatch_haldane", "--insecure", "--command", "carrier-pigeon://x"], "cannot bind"),
        (["--model", "fedbatch_haldane", "--command", "PORT_IN_USE"], "cannot bind"),
    ],
)
def test_bad_options_exit_2_with_one_line_and_no_traceback(args: list[str], message: str) -> None:
    holder, in_use = _bound_endpoint()
    try:
        args = [in_use if a == "PORT_IN_USE" else a for a in args]
        result = subprocess.run([*SERVE, *args], capture_output=True, text=True, timeout=60, check=False, cwd=REPO)
    finally:
        holder.close(linger=0)
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""  # never "ready"
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("bioimp plant serve: error: ")
    assert message in lines[0]
    assert "Traceback" not in result.stderr


def test_spawn_reports_a_server_that_fails_to_start() -> None:
    with pytest.raises(PlantServerError, match="unknown model"), spawn_plant_server("no_such_model"):
        pytest.fail("must not be reached")


def test_spawn_skips_stdout_lines_before_ready() -> None:
    model = "tests.hil.two_input_model:noisy_two_input"
    with spawn_plant_server(model, env=env_with_test_models()) as server, ZmqPlant(server.command) as plant:
        assert plant.hello().plant == "two_input"
    assert server.process.returncode == 0


def test_spawn_times_out_and_stops_a_server_that_is_not_ready_in_time() -> None:
    with pytest.raises(PlantTimeout, match="not ready"), spawn_plant_server("fedbatch_haldane", ready_timeout_s=0.001):
        pytest.fail("must not be reached")


def test_idle_exit_stops_a_plant_nobody_talks_to() -> None:
    with spawn_plant_server("fedbatch_haldane", extra_args=["--idle-exit", "0.5"]) as server:
        with ZmqPlant(server.command) as plant:
            for _ in range(4):  # requests every 0.3 s keep it alive past its 0.5 s idle limit
                plant.hello()
                time.sleep(0.3)
                assert server.process.poll() is None
        assert server.process.wait(timeout=3.0) == 0  # then it stops by itself, cleanly
