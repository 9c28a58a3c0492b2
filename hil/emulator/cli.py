"""``bioimp emulate modbus|opcua``: a simulated reactor behind Modbus TCP or OPC UA, on loopback.

    bioimp emulate modbus --model fedbatch_haldane --port 5020 --time-scale 3600 --write-config gw.toml
    bioimp gateway gw.toml

Without ``--config`` the register/node map is generated from the model (see
:mod:`hil.emulator.layout`) and ``--write-config`` saves the matching GATEWAY.toml; with ``--config`` the
emulator serves the devices of that GATEWAY.toml (the same file the gateway reads).
"""

from __future__ import annotations

import argparse
import socket
import sys
from pathlib import Path

from hil.emulator.layout import example_config
from hil.emulator.reactor import EmulatedReactor
from hil.gateway.config import (
    GatewayConfig,
    ModbusDriverConfig,
    OpcUaDriverConfig,
    load_gateway_config,
    parse_gateway_config,
)
from plant_models.errors import BioimpError, ScenarioError
from plant_models.registry import resolve_model

__all__ = ["add_emulate_parser", "run_emulate"]

_PROG = "bioimp emulate"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _driver_name(config: GatewayConfig, kind: str, wanted: str | None) -> str:
    names = [n for n, d in config.drivers.items() if d.kind == kind]
    if wanted is not None:
        if wanted not in names:
            known = ", ".join(names) or "none"
            raise ScenarioError(f"--driver {wanted!r}: no {kind} driver of that name (known: {known})")
        return wanted
    if len(names) != 1:
        raise ScenarioError(f"--driver: the config has {len(names)} {kind} drivers; name one")
    return names[0]


def _port_of(config: GatewayConfig, driver: str) -> int:
    cfg = config.drivers[driver]
    if isinstance(cfg, ModbusDriverConfig):
        return cfg.port
    assert isinstance(cfg, OpcUaDriverConfig)
    port = cfg.url.split("://", 1)[1].split("/", 1)[0].rpartition(":")[2]
    return int(port) if port.isdigit() else 4840


def run_emulate(args: argparse.Namespace) -> int:
    """Serve the emulator until SIGINT/SIGTERM; returns the exit code (2 for a bad option or config)."""
    from hil.server import parse_assignments

    try:
        try:
            spec = resolve_model(args.model)
        except BioimpError:
            raise
        except Exception as exc:  # a user factory may raise anything
            raise ScenarioError(f"cannot load model {args.model!r}: {exc}") from None
        if args.config is not None:
            config = load_gateway_config(args.config)
            driver = _driver_name(config, args.kind, args.driver)
            port = args.port if args.port is not None else _port_of(config, driver)
            time_scale = args.time_scale if args.time_scale is not None else config.server.time_scale
        else:
            port = args.port if args.port else _free_port()
            time_scale = args.time_scale if args.time_scale is not None else 1.0
            text = example_config(spec, args.kind, port, time_scale=time_scale)
            config = parse_gateway_config(text, "<generated>")
            driver = "plc"
            if args.write_config is not None:
                Path(args.write_config).write_text(text, encoding="utf-8")
        if port == 0:
            port = _free_port()
        if not time_scale > 0:
            raise ScenarioError(f"--time-scale must be > 0, got {time_scale}")
        devices = [d for d in config.devices if d.driver == driver]
        reactor = EmulatedReactor(
            spec,
            devices,
            time_scale=time_scale,
            stuck=args.stuck,
            x0=parse_assignments(args.x0, "--x0"),
            params=parse_assignments(args.param, "--param"),
        )
        if args.kind == "modbus":
            from hil.emulator.modbus import ModbusEmulator, serve_modbus

            serve_modbus(ModbusEmulator(reactor, devices), "127.0.0.1", port, sys.stdout)
        else:
            from hil.emulator.opcua import serve_opcua

            serve_opcua(
                reactor,
                devices,
                port,
                sys.stdout,
                certificate=None if args.certificate is None else Path(args.certificate),
                private_key=None if args.private_key is None else Path(args.private_key),
                allow_none=not args.secure_only,
            )
    except (BioimpError, ValueError, OSError) as exc:
        print(f"{_PROG}: error: {exc}", file=sys.stderr, flush=True)
        return 2
    return 0


def add_emulate_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """Register ``emulate`` on the top-level ``bioimp`` subcommands; dispatch with ``args.func(args)``."""
    parser = subparsers.add_parser(
        "emulate",
        help="emulate a reactor's pump/heater/sensors behind Modbus TCP or OPC UA (loopback)",
        description=(
            "Serve a simulated reactor (integrated in accelerated wall time between polls) as Modbus "
            "registers or OPC UA nodes on 127.0.0.1, so that 'bioimp gateway' can be tried without "
            "hardware. Prints 'ready modbus|opcua <url>' when listening; stops on SIGINT/SIGTERM."
        ),
    )
    parser.add_argument("kind", choices=("modbus", "opcua"), help="the hardware protocol to emulate")
    parser.add_argument("--model", required=True, help="built-in model name or package.module:function")
    parser.add_argument("--config", help="GATEWAY.toml whose devices to serve (default: generated from the model)")
    parser.add_argument("--driver", help="which driver of --config to emulate (default: the only one of this kind)")
    parser.add_argument("--port", type=int, help="TCP port on 127.0.0.1 (default: from --config, else any free)")
    parser.add_argument(
        "--time-scale", type=float, help="plant seconds per wall second (default: the config's, else 1)"
    )
    parser.add_argument("--write-config", metavar="FILE", help="write the generated GATEWAY.toml here")
    parser.add_argument("--stuck", action="append", default=[], metavar="ACTUATOR", help="fault: ignore writes")
    parser.add_argument("--x0", action="append", default=[], metavar="NAME=VALUE", help="initial state (repeatable)")
    parser.add_argument("--param", action="append", default=[], metavar="NAME=VALUE", help="true parameter")
    parser.add_argument("--certificate", help="OPC UA: server certificate (DER or PEM) to offer Basic256Sha256")
    parser.add_argument("--private-key", help="OPC UA: the server certificate's private key (PEM)")
    parser.add_argument("--secure-only", action="store_true", help="OPC UA: do not offer security None")
    parser.set_defaults(func=run_emulate)
    return parser
