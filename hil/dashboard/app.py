"""The dashboard's web application (FastAPI): the page, its websocket, and the operator action endpoint.

* ``GET /``: the page (``static/index.html``); ``/static/...`` its script and style; ``/vendor/plotly.min.js``
  the plotting library, served from the installed ``plotly`` package (no CDN: plants are often offline).
* ``GET /api/info``: whether operator actions are possible here.
* ``WS /ws``: first the run's description, then every item of the :class:`~hil.dashboard.feed.LiveFeed`
  from the start, then new items and the status every ``push_s``. A browser that reconnects gets a new
  socket and everything again, from the start.
* ``POST /api/action``: an operator action, only when the dashboard was started with an operator key
  *and* the request carries the operator token printed at start (``X-Operator-Token``); forwarded to the
  running ``bioimp run`` (:func:`hil.console.operator_request`), which validates, applies and audits it.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import plotly
from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from hil.dashboard.feed import ALARM_KINDS, LiveFeed
from plant_models.errors import BioimpError

__all__ = ["OperatorAccess", "create_app"]

STATIC = Path(__file__).parent / "static"
PLOTLY_JS = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
_OPS = ("arm", "set_bound")
_FIELDS = ("op", "who", "why", "name", "lo", "hi")


@dataclass(frozen=True)
class OperatorAccess:
    """What operator mode needs: the token the browser must show, and how to reach the batch.

    Attributes:
        token: the secret printed at start; a request without it is refused.
        send: sends one request to the running batch and returns its reply (blocking; run in a thread).
    """

    token: str
    send: Callable[[dict[str, Any]], dict[str, Any]]

    @staticmethod
    def new_token() -> str:
        """A fresh random token (URL-safe)."""
        return secrets.token_urlsafe(24)


def create_app(feed: LiveFeed, operator: OperatorAccess | None = None, *, push_s: float = 0.25) -> FastAPI:
    """The application around ``feed``; read-only unless ``operator`` is given."""
    app = FastAPI(title="bioimp dashboard", docs_url=None, redoc_url=None, openapi_url=None)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/")
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})

    @app.get("/vendor/plotly.min.js")
    async def plotly_js() -> FileResponse:
        return FileResponse(PLOTLY_JS, media_type="text/javascript")

    @app.get("/api/info")
    async def info() -> dict[str, Any]:
        return {"operator": operator is not None, "alarm_kinds": sorted(ALARM_KINDS)}

    @app.post("/api/action")
    async def action(request: Request) -> JSONResponse:
        if operator is None:
            return _refused(403, "read-only dashboard: start it with --operator-key to act on the batch")
        token = request.headers.get("X-Operator-Token", "")
        if not secrets.compare_digest(token.encode(), operator.token.encode()):
            return _refused(403, "operator token missing or wrong (open the operator URL printed at start)")
        try:
            body = await request.json()
        except ValueError:
            return _refused(400, "the request body is not JSON")
        if not isinstance(body, dict) or body.get("op") not in _OPS:
            return _refused(400, f"op must be one of {', '.join(_OPS)}")
        forwarded = {k: body[k] for k in _FIELDS if k in body}
        try:
            reply = await asyncio.to_thread(operator.send, forwarded)
        except BioimpError as exc:
            return _refused(504, str(exc))
        return JSONResponse(reply, status_code=200 if reply.get("ok") else 409)

    @app.websocket("/ws")
    async def stream(websocket: WebSocket) -> None:
        if not _same_origin(websocket.headers.get("origin"), websocket.headers.get("host")):
            # A page from another site open in the operator's browser must not read the batch.
            await websocket.close(code=1008)
            return
        await websocket.accept()
        cursor, plan_version = 0, -1
        try:
            while feed.run is None:  # the record is not there yet: say so, and wait
                await websocket.send_json({"type": "status", "status": feed.status_json()})
                await asyncio.sleep(push_s)
            await websocket.send_json({"type": "run", "run": feed.run, "operator": operator is not None})
            while True:
                items, cursor = feed.since(cursor)
                message: dict[str, Any] = {"type": "update", "items": items, "status": feed.status_json()}
                if feed.plan_version != plan_version:
                    plan_version = feed.plan_version
                    message["plan"] = feed.plan
                await websocket.send_json(message)
                await asyncio.sleep(push_s)
        except Exception:  # the browser went away (closed, reloaded, network): its next socket starts again
            return

    return app


def _same_origin(origin: str | None, host: str | None) -> bool:
    """Whether a websocket comes from this dashboard's own page (no Origin: not a browser, allowed)."""
    if origin is None:
        return True
    return host is not None and urlsplit(origin).netloc == host


def _refused(status: int, error: str) -> JSONResponse:
    return JSONResponse({"ok": False, "error": error}, status_code=status)
