"""Self-signed OPC UA application certificates for the gateway (client) and the emulator (server).

    python -m hil.gateway.certs DIR [--host HOST]

writes ``client_cert.der``/``client_key.pem`` (the gateway, application URI :data:`GATEWAY_URI`) and
``server_cert.der``/``server_key.pem`` (for ``bioimp emulate opcua``), valid for one year, with
asyncua's own certificate generator (OPC 10000-6 6.2.2 profile). A real PLC's server certificate comes
from the PLC; the gateway's client certificate must be put in the PLC's trusted list.
"""

from __future__ import annotations

import argparse
import ipaddress
import socket
from pathlib import Path

from asyncua.crypto.cert_gen import (
    dump_private_key_as_pem,
    generate_private_key,
    generate_self_signed_app_certificate,
)
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID

__all__ = ["EMULATOR_URI", "GATEWAY_URI", "write_certificate"]

GATEWAY_URI = "urn:bioimp:gateway"
EMULATOR_URI = "urn:bioimp:emulator"


def write_certificate(folder: Path, name: str, *, uri: str, server: bool, host: str = "127.0.0.1") -> tuple[Path, Path]:
    """Write ``<name>_cert.der`` and ``<name>_key.pem`` into ``folder``; return their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    key = generate_private_key()
    # asyncua checks that a client certificate names the machine it runs on.
    names = dict.fromkeys(["localhost", socket.gethostname()])
    alt_names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(uri), *(x509.DNSName(n) for n in names)]
    try:
        alt_names.append(x509.IPAddress(ipaddress.ip_address(host)))
    except ValueError:
        alt_names.append(x509.DNSName(host))
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    cert = generate_self_signed_app_certificate(key, f"bioimp {name}", {}, alt_names, extended=[usage])
    cert_path, key_path = folder / f"{name}_cert.der", folder / f"{name}_key.pem"
    cert_path.write_bytes(cert.public_bytes(Encoding.DER))
    key_path.write_bytes(dump_private_key_as_pem(key))
    key_path.chmod(0o600)
    return cert_path, key_path


def main(argv: list[str] | None = None) -> int:
    """Write a client (gateway) and a server (emulator) certificate pair into DIR."""
    parser = argparse.ArgumentParser(prog="python -m hil.gateway.certs", description=__doc__.split("\n\n")[0])
    parser.add_argument("dir", type=Path, help="folder to write the certificates and keys into")
    parser.add_argument("--host", default="127.0.0.1", help="host name or IP of the emulator (server certificate)")
    args = parser.parse_args(argv)
    for path in (
        *write_certificate(args.dir, "client", uri=GATEWAY_URI, server=False),
        *write_certificate(args.dir, "server", uri=EMULATOR_URI, server=True, host=args.host),
    ):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
