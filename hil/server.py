"""The plant server: a :class:`~hil.handler.ProtocolHandler` behind ZeroMQ sockets, and ``plant serve``.

Transport only: a ROUTER command socket and a PUB telemetry socket, served by one thread in one poll
loop. Each request is ``[routing id, (empty delimiter,) payload]``; the reply goes back in the same form,
so DEALER and REQ clients both work. Anything else (more frames) gets a ``bad_request`` reply.

With a real-time clock the plant follows the monotonic wall clock: before each request and on each poll
timeout the backend is advanced to the elapsed wall time, and a ``meas`` message is published every
``sample_period_s``. With a virtual clock time moves only on ``advance`` requests.
"""

from __future__ import annotations

import argparse
import logging
import math
import signal
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import Any, TextIO

import zmq

from hil.handler import ClockKind, ProtocolHandler, Telemetry
from hil.protocol import BAD_REQUEST, encode_error, split_envelope
from plant_models.errors import BioimpError, ScenarioError
from plant_models.registry import resolve_model
from twin.simulated_plant import SimulatedPlant
from twin.simulator import SimulatorConfig

__all__ = ["PlantServer", "ServeConfig", "add_plant_serve_parser", "run_plant_serve", "serve_plant"]

log = logging.getLogger("bioimp.hil")

_PROG = "bioimp plant serve"
_POLL_S = 0.1  # longest poll: how quickly a stop request is noticed
_MAX_BATCH = 100  # requests served per poll wake-up before the clock and telemetry get a turn


@dataclass(frozen=True)
class ServeConfig:
    """What ``bioimp plant serve`` serves, and where.

    Attributes:
        model: a built-in model name or ``package.module:function``.
        command: command (ROUTER) endpoint to bind; port ``*`` picks a free one.
        telemetry: telemetry (PUB) endpoint to bind.
        clock: ``"virtual"`` (advance on request) or ``"realtime"`` (follows the wall clock).
        x0: initial state overrides (model units).
        params: the plant's true parameters (model units); others stay nominal.
        sample_period_s: real-time clock: seconds between published ``meas`` messages.
        rtol, atol: the plant integrator's tolerances (CVODES).
    """

    model: str
    command: str = "tcp://127.0.0.1:*"
    telemetry: str = "tcp://127.0.0.1:*"
    clock: ClockKind = "virtual"
    x0: Mapping[str, float] = field(default_factory=dict)
    params: Mapping[str, float] = field(default_factory=dict)
    sample_period_s: float = 1.0
    rtol: float = 1e-10
    atol: float = 1e-10

    def __post_init__(self) -> None:
        if self.clock not in ("virtual", "realtime"):
            raise ScenarioError(f"clock must be 'virtual' or 'realtime', not {self.clock!r}")
        if not (math.isfinite(self.sample_period_s) and self.sample_period_s > 0):
            raise ScenarioError(f"sample period must be a positive number of seconds, not {self.sample_period_s}")
        for kind, values in (("x0", self.x0), ("param", self.params)):
            for name, value in values.items():
                if not math.isfinite(value):
                    raise ScenarioError(f"{kind} {name!r} must be finite, not {value}")


