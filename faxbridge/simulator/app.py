"""The Retarus simulator as one ASGI app: Fax4A data centers + HA send URLs (fax4a.py),
Fax2WSPull (pull.py) and the control API under /_sim/ (control.py), behind a layer
that logs every Retarus call and applies injected faults (README "The Retarus
simulator"; behaviour from docs/retarus-wire.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from starlette.applications import Starlette
from starlette.responses import JSONResponse, Response
from starlette.types import Message, Receive, Scope, Send

from faxbridge.simulator import control, fax4a, pull
from faxbridge.simulator.state import SimState

__all__ = ["FaultLayer", "SimState", "build_app", "classify"]


def classify(method: str, path: str) -> tuple[str, str | None]:
    """(endpoint name, data center) of a request, for faults and the call log."""
    parts = [p for p in path.split("/") if p]
    if parts[:1] == ["fax4a"] and len(parts) >= 5:
        dc, rest = parts[1], parts[5:]
        if rest == ["fax"]:
            return "send", dc
        if rest[:2] == ["fax", "reports"]:
            if len(rest) == 2:
                return {"GET": "list", "POST": "bulk", "DELETE": "delete_oldest"}.get(
                    method, "other"), dc
            return ("report" if method == "GET" else "delete"), dc
    if parts[:3] == ["faxin", "rest", "v1"] and len(parts) >= 4:
        return ("pull" if parts[3] == "topics" else "file"), None
    return "other", None


class FaultLayer:
    """Outermost ASGI layer: applies injected faults before any routing. A dropped
    connection aborts the transport uvicorn handed us, so the client sees a reset."""

    def __init__(self, app: Starlette, state: SimState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith("/_sim/"):
            await self.app(scope, receive, send)
            return
        endpoint, dc = classify(scope["method"], scope["path"])
        self.state.calls.append({"ts": time.time(), "method": scope["method"],
                                 "path": scope["path"], "endpoint": endpoint, "dc": dc})
        fault = self.state.take_fault(endpoint, dc)
        if fault is None:
            await self.app(scope, receive, send)
            return
        if fault.delay:
            # A slow server has the whole request and answers late: read the body
            # first, so the request takes effect even if the client gives up waiting.
            messages = []
            while True:
                msg = await receive()
                messages.append(msg)
                if msg["type"] != "http.request" or not msg.get("more_body"):
                    break
            await asyncio.sleep(fault.delay)
            replay = iter(messages)

            async def replayed() -> Message:
                return next(replay, {"type": "http.disconnect"})
            if not fault.drop and not fault.status:
                await self.app(scope, replayed, _ignore_closed(send))
                return
        if fault.drop:
            transport = getattr(getattr(receive, "__self__", None), "transport", None)
            if transport is not None:
                transport.abort()
                return
            raise ConnectionAbortedError("simulated drop")
        if fault.status:
            headers = {"Retry-After": fault.retry_after} if fault.retry_after else None
            resp = (Response(status_code=fault.status, headers=headers) if fault.body is None
                    else JSONResponse(fault.body, status_code=fault.status, headers=headers))
            await resp(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _ignore_closed(send: Send) -> Send:
    """The client may have gone away while we were slow; that is its business."""
    async def wrapped(message: Message) -> None:
        with contextlib.suppress(OSError, RuntimeError):
            await send(message)
    return wrapped


def build_app(state: SimState) -> FaultLayer:
    app = Starlette(routes=[*fax4a.ROUTES, *pull.ROUTES, *control.ROUTES])
    app.state.sim = state  # the handlers find it through request.app.state
    app.state.push_tasks = set()  # status pushes in flight (see fax4a.send_fax)
    return FaultLayer(app, state)
