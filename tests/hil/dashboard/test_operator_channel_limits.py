"""The run's operator endpoint under a hostile frame: an oversized request is dropped unanswered and the
channel goes on serving the next operator (the loop's thread must never be held by one request)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import zmq

from hil.console import RunConsole, operator_request
from hil.security import ClientKeys, ServerKeys, apply_client_keys, generate_keys
from hil.server import MAX_REQUEST_BYTES
from tests.hil.dashboard.test_dashboard_live import free_port


def test_an_oversized_operator_request_is_dropped_and_the_next_one_served(tmp_path: Path) -> None:
    generate_keys(tmp_path, ("run", "alice"))
    (tmp_path / "allow").mkdir()
    (tmp_path / "allow" / "alice.key").write_bytes((tmp_path / "alice.key").read_bytes())
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    alice = ClientKeys.load(tmp_path / "alice.key_secret", tmp_path / "run.key")
    served = threading.Event()
    with RunConsole(
        operator_endpoint=endpoint, operator_keys=ServerKeys.load(tmp_path / "run.key_secret", tmp_path / "allow")
    ) as console:

        def loop() -> None:  # what the batch's loop does once per period
            while not served.is_set():
                console.poll()
                served.wait(0.01)

        thread = threading.Thread(target=loop)
        thread.start()
        try:
            context = zmq.Context.instance()
            big = context.socket(zmq.REQ)
            big.linger = 0
            apply_client_keys(big, alice)
            big.connect(endpoint)
            big.send(json.dumps({"action": "arm", "who": "x" * (MAX_REQUEST_BYTES + 1), "why": "flood"}).encode())
            assert not big.poll(1000), "an oversized request was answered"
            big.close(linger=0)
            reply = operator_request(endpoint, alice, {"action": "arm", "who": "Alice", "why": "check"}, timeout_s=5)
            assert isinstance(reply, dict) and "ok" in reply  # served (refused: no batch attached), not hung
        finally:
            served.set()
            thread.join()
