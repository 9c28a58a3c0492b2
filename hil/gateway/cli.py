"""``bioimp gateway GATEWAY.toml``: serve real (or emulated) hardware over wire protocol v1.

The server flags are the same as ``bioimp plant serve``'s (``--command``, ``--telemetry``,
``--watchdog``, ``--server-key``, ``--allow``, ``--insecure``, ``--sample-period``); a flag given on the
command line overrides the file's ``[server]`` entry. The clock is always real time: hardware does not
wait for ``advance``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import TextIO

from hil.gateway.backend import GatewayBackend
from hil.gateway.config import GatewayConfig, load_gateway_config
from plant_models.errors import ScenarioError

__all__ = ["add_gateway_parser", "run_gateway", "serve_gateway"]

_PROG = "bioimp gateway"
_SERVER_FLAGS = ("command", "telemetry", "sample_period", "watchdog")


def _fail(message: str) -> int:
    print(f"{_PROG}: error: {message}", file=sys.stderr, flush=True)
    return 2


def serve_gateway(config: GatewayConfig, args: argparse.Namespace, *, out: TextIO | None = None) -> int:
    """Connect the drivers and serve until SIGINT/SIGTERM. Returns the exit code."""
    from hil.server import serve_backend, server_options_from_args

    section = config.server
    from_file = {
        "command": section.command,
        "telemetry": section.telemetry,
        "sample_period": None if section.sample_period_s is None else repr(section.sample_period_s),
        "watchdog": None if section.watchdog_s is None else repr(section.watchdog_s),
    }
    merged = argparse.Namespace(**vars(args))
    for flag in _SERVER_FLAGS:
        if getattr(merged, flag) is None:
            setattr(merged, flag, from_file[flag] if from_file[flag] is not None else args.server_defaults[flag])
    if merged.server_key is None and section.server_key is not None:
        merged.server_key = str(section.server_key)
    if merged.allow is None and section.allow_dir is not None:
        merged.allow = str(section.allow_dir)
    merged.insecure = merged.insecure or section.insecure
    try:
        options = server_options_from_args(merged, "realtime")
    except ScenarioError as exc:
        return _fail(str(exc))
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format=f"{_PROG}: %(levelname)s: %(message)s")
    # Driver libraries log every failed reconnect attempt; the gateway reports driver state itself.
    for library in ("asyncua", "pymodbus"):
        logging.getLogger(library).setLevel(logging.ERROR)
    backend = GatewayBackend(config)
    backend.start()
    try:
        return serve_backend(backend, options, prog=_PROG, out=out)
    finally:
        backend.close()


def run_gateway(args: argparse.Namespace) -> int:
    """The ``gateway`` subcommand: ``args`` from :func:`add_gateway_parser`; returns the exit code."""
    try:
        config = load_gateway_config(args.config)
    except ScenarioError as exc:
        return _fail(str(exc))
    return serve_gateway(config, args)


def add_gateway_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """Register ``gateway`` on the top-level ``bioimp`` subcommands; dispatch with ``args.func(args)``."""
    from hil.server import add_server_options

    parser = subparsers.add_parser(
        "gateway",
        help="serve pumps, heaters and sensors on Modbus TCP / OPC UA over wire protocol v1",
        description=(
            "Serve the devices of GATEWAY.toml on a command (ROUTER) and a telemetry (PUB) endpoint, "
            "exactly like 'bioimp plant serve' in real time. Prints 'ready <command> <telemetry>' when "
            "bound; stops on SIGINT/SIGTERM. Flags override the file's [server] section."
        ),
    )
    parser.add_argument("config", metavar="GATEWAY.toml", help="drivers and devices (see docs/hardware.md)")
    add_server_options(parser, clock=False)
    # Remember the built-in defaults, then make "not given" visible so the file's [server] can fill in.
    defaults = {flag: parser.get_default(flag) for flag in _SERVER_FLAGS}
    parser.set_defaults(func=run_gateway, server_defaults=defaults, **dict.fromkeys(_SERVER_FLAGS))
    return parser
