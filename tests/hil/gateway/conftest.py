"""Fixtures for the gateway tests: the shipped example configs pointed at free loopback ports."""

from __future__ import annotations

from pathlib import Path

from .procs import REPO

EXAMPLES = REPO / "examples" / "gateway"


def example_config(tmp_path: Path, name: str, *, port: int, time_scale: float = 1.0, extra: str = "") -> Path:
    """A copy of ``examples/gateway/<name>.toml`` on ``port``, with a time scale and extra [server] lines.

    The gateway endpoints are any free local port (``*``).
    """
    text = (EXAMPLES / f"{name}.toml").read_text()
    text = text.replace("port = 5020 ", f"port = {port} ").replace("127.0.0.1:4840/", f"127.0.0.1:{port}/")
    for endpoint in ('"tcp://127.0.0.1:5555"', '"tcp://127.0.0.1:5556"'):
        text = text.replace(endpoint, '"tcp://127.0.0.1:*"')
    text = text.replace("[server]\n", f"[server]\ntime_scale = {time_scale!r}\n{extra}", 1)
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    return path
