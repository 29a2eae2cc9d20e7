"""The bridge's HTTP app: health, readiness, and the Retarus status push webhook."""

from __future__ import annotations

import logging

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from faxbridge.basic_auth import basic_ok
from faxbridge.mail.compose import ComposeError
from faxbridge.outbound.track import Finisher
from faxbridge.retarus.clients import RetarusClients
from faxbridge.retarus.push import MAX_PUSH_BYTES, PushError, parse_push, push_format
from faxbridge.runtime.config import ConfigProvider
from faxbridge.runtime.db import Db
from faxbridge.runtime.health import Health
from faxbridge.web.digest import DigestAuthenticator

log = logging.getLogger("faxbridge.web")


def build_web_app(db: Db, config: ConfigProvider, health: Health, retarus: RetarusClients,
                  finisher: Finisher, admin: list[BaseRoute]) -> Starlette:
    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "alive"})

    async def readyz(request: Request) -> Response:
        checks: dict[str, object] = {}
        reasons: list[str] = []  # why not ready, one line each
        try:
            await db.run(db.store.writable)
            checks["store"] = "ok (writable)"
            # which database, its schema version (and, shared, this node and its peers)
            checks["database"] = await db.run(db.store.database)
        except Exception as exc:  # noqa: BLE001
            checks["store"] = f"error: {exc}"
            reasons.append(f"store: {exc}")
        checks["smtp"] = health.smtp_address or "not listening"
        if health.smtp_address is None:
            reasons.append("smtp: not listening")
        elif not health.accepting:
            reasons.append("smtp: shutting down")
        checks["last_contact"] = dict(health.last_contact)
        topics = {}
        for name, st in health.topic_states.items():
            topics[name] = {"status": st.status, "last_poll": st.last_poll,
                            "last_success": st.last_success, "last_error": st.last_error,
                            "received": st.received}
            # A topic whose credentials are refused makes the bridge not ready: loudly.
            if st.status == "auth-refused":
                reasons.append(f"topic {name}: credentials refused: {st.last_error}")
        checks["topics"] = topics
        # Reports and received faxes that keep failing to be composed or delivered:
        # the bridge still accepts mail, but its users hear nothing back.
        mail, mail_reasons = health.metrics.mail_problems()
        checks["mail"] = mail or "ok"
        reasons += mail_reasons
        body: dict[str, object] = {"ready": not reasons, "checks": checks}
        if reasons:
            body["reasons"] = reasons
        return JSONResponse(body, status_code=503 if reasons else 200)

    digest = DigestAuthenticator("faxbridge push")

    def refuse_auth(stale: bool = False) -> Response:
        resp = Response("authentication required\n", status_code=401)
        if config.current.retarus.push_auth == "digest":
            for challenge in digest.challenges(stale):
                resp.headers.append("WWW-Authenticate", challenge)
        else:
            resp.headers["WWW-Authenticate"] = 'Basic realm="faxbridge push"'
        return resp

    async def read_capped(request: Request) -> bytes | None:
        """The body, or None once it exceeds MAX_PUSH_BYTES (not read further)."""
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > MAX_PUSH_BYTES:
            return None
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_PUSH_BYTES:
                return None
            chunks.append(chunk)
        return b"".join(chunks)

    async def push(request: Request) -> Response:
        """Retarus status push (docs/retarus-wire.md §4): XML or JSON by Content-Type,
        Basic or Digest auth as `retarus.push_auth` says. Answers 2xx only after the
        outcome is committed; a refused body, an unknown or already final job changes
        nothing."""
        cfg = config.current.retarus
        authorization = request.headers.get("authorization", "")
        if cfg.push_auth == "digest":
            uri = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            verdict = digest.check(authorization, request.method, uri, cfg.push_username,
                                   retarus.push_secret)
            if verdict != "ok":
                return refuse_auth(stale=verdict == "stale")
        elif not basic_ok(authorization, cfg.push_username, retarus.push_secret):
            return refuse_auth()
        try:
            push_format(request.headers.get("content-type", ""))
            body = await read_capped(request)
            if body is None:
                raise PushError(413, f"status push larger than {MAX_PUSH_BYTES} bytes")
            report = parse_push(body, request.headers.get("content-type", ""))
        except PushError as exc:
            log.warning("status push refused (%s): %s", exc.status, exc.reason)
            return JSONResponse({"error": exc.reason}, status_code=exc.status)
        store = db.store
        job = await db.run(store.job_by_retarus_id, report.jobId)
        if job is None:
            log.warning("status push for unknown Retarus job %s ignored", report.jobId)
            return JSONResponse({"status": "unknown job, ignored"})
        statuses = ", ".join(r.status for r in report.recipientStatus)
        await db.run(store.add_event, job.id, "push", f"status push: {statuses}")
        if not report.final:
            return JSONResponse({"status": "not final, noted"})
        try:
            changed = await finisher.apply_report(job, report, "push")
        except ComposeError as exc:
            # No report can be composed for any job (a job whose own mail breaks its
            # report is held by apply_report, its outcome committed, and answered 200
            # below). Nothing was committed: 503, Retarus pushes again, the poll retries.
            log.error("job=%s status push not recorded: %s", job.id, exc)
            return JSONResponse({"error": f"report mail could not be composed: {exc}"},
                                status_code=503)
        if not changed:
            return JSONResponse({"status": "already final"})
        # the outcome is committed either way; a held job says why it has no report
        after = await db.run(store.job, job.id)
        if after is not None and after.state == "held":
            return JSONResponse({"status": "recorded, job held", "reason": after.last_error})
        return JSONResponse({"status": "recorded"})

    async def metrics(request: Request) -> Response:
        body = await db.run(health.metrics.render, db.store, health.topic_states)
        return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")

    return Starlette(routes=[Route("/healthz", healthz), Route("/readyz", readyz),
                             Route("/metrics", metrics),
                             Route("/retarus/push", push, methods=["POST"]),
                             *admin])
