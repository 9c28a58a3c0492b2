"""Start ``bioimp plant serve`` as a separate process and wait until it is ready.

Used by ``bioimp run`` (a local simulated plant) and by the tests (the real server, its own process).
"""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO

from hil.handler import ClockKind
from plant_models.errors import BioimpError, PlantTimeout

__all__ = ["PlantProcess", "PlantServerError", "read_ready_line", "spawn_plant_server"]


class PlantServerError(BioimpError, RuntimeError):
    """The plant server process exited before it was ready (the message holds its stderr)."""


@dataclass(frozen=True)
class PlantProcess:
    """A running plant server process.

    Attributes:
        command: its command endpoint (for :class:`hil.client.ZmqPlant`).
        telemetry: its telemetry endpoint (for :class:`hil.client.TelemetrySubscriber`).
        process: the child process (``returncode`` is set once the context has exited).
    """

    command: str
    telemetry: str
    process: subprocess.Popen[bytes]


def _assignments(option: str, values: Mapping[str, float] | None) -> list[str]:
    args: list[str] = []
    for name, value in (values or {}).items():
        args += [option, f"{name}={float(value)!r}"]
    return args


def read_ready_line(proc: subprocess.Popen[bytes], timeout_s: float) -> str:
    """The first stdout line of ``proc`` that starts with ``ready``, waiting at most ``timeout_s``.

    Other lines (a library's banner) are skipped. Returns the last line seen ('' if none) when stdout
    closes first, i.e. the server exited.
    """
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    buffer = b""
    last = ""
    deadline = time.monotonic() + timeout_s
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while True:
            while b"\n" in buffer:
                raw, buffer = buffer.split(b"\n", 1)
                last = raw.decode("utf-8", "replace").strip()
                if last.startswith("ready "):
                    return last
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise PlantTimeout(f"plant server not ready within {timeout_s} s")
            if not selector.select(remaining):
                continue
            chunk = os.read(fd, 4096)
            if not chunk:
                return last
            buffer += chunk


def _stop(proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout_s)


def _stderr_text(stderr: IO[bytes]) -> str:
    stderr.seek(0)
    return stderr.read().decode("utf-8", "replace").strip()


@contextmanager
def spawn_plant_server(
    model: str,
    *,
    x0: Mapping[str, float] | None = None,
    params: Mapping[str, float] | None = None,
    clock: ClockKind = "virtual",
    extra_args: Sequence[str] = (),
    ready_timeout_s: float = 30.0,
    stop_timeout_s: float = 5.0,
    env: Mapping[str, str] | None = None,
) -> Iterator[PlantProcess]:
    """Run ``python -m hil.cli plant serve`` on free local ports for the duration of the ``with`` block.

    Args:
        model: model name or ``package.module:function``.
        x0: initial state overrides.
        params: the plant's true parameters.
        clock: ``"virtual"`` or ``"realtime"``.
        extra_args: more ``plant serve`` options (e.g. ``["--sample-period", "0.1"]``).
        ready_timeout_s: how long to wait for the ``ready`` line.
        stop_timeout_s: how long to wait after SIGTERM (then SIGKILL).
        env: environment of the child (this process's when None).

    Yields:
        The endpoints and the process.

    Raises:
        PlantServerError: the server exited before it was ready (message: its stderr).
        PlantTimeout: no ``ready`` line within ``ready_timeout_s``.
    """
    argv = [
        sys.executable,
        "-m",
        "hil.cli",
        "plant",
        "serve",
        "--model",
        model,
        "--command",
        "tcp://127.0.0.1:*",
        "--telemetry",
        "tcp://127.0.0.1:*",
        "--clock",
        clock,
        *_assignments("--x0", x0),
        *_assignments("--param", params),
        *extra_args,
    ]
    with tempfile.TemporaryFile() as stderr:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr,
            env=None if env is None else dict(env),
        )
        try:
            line = read_ready_line(proc, ready_timeout_s)
            parts = line.split()
            if len(parts) != 3 or parts[0] != "ready":
                _stop(proc, stop_timeout_s)
                detail = _stderr_text(stderr) or f"unexpected output {line!r}"
                raise PlantServerError(f"plant server exited with code {proc.returncode}: {detail}")
            yield PlantProcess(parts[1], parts[2], proc)
        finally:
            _stop(proc, stop_timeout_s)
            if proc.stdout is not None:
                proc.stdout.close()
