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
import os
import signal
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

import zmq
from zmq.auth.thread import ThreadAuthenticator

from hil.backend import PlantBackend
from hil.handler import INSECURE_WARNING, ClockKind, LaterTelemetry, ProtocolHandler, Security, Telemetry
from hil.protocol import BAD_REQUEST, TOPIC_MEAS, encode_error, split_envelope
from hil.security import ServerKeys, is_local_endpoint, start_authenticator
from plant_models.errors import BioimpError, ScenarioError
from plant_models.registry import resolve_model
from twin.plant_setup import PlantMismatch, build_plant
from twin.sensors import SensorConfig
from twin.simulator import SimulatorConfig

__all__ = [
    "DEFAULT_WATCHDOG_S",
    "MAX_REQUEST_BYTES",
    "PlantServer",
    "ServeConfig",
    "ServerOptions",
    "add_plant_serve_parser",
    "add_server_options",
    "run_plant_serve",
    "serve_backend",
    "serve_plant",
    "server_options_from_args",
]

log = logging.getLogger("bioimp.hil")

_PROG = "bioimp plant serve"
_POLL_S = 0.1  # longest poll: how quickly a stop request is noticed
DEFAULT_WATCHDOG_S = 5.0
_MAX_BATCH = 100  # requests served per poll wake-up before the clock and telemetry get a turn
_MEAS = TOPIC_MEAS.encode()
#: The largest request frame a server accepts (1 MiB); a client sending more is disconnected, unanswered.
MAX_REQUEST_BYTES = 1 << 20


@dataclass(frozen=True)
class ServerOptions:
    """How any plant server (simulated plant or gateway) is served: endpoints, clock, watchdog, keys.

    Attributes:
        command: command (ROUTER) endpoint to bind; port ``*`` picks a free one.
        telemetry: telemetry (PUB) endpoint to bind.
        clock: ``"virtual"`` (advance on request) or ``"realtime"`` (follows the wall clock).
        sample_period_s: real-time clock: seconds between published ``meas`` messages.
        watchdog_s: seconds without a valid write/heartbeat/arm before fail-safe; None disables it.
        server_key: CURVE secret key file of the server; None serves without CURVE.
        allow_dir: folder of the client public keys admitted (required with ``server_key``).
        insecure: allow binding a non-local endpoint without keys (logged, and reported in ``hello``).
        idle_exit_s: stop after this long without any request; None (the default) never stops. For a
            simulated plant whose controller may die: it must outlive the controller long enough for a
            resume, but not forever.
    """

    command: str = "tcp://127.0.0.1:*"
    telemetry: str = "tcp://127.0.0.1:*"
    clock: ClockKind = "virtual"
    sample_period_s: float = 1.0
    watchdog_s: float | None = DEFAULT_WATCHDOG_S
    server_key: Path | None = None
    allow_dir: Path | None = None
    insecure: bool = False
    idle_exit_s: float | None = None

    def __post_init__(self) -> None:
        if self.clock not in ("virtual", "realtime"):
            raise ScenarioError(f"clock must be 'virtual' or 'realtime', not {self.clock!r}")
        if not (math.isfinite(self.sample_period_s) and self.sample_period_s > 0):
            raise ScenarioError(f"--sample-period must be a positive number of seconds, not {self.sample_period_s}")
        if self.idle_exit_s is not None and not (math.isfinite(self.idle_exit_s) and self.idle_exit_s > 0):
            raise ScenarioError(f"--idle-exit must be a positive number of seconds, not {self.idle_exit_s}")
        if self.watchdog_s is not None and not (math.isfinite(self.watchdog_s) and self.watchdog_s > 0):
            raise ScenarioError(f"--watchdog must be a positive number of seconds, not {self.watchdog_s}")
        if (self.server_key is None) != (self.allow_dir is None):
            raise ScenarioError("--server-key and --allow go together (CURVE needs both)")
        if self.server_key is None and not self.insecure:
            for option, endpoint in (("--command", self.command), ("--telemetry", self.telemetry)):
                if not is_local_endpoint(endpoint):
                    raise ScenarioError(
                        f"{option} {endpoint}: binding a network endpoint without keys is refused "
                        "(give --server-key and --allow, or --insecure)"
                    )

    @property
    def security(self) -> Security:
        """What ``hello`` reports: ``curve``, ``none`` (local only) or ``insecure``."""
        if self.server_key is not None:
            return "curve"
        local = is_local_endpoint(self.command) and is_local_endpoint(self.telemetry)
        return "none" if local else "insecure"


