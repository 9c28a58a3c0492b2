"""Real processes for the gateway tests: emulators and gateways on free loopback ports."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from hil.launch import read_ready_line

REPO = Path(__file__).resolve().parents[3]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    return env


@dataclass
class Proc:
    """A running child: its ``ready ...`` line split into words, and the process."""

    ready: list[str]
    process: subprocess.Popen[bytes]
    stderr_path: Path

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")


@contextmanager
def bioimp(args: Sequence[str], *, timeout_s: float = 30.0) -> Iterator[Proc]:
    """Run ``python -m hil.cli ARGS`` until it prints ``ready ...``; SIGTERM (then SIGKILL) on exit."""
    with tempfile.NamedTemporaryFile(prefix="bioimp-", suffix=".err", delete=False) as err:
        stderr_path = Path(err.name)
    with open(stderr_path, "wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "hil.cli", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr,
            env=_env(),
            cwd=REPO,
        )
    try:
        line = read_ready_line(proc, timeout_s)
        if not line.startswith("ready "):
            proc.wait(5)
            raise RuntimeError(f"{args[0]} exited ({proc.returncode}): {stderr_path.read_text(errors='replace')}")
        yield Proc(line.split()[1:], proc, stderr_path)
    finally:
        stop(proc)
        if proc.stdout is not None:
            proc.stdout.close()
        stderr_path.unlink(missing_ok=True)


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL after 5 s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
