"""Security under hostile use (issue 8): keys, replays, permissions, logs.

Already covered elsewhere and not repeated here: a client with no key or with a key not in the allow
folder gets nothing and changes nothing, a CURVE server without its authenticator admits nobody
(tests/hil/test_curve.py); ``plant serve`` without keys on a non-loopback address exits 2 with one line
(tests/hil/test_plant_serve_cli.py). Here:

* a client holding an allowed key but the wrong *server* key is refused;
* a captured CurveZMQ session replayed byte for byte on a new connection, to the same server and to
  another server with the same keys (as after a restart, when the seq memory is gone) is refused at the
  handshake, and nothing is applied; a captured request replayed inside the live session (a relay sends
  it twice) is refused too: the server drops the connection, a non-idempotent ``advance`` moves time once;
* the gateway refuses a network endpoint without keys, like ``plant serve``;
* secret key files that group or others may access are refused, naming the file;
* secret keys never appear in any output: stdout, stderr, debug logs, plant logs, replies, telemetry.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path

import pytest
import zmq
from hypothesis import given, settings
from hypothesis import strategies as st

from hil.client import TelemetrySubscriber, ZmqPlant
from hil.gateway.config import load_gateway_config
from hil.handler import ProtocolHandler
from hil.launch import PlantProcess, spawn_plant_server
from hil.plant_log import LoggedBackend, read_plant_log
from hil.security import ClientKeys, ServerKeys, apply_client_keys, generate_keys, start_authenticator
from hil.server import PlantServer, ServerOptions
from plant_models.errors import PlantTimeout, ScenarioError
from plant_models.registry import resolve_model
from twin.simulated_plant import SimulatedPlant

from .test_fuzz_handler import FUZZ

REPO = Path(__file__).resolve().parents[2]
BIOIMP = [sys.executable, "-m", "hil.cli"]


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """server and client pairs (client allowed), and a second server pair that nobody trusts."""
    folder = tmp_path_factory.mktemp("keys")
    generate_keys(folder, ("server", "client"))
    generate_keys(folder / "other", ("server",))
    (folder / "allowed").mkdir()
    (folder / "allowed" / "client.key").write_bytes((folder / "client.key").read_bytes())
    return folder


def _serve_args(keys: Path, log: Path) -> list[str]:
    return [
        *("--server-key", str(keys / "server.key_secret"), "--allow", str(keys / "allowed")),
        *("--watchdog", "0", "--log", str(log)),
    ]


@pytest.fixture(scope="module")
def two_servers(keys: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[tuple[PlantProcess, Path]]]:
    """Two CURVE plant servers with the same key pair, each with its plant log."""
    tmp = tmp_path_factory.mktemp("servers")
    with (
        spawn_plant_server("fedbatch_haldane", extra_args=_serve_args(keys, tmp / "a.jsonl")) as a,
        spawn_plant_server("fedbatch_haldane", extra_args=_serve_args(keys, tmp / "b.jsonl")) as b,
    ):
        yield [(a, tmp / "a.jsonl"), (b, tmp / "b.jsonl")]


def _client_keys(keys: Path, server_public: Path | None = None) -> ClientKeys:
    return ClientKeys.load(keys / "client.key_secret", server_public or keys / "server.key")


def _applies(log: Path) -> list[dict[str, float]]:
    return [entry["values"] for entry in read_plant_log(log) if entry["op"] == "apply"]


def _port(endpoint: str) -> int:
    return int(endpoint.rsplit(":", 1)[1])


# --------------------------------------------------------------------------------------------------
# Wrong key


def test_an_allowed_client_with_the_wrong_server_key_is_refused(
    keys: Path, two_servers: list[tuple[PlantProcess, Path]]
) -> None:
    (server, log), _ = two_servers
    before = len(_applies(log))
    wrong = _client_keys(keys, server_public=keys / "other" / "server.key")  # an impostor's public key
    with (
        ZmqPlant(server.command, timeout_s=0.5, retries=0, keys=wrong) as plant,
        pytest.raises(PlantTimeout),
    ):
        plant.write({"inp": 0.2}, seq=1)
    assert len(_applies(log)) == before
    with ZmqPlant(server.command, timeout_s=5.0, keys=_client_keys(keys)) as plant:
        assert plant.read(("inp",)).values["inp"].value != 0.2


# --------------------------------------------------------------------------------------------------
# Replay


class Recorder:
    """A TCP relay to ``port`` that keeps every byte the client sent."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sent = bytearray()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"tcp://127.0.0.1:{self.listener.getsockname()[1]}"
        self._sockets: list[socket.socket] = [self.listener]
        threading.Thread(target=self._accept_one, daemon=True).start()

    def _accept_one(self) -> None:
        client, _ = self.listener.accept()
        server = socket.create_connection(("127.0.0.1", self.port))
        self._sockets += [client, server]
        threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()
        self._pump(server, client, False)

    def _pump(self, src: socket.socket, dst: socket.socket, record: bool) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                if record:
                    self.sent.extend(data)
                dst.sendall(data)
        for sock in (src, dst):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        for sock in self._sockets:
            sock.close()