class PlantServer:
    """Serves one handler on a ROUTER (commands) and a PUB (telemetry) socket, in one thread.

    Attributes:
        command: the bound command endpoint (a ``*`` port resolved to the real one).
        telemetry: the bound telemetry endpoint.
    """

    def __init__(
        self,
        handler: ProtocolHandler,
        command_endpoint: str,
        telemetry_endpoint: str,
        *,
        sample_period_s: float = 1.0,
        context: zmq.Context[zmq.Socket[bytes]] | None = None,
    ) -> None:
        """Bind both sockets.

        Raises:
            zmq.ZMQError: an endpoint cannot be bound (bad address, port in use).
        """
        self.handler = handler
        self.sample_period_s = sample_period_s
        ctx = context if context is not None else zmq.Context.instance()
        self._router: zmq.Socket[bytes] = ctx.socket(zmq.ROUTER)
        self._pub: zmq.Socket[bytes] = ctx.socket(zmq.PUB)
        self._stop = threading.Event()
        try:
            for sock in (self._router, self._pub):
                sock.setsockopt(zmq.LINGER, 0)
            # A client reconnecting with its routing id takes it over at once, even before the server
            # has noticed that the old connection is gone (it stays the same client: same seq space).
            self._router.setsockopt(zmq.ROUTER_HANDOVER, 1)
            self._router.bind(command_endpoint)
            self._pub.bind(telemetry_endpoint)
        except zmq.ZMQError:
            self.close()
            raise
        self.command = self._router.getsockopt_string(zmq.LAST_ENDPOINT)
        self.telemetry = self._pub.getsockopt_string(zmq.LAST_ENDPOINT)

    def stop(self) -> None:
        """Ask :meth:`run` to return (safe from a signal handler or another thread)."""
        self._stop.set()

    def run(self) -> None:
        """Serve until :meth:`stop`.

        Raises:
            SolverFailed: real-time clock only: the plant could not be integrated to the wall time.
        """
        realtime = self.handler.clock == "realtime"
        wall0 = time.monotonic()
        plant0 = self.handler.backend.time_s
        next_sample = wall0 + self.sample_period_s

        def sync() -> None:
            if realtime:
                self.handler.advance_to(plant0 + (time.monotonic() - wall0))

        while not self._stop.is_set():
            timeout_s = _POLL_S
            if realtime:
                timeout_s = min(timeout_s, max(0.0, next_sample - time.monotonic()))
            if self._router.poll(round(timeout_s * 1000), zmq.POLLIN):
                for _ in range(_MAX_BATCH):
                    try:
                        frames = self._router.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    sync()
                    self._serve(frames)
            if realtime:
                sync()
                now = time.monotonic()
                if now >= next_sample:
                    self._publish([self.handler.sample()])
                    # Keep the period; after a long stall, restart it instead of bursting.
                    next_sample += self.sample_period_s
                    if next_sample <= now:
                        next_sample = now + self.sample_period_s

    def _serve(self, frames: list[bytes]) -> None:
        client_id, rest = frames[0], frames[1:]
        delimited, payload = split_envelope(rest)
        if payload is None:
            message = f"expected one frame (after an optional empty one), got {len(rest)}"
            reply = encode_error(None, BAD_REQUEST, message)
            telemetry: list[Telemetry] = []
        else:
            reply, telemetry = self.handler.handle(client_id, payload)
        self._router.send_multipart([client_id, b"", reply] if delimited else [client_id, reply])
        self._publish(telemetry)

    def _publish(self, telemetry: list[Telemetry]) -> None:
        for topic, payload in telemetry:
            self._pub.send_multipart([topic.encode(), payload])

    def close(self) -> None:
        """Close both sockets (linger 0). Idempotent."""
        self._router.close(linger=0)
        self._pub.close(linger=0)


def serve_plant(config: ServeConfig, *, out: TextIO | None = None) -> int:
    """Serve a simulated plant until SIGINT/SIGTERM; what ``bioimp plant serve`` runs.

    Prints ``ready <command endpoint> <telemetry endpoint>`` to ``out`` (stdout) once both sockets are
    bound. Errors are one line on stderr.

    Returns:
        The exit code: 0 after a clean stop, 2 for a bad model/option/endpoint, 1 if the plant failed.
    """
    out = out if out is not None else sys.stdout
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format=f"{_PROG}: %(levelname)s: %(message)s")
    try:
        spec = resolve_model(config.model)
    except Exception as exc:  # a user factory may raise anything; the CLI must not show a traceback
        return _fail(f"cannot load model {config.model!r}: {exc}", 2)
    try:
        backend = SimulatedPlant(
            spec, params=config.params, x0=config.x0, sim_config=SimulatorConfig(config.rtol, config.atol)
        )
    except BioimpError as exc:
        return _fail(str(exc), 2)
    handler = ProtocolHandler(backend, clock=config.clock)
    try:
        server = PlantServer(handler, config.command, config.telemetry, sample_period_s=config.sample_period_s)
    except zmq.ZMQError as exc:
        return _fail(f"cannot bind {config.command} / {config.telemetry}: {exc}", 2)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        server.stop()

    previous: dict[signal.Signals, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, on_signal)
    try:
        print(f"ready {server.command} {server.telemetry}", file=out, flush=True)
        server.run()
    except BioimpError as exc:
        return _fail(f"plant failed: {exc}", 1)
    finally:
        server.close()
        for sig, handler_before in previous.items():
            signal.signal(sig, handler_before)
    return 0


