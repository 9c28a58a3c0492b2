"""The ``bioimp`` command line.

It sits in the top layer because ``bioimp run`` starts a plant server process (hil) and drives the loop
(twin). Every user error (bad scenario, bad CSV, unknown model) is one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from plant_models.errors import BioimpError, ScenarioError
from plant_models.registry import BUILTIN_MODELS, resolve_model

if TYPE_CHECKING:
    from hil.security import ClientKeys

EXIT_USAGE = 2


def _cmd_models(args: argparse.Namespace) -> int:
    for name in sorted(BUILTIN_MODELS):
        spec = resolve_model(name)
        print(f"{spec.name}: {spec.description}")
        for kind in ("states", "inputs", "params", "outputs"):
            names: tuple[str, ...] = getattr(spec, kind)
            print(f"  {kind:8s} " + ", ".join(f"{n} [{spec.units[n]}]" for n in names))
        print(f"  time     {spec.time_unit}")
    return 0


def _cmd_simulate(args: argparse.Namespace) -> int:
    from hil.server import parse_assignments
    from twin.openloop import read_inputs_csv, simulate_openloop, write_states_csv

    spec = resolve_model(args.model)
    x0 = parse_assignments(args.x0, "--x0")
    spec.vector("states", {**spec.x0, **x0})  # reject unknown state names before any work
    profile = read_inputs_csv(Path(args.inputs), spec)
    states = simulate_openloop(spec, profile, x0)
    write_states_csv(Path(args.out), spec, profile.t, states)
    print(f"wrote {args.out} ({len(profile.t)} rows)")
    return 0


def add_client_key_options(parser: argparse.ArgumentParser) -> None:
    """``--client-key`` and ``--server-public-key``: what a client needs for a CURVE server."""
    parser.add_argument("--client-key", metavar="FILE", help="CURVE: this client's secret key file (.key_secret)")
    parser.add_argument("--server-public-key", metavar="FILE", help="CURVE: the server's public key file (.key)")


def client_keys_from_args(args: argparse.Namespace) -> ClientKeys | None:
    """The client's CURVE keys, or None when neither option is given.

    Raises:
        ScenarioError: only one of the two options, or an unreadable key file.
    """
    from hil.security import ClientKeys

    if args.client_key is None and args.server_public_key is None:
        return None
    if args.client_key is None or args.server_public_key is None:
        raise ScenarioError("--client-key and --server-public-key go together (CURVE needs both)")
    return ClientKeys.load(Path(args.client_key), Path(args.server_public_key))


def _cmd_arm(args: argparse.Namespace) -> int:
    from hil.client import ZmqPlant

    with ZmqPlant(args.endpoint, timeout_s=args.timeout, retries=0, keys=client_keys_from_args(args)) as plant:
        time_s, state = plant.arm()
    print(f"{args.endpoint}: {state} at plant time {time_s:g} s")
    return 0


def _cmd_keys_generate(args: argparse.Namespace) -> int:
    from hil.security import generate_keys

    for path in generate_keys(Path(args.dir), tuple(args.name or ("server", "client"))):
        print(f"wrote {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every ``bioimp`` subcommand."""
    from hil.console import add_console_options
    from hil.dashboard.cli import add_dashboard_parser
    from hil.emulator.cli import add_emulate_parser
    from hil.fit_cli import add_fit_parser
    from hil.gateway.cli import add_gateway_parser
    from hil.record_cli import add_batch_run_options, add_record_parsers
    from hil.server import add_plant_serve_parser
    from hil.study_cli import add_study_parsers
    from hil.sweep_cli import add_sweep_parser

    parser = argparse.ArgumentParser(prog="bioimp", description="Digital-twin control loop for bioreactors.")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a closed-loop batch against a simulated plant over ZeroMQ")
    run.add_argument(
        "scenario", nargs="?", help="scenario TOML (default: twin/scenarios/cho_fedbatch.toml, 14-day CHO fed-batch)"
    )
    run.add_argument("--out", help="run directory (default: runs/<scenario name>)")
    run.add_argument("--plant", metavar="ENDPOINT", help="connect to this plant server instead of starting one")
    run.add_argument(
        "--telemetry", metavar="ENDPOINT", help="the plant's telemetry endpoint: its events go into the record"
    )
    add_batch_run_options(run)  # the durable batch record and --resume (hil/record_cli.py)
    add_client_key_options(run)
    add_console_options(run)  # --publish, --operator-endpoint: the dashboard's channel (hil/console.py)

    sim = sub.add_parser("simulate", help="open-loop simulation from an inputs CSV")
    sim.add_argument("--model", required=True, help="model name or package.module:function")
    sim.add_argument("--inputs", required=True, help="CSV with header t,<input names>")
    sim.add_argument("--out", required=True, help="CSV to write: t,<state names>")
    sim.add_argument("--x0", action="append", default=[], metavar="NAME=VALUE", help="initial state override")
    sim.set_defaults(func=_cmd_simulate)

    models = sub.add_parser("models", help="list the built-in models with their signals and units")
    models.set_defaults(func=_cmd_models)

    arm = sub.add_parser("arm", help="re-arm a plant server or gateway after a fail-safe (operator action)")
    arm.add_argument("endpoint", help="the server's command endpoint, e.g. tcp://127.0.0.1:5555")
    arm.add_argument("--timeout", type=float, default=5.0, metavar="SECONDS", help="wait this long for the reply")
    add_client_key_options(arm)
    arm.set_defaults(func=_cmd_arm)

    keys = sub.add_parser("keys", help="CurveZMQ key pairs")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    generate = keys_sub.add_parser("generate", help="write key pairs (pyzmq certificate files) into DIR")
    generate.add_argument("dir", help="folder to write NAME.key (public) and NAME.key_secret into")
    generate.add_argument(
        "--name", action="append", metavar="NAME", help="a key pair to make (repeatable; default: server, client)"
    )
    generate.set_defaults(func=_cmd_keys_generate)

    plant = sub.add_parser("plant", help="plant-side commands")
    plant_sub = plant.add_subparsers(dest="plant_command", required=True)
    add_plant_serve_parser(plant_sub)
    add_record_parsers(sub)
    add_gateway_parser(sub)
    add_emulate_parser(sub)
    add_sweep_parser(sub)  # bioimp sweep (hil/sweep_cli.py)
    add_study_parsers(sub)  # bioimp optimize, bioimp compare (hil/study_cli.py)
    add_dashboard_parser(sub)  # bioimp dashboard (hil/dashboard/cli.py)
    add_fit_parser(sub)  # bioimp fit (hil/fit_cli.py)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``bioimp`` console script."""
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except BioimpError as exc:
        print(f"bioimp: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    raise SystemExit(main())
