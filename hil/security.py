"""CurveZMQ for the plant's sockets: key files, the server's ZAP allow-list, the client's keys.

Keys are pyzmq certificate files (``zmq.auth.create_certificates``): ``NAME.key`` holds the public key,
``NAME.key_secret`` both keys. A server is given its secret file and a folder of allowed client public
key files; a client is given its own secret file and the server's public file.

A server socket with CURVE also has a ZAP domain with ``ZMQ_ZAP_ENFORCE_DOMAIN`` on: if no
authenticator answers (it crashed, it was never started), connections are refused rather than admitted.

Secret key files must be private to their owner (mode 600): one readable by group or others is refused.

A server without keys may bind only local endpoints (loopback TCP, ``ipc``, ``inproc``); anything else
needs ``insecure=True``, an explicit and logged choice.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth
import zmq.utils.z85
from zmq.auth.thread import ThreadAuthenticator

from plant_models.errors import ScenarioError

__all__ = [
    "ZAP_DOMAIN",
    "ClientKeys",
    "ServerKeys",
    "apply_client_keys",
    "check_private",
    "generate_keys",
    "is_local_endpoint",
    "start_authenticator",
]

ZAP_DOMAIN = b"bioimp"
_Z85 = frozenset(zmq.utils.z85.Z85CHARS)


def check_private(path: Path, what: str) -> None:
    """Refuse a secret key file that its group or other users may read or write (as ssh does).

    Whoever can read a secret key can drive the plant as its owner; a key left readable (copied with
    the wrong umask, unpacked from an archive) is refused before it is used, not after it leaked.

    Raises:
        ScenarioError: the file's mode gives group or others any permission.
    """
    try:
        mode = path.stat().st_mode
    except OSError:
        return  # a missing or unreadable file: the load that follows says so
    if mode & 0o077:
        raise ScenarioError(
            f"{what} {str(path)!r}: secret key file is accessible by group or others "
            f"(mode {mode & 0o777:o}); chmod 600 it"
        )


def _load(path: Path, what: str, *, secret: bool) -> tuple[bytes, bytes | None]:
    try:
        public, secret_key = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise ScenarioError(f"{what} {str(path)!r}: not a readable ZeroMQ certificate ({exc})") from None
    if secret and secret_key is None:
        raise ScenarioError(f"{what} {str(path)!r} holds no secret key (give the .key_secret file)")
    if secret:
        check_private(path, what)
    for kind, key in (("public", public), ("secret", secret_key)):
        # A damaged key line (one character too many) loads, then makes setsockopt fail with EINVAL.
        # The message never quotes the key itself.
        if key is not None and not (len(key) == 40 and all(c in _Z85 for c in key)):
            raise ScenarioError(f"{what} {str(path)!r}: its {kind} key is not a 40-character Z85 CURVE key")
    return public, secret_key


@dataclass(frozen=True)
class ServerKeys:
    """A server's CURVE key pair and the folder of client public keys it admits."""

    public: bytes
    secret: bytes
    allow_dir: Path

    @classmethod
    def load(cls, secret_file: Path, allow_dir: Path) -> ServerKeys:
        """Read ``--server-key`` and check ``--allow``.

        Raises:
            ScenarioError: unreadable key file, no secret key in it, or no such folder.
        """
        public, secret = _load(secret_file, "--server-key", secret=True)
        if not allow_dir.is_dir():
            raise ScenarioError(f"--allow {str(allow_dir)!r}: not a folder of client public keys")
        assert secret is not None
        return cls(public, secret, allow_dir)

    def apply(self, sock: zmq.Socket[bytes]) -> None:
        """Make ``sock`` a CURVE server that asks the ZAP authenticator, and refuses when none answers."""
        sock.curve_secretkey = self.secret
        sock.curve_publickey = self.public
        sock.curve_server = True
        sock.zap_domain = ZAP_DOMAIN
        sock.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)


@dataclass(frozen=True)
class ClientKeys:
    """A client's CURVE key pair and the server's public key."""

    public: bytes
    secret: bytes
    server_public: bytes

    @classmethod
    def load(cls, client_key_file: Path, server_public_file: Path) -> ClientKeys:
        """Read ``--client-key`` and ``--server-public-key``.

        Raises:
            ScenarioError: an unreadable key file, or no secret key in the client's.
        """
        public, secret = _load(client_key_file, "--client-key", secret=True)
        server_public, _ = _load(server_public_file, "--server-public-key", secret=False)
        assert secret is not None
        return cls(public, secret, server_public)


def apply_client_keys(sock: zmq.Socket[bytes], keys: ClientKeys | None) -> None:
    """Give ``sock`` the client's CURVE keys (before it connects); nothing when ``keys`` is None."""
    if keys is not None:
        sock.curve_secretkey = keys.secret
        sock.curve_publickey = keys.public
        sock.curve_serverkey = keys.server_public


def start_authenticator(context: zmq.Context[zmq.Socket[bytes]], allow_dir: Path) -> ThreadAuthenticator:
    """Start the ZAP handler of ``context``: CURVE clients whose public key is in ``allow_dir`` only."""
    auth = ThreadAuthenticator(context)
    auth.start()
    auth.configure_curve(domain=ZAP_DOMAIN.decode(), location=str(allow_dir))
    return auth


def is_local_endpoint(endpoint: str) -> bool:
    """Whether ``endpoint`` is reachable only from this machine: loopback TCP, ``ipc://``, ``inproc://``."""
    scheme, sep, address = endpoint.partition("://")
    if not sep:
        return False
    if scheme in ("ipc", "inproc"):
        return True
    if scheme != "tcp":
        return False
    host = address.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # '*', an interface name or a host name: may be reachable from the network


def generate_keys(folder: Path, names: tuple[str, ...]) -> list[Path]:
    """Write a key pair per name into ``folder`` (created if needed); return the files written.

    Raises:
        ScenarioError: a key file of that name already exists (keys are never overwritten).
    """
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        for suffix in (".key", ".key_secret"):
            if (folder / f"{name}{suffix}").exists():
                raise ScenarioError(f"{folder / (name + suffix)} exists; keys are never overwritten")
    written: list[Path] = []
    for name in names:
        public, secret = zmq.auth.create_certificates(folder, name)
        Path(secret).chmod(0o600)
        written += [Path(public), Path(secret)]
    return written
