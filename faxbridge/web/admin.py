"""Admin JSON API under /admin/, behind `Authorization: Bearer <http.admin_token>`.
The same operations as the CLI (faxbridge.operations): SMTP log, jobs, inbox; release
a held job, or resolve one whose outcome is recorded; resend a fax; delete a fax or only its payload; run the payload retention. This module only maps requests to them and answers in JSON."""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from faxbridge import operations as ops
from faxbridge.inbound.deliver import FaxMail
from faxbridge.mail.compose import ComposeError
from faxbridge.runtime.config import ConfigProvider
from faxbridge.runtime.db import Db
from faxbridge.runtime.wakeups import Wakeups
from faxbridge.store.new import OUT_STATES

# A list is at most this long: a negative or huge limit would have the store read
# (and this process serialise) every row at once.
MAX_LIMIT = 10_000


def _int(query: Mapping[str, str], key: str, default: int, lo: int = 1,
         hi: int = MAX_LIMIT) -> int:
    try:
        value = int(query.get(key, default))
    except ValueError:
        raise ops.BadQuery(f"{key}: expected a whole number, got {query[key]!r}") from None
    if not lo <= value <= hi:
        raise ops.BadQuery(f"{key}: expected a whole number from {lo} to {hi}, got {value}")
    return value


def _flag(query: Mapping[str, str], key: str) -> bool:
    value = query.get(key, "0").lower()
    if value not in ("0", "1", "true", "false", ""):
        raise ops.BadQuery(f"{key}: expected 1 or 0 (true or false), got {query[key]!r}")
    return value in ("1", "true")


def _state(query: Mapping[str, str]) -> str | None:
    state = query.get("state") or None
    if state is not None and state not in OUT_STATES:
        raise ops.BadQuery(f"state: expected one of {', '.join(OUT_STATES)}, got {state!r}")
    return state


