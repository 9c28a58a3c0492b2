"""The operator channel of a running ``bioimp run``: the plan it publishes, the actions it accepts.

Two ZeroMQ sockets, both bound by ``bioimp run``:

* ``--publish ENDPOINT`` (PUB): after a controller step (every step, but at most 10 a second), topic
  ``plan``, a JSON object with the controller's predicted trajectory and planned inputs over its horizon
  (what the dashboard draws). The batch record does not hold the plan (a 14-day CHO batch would double
  in size); a subscriber that was not listening has simply missed it.
* ``--operator-endpoint ENDPOINT`` (REP, always CURVE): operator requests, served once per period in the
  loop's thread (:class:`twin.console.LoopConsole`), so the action happens between two steps, in the
  process that owns the plant client, the controller and the batch record. Each accepted action is
  written to the record's ``audit`` table with who and why before the reply goes back. ``who`` is the
  name the operator gave plus the name of the CURVE key that authenticated the request (its file name
  in the ``--operator-allow`` folder).

Requests (JSON): ``{"op": "arm", "who": ..., "why": ...}`` and ``{"op": "set_bound", "name": ..., "lo":
..., "hi": ..., "who": ..., "why": ...}``; replies ``{"ok": true, ...}`` or ``{"ok": false, "error": ...}``.
A bound change must stay within the model's physical limits and needs a controller that can change its
bounds (:class:`controllers.live_bounds.AdjustableBounds`); anything else is refused and nothing changes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import numpy as np
import zmq
import zmq.auth

from controllers.live_bounds import AdjustableBounds
from hil.security import ClientKeys, ServerKeys, apply_client_keys, is_local_endpoint, start_authenticator
from hil.server import MAX_REQUEST_BYTES
from plant_models.errors import BioimpError, PlantTimeout, ProtocolError, ScenarioError
from twin.console import Armable, LiveBatch
from twin.interfaces import ControlStep
from twin.record import EventRow

__all__ = ["TOPIC_PLAN", "RunConsole", "add_console_options", "console_from_args", "operator_request"]

log = logging.getLogger("bioimp.hil")

TOPIC_PLAN = b"plan"
_MAX_REQUESTS_PER_POLL = 10
#: Plans are published at most this often (wall s): encoding one costs 0.1-0.8 ms (JSON of the horizon),
#: a lot next to a 1 ms accelerated step, nothing next to a real-time period.
PLAN_MIN_INTERVAL_S = 0.1
_MAX_TEXT = 500  # longest who/why accepted (an audit row, not an essay)


class RunConsole:
    """Both sockets of the operator channel (either may be absent); a :class:`twin.console.LoopConsole`.

    Example::

        with RunConsole(publish="tcp://127.0.0.1:5570") as console:
            run_batch(scenario, plant, out, setup, console=console)
    """

    def __init__(
        self,
        *,
        publish: str | None = None,
        operator_endpoint: str | None = None,
        operator_keys: ServerKeys | None = None,
    ) -> None:
        """Args: publish: PUB endpoint for plans; operator_endpoint: REP endpoint for actions (needs
        ``operator_keys``: this process's CURVE key pair and the folder of operator public keys).

        Raises:
            ScenarioError: an operator endpoint without keys.
        """
        if operator_endpoint is not None and operator_keys is None:
            raise ScenarioError("--operator-endpoint needs --operator-server-key and --operator-allow (CURVE)")
        self._publish = publish
        self._operator_endpoint = operator_endpoint
        self._keys = operator_keys
        self._context: zmq.Context[zmq.Socket[bytes]] | None = None
        self._auth: Any = None
        self._pub: zmq.Socket[bytes] | None = None
        self._rep: zmq.Socket[bytes] | None = None
        self._batch: LiveBatch | None = None
        self._names: dict[str, str] = {}
        self._last_plan_s = -math.inf

    def __enter__(self) -> Self:
        self._context = zmq.Context()
        try:
            if self._publish is not None:
                self._pub = self._bind(zmq.PUB, self._publish, "--publish")
            if self._operator_endpoint is not None:
                assert self._keys is not None
                self._auth = start_authenticator(self._context, self._keys.allow_dir)
                self._rep = self._bind(zmq.REP, self._operator_endpoint, "--operator-endpoint", self._keys)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close both sockets and the authenticator. Idempotent."""
        for sock in (self._pub, self._rep):
            if sock is not None:
                sock.close(linger=0)
        self._pub = self._rep = None
        if self._auth is not None:
            self._auth.stop()
            self._auth = None
        if self._context is not None:
            self._context.term()
            self._context = None

    def _bind(self, kind: int, endpoint: str, option: str, keys: ServerKeys | None = None) -> zmq.Socket[bytes]:
        assert self._context is not None
        sock = self._context.socket(kind)
        sock.linger = 0
        # An operator action is a few hundred bytes; a huge frame would hold the loop's thread.
        sock.setsockopt(zmq.MAXMSGSIZE, MAX_REQUEST_BYTES)
        if keys is not None:
            keys.apply(sock)
        try:
            sock.bind(endpoint)
        except zmq.ZMQError as exc:
            sock.close(linger=0)
            raise ScenarioError(f"{option} {endpoint}: {exc}") from None
        return sock

    # -- LoopConsole ----------------------------------------------------------------------------

    def attach(self, batch: LiveBatch) -> None:
        """Keep the batch's parts for the actions."""
        self._batch = batch

    def plan(self, step: int, t_s: float, result: ControlStep) -> None:
        """Publish the step's plan (never blocks: a PUB socket drops what no one can take)."""
        if self._pub is None or self._batch is None:
            return
        now = time.monotonic()
        if now - self._last_plan_s < PLAN_MIN_INTERVAL_S:
            return  # an accelerated batch steps far faster than anyone can watch: at most 10 plans a second
        self._last_plan_s = now
        message = {
            "v": 1,
            "step": step,
            "time": t_s,
            "dt": self._batch.period_s,
            "u": _floats(result.u),
            "status": result.status,
            "compute_s": result.compute_s,
            "fallback": result.fallback,
            "predicted_x": None if result.predicted_x is None else _floats(result.predicted_x),
            "planned_u": None if result.planned_u is None else _floats(result.planned_u),
        }
        with contextlib.suppress(zmq.Again):
            self._pub.send_multipart([TOPIC_PLAN, json.dumps(message).encode()], flags=zmq.NOBLOCK)

    def poll(self) -> None:
        """Serve the operator requests waiting now (at most a few), without blocking."""
        if self._rep is None:
            return
        for _ in range(_MAX_REQUESTS_PER_POLL):
            if not self._rep.poll(0):
                return
            frame = self._rep.recv(copy=False)
            try:
                user_id = frame.get("User-Id")
                key = self._key_name(user_id if isinstance(user_id, str) else None)
                reply = self._serve(frame.bytes, key)
            except Exception as exc:  # an operator request must never stop the batch
                log.exception("operator request failed")
                reply = {"ok": False, "error": f"internal error: {type(exc).__name__}"}
            self._rep.send(json.dumps(reply).encode())

    # -- actions ---------------------------------------------------------------------------------

    def _key_name(self, user_id: str | None) -> str:
        """The allow-list file name of the client key that authenticated (ZAP's User-Id is its z85 key)."""
        if user_id is None:
            return "unknown"
        if user_id not in self._names and self._keys is not None:
            for path in sorted(Path(self._keys.allow_dir).glob("*.key")):
                try:
                    public, _ = zmq.auth.load_certificate(path)
                except (OSError, ValueError):
                    continue
                self._names[public.decode()] = path.stem  # pyzmq certificates hold z85 text
        return self._names.get(user_id, user_id)

    def _serve(self, raw: bytes, key: str) -> dict[str, Any]:
        try:
            request = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError):
            return _refused("the request is not JSON")
        if not isinstance(request, dict):
            return _refused("the request must be a JSON object")
        who, why = request.get("who"), request.get("why")
        for field, value in (("who", who), ("why", why)):
            if not isinstance(value, str) or not value.strip():
                return _refused(f"{field!r}: say {'who acts' if field == 'who' else 'why'} (a non-empty text)")
            if len(value) > _MAX_TEXT:
                return _refused(f"{field!r}: at most {_MAX_TEXT} characters")
        assert isinstance(who, str) and isinstance(why, str)
        author = f"{who.strip()} (operator key {key})"
        op = request.get("op")
        if self._batch is None:
            return _refused("the batch has not started yet")
        if op == "arm":
            return self._arm(self._batch, author, why.strip())
        if op == "set_bound":
            return self._set_bound(self._batch, request, author, why.strip())
        return _refused(f"unknown op {op!r} (known: arm, set_bound)")

    def _arm(self, batch: LiveBatch, who: str, why: str) -> dict[str, Any]:
        plant = batch.plant
        if not isinstance(plant, Armable):
            return _refused("this plant cannot be armed from the controller")
        try:
            time_s, state = plant.arm()
        except (PlantTimeout, ProtocolError) as exc:
            batch.record.event(EventRow(float("nan"), "operator_action_failed", f"arm by {who}: {exc}"))
            return _refused(f"the plant did not arm: {exc}")
        rec = batch.record.audit(who=who, what="arm", why=why, old=None, new=f"{state} at plant time {time_s:g} s")
        return {"ok": True, "state": state, "time": time_s, "audit_rec": rec}

    def _set_bound(self, batch: LiveBatch, request: dict[str, Any], who: str, why: str) -> dict[str, Any]:
        spec, controller = batch.spec, batch.controller
        name = request.get("name")
        if name in spec.states:
            hard = spec.state_bounds.get(name, (-math.inf, math.inf))
        elif name in spec.inputs:
            hard = spec.input_bounds[name]
        else:
            return _refused(f"name {name!r}: model {spec.name!r} has no such state or input")
        lo, hi = _number(request.get("lo")), _number(request.get("hi"))
        if lo is None or hi is None:
            return _refused("'lo' and 'hi' must be numbers")
        if not lo <= hi:
            return _refused(f"{name}: [{lo:g}, {hi:g}] admits no value")
        if lo < hard[0] or hi > hard[1]:
            return _refused(f"{name}: [{lo:g}, {hi:g}] is outside the model's limits [{hard[0]:g}, {hard[1]:g}]")
        if not isinstance(controller, AdjustableBounds):
            return _refused(f"controller {controller.name!r} cannot change its bounds while it runs")
        try:
            old = controller.set_bounds(name, lo, hi)
        except BioimpError as exc:
            return _refused(str(exc))
        rec = batch.record.audit(
            who=who, what=f"bound {name}", why=why, old=json.dumps(list(old)), new=json.dumps([lo, hi])
        )
        return {"ok": True, "name": name, "old": list(old), "new": [lo, hi], "audit_rec": rec}


