"""Real processes for the gateway tests: emulators and gateways on free loopback ports."""

from __future__ import annotations

import os
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

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


def _ready_line(proc: subprocess.Popen[bytes], timeout_s: float) -> str:
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    buffer = b""
    deadline = time.monotonic() + timeout_s
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while True:
            while b"\n" in buffer:
                raw, buffer = buffer.split(b"\n", 1)
                line = raw.decode(errors="replace").strip()
                if line.startswith("ready "):
                    return line
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no ready line within {timeout_s} s")
            if not sel.select(remaining):
                continue
            chunk = os.read(fd, 4096)
            if not chunk:
                return ""
            buffer += chunk


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
        line = _ready_line(proc, timeout_s)
        if not line:
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
