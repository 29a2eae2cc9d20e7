"""The Faxes API (docs/kazoo-faxes-api.md): Kazoo's `/v2/faxes/…` endpoints, also
under `/v2/accounts/{ACCOUNT_ID}/faxes/…`, behind `X-Auth-Token` ([[api.tokens]]).

An account sees the outgoing faxes of its tokens' senders (API- and mail-initiated
alike), their SMTP log, and the received faxes of its tokens' topics (all when a
token names none). Creating goes through fax_create (the accept path); deleting
through operations, as the CLI and the admin API do."""

from __future__ import annotations

import json
import secrets
from collections.abc import Awaitable, Callable
from email import policy
from email.parser import BytesParser
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from faxbridge import operations as ops
from faxbridge.errors import StoreError
from faxbridge.store.new import OUT_FINAL, OUT_STATES
from faxbridge.web import kazoo
from faxbridge.web.fax_create import FaxCreator, parse_request
from faxbridge.web.kazoo import ApiError, field_error

if TYPE_CHECKING:
    from faxbridge.config import ApiToken, Config
    from faxbridge.runtime.config import ConfigProvider
    from faxbridge.runtime.db import Db
    from faxbridge.store.protocol import Store

OUTGOING = tuple(s for s in OUT_STATES if s not in OUT_FINAL)
INCOMING = ("stored", "mailing", "held")  # received, not (yet) delivered
JSON_SLACK = 1024 * 1024  # room for the JSON part of a multipart request


class Ctx:
    """One authenticated request: its token, id and the account's scope."""

    def __init__(self, request: Request, cfg: Config, token: ApiToken, rid: str) -> None:
        self.request, self.cfg, self.token, self.rid = request, cfg, token, rid
        self.senders = tuple(t.sender.lower() for t in cfg.api.tokens
                             if t.account == token.account)
        self.topics = token.topics or None

    @property
    def auth(self) -> str:
        return self.request.headers.get("x-auth-token", "")

    def ok(self, data: Any, code: int = 200, **extra: Any) -> Response:
        return kazoo.success(data, self.rid, self.auth, code, **extra)


def find_token(cfg: Config, key: str) -> ApiToken | None:
    """The token whose secret is `key` (compared in constant time)."""
    found = None
    for t in cfg.api.tokens:
        try:
            secret = t.token.resolve()
        except OSError:  # a token file gone since the preflight: that token is off
            continue
        if secret and key and secrets.compare_digest(secret.encode(), key.encode()):
            found = t
    return found


def not_found(what: str, key: str) -> ApiError:
    return ApiError(404, "bad_identifier", {"cause": key, "message": f"no {what} {key}"})


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise ApiError(413, "request too large", {"document": {"maxLength": {
            "message": f"the request has {declared} bytes, more than api.max_document_bytes "
                       f"allows ({limit})"}}})
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, "request too large", {"document": {"maxLength": {
                "message": f"the request is larger than api.max_document_bytes allows "
                           f"({limit} bytes)"}}})
        chunks.append(chunk)
    return b"".join(chunks)


def parse_json(raw: bytes) -> Any:
    try:
        return json.loads(raw or b"{}")
    except ValueError as exc:
        raise field_error("data", "type", f"the body is not JSON: {exc}") from None


def parse_multipart(ctype: str, raw: bytes) -> tuple[Any, list[tuple[str, str, bytes]]]:
    """multipart/mixed (or form-data, as `curl -F` sends it): the JSON first, then
    one or more documents."""
    msg = BytesParser(policy=policy.default).parsebytes(
        b"Content-Type: " + ctype.encode("latin-1") + b"\r\n\r\n" + raw)
    parts = list(msg.iter_parts()) if msg.is_multipart() else []
    if len(parts) < 2:
        raise field_error("document", "required", "a multipart request needs the JSON "
                          "first and at least one document after it")
    body = parse_json(parts[0].get_payload(decode=True) or b"")
    files = []
    for i, part in enumerate(parts[1:], 1):
        data = part.get_payload(decode=True) or b""
        if not data:
            raise field_error("document", "required", f"multipart part {i + 1} is empty")
        files.append((part.get_filename() or f"document{i}", part.get_content_type(), data))
    return body, files