@dataclass(frozen=True)
class ServeConfig:
    """What ``bioimp plant serve`` serves: a simulated plant, and how.

    Attributes:
        model: a built-in model name or ``package.module:function``.
        server: endpoints, clock, watchdog and keys.
        x0: initial state overrides (model units).
        params: the plant's true parameters (model units); others stay nominal.
        rtol, atol: the plant integrator's tolerances (CVODES).
        log: append every setpoint application and new sample to this JSON-lines file
            (:mod:`hil.plant_log`); None keeps no log.
        mismatch: seed, parameter uncertainty and process noise of the plant (None: the model itself).
        sensors: the plant's instruments (None: every model output, exact).
        time_scale: real-time clock: plant seconds per wall second (1 = real time; more runs the
            simulated plant accelerated, as the emulator's ``--time-scale``, for fault and soak tests).
    """

    model: str
    server: ServerOptions = field(default_factory=ServerOptions)
    x0: Mapping[str, float] = field(default_factory=dict)
    params: Mapping[str, float] = field(default_factory=dict)
    rtol: float = 1e-10
    atol: float = 1e-10
    log: Path | None = None
    mismatch: PlantMismatch | None = None
    sensors: SensorConfig | None = None
    time_scale: float = 1.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.time_scale) and self.time_scale > 0):
            raise ScenarioError(f"--time-scale must be a positive number, not {self.time_scale}")
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
        keys: ServerKeys | None = None,
        idle_exit_s: float | None = None,
        context: zmq.Context[zmq.Socket[bytes]] | None = None,
    ) -> None:
        """Bind both sockets (as CURVE servers when ``keys`` are given).

        ``idle_exit_s``: :meth:`run` returns after this long without any request (None: never).

        With keys, a ZAP authenticator must run on ``context`` (see :func:`hil.security.start_authenticator`);
        without one every connection is refused.

        Raises:
            zmq.ZMQError: an endpoint cannot be bound (bad address, port in use).
        """
        self.handler = handler
        self.sample_period_s = sample_period_s
        self.idle_exit_s = idle_exit_s
        ctx = context if context is not None else zmq.Context.instance()
        self._router: zmq.Socket[bytes] = ctx.socket(zmq.ROUTER)
        # XPUB, not PUB: the same to subscribers, but it hands the server their subscriptions, so that
        # the meas of an advance (every reading, as JSON) is not built when nobody subscribes to it.
        self._pub: zmq.Socket[bytes] = ctx.socket(zmq.XPUB)
        self._pub_poller = zmq.Poller()
        self._pub_poller.register(self._pub, zmq.POLLIN)
        self._topics: set[bytes] = set()  # the topic prefixes subscribed to
        self._stop = threading.Event()
        try:
            for sock in (self._router, self._pub):
                sock.setsockopt(zmq.LINGER, 0)
                if keys is not None:
                    keys.apply(sock)
            # A client reconnecting with its routing id takes it over at once, even before the server
            # has noticed that the old connection is gone (it stays the same client: same seq space).
            self._router.setsockopt(zmq.ROUTER_HANDOVER, 1)
            # A request is a few hundred bytes. Without a cap one 180 MB frame held this single-threaded
            # server (its watchdog too) for 20 s at 2.7 GB, and a bigger one would get it killed for
            # memory. libzmq drops a connection that sends a larger message (found by tests/faults/).
            self._router.setsockopt(zmq.MAXMSGSIZE, MAX_REQUEST_BYTES)
            self._router.bind(command_endpoint)
            self._pub.bind(telemetry_endpoint)
        except zmq.ZMQError:
            self.close()
            raise
        self.command = self._router.getsockopt_string(zmq.LAST_ENDPOINT)
        self.telemetry = self._pub.getsockopt_string(zmq.LAST_ENDPOINT)
        handler.meas_listened = self._meas_listened

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
        # Plant seconds per wall second: an accelerated simulated plant or emulator reports it.
        scale = float(getattr(self.handler.backend, "time_scale", 1.0))
        next_sample = wall0 + self.sample_period_s

        def sync() -> None:
            if realtime:
                self.handler.advance_to(plant0 + (time.monotonic() - wall0) * scale)

        last_request = time.monotonic()
        poller = zmq.Poller()
        poller.register(self._router, zmq.POLLIN)
        while not self._stop.is_set():
            if self.idle_exit_s is not None and time.monotonic() - last_request > self.idle_exit_s:
                log.warning("no request for %g s: stopping (--idle-exit)", self.idle_exit_s)
                break
            timeout_s = _POLL_S
            if realtime:
                timeout_s = min(timeout_s, max(0.0, next_sample - time.monotonic()))
            deadline = self.handler.watchdog_deadline()
            if deadline is not None:
                timeout_s = min(timeout_s, max(0.0, deadline - time.monotonic()))
            if poller.poll(round(timeout_s * 1000)):
                for _ in range(_MAX_BATCH):
                    try:
                        frames = self._router.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    sync()
                    self._serve(frames)
                    last_request = time.monotonic()
                    if not poller.poll(0):
                        # Nothing more has arrived (cheaper to ask than to fail a receive): the moment to
                        # integrate ahead the advance a write is usually followed by. First yield the CPU:
                        # the reply just sent leaves through this process's I/O thread, and on a busy
                        # machine the integration would otherwise hold it back (measured: the writes'
                        # wait in a whole batch rose by 1.1 s without the yield).
                        os.sched_yield()
                        self.handler.work_ahead()
                        break
            # The watchdog runs on the wall clock whatever the plant clock; checked after the requests
            # so that a feed that arrived during the wait counts.
            self._publish(self.handler.check_watchdog())
            self._publish(self.handler.backend_events())
            if realtime:
                sync()
                now = time.monotonic()
                if now >= next_sample:
                    if self._meas_listened():
                        self._publish([self.handler.sample()])
                    # Keep the period; after a long stall, restart it instead of bursting.
                    next_sample += self.sample_period_s
                    if next_sample <= now:
                        next_sample = now + self.sample_period_s

    def _serve(self, frames: list[bytes]) -> None:
        client_id, rest = frames[0], frames[1:]
        delimited, payload = split_envelope(rest)
        later: LaterTelemetry = list
        if payload is None:
            message = f"expected one frame (after an optional empty one), got {len(rest)}"
            reply = encode_error(None, BAD_REQUEST, message)
        else:
            reply, later = self.handler.handle_deferred(client_id, payload)
        self._router.send_multipart([client_id, b"", reply] if delimited else [client_id, reply])
        # The telemetry (an advance's meas: every reading as JSON) is built once the client has its reply.
        self._publish(later())

    def _meas_listened(self) -> bool:
        """Whether a subscriber would get a ``meas`` message now.

        XPUB passes on the first subscription to a prefix and the last unsubscription from it (also
        when a subscriber goes away); they are taken in here, just before publishing, as a PUB socket
        would take them in when sending.
        """
        while self._pub_poller.poll(0):
            message = self._pub.recv()
            if message[:1] == b"\x01":
                self._topics.add(message[1:])
            elif message[:1] == b"\x00":
                self._topics.discard(message[1:])
        return any(_MEAS.startswith(prefix) for prefix in self._topics)

    def _publish(self, telemetry: list[Telemetry]) -> None:
        for topic, payload in telemetry:
            self._pub.send_multipart([topic.encode(), payload])

    def close(self) -> None:
        """Close both sockets (linger 0). Idempotent."""
        self._router.close(linger=0)
        self._pub.close(linger=0)


