"""``bioimp dashboard``: the live operator view of a running batch, served on loopback by default.

    bioimp dashboard --telemetry tcp://127.0.0.1:5556 --record runs/b1 [--plan tcp://127.0.0.1:5570]
        [--bind 127.0.0.1:8050] [--tls-cert FILE --tls-key FILE]
        [--operator-endpoint EP --operator-key FILE --operator-server-key FILE]

Prints ``ready URL`` once it listens (and, in operator mode, ``operator URL?token=...``: the page opened
with that token may act). A non-loopback ``--bind`` needs ``--tls-cert`` and ``--tls-key``: the page
shows a GMP batch and, in operator mode, carries the operator token. See docs/dashboard.md.
"""

from __future__ import annotations

import argparse
import ipaddress
import math
import socket
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from plant_models.errors import ScenarioError

__all__ = ["BindAddress", "add_dashboard_parser", "parse_bind"]

DEFAULT_BIND = "127.0.0.1:8050"


@dataclass(frozen=True)
class BindAddress:
    """Where the dashboard listens."""

    host: str
    port: int

    @property
    def loopback(self) -> bool:
        """Whether only this machine can connect."""
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False  # a host name or 0.0.0.0-like wildcard may be reachable from the network

    def url(self, tls: bool) -> str:
        """The page's URL."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if tls else 'http'}://{host}:{self.port}/"


def parse_bind(text: str) -> BindAddress:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6) → :class:`BindAddress`.

    Raises:
        ScenarioError: not ``HOST:PORT`` with a port in 0..65535.
    """
    host, sep, port = text.rpartition(":")
    host = host.strip("[]") if host.startswith("[") else host
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ScenarioError(f"--bind {text!r}: expected HOST:PORT, e.g. {DEFAULT_BIND}")
    return BindAddress(host, int(port))


def _check_tls(args: argparse.Namespace, bind: BindAddress) -> bool:
    """Whether TLS is on; refuses a non-loopback bind without it, and one TLS option without the other."""
    if (args.tls_cert is None) != (args.tls_key is None):
        raise ScenarioError("--tls-cert and --tls-key go together")
    tls = args.tls_cert is not None
    if not bind.loopback and not tls:
        raise ScenarioError(
            f"--bind {args.bind}: a non-loopback address needs --tls-cert and --tls-key (no page in clear)"
        )
    for option, value in (("--tls-cert", args.tls_cert), ("--tls-key", args.tls_key)):
        if value is not None and not Path(value).is_file():
            raise ScenarioError(f"{option} {value!r}: no such file")
    return tls


