"""The admin dashboard: server-rendered HTML pages under /dashboard/ on the HTTP port.

Jobs with filters and each job's timeline, the SMTP log with why a mail was refused,
the inbox with resend, held jobs with release (or resolve, for a job whose outcome
is recorded but whose report mail could not be composed), the rules in force with a
form that asks the accept path what it would decide for an address, health and queue
figures.

Every page reads and changes the store only through faxbridge.operations, the
functions behind the CLI and the admin API: the three views cannot disagree. The
route form runs the same decision path as `faxbridge route` (operations.explain_route,
i.e. intake.accept.simulate with the sender's rate counts from the store).

Access: the admin token (http.admin_token), either as `Authorization: Bearer` (for
scripts) or typed once into the login form, which sets a signed session cookie
(HttpOnly, SameSite=Strict, Secure over HTTPS). Every POST form carries a CSRF token
bound to the session, and a POST whose Origin is another site is refused. Everything
that came from a mail or from Retarus is escaped by Jinja's autoescape; no page runs
a script (the Content-Security-Policy forbids scripts outright, as a second line).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from jinja2 import Environment, FileSystemLoader
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from faxbridge import operations as ops
from faxbridge.inbound.deliver import FaxMail
from faxbridge.intake.accept import envelope_address
from faxbridge.mail.compose import ComposeError
from faxbridge.runtime.config import ConfigProvider
from faxbridge.runtime.db import Db
from faxbridge.runtime.health import Health
from faxbridge.runtime.wakeups import Wakeups
from faxbridge.store.new import OUT_STATES
from faxbridge.web.readiness import readiness

PREFIX = "/dashboard"
COOKIE = "fb_dashboard"
# A working day: long enough not to nag, short enough that a forgotten browser
# session does not stay an open door for a week.
SESSION_SECONDS = 12 * 3600
# Forms are a few fields; anything larger is not one of ours.
MAX_FORM_BYTES = 64 * 1024
TEMPLATES = Path(__file__).resolve().parent / "templates"
# No script may run on these pages (there is none); inline CSS only; forms post
# back to the bridge; no framing (clickjacking of the release and resend buttons).
HEADERS = {
    "Content-Security-Policy": ("default-src 'none'; style-src 'unsafe-inline'; "
                                "img-src 'self' data:; form-action 'self'; "
                                "frame-ancestors 'none'; base-uri 'none'"),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


class Sessions:
    """Stateless signed sessions: `<expires>.<nonce>.<mac>`, the MAC keyed by the
    admin token. A new token therefore ends every session at once; a bridge restart
    does not. Logging out forgets the nonce in this process."""

    def __init__(self, token: str, revoked: set[str]) -> None:
        self.key = hmac.new(token.encode(), b"faxbridge dashboard session v1",
                            hashlib.sha256).digest()
        self.revoked = revoked

    def _mac(self, text: str) -> str:
        return hmac.new(self.key, text.encode(), hashlib.sha256).hexdigest()

    def issue(self, now: float | None = None) -> str:
        expires = int((time.time() if now is None else now) + SESSION_SECONDS)
        payload = f"{expires}.{secrets.token_urlsafe(18)}"
        return f"{payload}.{self._mac(payload)}"

    def nonce(self, value: str, now: float | None = None) -> str | None:
        """The session's nonce if `value` is a session we issued, unexpired and not
        logged out; else None."""
        expires, _, rest = value.partition(".")
        nonce, _, mac = rest.partition(".")
        if not (expires.isdigit() and nonce and mac):
            return None
        if not hmac.compare_digest(mac, self._mac(f"{expires}.{nonce}")):
            return None
        if int(expires) < (time.time() if now is None else now) or nonce in self.revoked:
            return None
        return nonce

    def csrf(self, nonce: str) -> str:
        """The CSRF token of a session: only who can read our pages knows it."""
        return self._mac(f"csrf.{nonce}")[:40]


@dataclass(frozen=True)
class Viewer:
    """Who is looking: a browser session (with its CSRF token) or a bearer client."""

    via: str                  # "session" or "bearer"
    csrf: str = ""
    nonce: str | None = None


class Refused(Exception):
    """A request answered with a page (or a redirect) instead of the one asked for."""

    def __init__(self, response: Response) -> None:
        self.response = response


def _when(ts: float | None) -> str:
    """Seconds since the epoch as the host's local time, with its zone."""
    if not ts:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(ts))