def _fail(message: str, code: int) -> int:
    print(f"{_PROG}: error: {message}", file=sys.stderr, flush=True)
    return code


def parse_assignments(items: Sequence[str], option: str) -> dict[str, float]:
    """``["X_s=1.5", ...]`` → ``{"X_s": 1.5}``.

    Raises:
        ScenarioError: an item is not ``name=number``.
    """
    values: dict[str, float] = {}
    for item in items:
        name, sep, text = item.partition("=")
        try:
            if not sep or not name.strip():
                raise ValueError
            values[name.strip()] = float(text)
        except ValueError:
            raise ScenarioError(f"{option} expects NAME=NUMBER, got {item!r}") from None
    return values


def _parse_float(text: str, option: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ScenarioError(f"{option} expects a number, got {text!r}") from None


def run_plant_serve(args: argparse.Namespace) -> int:
    """The ``plant serve`` subcommand: ``args`` from :func:`add_plant_serve_parser`; returns the exit code."""
    try:
        sample_period_s = _parse_float(args.sample_period, "--sample-period")
        config = ServeConfig(
            model=args.model,
            command=args.command,
            telemetry=args.telemetry,
            clock=args.clock,
            x0=parse_assignments(args.x0, "--x0"),
            params=parse_assignments(args.param, "--param"),
            sample_period_s=sample_period_s,
            rtol=_parse_float(args.rtol, "--rtol"),
            atol=_parse_float(args.atol, "--atol"),
        )
    except ScenarioError as exc:
        return _fail(str(exc), 2)
    return serve_plant(config)


def add_plant_serve_parser(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse.ArgumentParser:
    """Register ``serve`` under the ``plant`` subcommand group; dispatch with ``args.func(args)``.

    Args:
        subparsers: the ``plant`` group's ``add_subparsers()`` result.

    Returns:
        The ``serve`` parser.
    """
    parser = subparsers.add_parser(
        "serve",
        help="serve a simulated plant over wire protocol v1 (ZeroMQ)",
        description=(
            "Serve a simulated plant on a command (ROUTER) and a telemetry (PUB) endpoint. Prints "
            "'ready <command> <telemetry>' when bound; stops on SIGINT/SIGTERM."
        ),
    )
    parser.add_argument("--model", required=True, help="built-in model name or package.module:function")
    parser.add_argument(
        "--command", default="tcp://127.0.0.1:*", help="command endpoint to bind (port * = any free port)"
    )
    parser.add_argument("--telemetry", default="tcp://127.0.0.1:*", help="telemetry endpoint to bind")
    parser.add_argument("--clock", choices=("virtual", "realtime"), default="virtual", help="plant clock")
    parser.add_argument("--x0", action="append", default=[], metavar="NAME=VALUE", help="initial state (repeatable)")
    parser.add_argument(
        "--param", action="append", default=[], metavar="NAME=VALUE", help="true parameter (repeatable)"
    )
    parser.add_argument(
        "--sample-period", default="1.0", metavar="SECONDS", help="real-time clock: seconds between meas"
    )
    parser.add_argument("--rtol", default="1e-10", help="plant integrator relative tolerance")
    parser.add_argument("--atol", default="1e-10", help="plant integrator absolute tolerance")
    parser.set_defaults(func=run_plant_serve)
    return parser
