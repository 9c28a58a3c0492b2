"""The OPC UA face of the emulated reactor: an asyncua server with one Double variable per device node.

Node ids come from the gateway config (``ns=2;s=...``: the emulator registers its namespace first, so it
gets index 2). Every ``scan_s`` the server integrates the plant up to now, takes the actuator nodes'
values as setpoints, and refreshes readback and sensor nodes.

Security: with a certificate and private key the server offers Basic256Sha256 (Sign and
SignAndEncrypt) and, only when ``allow_none``, also no security. It accepts any client certificate
(an emulator on loopback, not a plant).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import signal
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from asyncua import Server, ua

from hil.emulator.reactor import EmulatedReactor
from hil.gateway.certs import EMULATOR_URI
from hil.gateway.config import DeviceConfig, OpcUaDeviceConfig
from plant_models.errors import ScenarioError

__all__ = ["NAMESPACE", "serve_opcua"]

log = logging.getLogger("bioimp.emulator")
NAMESPACE = "urn:bioimp:emulator:reactor"


async def _serve(
    reactor: EmulatedReactor,
    devices: Sequence[DeviceConfig],
    port: int,
    out: TextIO,
    *,
    certificate: Path | None,
    private_key: Path | None,
    allow_none: bool,
    scan_s: float,
) -> None:
    server = Server()
    await server.init()
    server.set_endpoint(f"opc.tcp://127.0.0.1:{port}/")
    server.set_server_name("bioimp emulated reactor")
    await server.set_application_uri(EMULATOR_URI)
    policies = []
    if certificate is not None and private_key is not None:
        await server.load_certificate(str(certificate))
        await server.load_private_key(str(private_key))
        policies += [ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt, ua.SecurityPolicyType.Basic256Sha256_Sign]
    if allow_none or not policies:
        policies.append(ua.SecurityPolicyType.NoSecurity)
    server.set_security_policy(policies)
    index = await server.register_namespace(NAMESPACE)
    reactor_obj = await server.nodes.objects.add_object(index, "Reactor")
    setpoints: dict[str, Any] = {}
    readbacks: dict[str, Any] = {}
    for device in devices:
        addr = device.address
        assert isinstance(addr, OpcUaDeviceConfig)
        for role, node_text in (("value", addr.node), ("readback", addr.readback_node)):
            if node_text is None:
                continue
            node_id = ua.NodeId.from_string(node_text)
            if node_id.NamespaceIndex != index:
                raise ScenarioError(f"devices.{device.name}: node {node_text!r}: the emulator serves ns={index} only")
            value = reactor.value(device.name)
            name = node_text.split("=")[-1]
            node = await reactor_obj.add_variable(node_id, name, float(value), ua.VariantType.Double)
            if device.kind == "actuator" and role == "value":
                await node.set_writable()
                setpoints[device.name] = node
            else:
                readbacks.setdefault(device.name, []).append(node)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        print(f"ready opcua opc.tcp://127.0.0.1:{port}/", file=out, flush=True)
        last: dict[str, float] = {}
        while not stop.is_set():
            reactor.sync()
            for name, node in setpoints.items():
                value = float(await node.read_value())
                if last.get(name) != value and math.isfinite(value):
                    reactor.set_actuator(name, value)
                    last[name] = value
            for name, nodes in readbacks.items():
                value = reactor.value(name)
                for node in nodes:
                    await node.write_value(ua.Variant(value, ua.VariantType.Double))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), scan_s)


def serve_opcua(
    reactor: EmulatedReactor,
    devices: Sequence[DeviceConfig],
    port: int,
    out: TextIO,
    *,
    certificate: Path | None = None,
    private_key: Path | None = None,
    allow_none: bool = True,
    scan_s: float = 0.01,
) -> None:
    """Serve until SIGINT/SIGTERM; prints ``ready opcua opc.tcp://127.0.0.1:PORT/`` once listening."""
    asyncio.run(
        _serve(
            reactor,
            devices,
            port,
            out,
            certificate=certificate,
            private_key=private_key,
            allow_none=allow_none,
            scan_s=scan_s,
        )
    )