def serve_backend(backend: PlantBackend, options: ServerOptions, *, prog: str, out: TextIO | None = None) -> int:
    """Serve ``backend`` until SIGINT/SIGTERM: what ``bioimp plant serve`` and ``bioimp gateway`` run.

    Prints ``ready <command endpoint> <telemetry endpoint>`` to ``out`` (stdout) once both sockets are
    bound. Errors are one line on stderr, prefixed with ``prog``. However it stops, it leaves every
    actuator at its safe value.

    Returns:
        The exit code: 0 after a clean stop, 2 for a bad option/key/endpoint, 1 if the plant failed.
    """
    out = out if out is not None else sys.stdout
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format=f"{prog}: %(levelname)s: %(message)s")
    try:
        keys = None
        if options.server_key is not None and options.allow_dir is not None:
            keys = ServerKeys.load(options.server_key, options.allow_dir)
    except ScenarioError as exc:
        return _fail(prog, str(exc), 2)
    handler = ProtocolHandler(backend, clock=options.clock, watchdog_s=options.watchdog_s, security=options.security)
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    auth = None if keys is None else start_authenticator(context, keys.allow_dir)
    try:
        server = PlantServer(
            handler,
            options.command,
            options.telemetry,
            sample_period_s=options.sample_period_s,
            keys=keys,
            idle_exit_s=options.idle_exit_s,
            context=context,
        )
    except zmq.ZMQError as exc:
        _stop_context(context, auth)
        return _fail(prog, f"cannot bind {options.command} / {options.telemetry}: {exc}", 2)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        server.stop()

    previous: dict[signal.Signals, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, on_signal)
    if options.security == "insecure":
        log.warning(INSECURE_WARNING)
    try:
        print(f"ready {server.command} {server.telemetry}", file=out, flush=True)
        server.run()
    except BioimpError as exc:
        return _fail(prog, f"plant failed: {exc}", 1)
    finally:
        # Nobody watches the actuators once the server is gone (no watchdog, no arm): leave them safe.
        handler.enter_failsafe("server stopping")
        server.close()
        _stop_context(context, auth)
        for sig, handler_before in previous.items():
            signal.signal(sig, handler_before)
    return 0


