"""The bridge's HTTP app: health, readiness (more with the operations issue)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

if TYPE_CHECKING:
    from faxbridge.app import Bridge


def build_web_app(bridge: Bridge) -> Starlette:
    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "alive"})

    async def readyz(request: Request) -> Response:
        checks: dict[str, object] = {}
        ok = True
        try:
            assert bridge.store is not None
            await bridge.db(bridge.store.db.query, "SELECT 1")
            checks["store"] = "ok"
        except Exception as exc:  # noqa: BLE001
            checks["store"] = f"error: {exc}"
            ok = False
        checks["smtp"] = bridge.smtp_address or "not listening"
        ok = ok and bridge.smtp_address is not None
        return JSONResponse({"ready": ok, "checks": checks}, status_code=200 if ok else 503)

    return Starlette(routes=[Route("/healthz", healthz), Route("/readyz", readyz)])
