"""The gateway against the OPC UA emulator, each in its own process: security None (explicitly allowed)
and Basic256Sha256 SignAndEncrypt with certificates generated here."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from hil.client import ZmqPlant
from hil.gateway.backend import GatewayBackend
from hil.gateway.certs import EMULATOR_URI, GATEWAY_URI, write_certificate
from hil.gateway.config import load_gateway_config, parse_gateway_config

from .conftest import example_config
from .procs import bioimp, free_port


def _round_trip(command: str) -> None:
    with ZmqPlant(command, timeout_s=5.0) as plant:
        deadline = time.monotonic() + 10.0
        while plant.read().values["X_s"].quality != "good":
            assert time.monotonic() < deadline, "sensors never became good"
            time.sleep(0.05)
        started = time.monotonic()
        result = plant.write({"inp": 0.123}, seq=1)
        write_s = time.monotonic() - started
        assert result.applied["inp"] == 0.123
        readings = plant.read().values
    print(f"OPC UA write + readback {write_s * 1000:.0f} ms")
    assert readings["inp"].value == pytest.approx(0.123, abs=1e-9)
    assert readings["X_s"].value == pytest.approx(1.0, rel=1e-3)  # x0, time scale 1
    assert readings["V_s"].value == pytest.approx(120.0, rel=1e-3)


def test_security_none_round_trip(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "gw.toml"
    with bioimp(
        ["emulate", "opcua", "--model", "fedbatch_haldane", "--port", str(port), "--write-config", str(config)]
    ) as emulator:
        assert emulator.ready == ["opcua", f"opc.tcp://127.0.0.1:{port}/"]
        assert 'security_policy = "None"\nallow_insecure = true' in config.read_text()
        with bioimp(["gateway", str(config)]) as gateway:
            _round_trip(gateway.ready[0])


def test_sign_and_encrypt_round_trip(tmp_path: Path) -> None:
    """The shipped example file as is (certificate paths relative to it), against a server that offers
    Basic256Sha256 only; a gateway configured without security cannot connect to it."""
    certs = tmp_path / "certs"
    write_certificate(certs, "client", uri=GATEWAY_URI, server=False)
    server_cert, server_key = write_certificate(certs, "server", uri=EMULATOR_URI, server=True)
    port = free_port()
    path = example_config(tmp_path, "opcua", port=port)
    emulate = ["emulate", "opcua", "--model", "fedbatch_haldane", "--config", str(path)]
    secure = ["--certificate", str(server_cert), "--private-key", str(server_key), "--secure-only"]
    with bioimp(emulate + secure):
        with bioimp(["gateway", str(path)]) as gateway:
            _round_trip(gateway.ready[0])
        none = 'security_policy = "None"\nallow_insecure = true'
        text = path.read_text().replace('security_policy = "Basic256Sha256"', none)
        insecure = parse_gateway_config(text, base=tmp_path)
        with GatewayBackend(insecure) as backend:
            assert backend.read(["X_s"])["X_s"].quality == "bad"
            assert any("driver down" in e["reason"] for e in backend.take_events())
    assert load_gateway_config(path).drivers["plc"].kind == "opcua"


def test_server_loss_is_bad_then_reconnects(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "gw.toml"
    emulate = ["emulate", "opcua", "--model", "fedbatch_haldane", "--port", str(port)]
    backend: GatewayBackend | None = None
    try:
        with bioimp([*emulate, "--write-config", str(config)]) as emulator:
            backend = GatewayBackend(load_gateway_config(config))
            backend.start()
            assert backend.read(["X_s"])["X_s"].quality == "good"
            emulator.process.kill()
            killed = time.monotonic()
            while backend.read(["X_s"])["X_s"].quality != "bad":
                assert time.monotonic() - killed < 5.0
                time.sleep(0.02)
            bad_after = time.monotonic() - killed
        with bioimp(emulate):
            restarted = time.monotonic()
            while backend.read(["X_s"])["X_s"].quality != "good":
                assert time.monotonic() - restarted < 10.0
                time.sleep(0.02)
            good_after = time.monotonic() - restarted
            backend.apply({"inp": 0.05})
            assert backend.read(["inp"])["inp"].value == pytest.approx(0.05)
            reasons = [e["reason"] for e in backend.take_events()]
    finally:
        if backend is not None:
            backend.close()
    print(f"OPC UA: bad {bad_after:.2f} s after the server died, good {good_after:.2f} s after it came back")
    assert any(r.startswith("driver down") for r in reasons) and "driver reconnected" in reasons