def _stop_context(context: zmq.Context[zmq.Socket[bytes]], auth: ThreadAuthenticator | None) -> None:
    if auth is not None:
        auth.stop()
    context.term()


def serve_plant(config: ServeConfig, *, out: TextIO | None = None) -> int:
    """Serve a simulated plant until SIGINT/SIGTERM; what ``bioimp plant serve`` runs.

    Returns:
        The exit code (see :func:`serve_backend`).
    """
    try:
        spec = resolve_model(config.model)
    except Exception as exc:  # a user factory may raise anything; the CLI must not show a traceback
        return _fail(_PROG, f"cannot load model {config.model!r}: {exc}", 2)
    try:
        backend = build_plant(
            spec,
            params=config.params,
            x0=config.x0,
            sim_config=SimulatorConfig(config.rtol, config.atol),
            mismatch=config.mismatch,
            sensors=config.sensors,
        )
    except BioimpError as exc:
        return _fail(_PROG, str(exc), 2)
    backend.time_scale = config.time_scale
    if config.log is None:
        return serve_backend(backend, config.server, prog=_PROG, out=out)
    from hil.plant_log import LoggedBackend

    logged = LoggedBackend(backend, config.log)
    try:
        return serve_backend(logged, config.server, prog=_PROG, out=out)
    finally:
        logged.close()


def _fail(prog: str, message: str, code: int) -> int:
    print(f"{prog}: error: {message}", file=sys.stderr, flush=True)
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


def add_server_options(parser: argparse.ArgumentParser, *, clock: bool) -> None:
    """Add the flags every plant server shares (endpoints, watchdog, CURVE keys; ``--clock`` if asked)."""
    parser.add_argument(
        "--command", default="tcp://127.0.0.1:*", help="command endpoint to bind (port * = any free port)"
    )
    parser.add_argument("--telemetry", default="tcp://127.0.0.1:*", help="telemetry endpoint to bind")
    if clock:
        parser.add_argument("--clock", choices=("virtual", "realtime"), default="virtual", help="plant clock")
    parser.add_argument(
        "--sample-period", default="1.0", metavar="SECONDS", help="real-time clock: seconds between meas"
    )
    parser.add_argument(
        "--watchdog",
        default=repr(DEFAULT_WATCHDOG_S),
        metavar="SECONDS",
        help=f"fail-safe after this long without a write/heartbeat/arm (default {DEFAULT_WATCHDOG_S:g}; 0 = off)",
    )
    parser.add_argument("--server-key", metavar="FILE", help="CURVE: the server's secret key file (.key_secret)")
    parser.add_argument("--allow", metavar="DIR", help="CURVE: folder of allowed client public keys (.key)")
    parser.add_argument(
        "--insecure", action="store_true", help="allow a network endpoint without keys (logged, reported in hello)"
    )
    parser.add_argument("--idle-exit", metavar="SECONDS", help="stop after this long without any request")


