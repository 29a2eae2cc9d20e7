"""Admin JSON API under /admin/, behind `Authorization: Bearer <http.admin_token>`.
The same views as the CLI: SMTP log, jobs, inbox; release a held job; resend a fax."""

from __future__ import annotations

import json
import secrets
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from faxbridge.inbound.deliver import FaxMail
from faxbridge.runtime.config import ConfigProvider
from faxbridge.runtime.db import Db
from faxbridge.runtime.wakeups import Wakeups


def _row(row: Any) -> dict[str, Any]:
    out = {k: v for k, v in dict(row).items() if k not in ("raw", "request_json", "data")}
    for key in [k for k in out if k.endswith("_json")]:
        out[key.removesuffix("_json")] = json.loads(out.pop(key))
    return out


def admin_routes(db: Db, config: ConfigProvider, wakeups: Wakeups,
                 fax_mail: FaxMail) -> list[Route]:
    def guard(request: Request) -> Response | None:
        token = config.current.http.admin_token.resolve()
        if not token:
            return JSONResponse({"error": "admin API disabled: set http.admin_token"},
                                status_code=403)
        got = request.headers.get("authorization", "")
        if not secrets.compare_digest(got.encode(), f"Bearer {token}".encode()):
            return JSONResponse({"error": "missing or wrong bearer token"}, status_code=401,
                                headers={"WWW-Authenticate": "Bearer"})
        return None

    def endpoint(fn):  # noqa: ANN001, ANN202
        async def wrapped(request: Request) -> Response:
            return guard(request) or await fn(request)
        return wrapped

    store = lambda: db.store  # noqa: E731 - the store of the running bridge

    @endpoint
    async def log_list(request: Request) -> Response:
        q = request.query_params
        since = float(q["since"]) if q.get("since") else None
        rows = await db.run(store().list_log, failed=q.get("failed") == "1",
                            sender=q.get("sender"), number=q.get("number"), since=since,
                            limit=int(q.get("limit", 100)))
        return JSONResponse([_row(r) for r in rows])

    @endpoint
    async def log_one(request: Request) -> Response:
        row = await db.run(store().log_entry, int(request.path_params["id"]))
        return JSONResponse(_row(row)) if row else JSONResponse({"error": "not found"}, 404)

    @endpoint
    async def jobs(request: Request) -> Response:
        q = request.query_params
        rows = await db.run(store().list_jobs, state=q.get("state"), sender=q.get("sender"),
                            limit=int(q.get("limit", 100)))
        return JSONResponse([_row(r) for r in rows])

    @endpoint
    async def job(request: Request) -> Response:
        job_id = request.path_params["id"]
        row = await db.run(store().job, job_id)
        if row is None:
            return JSONResponse({"error": "not found"}, 404)
        from faxbridge.outbound.submit import confirmation
        return JSONResponse({**_row(row), "confirmation": confirmation(row),
                             "recipients": [_row(r) for r in
                                            await db.run(store().job_recipients, job_id)],
                             "events": [_row(e) for e in
                                        await db.run(store().job_events, job_id)]})

    @endpoint
    async def release(request: Request) -> Response:
        from faxbridge.outbound.submit import release_job
        job_id = request.path_params["id"]
        force = request.query_params.get("force") in ("1", "true")
        ok, message = await db.run(release_job, store(), job_id, by="the admin API",
                                   force=force)
        if not ok:
            return JSONResponse({"error": message}, 409)
        wakeups.submit.set()
        return JSONResponse({"released": job_id})

    @endpoint
    async def inbox(request: Request) -> Response:
        rows = await db.run(store().list_inbound, int(request.query_params.get("limit", 100)))
        return JSONResponse([_row(r) for r in rows])

    @endpoint
    async def resend(request: Request) -> Response:
        key = request.path_params["id"]
        row = await db.run(store().inbound, key)
        if row is None:
            return JSONResponse({"error": "not found"}, 404)
        body = json.loads(await request.body() or b"{}")
        to = body.get("to")
        await fax_mail.queue(row, to=to, note="Sent again at the administrator's request.")
        return JSONResponse({"resent": key, "to": to or "mapped addresses"})

    return [
        Route("/admin/log", log_list), Route("/admin/log/{id:int}", log_one),
        Route("/admin/jobs", jobs), Route("/admin/jobs/{id}", job),
        Route("/admin/jobs/{id}/release", release, methods=["POST"]),
        Route("/admin/inbox", inbox),
        Route("/admin/inbox/{id:path}/resend", resend, methods=["POST"]),
    ]