def zmtp_frames(stream: bytes) -> tuple[bytes, list[bytes]]:
    """Split a ZMTP 3 byte stream into its 64-byte greeting and its frames (flags, size, body each)."""
    greeting, rest = stream[:64], stream[64:]
    frames = []
    while rest:
        flags = rest[0]
        if flags & 0x02:  # long frame: 8-byte size
            size, head = int.from_bytes(rest[1:9], "big"), 9
        else:
            size, head = rest[1], 2
        frames.append(rest[: head + size])
        rest = rest[head + size :]
    return greeting, frames


def _command_name(frame: bytes) -> bytes:
    body = frame[9:] if frame[0] & 0x02 else frame[2:]
    return body[1 : 1 + body[0]]


def _read_until_closed(sock: socket.socket, timeout_s: float) -> tuple[bytes, bool]:
    sock.settimeout(timeout_s)
    got = b""
    try:
        while chunk := sock.recv(65536):
            got += chunk
    except TimeoutError:
        return got, False
    return got, True


def test_a_captured_session_replayed_on_a_new_connection_is_refused_at_the_handshake(
    keys: Path, two_servers: list[tuple[PlantProcess, Path]]
) -> None:
    (server_a, log_a), (server_b, log_b) = two_servers
    recorder = Recorder(_port(server_a.command))
    try:
        with ZmqPlant(recorder.endpoint, timeout_s=5.0, keys=_client_keys(keys)) as plant:
            assert plant.write({"inp": 0.15}, seq=7).applied["inp"] == 0.15
    finally:
        recorder.close()
    greeting, frames = zmtp_frames(bytes(recorder.sent))
    assert greeting[12:17] == b"CURVE"
    names = [_command_name(f) for f in frames[:2]]
    assert names == [b"HELLO", b"INITIATE"], names
    assert len(frames) >= 3  # then the encrypted request(s)
    applied_a = len(_applies(log_a))

    outcomes = {}
    for name, server in (("same server", server_a), ("same keys, fresh seq memory", server_b)):
        # Step by step, to see where it stops: the greeting and HELLO are answered (anyone may say
        # hello); the replayed INITIATE carries a cookie sealed for the original connection, so the
        # server cannot open it and drops the connection: no READY, no reply, nothing applied.
        with socket.create_connection(("127.0.0.1", _port(server.command))) as sock:
            sock.sendall(greeting)
            sock.settimeout(5.0)
            server_greeting = b""
            while len(server_greeting) < 64:
                server_greeting += sock.recv(64 - len(server_greeting))
            sock.sendall(frames[0])
            welcome = sock.recv(65536)
            assert _command_name(welcome) == b"WELCOME", welcome[:20]
            sock.sendall(b"".join(frames[1:]))
            after, closed = _read_until_closed(sock, 3.0)
        outcomes[name] = (len(after), closed)
        assert after == b"" and closed, (name, after[:40], closed)
    print(f"replay: {len(frames)} frames captured; after INITIATE the server sent/closed: {outcomes}")
    assert len(_applies(log_a)) == applied_a
    assert _applies(log_b) == []  # a server with no seq memory would have applied it: it never got it
    with ZmqPlant(server_b.command, timeout_s=5.0, keys=_client_keys(keys)) as plant:
        assert plant.read(("inp",)).values["inp"].value == 0.0