def server_options_from_args(args: argparse.Namespace, clock: ClockKind | None = None) -> ServerOptions:
    """The :class:`ServerOptions` of parsed :func:`add_server_options` flags (``clock`` overrides ``--clock``).

    Raises:
        ScenarioError: a bad number, or a combination the options refuse.
    """
    watchdog_s = _parse_float(args.watchdog, "--watchdog")
    return ServerOptions(
        command=args.command,
        telemetry=args.telemetry,
        clock=clock if clock is not None else args.clock,
        sample_period_s=_parse_float(args.sample_period, "--sample-period"),
        watchdog_s=None if watchdog_s == 0 else watchdog_s,
        server_key=None if args.server_key is None else Path(args.server_key),
        allow_dir=None if args.allow is None else Path(args.allow),
        insecure=args.insecure,
        idle_exit_s=None if args.idle_exit is None else _parse_float(args.idle_exit, "--idle-exit"),
    )


def run_plant_serve(args: argparse.Namespace) -> int:
    """The ``plant serve`` subcommand: ``args`` from :func:`add_plant_serve_parser`; returns the exit code."""
    try:
        config = ServeConfig(
            **_plant_of_args(args),
            server=server_options_from_args(args),
            log=None if args.log is None else Path(args.log),
            time_scale=_parse_float(args.time_scale, "--time-scale"),
        )
    except BioimpError as exc:
        return _fail(_PROG, str(exc), 2)
    return serve_plant(config)


def _plant_of_args(args: argparse.Namespace) -> dict[str, Any]:
    """The plant part of a :class:`ServeConfig`: ``--scenario``'s ``[plant]`` with the flags on top.

    Raises:
        ScenarioError: no model, a model other than the scenario's, a bad number or scenario.
    """
    from dataclasses import replace

    from twin.plant_setup import parse_seed_only

    plant: dict[str, Any] = {"model": args.model, "x0": {}, "params": {}, "rtol": 1e-10, "atol": 1e-10}
    if args.scenario is not None:
        from twin.scenario import load_scenario

        scenario = load_scenario(args.scenario)
        if args.model is not None and args.model != scenario.model:
            raise ScenarioError(f"--model {args.model!r} differs from the scenario's model {scenario.model!r}")
        sp = scenario.plant
        plant = {"model": scenario.model, "x0": dict(sp.x0), "params": dict(sp.params), "rtol": sp.rtol}
        plant |= {"atol": sp.atol, "mismatch": sp.mismatch, "sensors": sp.sensors}
    if plant["model"] is None:
        raise ScenarioError("give --model or --scenario")
    plant["x0"] |= parse_assignments(args.x0, "--x0")
    plant["params"] |= parse_assignments(args.param, "--param")
    for option in ("rtol", "atol"):
        if getattr(args, option) is not None:
            plant[option] = _parse_float(getattr(args, option), f"--{option}")
    if args.seed is not None:
        if not args.seed.isdigit():
            raise ScenarioError(f"--seed expects a non-negative integer, got {args.seed!r}")
        seed = int(args.seed)
        current = plant.get("mismatch")
        plant["mismatch"] = parse_seed_only(plant["model"], seed) if current is None else replace(current, seed=seed)
    return plant


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
    parser.add_argument("--model", help="built-in model name or package.module:function")
    parser.add_argument(
        "--scenario", metavar="FILE", help="serve the plant of this scenario: [plant] with its seed, mismatch, sensors"
    )
    parser.add_argument(
        "--seed", metavar="N", help="seed of the plant's parameter draw and noise (alone: the documented uncertainty)"
    )
    add_server_options(parser, clock=True)
    parser.add_argument("--x0", action="append", default=[], metavar="NAME=VALUE", help="initial state (repeatable)")
    parser.add_argument(
        "--param", action="append", default=[], metavar="NAME=VALUE", help="true parameter (repeatable)"
    )
    parser.add_argument("--rtol", help="plant integrator relative tolerance (default 1e-10)")
    parser.add_argument("--atol", help="plant integrator absolute tolerance (default 1e-10)")
    parser.add_argument("--log", metavar="FILE", help="append each applied write and new sample as JSON lines")
    parser.add_argument(
        "--time-scale", default="1.0", metavar="FACTOR", help="real-time clock: plant seconds per wall second"
    )
    parser.set_defaults(func=run_plant_serve)
    return parser
