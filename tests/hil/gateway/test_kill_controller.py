"""Kill -9 the controller (``bioimp run``) driving emulated Modbus hardware through the gateway.

Three processes besides the test: the Modbus emulator (the PLC), the gateway, and ``bioimp run``. The
test turns the heater on itself and feeds the watchdog while the controller starts, then goes quiet:
only the running controller's heartbeat keeps the gateway armed. After SIGKILL of the controller, the
PLC's pump and heater registers must hold their safe values within 2 × watchdog_s, and writes must be
refused until an operator arms the gateway.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from hil.client import ZmqPlant
from plant_models.errors import ProtocolError
from twin.scenario import HALDANE_SCENARIO

from .conftest import example_config
from .procs import REPO, bioimp, free_port
from .test_modbus import _raw_register

WATCHDOG_S = 0.5
PUMP, HEATER = 0, 2  # holding registers in examples/gateway/modbus.toml


def test_killed_controller_leaves_the_plc_safe_and_writes_need_arm(tmp_path: Path) -> None:
    scenario = tmp_path / "long.toml"
    text = HALDANE_SCENARIO.read_text().replace("steps = 150", "steps = 600")
    scenario.write_text(text.replace("period_s = 3600.0 ", "period_s = 0.5 "))
    port = free_port()
    config = example_config(tmp_path, "modbus", port=port)
    with (
        bioimp(["emulate", "modbus", "--model", "fedbatch_haldane", "--config", str(config)]),
        bioimp(["gateway", str(config), "--watchdog", repr(WATCHDOG_S)]) as gateway,
        ZmqPlant(gateway.ready[0], timeout_s=5.0) as operator,
    ):
        time.sleep(0.3)  # the heater's max rate (10 %/s) counts from the gateway's start
        operator.write({"heater": 1.5}, seq=1)
        assert _raw_register(port, HEATER) == [15]
        controller = subprocess.Popen(
            [sys.executable, "-m", "hil.cli", "run", str(scenario), "--plant", gateway.ready[0], "--out",
             str(tmp_path / "run")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            cwd=REPO,
        )
        try:
            started = time.monotonic()
            while time.monotonic() - started < 6.0:  # feed the watchdog while the controller starts up
                operator.heartbeat()
                time.sleep(0.1)
            time.sleep(4 * WATCHDOG_S)  # now only the controller's heartbeats and writes keep it armed
            assert controller.poll() is None, controller.stderr.read() if controller.stderr else ""
            assert operator.hello().state == "armed"
            assert _raw_register(port, HEATER) == [15]  # armed all along: nobody else touched it
            controller.kill()
            controller.wait(5)
            killed = time.monotonic()
            while _raw_register(port, PUMP) != [0] or _raw_register(port, HEATER) != [0]:
                assert time.monotonic() - killed <= 2 * WATCHDOG_S, "PLC not safe within 2 x watchdog_s"
                time.sleep(0.02)
        finally:
            controller.kill()
            controller.wait(5)
        assert operator.hello().state == "failsafe"
        with pytest.raises(ProtocolError) as refused:
            operator.write({"heater": 1.0}, seq=2)
        assert refused.value.code == "failsafe"
        assert _raw_register(port, HEATER) == [0]
        arm = subprocess.run(
            [sys.executable, "-m", "hil.cli", "arm", gateway.ready[0]], capture_output=True, text=True, cwd=REPO
        )
        assert arm.returncode == 0, arm.stderr
        operator.write({"heater": 1.0}, seq=2)
        assert _raw_register(port, HEATER) == [10]