def _since(query: Mapping[str, str]) -> float | None:
    try:
        return ops.parse_since(query.get("since"))
    except ops.BadQuery as exc:
        raise ops.BadQuery(f"since: {exc}") from None


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
            if denied := guard(request):
                return denied
            try:
                return await fn(request)
            except ops.BadQuery as exc:
                return JSONResponse({"error": str(exc)}, 400)
        return wrapped

    store = lambda: db.store  # noqa: E731 - the store of the running bridge

    @endpoint
    async def log_list(request: Request) -> Response:
        q = request.query_params
        return JSONResponse(await db.run(
            ops.list_log, store(), failed=_flag(q, "failed"), sender=q.get("sender"),
            number=q.get("number"), since=_since(q),
            limit=_int(q, "limit", 100)))

    @endpoint
    async def log_one(request: Request) -> Response:
        rec = await db.run(ops.log_record, store(), int(request.path_params["id"]))
        return JSONResponse(rec) if rec else JSONResponse({"error": "not found"}, 404)

    @endpoint
    async def jobs(request: Request) -> Response:
        q = request.query_params
        return JSONResponse(await db.run(ops.list_jobs, store(), state=_state(q),
                                            sender=q.get("sender"),
                                            limit=_int(q, "limit", 100)))

    @endpoint
    async def job(request: Request) -> Response:
        view = await db.run(ops.show_job, store(), request.path_params["id"])
        return JSONResponse(view) if view else JSONResponse({"error": "not found"}, 404)

    @endpoint
    async def release(request: Request) -> Response:
        job_id = request.path_params["id"]
        force = _flag(request.query_params, "force")
        outcome = await db.run(ops.release_job, store(), job_id, by="the admin API",
                                  force=force)
        if not outcome.ok:
            return JSONResponse({"error": outcome.message}, 409)
        wakeups.submit.set()
        return JSONResponse({"released": job_id})

    @endpoint
    async def resolve(request: Request) -> Response:
        job_id = request.path_params["id"]
        try:
            outcome = await db.run(ops.resolve_job, store(), job_id, by="the admin API",
                                   composer=fax_mail.mail.composer,
                                   mail_from=config.current.mail.from_address)
        except ops.NotFound:
            return JSONResponse({"error": "not found"}, 404)
        if not outcome.ok:
            return JSONResponse({"error": outcome.message}, 409)
        wakeups.mail.set()  # the fallback report, if one was queued
        return JSONResponse({"resolved": job_id, "message": outcome.message})

    @endpoint
    async def inbox(request: Request) -> Response:
        return JSONResponse(await db.run(ops.list_inbox, store(),
                                            _int(request.query_params, "limit", 100)))

    @endpoint
    async def resend(request: Request) -> Response:
        try:
            body = json.loads(await request.body() or b"{}")
        except ValueError as exc:
            raise ops.BadQuery(f"body: expected JSON such as {{\"to\": [\"a@b\"]}}: {exc}") \
                from None
        if not isinstance(body, dict):
            raise ops.BadQuery(f"body: expected a JSON object such as {{\"to\": [\"a@b\"]}}, "
                               f"got {body!r}")
        to = body.get("to")
        if to is not None and not (isinstance(to, list) and all(isinstance(a, str) for a in to)):
            raise ops.BadQuery(f"to: expected a list of addresses, got {to!r}")
        try:
            done = await db.run(ops.resend_inbound, store(), config.current, fax_mail.mail.composer,
                                   request.path_params["id"], to)
        except ops.NotFound:
            return JSONResponse({"error": "not found"}, 404)
        except ComposeError as exc:
            # The same health signal as a received fax whose mail cannot be composed.
            fax_mail.health.metrics.compose_failed("inbound", str(exc))
            return JSONResponse({"error": f"not queued: {exc}"}, 500)
        fax_mail.health.metrics.mail_ok("compose", "inbound")
        wakeups.mail.set()
        return JSONResponse(done)

    async def _deleted(fn, *args, **kw) -> Response:  # noqa: ANN001 - an operations call
        try:
            outcome = await db.run(fn, store(), *args, **kw)
        except ops.NotFound:
            return JSONResponse({"error": "not found"}, 404)
        if not outcome.ok:
            return JSONResponse({"error": outcome.message}, 409)
        return JSONResponse({"deleted": outcome.message})

    @endpoint
    async def delete_job(request: Request) -> Response:
        return await _deleted(ops.delete_fax, request.path_params["id"],
                              payload_only=request.url.path.endswith("/payload"),
                              by="the admin API")

    @endpoint
    async def delete_inbound(request: Request) -> Response:
        return await _deleted(ops.delete_received, request.path_params["id"],
                              payload_only=request.url.path.endswith("/payload"))

    @endpoint
    async def retention(request: Request) -> Response:
        q = request.query_params
        days = _int(q, "older_than", 0, lo=0, hi=100_000) if "older_than" in q else None
        return JSONResponse(await db.run(ops.apply_retention, store(), config.current,
                                         days=days))

    return [
        Route("/admin/jobs/{id}/payload", delete_job, methods=["DELETE"]),
        Route("/admin/jobs/{id}", delete_job, methods=["DELETE"]),
        Route("/admin/inbox/{id:path}/payload", delete_inbound, methods=["DELETE"]),
        Route("/admin/retention", retention, methods=["POST"]),
        Route("/admin/log", log_list), Route("/admin/log/{id:int}", log_one),
        Route("/admin/jobs", jobs), Route("/admin/jobs/{id}", job),
        Route("/admin/jobs/{id}/release", release, methods=["POST"]),
        Route("/admin/jobs/{id}/resolve", resolve, methods=["POST"]),
        Route("/admin/inbox", inbox),
        Route("/admin/inbox/{id:path}/resend", resend, methods=["POST"]),
        Route("/admin/inbox/{id:path}", delete_inbound, methods=["DELETE"]),
    ]
