"""CurveZMQ: only clients holding an allowed key can read, write or listen; no authenticator, no entry."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

from hil.client import TelemetrySubscriber, ZmqPlant
from hil.handler import ProtocolHandler
from hil.launch import PlantProcess, spawn_plant_server
from hil.security import ClientKeys, ServerKeys, is_local_endpoint
from hil.server import PlantServer
from plant_models.errors import PlantTimeout
from plant_models.registry import resolve_model
from twin.simulated_plant import SimulatedPlant

TIMEOUT_S = 0.5  # a refused CURVE handshake never answers; the client times out


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """server, client and intruder key pairs made by ``bioimp keys generate``; only client is allowed."""
    folder = tmp_path_factory.mktemp("keys")
    made = subprocess.run(
        [sys.executable, "-m", "hil.cli", "keys", "generate", str(folder), "--name", "server", "--name", "client"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert made.returncode == 0, made.stderr
    subprocess.run(
        [sys.executable, "-m", "hil.cli", "keys", "generate", str(folder / "other"), "--name", "intruder"],
        check=True,
        capture_output=True,
        timeout=30,
    )
    allowed = folder / "allowed"
    allowed.mkdir()
    (allowed / "client.key").write_bytes((folder / "client.key").read_bytes())
    return folder


@pytest.fixture(scope="module")
def curve_server(keys: Path) -> Iterator[PlantProcess]:
    args = ["--server-key", str(keys / "server.key_secret"), "--allow", str(keys / "allowed"), "--watchdog", "0"]
    with spawn_plant_server("fedbatch_haldane", extra_args=args) as server:
        yield server


def _client_keys(keys: Path, name: str) -> ClientKeys:
    folder = keys if name != "intruder" else keys / "other"
    return ClientKeys.load(folder / f"{name}.key_secret", keys / "server.key")


def test_allowed_client_reads_writes_and_receives_telemetry(keys: Path, curve_server: PlantProcess) -> None:
    client_keys = _client_keys(keys, "client")
    with (
        ZmqPlant(curve_server.command, timeout_s=5.0, keys=client_keys) as plant,
        TelemetrySubscriber(curve_server.telemetry, keys=client_keys) as sub,
    ):
        info = plant.hello()
        assert info.plant == "fedbatch_haldane"
        assert plant.write({"inp": 0.02}, seq=1).applied == {"inp": 0.02}
        message = None
        for _ in range(50):  # slow joiner: advance until a meas reaches the subscriber
            plant.advance(1.0)
            message = sub.receive(timeout_s=0.1)
            if message is not None:
                break
        assert message is not None and message.topic == "meas"


@pytest.mark.parametrize("who", ["no key", "intruder"])
def test_client_without_an_allowed_key_gets_nothing(keys: Path, curve_server: PlantProcess, who: str) -> None:
    client_keys = None if who == "no key" else _client_keys(keys, "intruder")
    with (
        ZmqPlant(curve_server.command, timeout_s=TIMEOUT_S, retries=0, keys=client_keys) as plant,
        pytest.raises(PlantTimeout),
    ):
        plant.write({"inp": 0.2}, seq=99)
    with TelemetrySubscriber(curve_server.telemetry, keys=client_keys) as sub:
        with ZmqPlant(curve_server.command, timeout_s=5.0, keys=_client_keys(keys, "client")) as plant:
            for _ in range(5):
                plant.advance(1.0)
        assert sub.receive(timeout_s=0.3) is None
    # What the intruder tried was not applied.
    with ZmqPlant(curve_server.command, timeout_s=5.0, keys=_client_keys(keys, "client")) as plant:
        assert plant.read(("inp",)).values["inp"].value != 0.2


def test_arm_cli_with_keys(keys: Path, curve_server: PlantProcess) -> None:
    base = [sys.executable, "-m", "hil.cli", "arm", curve_server.command, "--timeout", "5"]
    ok = subprocess.run(
        [*base, "--client-key", str(keys / "client.key_secret"), "--server-public-key", str(keys / "server.key")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert ok.returncode == 0 and "armed" in ok.stdout, ok.stderr
    half = subprocess.run([*base, "--client-key", str(keys / "client.key_secret")], capture_output=True, text=True)
    assert half.returncode == 2
    assert half.stderr.strip() == "bioimp: error: --client-key and --server-public-key go together (CURVE needs both)"


def test_server_with_keys_but_no_authenticator_refuses_everyone(keys: Path) -> None:
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    handler = ProtocolHandler(SimulatedPlant(resolve_model("fedbatch_haldane")))
    server_keys = ServerKeys.load(keys / "server.key_secret", keys / "allowed")
    server = PlantServer(handler, "tcp://127.0.0.1:*", "tcp://127.0.0.1:*", keys=server_keys, context=context)
    thread = threading.Thread(target=server.run)
    thread.start()
    try:
        with (
            ZmqPlant(server.command, timeout_s=TIMEOUT_S, retries=0, keys=_client_keys(keys, "client")) as plant,
            pytest.raises(PlantTimeout),
        ):
            plant.hello()
    finally:
        server.stop()
        thread.join()
        server.close()
        context.term()


def test_keys_are_never_overwritten(keys: Path) -> None:
    again = subprocess.run(
        [sys.executable, "-m", "hil.cli", "keys", "generate", str(keys), "--name", "client"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert again.returncode == 2
    assert again.stderr.strip().endswith("client.key exists; keys are never overwritten")


@pytest.mark.parametrize(
    ("endpoint", "local"),
    [
        ("tcp://127.0.0.1:5555", True),
        ("tcp://127.3.2.1:*", True),
        ("tcp://localhost:5555", True),
        ("tcp://[::1]:5555", True),
        ("ipc:///tmp/plant", True),
        ("inproc://plant", True),
        ("tcp://*:5555", False),
        ("tcp://0.0.0.0:5555", False),
        ("tcp://192.168.1.20:5555", False),
        ("tcp://eth0:5555", False),
        ("pgm://239.192.1.1:5555", False),
        ("127.0.0.1:5555", False),
    ],
)
def test_local_endpoints(endpoint: str, local: bool) -> None:
    assert is_local_endpoint(endpoint) is local