def _ago(ts: float | None) -> str:
    if not ts:
        return "never"
    s = max(0, int(time.time() - ts))
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if s >= size:
            return f"{s // size} {unit} ago"
    return f"{s} s ago"


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB"):
        if n < 1024 or unit == "MiB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def _int(query: Mapping[str, str], key: str, default: int, top: int = 1000) -> int:
    text = (query.get(key) or "").strip()
    if not text:
        return default
    if not text.isdigit() or not 0 < int(text) <= top:
        raise ops.BadQuery(f"{key}: expected a whole number from 1 to {top}, got {text!r}")
    return int(text)


def _addresses(text: str) -> list[str]:
    """Addresses typed into a field: separated by commas, semicolons or white space."""
    return [a for a in text.replace(",", " ").replace(";", " ").split() if a]


def _same_site(request: Request) -> bool:
    """False when the browser says the request comes from another origin. Browsers
    send Origin with every form POST; clients without one (curl, scripts with the
    bearer token) are not browsers a foreign page could drive."""
    origin = request.headers.get("origin")
    if origin is None:
        return True
    return origin != "null" and urlsplit(origin).netloc == request.headers.get("host", "")


def _local_next(value: str | None) -> str:
    """Where to go after logging in: only a dashboard path of ours (no open redirect)."""
    if value and value.startswith(PREFIX + "/") and not value.startswith("//") \
            and "\\" not in value:
        return value
    return PREFIX + "/"