class Duplicator(Recorder):
    """A relay that, once the CURVE handshake is done, sends the client's first MESSAGE twice: a
    captured encrypted request replayed inside the live session."""

    def __init__(self, port: int) -> None:
        self.duplicated = False
        self._pending = b""
        self._greeting_left = 64
        super().__init__(port)

    def _pump(self, src: socket.socket, dst: socket.socket, record: bool) -> None:
        if not record:
            super()._pump(src, dst, record)
            return
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                self._pending += data
                if self._greeting_left:  # pass the greeting through as it comes (it is sent in parts)
                    passed = self._pending[: self._greeting_left]
                    dst.sendall(passed)
                    self._pending = self._pending[len(passed) :]
                    self._greeting_left -= len(passed)
                while (frame := self._next_frame()) is not None:
                    dst.sendall(frame)
                    if not self.duplicated and _command_name(frame) == b"MESSAGE":
                        dst.sendall(frame)  # the same bytes again: same nonce, same ciphertext
                        self.duplicated = True
        for sock in (src, dst):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def _next_frame(self) -> bytes | None:
        buf = self._pending
        if len(buf) < 2 or (buf[0] & 0x02 and len(buf) < 9):
            return None
        head, size = (9, int.from_bytes(buf[1:9], "big")) if buf[0] & 0x02 else (2, buf[1])
        if len(buf) < head + size:
            return None
        self._pending = buf[head + size :]
        return buf[: head + size]


def test_a_message_replayed_inside_the_live_session_is_refused(
    keys: Path, two_servers: list[tuple[PlantProcess, Path]]
) -> None:
    """``advance`` is not idempotent: a replayed advance would move the plant clock twice. CurveZMQ
    numbers every message (a nonce that must increase), so the server drops the connection instead."""
    _, (server, _) = two_servers
    with ZmqPlant(server.command, timeout_s=5.0, keys=_client_keys(keys)) as plant:
        before_s = plant.read().time_s
    relay = Duplicator(_port(server.command))
    sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    apply_client_keys(sock, _client_keys(keys))
    try:
        sock.connect(relay.endpoint)
        sock.send(b'{"v":1,"id":"once","op":"advance","dt":60}')
        replies = []
        while sock.poll(1500, zmq.POLLIN):
            replies.append(json.loads(sock.recv()))
    finally:
        sock.close(linger=0)
        relay.close()
    assert relay.duplicated
    assert [r["id"] for r in replies] == ["once"], replies  # one reply: the copy was never served
    with ZmqPlant(server.command, timeout_s=5.0, keys=_client_keys(keys)) as plant:
        assert plant.read().time_s == before_s + 60.0


# --------------------------------------------------------------------------------------------------
# Network endpoints without keys