def _refused(error: str) -> dict[str, Any]:
    return {"ok": False, "error": error}


def _number(value: object) -> float | None:
    """A JSON number (``-inf``/``inf`` spelled as the strings ``"-inf"``/``"inf"``), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float) and not math.isnan(value):
        return float(value)
    if value in ("inf", "-inf"):
        return float(str(value))
    return None


def _floats(a: Any) -> Any:
    """An array as nested lists of floats, non-finite values as None (JSON has no NaN)."""
    arr = np.asarray(a, dtype=float)
    return arr.tolist() if np.isfinite(arr).all() else _nulls(arr)


def _nulls(arr: Any) -> Any:
    if arr.ndim == 0:
        return float(arr) if np.isfinite(arr) else None
    return [_nulls(a) for a in arr]


def operator_request(endpoint: str, keys: ClientKeys, request: dict[str, Any], *, timeout_s: float) -> dict[str, Any]:
    """Send one operator request to a running ``bioimp run`` and wait for its reply.

    A fresh REQ socket per request: a lost reply cannot leave a socket stuck in the wrong state.

    Raises:
        PlantTimeout: no reply within ``timeout_s`` (the batch's loop serves requests once per period).
    """
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
    sock = context.socket(zmq.REQ)
    sock.linger = 0
    try:
        apply_client_keys(sock, keys)
        sock.connect(endpoint)
        sock.send(json.dumps(request).encode())
        if not sock.poll(int(timeout_s * 1000)):
            raise PlantTimeout(f"no reply from the batch's operator endpoint {endpoint} within {timeout_s:g} s")
        reply = json.loads(sock.recv())
        return reply if isinstance(reply, dict) else _refused("malformed reply")
    finally:
        sock.close(linger=0)


def add_console_options(run: argparse.ArgumentParser) -> None:
    """``bioimp run``'s operator channel: ``--publish``, ``--operator-endpoint`` and its CURVE keys."""
    run.add_argument("--publish", metavar="ENDPOINT", help="publish each step's plan here (local endpoint, PUB)")
    run.add_argument(
        "--operator-endpoint", metavar="ENDPOINT", help="accept operator actions (arm, bound change) here (CURVE)"
    )
    run.add_argument("--operator-server-key", metavar="FILE", help="CURVE: this run's secret key for operators")
    run.add_argument("--operator-allow", metavar="DIR", help="CURVE: folder of the operators' public keys")


def console_from_args(args: argparse.Namespace) -> RunConsole | None:
    """The :class:`RunConsole` the options ask for, or None.

    Raises:
        ScenarioError: a non-local ``--publish``, or an operator endpoint without both key options.
    """
    if args.publish is None and args.operator_endpoint is None:
        return None
    if args.publish is not None and not is_local_endpoint(args.publish):
        raise ScenarioError(f"--publish {args.publish}: plans are published on a local endpoint only")
    keys = None
    if args.operator_endpoint is not None:
        if args.operator_server_key is None or args.operator_allow is None:
            raise ScenarioError("--operator-endpoint needs --operator-server-key and --operator-allow (CURVE)")
        try:
            keys = ServerKeys.load(Path(args.operator_server_key), Path(args.operator_allow))
        except ScenarioError as exc:
            raise ScenarioError(
                str(exc).replace("--server-key", "--operator-server-key").replace("--allow", "--operator-allow")
            ) from None
    return RunConsole(publish=args.publish, operator_endpoint=args.operator_endpoint, operator_keys=keys)