def _check_bindable(bind: BindAddress, text: str) -> None:
    """Refuse an address this machine cannot listen on (in use, not ours) before anything starts.

    Raises:
        ScenarioError: naming the address and the system's reason.
    """
    try:
        infos = socket.getaddrinfo(bind.host, bind.port, type=socket.SOCK_STREAM)
        family, kind, proto, _, address = infos[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
            probe.bind(address)
    except OSError as exc:
        raise ScenarioError(f"--bind {text}: cannot listen there ({exc.strerror or exc})") from None


def _cmd_dashboard(args: argparse.Namespace) -> int:
    import uvicorn

    from hil.cli import client_keys_from_args
    from hil.console import operator_request
    from hil.dashboard.app import OperatorAccess, create_app
    from hil.dashboard.feed import FeedConfig, LiveFeed
    from hil.security import ClientKeys

    bind = parse_bind(args.bind)
    tls = _check_tls(args, bind)
    _check_bindable(bind, args.bind)
    stale_after_s = _positive(args.stale_after, "--stale-after")
    timeout_s = _positive(args.operator_timeout, "--operator-timeout")
    operator = None
    operator_options = (args.operator_endpoint, args.operator_key, args.operator_server_key)
    if any(o is not None for o in operator_options):
        if any(o is None for o in operator_options):
            raise ScenarioError("operator mode needs --operator-endpoint, --operator-key and --operator-server-key")
        try:
            keys = ClientKeys.load(Path(args.operator_key), Path(args.operator_server_key))
        except ScenarioError as exc:
            text = (
                str(exc)
                .replace("--client-key", "--operator-key")
                .replace("--server-public-key", "--operator-server-key")
            )
            raise ScenarioError(text) from None
        endpoint = args.operator_endpoint

        def send(request: dict[str, object]) -> dict[str, object]:
            return operator_request(endpoint, keys, dict(request), timeout_s=timeout_s)

        operator = OperatorAccess(OperatorAccess.new_token(), send)
    feed_config = FeedConfig(
        record_dir=Path(args.record),
        telemetry=args.telemetry,
        plan=args.plan,
        telemetry_keys=client_keys_from_args(args),
        stale_after_s=stale_after_s,
    )
    with LiveFeed(feed_config) as feed:
        app = create_app(feed, operator)
        config = uvicorn.Config(
            app,
            host=bind.host,
            port=bind.port,
            ssl_certfile=args.tls_cert,
            ssl_keyfile=args.tls_key,
            log_level="warning",
            ws="websockets-sansio",
        )
        server = uvicorn.Server(config)
        announcer = threading.Thread(target=_announce, args=(server, bind, tls, operator), daemon=True)
        announcer.start()
        try:
            server.run()
        except SystemExit as exc:  # uvicorn exits when it cannot bind
            print(f"bioimp: error: --bind {args.bind}: cannot listen there", file=sys.stderr)
            return 2 if exc.code else 0
    return 0


def _announce(server: Any, bind: BindAddress, tls: bool, operator: Any) -> None:
    """Print ``ready URL`` once the server listens (with the real port when ``--bind`` asked for 0)."""
    while not server.started:
        if server.should_exit:
            return
        time.sleep(0.02)
    port = bind.port
    for listener in getattr(server, "servers", []):
        for sock in listener.sockets:
            port = sock.getsockname()[1]
    url = BindAddress(bind.host, port).url(tls)
    print(f"ready {url}", flush=True)
    if operator is not None:
        print(f"operator {url}?token={operator.token}", flush=True)


def _positive(text: str, option: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ScenarioError(f"{option} expects a number of seconds, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise ScenarioError(f"{option} must be a positive number of seconds, not {text}")
    return value


def add_dashboard_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``bioimp dashboard``."""
    from hil.cli import add_client_key_options

    parser = sub.add_parser(
        "dashboard",
        help="live operator view of a running batch (a web page)",
        description="Serve a live web page of a running batch from its telemetry and its batch record.",
    )
    parser.add_argument("--telemetry", metavar="ENDPOINT", help="the plant's telemetry endpoint (PUB)")
    parser.add_argument("--record", required=True, metavar="DIR", help="the batch's run directory (record.sqlite)")
    parser.add_argument("--plan", metavar="ENDPOINT", help="the controller's plan: bioimp run --publish ENDPOINT")
    parser.add_argument("--bind", default=DEFAULT_BIND, help=f"HOST:PORT to listen on (default {DEFAULT_BIND})")
    parser.add_argument("--tls-cert", metavar="FILE", help="TLS certificate (PEM); required off loopback")
    parser.add_argument("--tls-key", metavar="FILE", help="TLS private key (PEM); required off loopback")
    parser.add_argument(
        "--stale-after", default="5", metavar="SECONDS", help="say 'no data since ...' after this long (default 5)"
    )
    parser.add_argument("--operator-endpoint", metavar="ENDPOINT", help="bioimp run --operator-endpoint")
    parser.add_argument("--operator-key", metavar="FILE", help="operator mode: your CURVE secret key (.key_secret)")
    parser.add_argument("--operator-server-key", metavar="FILE", help="operator mode: the run's public key (.key)")
    parser.add_argument(
        "--operator-timeout", default="30", metavar="SECONDS", help="wait this long for the batch's reply (default 30)"
    )
    add_client_key_options(parser)  # CURVE for the plant's telemetry
    parser.set_defaults(func=_cmd_dashboard)
