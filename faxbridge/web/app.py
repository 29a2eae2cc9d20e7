"""The bridge's HTTP app: health, readiness, and the Retarus status push webhook."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from faxbridge.retarus.models import FaxReport
from faxbridge.web.basic import basic_ok

if TYPE_CHECKING:
    from faxbridge.app import Bridge

log = logging.getLogger("faxbridge.web")


def build_web_app(bridge: Bridge) -> Starlette:
    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "alive"})

    async def readyz(request: Request) -> Response:
        checks: dict[str, object] = {}
        ok = True
        try:
            assert bridge.store is not None
            await bridge.db(bridge.store.writable)
            checks["store"] = "ok (writable)"
        except Exception as exc:  # noqa: BLE001
            checks["store"] = f"error: {exc}"
            ok = False
        checks["smtp"] = bridge.smtp_address or "not listening"
        ok = ok and bridge.smtp_address is not None and bridge.accepting
        checks["last_contact"] = dict(bridge.last_contact)
        topics = {}
        for name, st in bridge.topic_states.items():
            topics[name] = {"status": st.status, "last_poll": st.last_poll,
                            "last_success": st.last_success, "last_error": st.last_error,
                            "received": st.received}
            # A topic whose credentials are refused makes the bridge not ready: loudly.
            ok = ok and st.status != "auth-refused"
        checks["topics"] = topics
        return JSONResponse({"ready": ok, "checks": checks}, status_code=200 if ok else 503)

    async def push(request: Request) -> Response:
        """Retarus status push (docs/retarus-wire.md §4): JSON, Basic auth. Answers 2xx only after
        the outcome is committed; an unknown or already final job changes nothing."""
        if not basic_ok(request.headers.get("authorization", ""),
                        bridge.cfg.retarus.push_username, bridge.push_secret):
            return Response("authentication required\n", status_code=401,
                            headers={"WWW-Authenticate": 'Basic realm="faxbridge push"'})
        ctype = request.headers.get("content-type", "")
        if "json" not in ctype:
            return JSONResponse({"error": "only JSON status pushes are supported; ask Retarus "
                                          "for the JSON push format"}, status_code=415)
        try:
            report = FaxReport.model_validate_json(await request.body())
        except ValidationError as exc:
            return JSONResponse({"error": f"not a fax report: {exc.errors()[:3]}"},
                                status_code=400)
        store = bridge.store
        assert store is not None
        job = await bridge.db(store.job_by_retarus_id, report.jobId)
        if job is None:
            log.warning("status push for unknown Retarus job %s ignored", report.jobId)
            return JSONResponse({"status": "unknown job, ignored"})
        statuses = ", ".join(r.status for r in report.recipientStatus)
        await bridge.db(store.add_event, job["id"], "push", f"status push: {statuses}")
        if not report.final:
            return JSONResponse({"status": "not final, noted"})
        from faxbridge.outbound.track import apply_report
        changed = await apply_report(bridge, job, report, "push")
        return JSONResponse({"status": "recorded" if changed else "already final"})

    async def metrics(request: Request) -> Response:
        body = await bridge.db(bridge.metrics.render, bridge.store, bridge.topic_states)
        return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")

    from faxbridge.web.admin import admin_routes
    return Starlette(routes=[Route("/healthz", healthz), Route("/readyz", readyz),
                             Route("/metrics", metrics),
                             Route("/retarus/push", push, methods=["POST"]),
                             *admin_routes(bridge)])
