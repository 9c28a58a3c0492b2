"""The hardware gateway as a :class:`~hil.backend.PlantBackend`: devices behind Modbus TCP / OPC UA drivers.

The protocol handler in front of it already validates names, finiteness and ``[min, max]``, keeps the
idempotent seqs, the watchdog and the fail-safe state. What only hardware needs is here:

* **Polling.** A background thread samples every device of every driver at the driver's
  ``poll_period_s``; :meth:`GatewayBackend.read` returns the last sample with its plant time and a
  quality: ``good``; ``stale`` once older than the device's ``max_age_s`` (value kept); ``bad`` while its
  driver is down or its read failed (value None).
* **Reconnect with backoff.** A driver that fails is closed; the poller reconnects it after 0.2 s,
  doubling to at most 5 s. While it is down its writes are refused with a clear error. On reconnect,
  safe values that could not be written while it was down are written first.
* **Rate limit.** An actuator with ``max_rate`` refuses (never clamps) a setpoint further from the
  current one than ``max_rate`` × seconds since the last change: ``out_of_range``.
* **Readback.** Every write is read back (the readback register/node, else the written one) until it is
  within ``tolerance``, for at most ``readback_timeout_s``. A mismatch is an error and an event.
* **Fail-safe.** :meth:`GatewayBackend.apply_safe` writes every safe value it can and never raises: a
  watchdog must not be stopped by one broken drive.

Errors raised to the handler are :class:`~plant_models.errors.ProtocolError` with the code they should
have on the wire (``out_of_range``, ``readback_mismatch``, ``device_unavailable``).

Gateway events (driver down/up, readback mismatch, fail-safe write failed) are queued for the server to
publish: :meth:`GatewayBackend.take_events`.

Time: plant seconds = wall seconds since start × ``server.time_scale`` (1 for real hardware).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from hil.gateway.config import DeviceConfig, GatewayConfig
from hil.gateway.drivers import Driver, DriverError, build_driver
from plant_models.errors import ProtocolError
from twin.interfaces import DeviceInfo, Reading

__all__ = [
    "DEVICE_UNAVAILABLE",
    "READBACK_MISMATCH",
    "GatewayBackend",
]

log = logging.getLogger("bioimp.gateway")

#: Proposed wire error codes (today the handler reports every backend error as ``internal``).
READBACK_MISMATCH = "readback_mismatch"
DEVICE_UNAVAILABLE = "device_unavailable"
OUT_OF_RANGE = "out_of_range"

Quality = Literal["good", "stale", "bad"]
_BACKOFF_FIRST_S = 0.2
_BACKOFF_MAX_S = 5.0
_READBACK_POLL_S = 0.005


@dataclass(frozen=True)
class _Sample:
    value: float | None
    t_s: float  # plant time of the sample
    wall: float  # monotonic time of the sample
    seq: int
    ok: bool


class _Link:
    """One driver with its lock, its devices and its reconnect schedule."""

    def __init__(self, driver: Driver, devices: list[DeviceConfig], poll_period_s: float) -> None:
        self.driver = driver
        self.devices = devices
        self.poll_period_s = poll_period_s
        self.lock = threading.Lock()
        self.next_attempt = 0.0
        self.backoff_s = _BACKOFF_FIRST_S
        self.next_poll = 0.0
        self.was_up: bool | None = None
        self.pending_safe: set[str] = set()


class GatewayBackend:
    """Real (or emulated) hardware behind drivers, seen as a plant. Call :meth:`start`, then serve."""

    def __init__(
        self,
        config: GatewayConfig,
        *,
        drivers: Mapping[str, Driver] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        """Configure (no I/O yet).

        Args:
            config: the validated GATEWAY.toml.
            drivers: driver per ``[drivers.NAME]`` (default: built from the config).
            monotonic: the wall clock (injectable for tests).
        """
        self.config = config
        self.name = config.name
        self._monotonic = monotonic
        self._scale = config.server.time_scale
        self._wall0 = monotonic()
        self._devices: dict[str, DeviceConfig] = {d.name: d for d in config.devices}
        self._infos = tuple(DeviceInfo(d.name, d.kind, d.unit, d.min, d.max, d.safe) for d in config.devices)
        built = dict(drivers) if drivers is not None else {n: build_driver(c) for n, c in config.drivers.items()}
        self._links: dict[str, _Link] = {
            name: _Link(built[name], [d for d in config.devices if d.driver == name], cfg.poll_period_s)
            for name, cfg in config.drivers.items()
        }
        self._samples: dict[str, _Sample] = {}
        self._seq: dict[str, int] = dict.fromkeys(self._devices, 0)
        self._samples_lock = threading.Lock()
        actuators = [d for d in config.devices if d.kind == "actuator"]
        self._applied: dict[str, float] = {d.name: float(d.safe) for d in actuators if d.safe is not None}
        self._changed_at: dict[str, float] = dict.fromkeys(self._applied, 0.0)
        self._events: deque[dict[str, Any]] = deque(maxlen=1000)
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None

    # ----------------------------------------------------------------------------------------------
    # Life cycle

    def start(self) -> None:
        """Connect every driver (a failure is logged and retried by the poller) and start polling."""
        if self._poller is not None:
            return  # already started
        for link in self._links.values():
            with link.lock:
                self._try_connect(link)
        self._poll_all()
        self._poller = threading.Thread(target=self._poll_loop, name="gateway-poller", daemon=True)
        self._poller.start()

    def close(self) -> None:
        """Stop polling and close every driver (idempotent)."""
        self._stop.set()
        if self._poller is not None:
            self._poller.join(timeout=10.0)
            self._poller = None
        for link in self._links.values():
            with link.lock:
                link.driver.close()

    def __enter__(self) -> GatewayBackend:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------------------------------------
    # PlantBackend

    @property
    def time_scale(self) -> float:
        """Plant seconds per wall second (1 for hardware; the emulator's factor for accelerated tests).

        A real-time loop clock must use ``period_s / time_scale`` of wall time per period.
        """
        return self._scale

    @property
    def time_s(self) -> float:
        """Plant time: wall seconds since start (× ``time_scale`` for emulated hardware)."""
        return (self._monotonic() - self._wall0) * self._scale

    def devices(self) -> tuple[DeviceInfo, ...]:
        """Every device, in file order."""
        return self._infos

    def read(self, names: Iterable[str] | None = None) -> dict[str, Reading]:
        """The last sample of each named device (all when None), with its quality."""
        wanted = list(self._devices) if names is None else list(names)
        now = self._monotonic()
        with self._samples_lock:
            samples = {n: self._samples.get(n) for n in wanted}
        out: dict[str, Reading] = {}
        for name, sample in samples.items():
            if sample is None:
                out[name] = Reading(None, self.time_s, 0, "bad")
            elif not sample.ok:
                out[name] = Reading(None, sample.t_s, sample.seq, "bad")
            else:
                quality: Quality = "stale" if now - sample.wall > self._devices[name].max_age_s else "good"
                out[name] = Reading(sample.value, sample.t_s, sample.seq, quality)
        return out

    def quality(self, name: str) -> Quality:
        """The quality of a device's last sample now (``good``/``stale``/``bad``)."""
        return self.read([name])[name].quality

    def apply(self, setpoints: Mapping[str, float]) -> dict[str, float]:
        """Write and verify setpoints (already checked against [min, max] by the handler).

        Checks every setpoint before writing any (rate limit, driver up); then writes each and reads it
        back.

        Raises:
            ProtocolError: ``out_of_range`` (rate limit), ``device_unavailable`` (driver down or write
                failed), ``readback_mismatch`` (the hardware did not take the value in time).
        """
        now_t = self.time_s
        for name, value in setpoints.items():
            device = self._devices[name]
            if device.max_rate is not None:
                current = self._applied[name]
                elapsed = max(now_t - self._changed_at[name], 0.0)
                if abs(value - current) > device.max_rate * elapsed + 1e-12 * max(1.0, abs(current)):
                    raise ProtocolError(
                        OUT_OF_RANGE,
                        f"setpoint {name!r}={value} changes {value - current:+g} {device.unit} in {elapsed:.3g} s;"
                        f" max rate {device.max_rate:g} {device.unit}/s",
                    )
        for name in setpoints:
            link = self._links[self._devices[name].driver]
            if not link.driver.connected:
                raise ProtocolError(DEVICE_UNAVAILABLE, f"{name!r}: driver {link.driver.name!r} is not connected")
        for name, value in setpoints.items():
            self._write_verified(self._devices[name], float(value))
        return self.applied()

    def applied(self) -> dict[str, float]:
        """Last value written and verified for each actuator."""
        return dict(self._applied)

    def apply_safe(self) -> dict[str, float]:
        """Write every actuator's safe value; never raises (failures are logged, queued as events and,
        for a driver that is down, written as soon as it reconnects)."""
        for device in self._devices.values():
            if device.kind != "actuator" or device.safe is None:
                continue
            link = self._links[device.driver]
            try:
                self._write_verified(device, device.safe)
            except ProtocolError as exc:
                with link.lock:
                    link.pending_safe.add(device.name)
                self._event(device.name, f"safe value not applied yet: {exc.message}")
        return self.applied()

    def advance(self, dt_s: float) -> float:
        """Real time: nothing to integrate; the poller samples the hardware. Returns the plant time."""
        return self.time_s

    # ----------------------------------------------------------------------------------------------
    # Events for the server to publish

    def take_events(self) -> list[dict[str, Any]]:
        """Gateway events since the last call: ``{"time", "device" | "driver", "reason"}``."""
        events: list[dict[str, Any]] = []
        while self._events:
            events.append(self._events.popleft())
        return events

    def _event(self, device: str | None, reason: str, *, driver: str | None = None) -> None:
        log.warning("%s: %s", device or f"driver {driver}", reason)
        event: dict[str, Any] = {"time": self.time_s, "reason": reason}
        if device is not None:
            event["device"] = device
        if driver is not None:
            event["driver"] = driver
        self._events.append(event)

    # ----------------------------------------------------------------------------------------------
    # Writing with readback

    def _write_verified(self, device: DeviceConfig, value: float) -> None:
        """Write, then read back until within tolerance or the readback timeout."""
        link = self._links[device.driver]
        with link.lock:
            try:
                link.driver.write(device, value)
            except DriverError as exc:
                self._after_failure(link, exc)
                raise ProtocolError(DEVICE_UNAVAILABLE, f"{device.name!r}: write failed: {exc}") from None
            written_t = self.time_s
            deadline = self._monotonic() + device.readback_timeout_s
            readback: float | None = None
            while True:
                try:
                    readback = link.driver.read_back(device)
                except DriverError as exc:
                    self._after_failure(link, exc)
                    raise ProtocolError(DEVICE_UNAVAILABLE, f"{device.name!r}: readback failed: {exc}") from None
                if math.isfinite(readback) and abs(readback - value) <= device.tolerance:
                    break
                if self._monotonic() >= deadline:
                    break
                time.sleep(_READBACK_POLL_S)
            self._record(device.name, readback, ok=True)
            if abs(readback - value) <= device.tolerance:
                if value != self._applied.get(device.name):
                    self._changed_at[device.name] = written_t
                self._applied[device.name] = value
                link.pending_safe.discard(device.name)
                return
        message = (
            f"{device.name!r}: wrote {value:g} {device.unit} but it reads back {readback:g} after "
            f"{device.readback_timeout_s:g} s (tolerance {device.tolerance:g})"
        )
        self._event(device.name, f"{READBACK_MISMATCH}: {message}")
        raise ProtocolError(READBACK_MISMATCH, message)

    # ----------------------------------------------------------------------------------------------
    # Polling and reconnecting

    def _record(self, name: str, value: float | None, *, ok: bool) -> None:
        with self._samples_lock:
            if ok:
                self._seq[name] += 1
            previous = self._samples.get(name)
            t_s = self.time_s if ok or previous is None else previous.t_s
            self._samples[name] = _Sample(value if ok else None, t_s, self._monotonic(), self._seq[name], ok)

    def _mark_bad(self, link: _Link) -> None:
        for device in link.devices:
            self._record(device.name, None, ok=False)

    def _after_failure(self, link: _Link, exc: DriverError) -> None:
        """Called with the link's lock held after a driver error."""
        if not link.driver.connected:
            self._mark_bad(link)
            link.next_attempt = self._monotonic() + link.backoff_s
            if link.was_up is not False:
                link.was_up = False
                self._event(None, f"driver down: {exc}", driver=link.driver.name)

    def _try_connect(self, link: _Link) -> bool:
        """Called with the link's lock held."""
        try:
            link.driver.connect()
        except DriverError as exc:
            self._mark_bad(link)
            link.next_attempt = self._monotonic() + link.backoff_s
            link.backoff_s = min(link.backoff_s * 2.0, _BACKOFF_MAX_S)
            if link.was_up is not False:
                link.was_up = False
                self._event(None, f"driver down: {exc}", driver=link.driver.name)
            return False
        link.backoff_s = _BACKOFF_FIRST_S
        if link.was_up is False:
            self._event(None, "driver reconnected", driver=link.driver.name)
        link.was_up = True
        return True

    def _write_pending_safe(self, link: _Link) -> None:
        for name in sorted(link.pending_safe):
            device = self._devices[name]
            assert device.safe is not None
            try:
                link.driver.write(device, device.safe)
            except DriverError as exc:
                self._after_failure(link, exc)
                return
            self._applied[name] = device.safe
            self._changed_at[name] = self.time_s
            link.pending_safe.discard(name)
            self._event(name, "safe value written (retried)")

    def _poll_link(self, link: _Link) -> None:
        with link.lock:
            if not link.driver.connected and (
                self._monotonic() < link.next_attempt or not self._try_connect(link)
            ):
                return
            # Safe values still owed (a fail-safe while the driver was down, or a safe write that failed
            # on a live link) are retried at every poll until they land, before anything is read.
            self._write_pending_safe(link)
            for device in link.devices:
                if not link.driver.connected:
                    return
                try:
                    value = link.driver.read(device) if device.kind == "sensor" else link.driver.read_back(device)
                except DriverError as exc:
                    self._record(device.name, None, ok=False)
                    self._after_failure(link, exc)
                    continue
                self._record(device.name, value, ok=math.isfinite(value))

    def _poll_all(self) -> None:
        for link in self._links.values():
            self._poll_link(link)
            link.next_poll = self._monotonic() + link.poll_period_s

    def _poll_loop(self) -> None:
        while not self._stop.is_set():
            now = self._monotonic()
            for link in self._links.values():
                due = link.next_poll if link.driver.connected else link.next_attempt
                if now >= due:
                    try:
                        self._poll_link(link)
                    except Exception:  # a bug must not silently stop sampling
                        log.exception("gateway poller: driver %s", link.driver.name)
                    # Keep the period; after a stall (a long reconnect), restart it instead of bursting.
                    link.next_poll += link.poll_period_s
                    if link.next_poll <= self._monotonic():
                        link.next_poll = self._monotonic() + link.poll_period_s
            wake = min(
                (link.next_poll if link.driver.connected else link.next_attempt) for link in self._links.values()
            )
            self._stop.wait(max(0.001, min(wake - self._monotonic(), 0.1)))
