"""The bridge's HTTP app: health, readiness, and the Retarus status push webhook."""

from __future__ import annotations

import base64
import binascii
import logging
import re

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from faxbridge.basic_auth import basic_ok
from faxbridge.mail.compose import ComposeError
from faxbridge.outbound.track import Finisher, confirm_push
from faxbridge.retarus.clients import RetarusClients
from faxbridge.retarus.push import MAX_PUSH_BYTES, PushError, parse_push, push_format
from faxbridge.runtime.config import ConfigProvider
from faxbridge.runtime.db import Db
from faxbridge.runtime.health import Health
from faxbridge.web.digest import DigestAuthenticator
from faxbridge.web.readiness import readiness

log = logging.getLogger("faxbridge.web")

PUSH_PATH = "/retarus/push"


def build_web_app(db: Db, config: ConfigProvider, health: Health, retarus: RetarusClients,
                  finisher: Finisher, admin: list[BaseRoute], *, push: bool = True) -> Starlette:
    """The main HTTP app: health, readiness, metrics, the admin API and (unless the
    push has a listener of its own, `retarus.push_listen`) the status push webhook."""
    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "alive"})

    async def readyz(request: Request) -> Response:
        body = await readiness(db, health)
        return JSONResponse(body, status_code=200 if body["ready"] else 503)

    async def metrics(request: Request) -> Response:
        body = await db.run(health.metrics.render, db.store, health.all_topic_states())
        return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")

    routes: list[BaseRoute] = [Route("/healthz", healthz), Route("/readyz", readyz),
                               Route("/metrics", metrics)]
    if push:
        routes.append(push_route(db, config, retarus, finisher))
    return Starlette(routes=[*routes, *admin])


def build_push_app(db: Db, config: ConfigProvider, retarus: RetarusClients,
                   finisher: Finisher) -> Starlette:
    """The status push webhook alone, for its own listener (`retarus.push_listen`):
    what is exposed to Retarus then carries nothing but POST /retarus/push."""
    return Starlette(routes=[push_route(db, config, retarus, finisher)])


def push_route(db: Db, config: ConfigProvider, retarus: RetarusClients,
               finisher: Finisher) -> Route:
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

    def auth_failed(request: Request, authorization: str) -> None:
        log.warning("status push refused: authentication failed (peer=%s, user=%s, "
                    "expected %s)", _peer(request), _claimed_user(authorization),
                    config.current.retarus.push_auth)

    async def push(request: Request) -> Response:
        """Retarus status push (docs/retarus-wire.md §4): XML or JSON by Content-Type,
        Basic or Digest auth as `retarus.push_auth` says. A final push is confirmed
        against the job's report at Retarus, whose statuses are applied. Answers 2xx
        only after the outcome is committed; a refused body, an unknown or already
        final job, or a push the report does not confirm changes nothing."""
        cfg = config.current.retarus
        authorization = request.headers.get("authorization", "")
        if cfg.push_auth == "digest":
            uri = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            verdict = digest.check(authorization, request.method, uri, cfg.push_username,
                                   retarus.push_secret)
            if verdict != "ok":
                # a request without credentials is the first half of the Digest
                # handshake, and a stale nonce had the right password: not failures
                if authorization and verdict == "refused":
                    auth_failed(request, authorization)
                return refuse_auth(stale=verdict == "stale")
        elif not basic_ok(authorization, cfg.push_username, retarus.push_secret):
            if authorization:
                auth_failed(request, authorization)
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
            # applied as the report at Retarus says, never as the push claims
            outcome = await confirm_push(finisher, retarus.fax4a, job, report)
        except ComposeError as exc:
            # No report can be composed for any job (a job whose own mail breaks its
            # report is held by apply_report, its outcome committed, and answered 200
            # below). Nothing was committed: 503, Retarus pushes again, the poll retries.
            log.error("job=%s status push not recorded: %s", job.id, exc)
            return JSONResponse({"error": f"report mail could not be composed: {exc}"},
                                status_code=503)
        if outcome.retry:
            # nothing recorded: Retarus pushes again, and the report poll goes on
            return JSONResponse({"error": outcome.status}, status_code=503)
        if not outcome.changed:
            return JSONResponse({"status": outcome.status})
        # the outcome is committed either way; a held job says why it has no report
        after = await db.run(store.job, job.id)
        if after is not None and after.state == "held":
            return JSONResponse({"status": "recorded, job held", "reason": after.last_error})
        return JSONResponse({"status": "recorded"})

    return Route(PUSH_PATH, push, methods=["POST"])


def _peer(request: Request) -> str:
    client = request.client
    return f"{client.host}:{client.port}" if client else "?"


def _claimed_user(authorization: str) -> str:
    """The user name an Authorization header claims, for the log (never the password)."""
    scheme, _, rest = authorization.partition(" ")
    name = ""
    if scheme.lower() == "basic":
        try:
            name = base64.b64decode(rest.strip(), validate=True).decode("utf-8", "replace")
        except (ValueError, binascii.Error):
            return "(undecodable Basic credentials)"
        name = name.partition(":")[0]
    elif scheme.lower() == "digest":
        m = re.search(r'username="([^"]*)"', rest)
        name = m.group(1) if m else ""
    else:
        return f"(scheme {scheme[:20]!r})"
    # from the network: no control characters into the log, and not too long
    return repr("".join(ch for ch in name if ch.isprintable())[:64])

