"""OPC UA driver (asyncua client on a private event-loop thread).

Security: ``Basic256Sha256`` with ``Sign`` or ``SignAndEncrypt`` (client certificate and private key
from the file; the server certificate pinned from the file, or taken from the server's endpoint list
when not given), or ``None`` where the file says ``allow_insecure = true``.

Values are written with the node's own variant type (read once per connection), so a PLC variable of
type Float or Int16 receives a Float or an Int16, not a Double.
"""

from __future__ import annotations

import logging
from typing import Any

from asyncua import Client, ua
from asyncua.crypto.security_policies import SecurityPolicyBasic256Sha256
from asyncua.sync import ThreadLoop

from hil.gateway.certs import GATEWAY_URI
from hil.gateway.config import DeviceConfig, OpcUaDeviceConfig, OpcUaDriverConfig
from hil.gateway.drivers import DriverError

__all__ = ["OpcUaDriver"]

log = logging.getLogger("bioimp.gateway")


class OpcUaDriver:
    """An OPC UA client for the devices of one driver entry."""

    def __init__(self, config: OpcUaDriverConfig) -> None:
        """Configure (does not connect)."""
        self.config = config
        self.name = config.name
        self._loop: ThreadLoop | None = None
        self._client: Client | None = None
        self._variant: dict[str, ua.VariantType] = {}

    @property
    def connected(self) -> bool:
        """True between a successful :meth:`connect` and a failure or :meth:`close`."""
        return self._client is not None

    def _post(self, coro: Any) -> Any:
        assert self._loop is not None
        return self._loop.post(coro)

    def connect(self) -> None:
        """Open a secure channel and a session.

        Raises:
            DriverError: the server cannot be reached, or security negotiation failed.
        """
        self.close()
        cfg = self.config
        self._loop = ThreadLoop(timeout=cfg.timeout_s * 3)
        self._loop.start()
        client = Client(cfg.url, timeout=cfg.timeout_s)
        client.application_uri = GATEWAY_URI  # must match the URI in the client certificate
        try:
            if cfg.security_policy == "Basic256Sha256":
                assert cfg.certificate is not None and cfg.private_key is not None
                mode = ua.MessageSecurityMode[cfg.security_mode]
                self._post(
                    client.set_security(
                        SecurityPolicyBasic256Sha256,
                        str(cfg.certificate),
                        str(cfg.private_key),
                        server_certificate=str(cfg.server_certificate) if cfg.server_certificate else None,
                        mode=mode,
                    )
                )
            self._post(client.connect())
        except Exception as exc:  # asyncua raises OSError, TimeoutError, UaError, ...
            self._stop_loop()
            reason = str(exc) or type(exc).__name__
            raise DriverError(f"driver {self.name!r}: cannot connect to {cfg.url}: {reason}") from None
        self._client = client
        self._variant = {}

    def _node_id(self, device: DeviceConfig, readback: bool = False) -> str:
        if not isinstance(device.address, OpcUaDeviceConfig):
            raise TypeError(f"device {device.name!r} has no OPC UA node")
        if readback and device.address.readback_node is not None:
            return device.address.readback_node
        return device.address.node

    def _call(self, what: str, coro_factory: Any) -> Any:
        if self._client is None:
            raise DriverError(f"driver {self.name!r}: not connected to {self.config.url}")
        try:
            return self._post(coro_factory(self._client))
        except ua.UaStatusCodeError as exc:
            raise DriverError(f"driver {self.name!r}: {what}: {exc}") from None
        except Exception as exc:  # connection lost, timeout: the session is gone
            self.close()
            raise DriverError(f"driver {self.name!r}: {what}: {str(exc) or type(exc).__name__}") from None

    def _read_node(self, node_id: str) -> float:
        value = self._call(f"read {node_id}", lambda c: c.get_node(node_id).read_value())
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise DriverError(f"driver {self.name!r}: node {node_id} holds {value!r}, not a number")
        return float(value)

    def read(self, device: DeviceConfig) -> float:
        """The value of the device's node."""
        return self._read_node(self._node_id(device))

    def read_back(self, device: DeviceConfig) -> float:
        """The actuator's readback node, or its own node when it has none."""
        return self._read_node(self._node_id(device, readback=True))

    def write(self, device: DeviceConfig, value: float) -> None:
        """Write the node with its own variant type (integers rounded)."""
        node_id = self._node_id(device)
        variant = self._variant.get(node_id)
        if variant is None:
            variant = self._call(
                f"data type of {node_id}", lambda c: c.get_node(node_id).read_data_type_as_variant_type()
            )
            self._variant[node_id] = variant
        typed: float | int = value if variant in (ua.VariantType.Double, ua.VariantType.Float) else round(value)
        data_value = ua.DataValue(ua.Variant(typed, variant))
        self._call(f"write {node_id}", lambda c: c.get_node(node_id).write_value(data_value))

    def _stop_loop(self) -> None:
        loop, self._loop = self._loop, None
        if loop is not None:
            loop.stop()

    def close(self) -> None:
        """Close the session and the loop thread (idempotent)."""
        client, self._client = self._client, None
        if client is not None and self._loop is not None:
            try:
                self._loop.post(client.disconnect())
            except Exception as exc:  # the server may already be gone
                log.debug("driver %s: disconnect: %s", self.name, exc)
        self._stop_loop()
