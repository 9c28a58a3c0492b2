"""docs/protocol.md stays true: its exchanges are replayed, its Python examples run against a server."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from hil.handler import ProtocolHandler
from hil.launch import PlantProcess
from hil.server import DEFAULT_WATCHDOG_S
from plant_models.registry import resolve_model
from twin.simulated_plant import SimulatedPlant

DOC = (Path(__file__).parents[2] / "docs" / "protocol.md").read_text()


def _exchanges() -> list[tuple[str, str]]:
    pairs: list[tuple[str, str]] = []
    for block in re.findall(r"```text\n(.*?)```", DOC, re.S):
        for request, reply in re.findall(r"^>> (.*?)\n<< (.*?)(?=^>> |\Z)", block, re.S | re.M):
            pairs.append((request.strip(), " ".join(reply.split())))
    return pairs


def test_documented_exchanges_are_what_the_plant_answers() -> None:
    pairs = _exchanges()
    assert [json.loads(req)["op"] for req, _ in pairs] == ["hello", "read", "write", "advance", "heartbeat", "arm"]
    handler = ProtocolHandler(SimulatedPlant(resolve_model("fedbatch_haldane")), watchdog_s=DEFAULT_WATCHDOG_S)
    for request, reply in pairs:
        actual, _ = handler.handle(b"doc-client", request.encode())
        assert json.loads(actual) == json.loads(reply), request


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC, re.S)


@pytest.mark.parametrize("index", [0, 1])
def test_documented_python_clients_run(
    index: int, fedbatch_server: PlantProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    code = _python_blocks()[index].replace("tcp://127.0.0.1:5555", fedbatch_server.command)
    assert fedbatch_server.command in code
    exec(compile(code, f"protocol.md example {index}", "exec"), {})
    out = capsys.readouterr().out
    assert out.strip(), "the example printed nothing"
    if index == 0:
        assert out.startswith("fedbatch_haldane at t = ")
        assert "{'inp': 0.0}" in out  # the write reply: the safe value applied
    else:
        assert "Reading(value=" in out