def faxes_routes(db: Db, config: ConfigProvider, creator: FaxCreator) -> list[Route]:
    store: Callable[[], Store] = lambda: db.store  # noqa: E731 - the running bridge's

    def endpoint(fn: Callable[[Ctx], Awaitable[Response]]) -> Callable[[Request],
                                                                        Awaitable[Response]]:
        async def wrapped(request: Request) -> Response:
            rid = kazoo.new_request_id()
            cfg = config.current
            try:
                token = find_token(cfg, request.headers.get("x-auth-token", ""))
                if token is None:
                    raise ApiError(401, "invalid_credentials", {"message": "invalid "
                                   "credentials: a token of api.tokens in X-Auth-Token"})
                account = request.path_params.get("account_id")
                if account is not None and account != token.account:
                    raise ApiError(403, "forbidden", {"message": f"this token belongs to "
                                   f"account {token.account}, not {account}"})
                return await fn(Ctx(request, cfg, token, rid))
            except ApiError as err:
                return kazoo.error_response(err, rid)
            except StoreError as exc:
                return kazoo.error_response(ApiError(503, "store unavailable",
                                                     {"message": str(exc)}), rid)
        return wrapped

    # ------------------------------------------------------------ auth
    async def api_auth(request: Request) -> Response:
        rid = kazoo.new_request_id()
        try:
            body = parse_json(await read_body(request, JSON_SLACK))
            key = ((body.get("data") or {}).get("api_key") if isinstance(body, dict)
                   else None)
            if not isinstance(key, str) or not key:
                raise field_error("api_key", "required", "Field is required but missing")
            token = find_token(config.current, key)
            if token is None:
                raise ApiError(401, "invalid_credentials",
                               {"message": "invalid credentials"})
        except ApiError as err:
            return kazoo.error_response(err, rid)
        return kazoo.success({"account_id": token.account, "account_name": token.name,
                              "owner_id": token.name, "sender": token.sender},
                             rid, key, 201)

    # ------------------------------------------------------------ outgoing
    def job_in_scope(ctx: Ctx, job_id: str) -> Any:
        job = store().job(job_id)
        if job is None or job.sender not in ctx.senders:
            raise not_found("fax", job_id)
        return job

    def job_view(ctx: Ctx, job_id: str, states: tuple[str, ...] | None = None) -> dict:
        job = job_in_scope(ctx, job_id)
        if states is not None and job.state not in states:
            raise not_found("fax in this folder", job_id)
        docs = [{"name": d.name, "content_type": d.content_type, "size": len(d.data)}
                for d in store().job_documents(job_id)]
        return kazoo.fax_document(job, store().job_recipients(job_id), docs)

    @endpoint
    async def create(ctx: Ctx) -> Response:
        cfg = ctx.cfg
        raw = await read_body(ctx.request, cfg.api.max_document_bytes + JSON_SLACK)
        ctype = ctx.request.headers.get("content-type", "")
        if ctype.lower().startswith("multipart/"):
            body, files = parse_multipart(ctype, raw)
        else:
            body, files = parse_json(raw), []
        req = parse_request(body, bool(files), bool(cfg.api.fetch_allow))
        for name, _, data in files:
            if len(data) > cfg.api.max_document_bytes:
                raise ApiError(413, "request too large", {"document": {"maxLength": {
                    "message": f"{name} is larger than api.max_document_bytes "
                               f"({cfg.api.max_document_bytes} bytes)"}}})
        peer = ctx.request.client.host if ctx.request.client else None
        job_id = await creator.create(cfg, ctx.token, peer, req, files)
        return ctx.ok(await db.run(job_view, ctx, job_id), 201)

    def list_jobs(ctx: Ctx, states: tuple[str, ...]) -> Response:
        page = kazoo.page_query(ctx.request.query_params)
        rows = store().page_jobs(states=states, senders=ctx.senders,
                                 created_from=page["created_from"],
                                 created_to=page["created_to"],
                                 start_key=page["start_key"], limit=page["page_size"] + 1)
        shown, extra = kazoo.paged(rows, page, lambda j: j.id)
        data = [kazoo.fax_summary(j, store().job_recipients(j.id)) for j in shown]
        return ctx.ok(data, **extra)

    @endpoint
    async def outgoing(ctx: Ctx) -> Response:
        return await db.run(list_jobs, ctx, OUTGOING)

    @endpoint
    async def outgoing_one(ctx: Ctx) -> Response:
        # any of the account's faxes: a client following its job sees it completed
        return ctx.ok(await db.run(job_view, ctx, ctx.request.path_params["id"]))

    # ------------------------------------------------------------ outbox
    @endpoint
    async def outbox(ctx: Ctx) -> Response:
        return await db.run(list_jobs, ctx, OUT_FINAL)

    @endpoint
    async def outbox_one(ctx: Ctx) -> Response:
        return ctx.ok(await db.run(job_view, ctx, ctx.request.path_params["id"], OUT_FINAL))

    def attachment(files: list[tuple[str, str, bytes]], what: str, key: str) -> Response:
        if not files:
            raise ApiError(404, "bad_identifier", {"cause": key, "message": f"the {what} of "
                           f"{key} has no payload (deleted, or none was stored)"})
        if len(files) == 1:
            name, ctype, data = files[0]
            return Response(data, media_type=ctype,
                            headers={"Content-Disposition": f'inline; filename="{name}"'})
        boundary = secrets.token_hex(16)
        out = b""
        for name, ctype, data in files:
            out += (f"--{boundary}\r\nContent-Type: {ctype}\r\nContent-Disposition: "
                    f'attachment; filename="{name}"\r\n\r\n').encode() + data + b"\r\n"
        return Response(out + f"--{boundary}--\r\n".encode(),
                        media_type=f"multipart/mixed; boundary={boundary}")

    @endpoint
    async def outbox_attachment(ctx: Ctx) -> Response:
        job_id = ctx.request.path_params["id"]

        def docs() -> list[tuple[str, str, bytes]]:
            job_in_scope(ctx, job_id)
            return [(d.name, d.content_type, d.data) for d in store().job_documents(job_id)]
        return attachment(await db.run(docs), "fax", job_id)

    async def deleted(ctx: Ctx, run: Callable[[str], ops.Outcome]) -> Response:
        """A delete of the item in the path (`run` checks its scope and deletes it, in
        the store's thread): 409 with the operation's reason when it may not go."""
        key = ctx.request.path_params["id"]
        outcome = await db.run(run, key)
        if not outcome.ok:
            raise ApiError(409, "conflict", {"cause": key, "message": outcome.message})
        return ctx.ok({"id": key, "message": outcome.message})

    async def delete_job(ctx: Ctx, payload_only: bool) -> Response:
        def run(job_id: str) -> ops.Outcome:
            job_in_scope(ctx, job_id)
            return ops.delete_fax(store(), job_id, payload_only=payload_only,
                                  by=f"API token {ctx.token.name}")
        return await deleted(ctx, run)

    @endpoint
    async def outbox_delete(ctx: Ctx) -> Response:
        return await delete_job(ctx, False)

    @endpoint
    async def outbox_delete_attachment(ctx: Ctx) -> Response:
        return await delete_job(ctx, True)

    @endpoint
    async def outbox_action(ctx: Ctx) -> Response:
        body = parse_json(await read_body(ctx.request, JSON_SLACK))
        action = body.get("action") if isinstance(body, dict) else None
        if action != "resubmit":
            raise field_error("action", "enum", "expected \"resubmit\"", value=action)
        old_id = ctx.request.path_params["id"]

        def load() -> tuple[Any, list[Any], list[tuple[str, str, bytes]]]:
            job = job_in_scope(ctx, old_id)
            return (job, store().job_recipients(old_id),
                    [(d.name, d.content_type, d.data) for d in store().job_documents(old_id)])
        job, recipients, files = await db.run(load)
        if job.state not in OUT_FINAL:
            raise ApiError(409, "conflict", {"cause": old_id, "message": f"fax {old_id} is "
                           "still in progress; only a fax in the outbox can be resubmitted"})
        if not files:
            raise ApiError(409, "conflict", {"cause": old_id, "message": f"the payload of "
                           f"fax {old_id} was deleted: there is nothing to send again"})
        api = job.options.get("api") or {}
        data = {k: api[k] for k in ("from_name", "from_number", "retries") if k in api}
        data.update(to_number=[r.number for r in recipients], subject=job.subject or "",
                    to_name=api.get("to_name") or next(
                        (r.display_name for r in recipients if r.display_name), ""))
        if api.get("notifications"):
            data["notifications"] = api["notifications"]
        req = parse_request({"data": data}, True, False)
        peer = ctx.request.client.host if ctx.request.client else None
        new_id = await creator.create(ctx.cfg, ctx.token, peer, req, files)
        await db.run(store().add_event, old_id, "resubmitted",
                     f"resubmitted as {new_id} by API token {ctx.token.name}")
        return ctx.ok(await db.run(job_view, ctx, new_id), 201)

    # ------------------------------------------------------------ SMTP log
    @endpoint
    async def smtplog(ctx: Ctx) -> Response:
        page = kazoo.page_query(ctx.request.query_params)
        try:
            start = int(page["start_key"]) if page["start_key"] is not None else None
        except ValueError:
            raise field_error("start_key", "type", "expected a next_start_key of this "
                              "listing", value=page["start_key"]) from None
        rows = await db.run(lambda: store().page_log(
            senders=ctx.senders, created_from=page["created_from"],
            created_to=page["created_to"], start_key=start, limit=page["page_size"] + 1))
        shown, extra = kazoo.paged(rows, page, lambda r: r.id)
        return ctx.ok([kazoo.smtplog_document(r) for r in shown], **extra)

    @endpoint
    async def smtplog_one(ctx: Ctx) -> Response:
        key = ctx.request.path_params["id"]
        rec = await db.run(store().log_entry, int(key)) if key.isdigit() else None
        if rec is None or (rec.mail_from or "") not in ctx.senders:
            raise not_found("SMTP log record", key)
        return ctx.ok(kazoo.smtplog_document(rec))

    # ------------------------------------------------------------ inbox
    def fax_in_scope(ctx: Ctx, key: str, states: tuple[str, ...] | None = None) -> Any:
        fax = store().inbound(key)
        if fax is None or (ctx.topics is not None and fax.topic not in ctx.topics) or (
                states is not None and fax.state not in states):
            raise not_found("received fax", key)
        return fax

    def list_faxes(ctx: Ctx, states: tuple[str, ...] | None) -> Response:
        page = kazoo.page_query(ctx.request.query_params)
        rows = store().page_inbound(states=states, topics=ctx.topics,
                                    created_from=page["created_from"],
                                    created_to=page["created_to"],
                                    start_key=page["start_key"], limit=page["page_size"] + 1)
        shown, extra = kazoo.paged(rows, page, lambda f: f.id)
        return ctx.ok([kazoo.inbox_summary(f) for f in shown], **extra)

    def fax_view(ctx: Ctx, key: str, states: tuple[str, ...] | None = None) -> dict:
        fax = fax_in_scope(ctx, key, states)
        return kazoo.inbox_document(fax, [f.name for f in store().inbound_files(key)])

    @endpoint
    async def inbox(ctx: Ctx) -> Response:
        return await db.run(list_faxes, ctx, None)

    @endpoint
    async def inbox_one(ctx: Ctx) -> Response:
        return ctx.ok(await db.run(fax_view, ctx, ctx.request.path_params["id"]))

    @endpoint
    async def inbox_attachment(ctx: Ctx) -> Response:
        key = ctx.request.path_params["id"]

        def files() -> list[tuple[str, str, bytes]]:
            fax_in_scope(ctx, key)
            return [(f.name, f.content_type, f.data) for f in store().inbound_files(key)]
        return attachment(await db.run(files), "received fax", key)

    async def delete_fax(ctx: Ctx, payload_only: bool) -> Response:
        def run(key: str) -> ops.Outcome:
            fax_in_scope(ctx, key)
            return ops.delete_received(store(), key, payload_only=payload_only)
        return await deleted(ctx, run)

    @endpoint
    async def inbox_delete(ctx: Ctx) -> Response:
        return await delete_fax(ctx, False)

    @endpoint
    async def inbox_delete_attachment(ctx: Ctx) -> Response:
        return await delete_fax(ctx, True)

    @endpoint
    async def incoming(ctx: Ctx) -> Response:
        return await db.run(list_faxes, ctx, INCOMING)

    @endpoint
    async def incoming_one(ctx: Ctx) -> Response:
        return ctx.ok(await db.run(fax_view, ctx, ctx.request.path_params["id"], INCOMING))

    routes = [Route("/v2/api_auth", api_auth, methods=["PUT"])]
    for base in ("/v2/faxes", "/v2/accounts/{account_id}/faxes"):
        routes += [
            Route(base, create, methods=["PUT", "POST"]),
            Route(f"{base}/outgoing", create, methods=["PUT", "POST"]),
            Route(f"{base}/outgoing", outgoing, methods=["GET"]),
            Route(f"{base}/outgoing/{{id}}", outgoing_one, methods=["GET"]),
            Route(f"{base}/outbox", outbox, methods=["GET"]),
            Route(f"{base}/outbox/{{id}}/attachment", outbox_attachment, methods=["GET"]),
            Route(f"{base}/outbox/{{id}}/attachment", outbox_delete_attachment,
                  methods=["DELETE"]),
            Route(f"{base}/outbox/{{id}}", outbox_one, methods=["GET"]),
            Route(f"{base}/outbox/{{id}}", outbox_action, methods=["PUT", "POST"]),
            Route(f"{base}/outbox/{{id}}", outbox_delete, methods=["DELETE"]),
            Route(f"{base}/smtplog", smtplog, methods=["GET"]),
            Route(f"{base}/smtplog/{{id}}", smtplog_one, methods=["GET"]),
            Route(f"{base}/inbox", inbox, methods=["GET"]),
            # a received fax's id is topic/fax id: a path, so the attachment routes first
            Route(f"{base}/inbox/{{id:path}}/attachment", inbox_attachment, methods=["GET"]),
            Route(f"{base}/inbox/{{id:path}}/attachment", inbox_delete_attachment,
                  methods=["DELETE"]),
            Route(f"{base}/inbox/{{id:path}}", inbox_one, methods=["GET"]),
            Route(f"{base}/inbox/{{id:path}}", inbox_delete, methods=["DELETE"]),
            Route(f"{base}/incoming", incoming, methods=["GET"]),
            Route(f"{base}/incoming/{{id:path}}", incoming_one, methods=["GET"]),
        ]
    return routes
