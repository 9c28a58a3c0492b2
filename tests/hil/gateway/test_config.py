"""GATEWAY.toml validation: every refusal is one line naming the entry, through the function and the CLI."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from hil.cli import main
from hil.gateway.config import ModbusDeviceConfig, load_gateway_config, parse_gateway_config
from plant_models.errors import ScenarioError

from .procs import REPO

EXAMPLES = REPO / "examples" / "gateway"

BASE = """
name = "rig"
[drivers.plc]
kind = "modbus"
host = "127.0.0.1"
port = 5020
[devices.pump]
kind = "actuator"
driver = "plc"
unit = "L/h"
min = 0.0
max = 2.0
safe = 0.0
address = 0
type = "float32"
[devices.temp]
kind = "sensor"
driver = "plc"
unit = "degC"
address = 10
register = "input"
type = "int16"
scale = 0.1
"""


def _edit(old: str, new: str) -> str:
    assert old in BASE
    return BASE.replace(old, new, 1)


def test_base_parses_with_defaults() -> None:
    config = parse_gateway_config(BASE)
    pump, temp = config.devices
    assert pump.kind == "actuator" and pump.safe == 0.0 and pump.max_rate is None
    assert isinstance(pump.address, ModbusDeviceConfig) and pump.address.register == "holding"
    assert pump.address.count == 2 and pump.tolerance == pytest.approx(2e-6)
    assert isinstance(temp.address, ModbusDeviceConfig) and temp.address.count == 1
    assert config.server.time_scale == 1.0


CASES = {
    "unknown key": (_edit('unit = "L/h"', 'unit = "L/h"\ncolour = "red"'), "devices.pump.colour: unknown key"),
    "unknown top-level key": ("extra = 1\n" + BASE, "extra: unknown key"),
    "unknown server key": (BASE + "\n[server]\nport = 1\n", "server.port: unknown key"),
    "missing address": (_edit("address = 0\n", ""), "devices.pump.address: required key is missing"),
    "missing node": (
        BASE.replace('kind = "modbus"\nhost = "127.0.0.1"\nport = 5020', 'kind = "opcua"\nurl = "opc.tcp://h:4840"\n'
                     'security_policy = "None"\nallow_insecure = true'),
        "devices.pump.node: required key is missing",
    ),
    "overlap float32 spans two registers": (
        _edit('address = 10\nregister = "input"', 'address = 1\nregister = "holding"'),
        "devices.temp.address: holding register 1 of driver 'plc' overlaps devices.pump.address",
    ),
    "overlap with a readback": (
        _edit('type = "float32"', 'type = "float32"\nreadback_address = 9'),
        "devices.temp.address: input register 10 of driver 'plc' overlaps devices.pump.readback_address",
    ),
    "min > max": (_edit("max = 2.0", "max = -1.0"), "devices.pump.min: min 0.0 > max -1.0"),
    "safe outside": (_edit("safe = 0.0", "safe = 3.0"), "devices.pump.safe: safe value 3.0 outside [min, max]"),
    "unknown driver": (_edit('driver = "plc"', 'driver = "plx"'), "devices.pump.driver: no driver named 'plx'"),
    "actuator on an input register": (
        _edit("address = 0", 'address = 0\nregister = "input"'),
        "devices.pump.register: an actuator is written, so it must be 'holding'",
    ),
    "bad data type": (_edit('type = "float32"', 'type = "float64"'), "devices.pump.type: expected one of"),
    "limit not representable": (
        _edit('type = "float32"', 'type = "int16"\nscale = 0.00001'),
        "devices.pump.max: 2.0 encodes to 200000, outside int16",
    ),
    "opcua security None needs allow_insecure": (
        BASE.replace('kind = "modbus"\nhost = "127.0.0.1"\nport = 5020', 'kind = "opcua"\nurl = "opc.tcp://h:4840"\n'
                     'security_policy = "None"'),
        "drivers.plc.security_policy: 'None' (no signing, no encryption) needs allow_insecure = true",
    ),
    "opcua certificate required": (
        BASE.replace('kind = "modbus"\nhost = "127.0.0.1"\nport = 5020', 'kind = "opcua"\nurl = "opc.tcp://h:4840"'),
        "drivers.plc.certificate: required with security_policy 'Basic256Sha256'",
    ),
    "not toml": ("name = ", "<gateway>: not valid TOML"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_refused_with_one_line_naming_the_entry(case: str) -> None:
    text, expected = CASES[case]
    with pytest.raises(ScenarioError) as info:
        parse_gateway_config(text)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(expected), message


def test_cli_refuses_each_case_with_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for case, (text, expected) in CASES.items():
        path = tmp_path / f"{case.replace(' ', '_')}.toml"
        path.write_text(text)
        assert main(["gateway", str(path)]) == 2, case
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and err.startswith("bioimp gateway: error: "), (case, err)
        assert expected.removeprefix("<gateway>: ") in err, (case, err)


def test_cli_process_exit_2(tmp_path: Path) -> None:
    """The real entry point, in its own process: one line on stderr, exit code 2, nothing bound."""
    path = tmp_path / "gw.toml"
    path.write_text(_edit("max = 2.0", "max = -1.0"))
    proc = subprocess.run(
        [sys.executable, "-m", "hil.cli", "gateway", str(path)], capture_output=True, text=True, timeout=60, cwd=REPO
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.strip() == "bioimp gateway: error: devices.pump.min: min 0.0 > max -1.0"


def test_shipped_examples_parse() -> None:
    modbus = load_gateway_config(EXAMPLES / "modbus.toml")
    opcua = load_gateway_config(EXAMPLES / "opcua.toml")
    assert [d.name for d in modbus.devices] == [d.name for d in opcua.devices]
    assert {d.name for d in modbus.devices if d.kind == "actuator"} == {"inp", "heater"}
    driver = opcua.drivers["plc"]
    assert driver.kind == "opcua" and driver.security_mode == "SignAndEncrypt"
    assert driver.certificate == (EXAMPLES / "certs" / "client_cert.der").resolve()


def test_hardware_md_examples_parse() -> None:
    """The GATEWAY.toml snippets of docs/hardware.md are valid, and its example refusal is verbatim."""
    text = (REPO / "docs" / "hardware.md").read_text()
    blocks = re.findall(r"```toml\n(.*?)```", text, re.S)
    assert len(blocks) == 2
    modbus = parse_gateway_config(blocks[0])
    assert [d.name for d in modbus.devices] == ["inp", "heater", "X_s"]
    opcua = parse_gateway_config(blocks[1])
    assert opcua.drivers["plc"].kind == "opcua"
    bad = blocks[0].replace("safe = 0.0                          # heater off", "safe = 120.0")
    with pytest.raises(ScenarioError) as info:
        parse_gateway_config(bad)
    assert f"bioimp gateway: error: {info.value}" in text