def dashboard_routes(db: Db, config: ConfigProvider, health: Health, wakeups: Wakeups,
                     fax_mail: FaxMail) -> list[BaseRoute]:
    # Lenient undefined: log records and fax metadata have optional keys (a refused
    # recipient has no rule; Retarus may leave out the CSID), shown as empty.
    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=True,
                      trim_blocks=True, lstrip_blocks=True)
    env.filters.update(when=_when, ago=_ago, size=_size)
    env.globals.update(prefix=PREFIX, out_states=OUT_STATES)
    revoked: set[str] = set()
    store = lambda: db.store  # noqa: E731 - the store of the running bridge

    def token() -> str | None:
        return config.current.http.admin_token.resolve() or None

    def page(request: Request, name: str, viewer: Viewer | None, status: int = 200,
             **context: Any) -> HTMLResponse:
        html = env.get_template(name).render(viewer=viewer, path=request.url.path,
                                             **context)
        return HTMLResponse(html, status_code=status, headers=HEADERS)

    def error(request: Request, viewer: Viewer | None, status: int, message: str
              ) -> HTMLResponse:
        return page(request, "error.html.j2", viewer, status, title=f"{status}",
                    message=message)

    def secure(request: Request) -> bool:
        return request.url.scheme == "https"

    def authenticate(request: Request) -> Viewer:
        secret = token()
        if secret is None:
            raise Refused(error(request, None, 403,
                                "The dashboard is disabled: set http.admin_token."))
        given = request.headers.get("authorization", "")
        if given and hmac.compare_digest(given.encode(), f"Bearer {secret}".encode()):
            return Viewer("bearer")
        sessions = Sessions(secret, revoked)
        nonce = sessions.nonce(request.cookies.get(COOKIE, ""))
        if nonce is not None:
            return Viewer("session", sessions.csrf(nonce), nonce)
        if request.method == "GET":
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            raise Refused(RedirectResponse(f"{PREFIX}/login?{urlencode({'next': target})}",
                                           status_code=303, headers=HEADERS))
        raise Refused(error(request, None, 403, "Not logged in (or the session expired)."))

    async def form(request: Request) -> dict[str, str]:
        """The fields of an urlencoded form (the last value of a repeated field)."""
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_FORM_BYTES:
                raise Refused(error(request, None, 413, "Form too large."))
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if body and ctype != "application/x-www-form-urlencoded":
            raise Refused(error(request, None, 415, "Expected a form "
                                "(application/x-www-form-urlencoded)."))
        fields = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
        return {k: v[-1] for k, v in fields.items()}

    async def posted(request: Request) -> tuple[Viewer, dict[str, str]]:
        """An authenticated, same-site POST with the session's CSRF token: its form."""
        viewer = authenticate(request)
        if not _same_site(request):
            raise Refused(error(request, None, 403, "Refused: the form came from another "
                                "site."))
        fields = await form(request)
        if viewer.via == "session" and not hmac.compare_digest(
                fields.get("csrf", "").encode(), viewer.csrf.encode()):
            raise Refused(error(request, viewer, 403, "Refused: the form's CSRF token is "
                                "missing or stale. Reload the page and try again."))
        return viewer, fields

    def view(fn: Callable[[Request], Awaitable[Response]]
             ) -> Callable[[Request], Awaitable[Response]]:
        async def wrapped(request: Request) -> Response:
            try:
                return await fn(request)
            except Refused as r:
                return r.response
            except ops.BadQuery as exc:
                try:
                    viewer: Viewer | None = authenticate(request)
                except Refused:
                    viewer = None
                return error(request, viewer, 400, str(exc))
        return wrapped

    # ------------------------------------------------------------ log in and out
    @view
    async def login(request: Request) -> Response:
        secret = token()
        if secret is None:
            return error(request, None, 403, "The dashboard is disabled: set "
                         "http.admin_token.")
        if request.method == "GET":
            return page(request, "login.html.j2", None,
                        next=_local_next(request.query_params.get("next")), failed=False)
        if not _same_site(request):
            return error(request, None, 403, "Refused: the form came from another site.")
        fields = await form(request)
        target = _local_next(fields.get("next"))
        if not hmac.compare_digest(fields.get("token", "").encode(), secret.encode()):
            return page(request, "login.html.j2", None, 401, next=target, failed=True)
        resp = RedirectResponse(target, status_code=303, headers=HEADERS)
        resp.set_cookie(COOKIE, Sessions(secret, revoked).issue(), max_age=SESSION_SECONDS,
                        path=PREFIX, httponly=True, samesite="strict", secure=secure(request))
        return resp

    @view
    async def logout(request: Request) -> Response:
        viewer, _ = await posted(request)
        if viewer.nonce is not None:
            revoked.add(viewer.nonce)
        resp = RedirectResponse(f"{PREFIX}/login", status_code=303, headers=HEADERS)
        resp.delete_cookie(COOKIE, path=PREFIX, httponly=True, samesite="strict",
                           secure=secure(request))
        return resp

    # ------------------------------------------------------------ overview
    @view
    async def overview(request: Request) -> Response:
        viewer = authenticate(request)
        ready = await readiness(db, health)
        figures = await db.run(ops.figures, store())
        return page(request, "overview.html.j2", viewer, ready=ready, figures=figures,
                    now=time.time())

    # ------------------------------------------------------------ jobs
    @view
    async def jobs(request: Request) -> Response:
        viewer = authenticate(request)
        q = request.query_params
        state = q.get("state") or None
        if state is not None and state not in OUT_STATES:
            raise ops.BadQuery(f"state: expected one of {', '.join(OUT_STATES)}, "
                               f"got {state!r}")
        sender = (q.get("sender") or "").strip() or None
        limit = _int(q, "limit", 100)
        rows = await db.run(ops.list_jobs, store(), state=state, sender=sender, limit=limit)
        return page(request, "jobs.html.j2", viewer, jobs=rows, state=state or "",
                    sender=sender or "", limit=limit)

    async def job_page(request: Request, viewer: Viewer, job_id: str, status: int = 200,
                       notice: str = "", problem: str = "") -> Response:
        job = await db.run(ops.show_job, store(), job_id)
        if job is None:
            return error(request, viewer, 404, f"No job {job_id}.")
        return page(request, "job.html.j2", viewer, status, job=job, notice=notice,
                    problem=problem)

    @view
    async def job(request: Request) -> Response:
        viewer = authenticate(request)
        q = request.query_params
        notice = ("Released: the job is queued to be sent again." if q.get("released") == "1"
                  else "Resolved: the job is closed by its recorded outcome; its report at "
                  "Retarus is deleted next." if q.get("resolved") == "1" else "")
        return await job_page(request, viewer, request.path_params["id"], notice=notice)

    @view
    async def release(request: Request) -> Response:
        viewer, fields = await posted(request)
        job_id = request.path_params["id"]
        outcome = await db.run(ops.release_job, store(), job_id, by="the dashboard",
                               force=fields.get("force") == "1")
        if not outcome.ok:
            return await job_page(request, viewer, job_id, 409, problem=outcome.message)
        wakeups.submit.set()
        return RedirectResponse(f"{PREFIX}/jobs/{job_id}?released=1", status_code=303,
                                headers=HEADERS)

    @view
    async def resolve(request: Request) -> Response:
        viewer, _ = await posted(request)
        job_id = request.path_params["id"]
        try:
            outcome = await db.run(ops.resolve_job, store(), job_id, by="the dashboard",
                                   composer=fax_mail.mail.composer,
                                   mail_from=config.current.mail.from_address)
        except ops.NotFound:
            return error(request, viewer, 404, f"No job {job_id}.")
        if not outcome.ok:
            return await job_page(request, viewer, job_id, 409, problem=outcome.message)
        wakeups.mail.set()  # the fallback report, if one was queued
        return RedirectResponse(f"{PREFIX}/jobs/{job_id}?resolved=1", status_code=303,
                                headers=HEADERS)

    @view
    async def held(request: Request) -> Response:
        viewer = authenticate(request)

        def collect(s: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
            faxes = [f for f in ops.list_inbox(s, 1000) if f["state"] == "held"]
            return ops.held_jobs(s, 200), faxes
        held_jobs, held_faxes = await db.run(collect, store())
        return page(request, "held.html.j2", viewer, jobs=held_jobs, faxes=held_faxes)

    # ------------------------------------------------------------ SMTP log
    @view
    async def log_list(request: Request) -> Response:
        viewer = authenticate(request)
        q = request.query_params
        failed = q.get("failed") == "1"
        sender = (q.get("sender") or "").strip() or None
        number = (q.get("number") or "").strip() or None
        since_text = (q.get("since") or "").strip()
        try:
            since = ops.parse_since(since_text or None)
        except ops.BadQuery as exc:
            raise ops.BadQuery(f"since: {exc}") from None
        limit = _int(q, "limit", 100)
        rows = await db.run(ops.list_log, store(), failed=failed, sender=sender,
                            number=number, since=since, limit=limit)
        return page(request, "log.html.j2", viewer, records=rows, failed=failed,
                    sender=sender or "", number=number or "", since=since_text, limit=limit)

    @view
    async def log_one(request: Request) -> Response:
        viewer = authenticate(request)
        rec = await db.run(ops.log_record, store(), request.path_params["id"])
        if rec is None:
            return error(request, viewer, 404, f"No SMTP log record {request.path_params['id']}.")
        ask = None
        if rec["mail_from"] is not None:
            # The same transaction put to today's rules, one click away.
            ask = f"{PREFIX}/rules?" + urlencode(
                [("from", rec["mail_from"]), ("peer", rec["peer"] or ""),
                 ("user", rec["auth_user"] or ""), ("tls", "1" if rec["tls"] else ""),
                 ("to", "\n".join(r.get("address", "") for r in rec["recipients"]))])
        # Recipients taken at RCPT and the mail refused all the same: after DATA (content,
        # size) or by the client giving up; the reply says which.
        content_refused = not rec["ok"] and any(
            str(r.get("reply", "")).startswith("2") for r in rec["recipients"])
        return page(request, "log_entry.html.j2", viewer, rec=rec, ask=ask,
                    content_refused=content_refused)

    # ------------------------------------------------------------ inbox
    async def inbox_page(request: Request, viewer: Viewer, status: int = 200,
                         notice: str = "", problem: str = "") -> Response:
        limit = _int(request.query_params, "limit", 100)
        faxes = await db.run(ops.list_inbox, store(), limit)
        return page(request, "inbox.html.j2", viewer, status, faxes=faxes, notice=notice,
                    problem=problem, limit=limit)

    @view
    async def inbox(request: Request) -> Response:
        viewer = authenticate(request)
        resent = request.query_params.get("resent")
        return await inbox_page(request, viewer, notice=f"Fax {resent} is queued to be "
                                "mailed again." if resent else "")

    @view
    async def resend(request: Request) -> Response:
        viewer, fields = await posted(request)
        key = fields.get("id", "")
        to = _addresses(fields.get("to", ""))
        # what the SMTP listener would take as an address, and nothing else
        bad = [a for a in to if envelope_address(a) != a or "@" not in a]
        if bad:
            return await inbox_page(request, viewer, 400, problem=(
                f"Not sent again: {', '.join(bad)} is not a mail address "
                "(leave the field empty for the fax's own recipients)."))
        try:
            await db.run(ops.resend_inbound, store(), config.current, fax_mail.mail.composer,
                         key, to or None)
        except ops.NotFound:
            return await inbox_page(request, viewer, 404, problem=f"No received fax {key}.")
        except ComposeError as exc:
            # The same health signal as the admin API and the deliverer give.
            fax_mail.health.metrics.compose_failed("inbound", str(exc))
            return await inbox_page(request, viewer, 500, problem=f"Not queued: {exc}")
        fax_mail.health.metrics.mail_ok("compose", "inbound")
        wakeups.mail.set()
        return RedirectResponse(f"{PREFIX}/inbox?" + urlencode({"resent": key}),
                                status_code=303, headers=HEADERS)

    # ------------------------------------------------------------ rules and route
    @view
    async def rules(request: Request) -> Response:
        viewer = authenticate(request)
        q = request.query_params
        cfg = config.current
        asked = {"from": (q.get("from") or "").strip(), "to": q.get("to") or "",
                 "peer": (q.get("peer") or "").strip() or "127.0.0.1",
                 "user": (q.get("user") or "").strip(), "tls": q.get("tls") == "1"}
        decision = None
        recipients = [a for a in (line.strip() for line in asked["to"].replace(",", "\n")
                                  .splitlines()) if a]
        if asked["from"] or recipients:
            if not (asked["from"] and recipients):
                raise ops.BadQuery("route: give both a sender and at least one recipient")
            decision = await db.run(lambda s: ops.explain_route(
                cfg, s, sender=asked["from"], recipients=recipients, peer=asked["peer"],
                user=asked["user"] or None, tls=asked["tls"]), store())
        return page(request, "rules.html.j2", viewer, rules=ops.rules(cfg), asked=asked,
                    decision=decision, domains=cfg.fax.domains)

    async def home(request: Request) -> Response:
        return RedirectResponse(f"{PREFIX}/", status_code=307)

    return [
        Route("/", home), Route(PREFIX, home),
        Route(f"{PREFIX}/", overview),
        Route(f"{PREFIX}/login", login, methods=["GET", "POST"]),
        Route(f"{PREFIX}/logout", logout, methods=["POST"]),
        Route(f"{PREFIX}/jobs", jobs),
        Route(f"{PREFIX}/jobs/{{id}}", job),
        Route(f"{PREFIX}/jobs/{{id}}/release", release, methods=["POST"]),
        Route(f"{PREFIX}/jobs/{{id}}/resolve", resolve, methods=["POST"]),
        Route(f"{PREFIX}/held", held),
        Route(f"{PREFIX}/log", log_list),
        Route(f"{PREFIX}/log/{{id:int}}", log_one),
        Route(f"{PREFIX}/inbox", inbox),
        Route(f"{PREFIX}/inbox/resend", resend, methods=["POST"]),
        Route(f"{PREFIX}/rules", rules),
    ]