def test_the_gateway_refuses_a_network_endpoint_without_keys(tmp_path: Path) -> None:
    text = (REPO / "examples" / "gateway" / "modbus.toml").read_text()
    path = tmp_path / "gateway.toml"
    path.write_text(text.replace('command = "tcp://127.0.0.1:5555"', 'command = "tcp://0.0.0.0:5555"'))
    result = subprocess.run([*BIOIMP, "gateway", str(path)], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""  # never "ready"
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "tcp://0.0.0.0:5555: binding a network endpoint without keys is refused" in lines[0]


# --------------------------------------------------------------------------------------------------
# Key file permissions


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620])  # group read, other read, group write
def test_secret_key_files_open_to_group_or_others_are_refused(keys: Path, tmp_path: Path, mode: int) -> None:
    leaky = tmp_path / "server.key_secret"
    leaky.write_bytes((keys / "server.key_secret").read_bytes())
    leaky.chmod(mode)
    serve = subprocess.run(
        [*BIOIMP, "plant", "serve", "--model", "fedbatch_haldane", "--server-key", str(leaky), "--allow", str(keys)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert serve.returncode == 2 and serve.stdout == "", serve.stderr
    expected = f"--server-key '{leaky}': secret key file is accessible by group or others (mode {mode:o}); chmod 600 it"
    assert serve.stderr.splitlines() == [f"bioimp plant serve: error: {expected}"]
    client = tmp_path / "client.key_secret"
    client.write_bytes((keys / "client.key_secret").read_bytes())
    client.chmod(mode)
    arm = subprocess.run(
        [
            *BIOIMP,
            "arm",
            "tcp://127.0.0.1:9",
            "--client-key",
            str(client),
            "--server-public-key",
            str(keys / "server.key"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert arm.returncode == 2 and arm.stdout == "", arm.stderr
    assert arm.stderr.splitlines() == [
        f"bioimp: error: --client-key '{client}': secret key file is accessible by group or others (mode {mode:o});"
        " chmod 600 it"
    ]


def test_private_key_files_are_accepted_and_the_gateway_checks_its_opc_ua_key(keys: Path, tmp_path: Path) -> None:
    for mode in (0o600, 0o400):
        (keys / "server.key_secret").chmod(mode)
        assert ServerKeys.load(keys / "server.key_secret", keys / "allowed").secret
    (keys / "server.key_secret").chmod(0o600)
    # The gateway's OPC UA client key (a PEM file) gets the same check when its config is loaded.
    text = (REPO / "examples" / "gateway" / "opcua.toml").read_text()
    config = tmp_path / "opcua.toml"
    config.write_text(text)
    loaded = load_gateway_config(config)  # the example's key files do not exist here: not checked yet
    driver = next(iter(loaded.drivers.values()))
    key = getattr(driver, "private_key", None)
    assert key is not None
    key.parent.mkdir(parents=True, exist_ok=True)
    key.write_text("-----BEGIN PRIVATE KEY-----\n")
    key.chmod(0o644)
    with pytest.raises(ScenarioError, match=r"private_key.*accessible by group or others"):
        load_gateway_config(config)
    key.chmod(0o600)
    load_gateway_config(config)


# --------------------------------------------------------------------------------------------------
# Secrets never logged


def _secret_texts(keys: Path) -> list[str]:
    """The Z85 secret keys of the server and the client (as in their files), and their hex forms."""
    texts = []
    for name in ("server", "client"):
        for line in (keys / f"{name}.key_secret").read_text().splitlines():
            if line.strip().startswith("secret-key"):
                z85 = line.split("=", 1)[1].strip().strip('"')
                texts.append(z85)
                texts.append(zmq.utils.z85.decode(z85.encode()).hex())
    assert len(texts) == 4 and all(len(t) >= 40 for t in texts)
    return texts


def test_secret_keys_never_appear_in_any_output(keys: Path, tmp_path: Path) -> None:
    collected: list[str] = []

    # 1. The real CLI server with DEBUG logging on (serve_backend keeps a handler that is already set),
    #    a plant log, and a client CLI that arms it; every stream and file kept.
    debug_serve = (
        "import logging, sys; logging.basicConfig(level=logging.DEBUG); from hil.cli import main; sys.exit(main())"
    )
    log = tmp_path / "plant.jsonl"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen(
        [sys.executable, "-c", debug_serve, "plant", "serve", "--model", "fedbatch_haldane", *_serve_args(keys, log)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env=env,
    )
    try:
        assert proc.stdout is not None
        ready = proc.stdout.readline().split()
        assert ready[0] == "ready", ready
        command, telemetry = ready[1], ready[2]
        client_args = ["--client-key", str(keys / "client.key_secret"), "--server-public-key", str(keys / "server.key")]
        arm = subprocess.run(
            [sys.executable, "-c", debug_serve, "arm", command, "--timeout", "5", *client_args],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=REPO,
            env=env,
        )
        assert arm.returncode == 0, arm.stderr
        collected += [arm.stdout, arm.stderr]
        with (
            ZmqPlant(command, timeout_s=5.0, keys=_client_keys(keys)) as plant,
            TelemetrySubscriber(telemetry, keys=_client_keys(keys)) as sub,
        ):
            collected.append(repr(plant.hello()))
            plant.write({"inp": 0.1}, seq=1)
            for _ in range(20):
                plant.advance(60.0)
                message = sub.receive(timeout_s=0.1)
                if message is not None:
                    collected.append(repr(message))
                    break
        wrong = _client_keys(keys, keys / "other" / "server.key")
        with ZmqPlant(command, timeout_s=0.3, retries=0, keys=wrong) as bad, pytest.raises(PlantTimeout):
            bad.hello()  # a failed handshake: whatever gets logged about it
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=10)
    collected += [out, err, log.read_text()]
    assert "DEBUG:zmq.auth:ALLOWED (CURVE)" in err, err[:500]  # debug logging was really on, handshakes logged

    # 2. In process: the server and a client with every logger at DEBUG (pyzmq's authenticator too).
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    auth = start_authenticator(context, keys / "allowed")
    backend = LoggedBackend(SimulatedPlant(resolve_model("fedbatch_haldane")), tmp_path / "inproc.jsonl")
    server = PlantServer(
        ProtocolHandler(backend, security="curve"),
        "tcp://127.0.0.1:*",
        "tcp://127.0.0.1:*",
        keys=ServerKeys.load(keys / "server.key_secret", keys / "allowed"),
        context=context,
    )
    thread = threading.Thread(target=server.run)
    thread.start()
    try:
        with ZmqPlant(server.command, timeout_s=5.0, keys=_client_keys(keys)) as plant:
            collected.append(repr(plant.hello()))
            plant.write({"inp": 0.05}, seq=1)
            collected.append(repr(plant.read()))
    finally:
        server.stop()
        thread.join()
        server.close()
        auth.stop()
        context.term()
        root.removeHandler(handler)
        root.setLevel(old_level)
        backend.close()
    debug_log = stream.getvalue()
    assert "ALLOWED (CURVE)" in debug_log, debug_log[:500]  # the authenticator logged at DEBUG
    collected += [debug_log, (tmp_path / "inproc.jsonl").read_text()]

    # 3. Error paths that name key files: a damaged secret key line, a public file given as a secret.
    damaged = tmp_path / "damaged.key_secret"
    damaged.write_text((keys / "client.key_secret").read_text().replace('secret-key = "', 'secret-key = "#'))
    damaged.chmod(0o600)
    for key_file, message in (
        (damaged, ": its secret key is not a 40-character Z85 CURVE key"),  # was a ZMQError traceback
        (keys / "client.key", " holds no secret key (give the .key_secret file)"),
    ):
        result = subprocess.run(
            [
                *BIOIMP,
                "arm",
                "tcp://127.0.0.1:9",
                "--client-key",
                str(key_file),
                "--server-public-key",
                str(keys / "server.key"),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=REPO,
        )
        assert result.returncode == 2, result.stderr
        assert result.stderr.splitlines() == [f"bioimp: error: --client-key '{key_file}'{message}"], result.stderr
        collected += [result.stdout, result.stderr]

    everything = "\n".join(collected)
    assert len(everything) > 1000
    for secret in _secret_texts(keys):
        assert secret not in everything, f"a secret key ({secret[:6]}...) appears in the output"


@settings(FUZZ, max_examples=300)
@given(address=st.ip_addresses(), option=st.sampled_from(["command", "telemetry"]))
def test_without_keys_only_loopback_addresses_may_be_bound(address: IPv4Address | IPv6Address, option: str) -> None:
    """Any IPv4/IPv6 address: a server without keys accepts it only if it is loopback (an IPv4-mapped
    IPv6 loopback is refused too: conservative). The same check serves ``plant serve`` and the gateway."""
    host = f"[{address}]" if address.version == 6 else str(address)
    endpoints = {option: f"tcp://{host}:5555"}
    if address.is_loopback:
        assert ServerOptions(**endpoints).security == "none"
    else:
        with pytest.raises(ScenarioError, match="binding a network endpoint without keys is refused"):
            ServerOptions(**endpoints)
        assert ServerOptions(**endpoints, insecure=True).security == "insecure"
