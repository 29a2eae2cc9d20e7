"""The Faxes API's shapes (docs/kazoo-faxes-api.md): answer envelopes, Kazoo's
error shape, our rows as Kazoo fax documents, and the paging parameters.

Pure functions of rows and query parameters, so the routes stay a mapping of
requests to operations."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from starlette.responses import JSONResponse

from faxbridge.store.rows import InboundFax, Job, JobRecipient, LogEntry

# Kazoo gives times in Gregorian seconds (seconds since 0001-01-01, as Erlang's
# calendar module): the Unix epoch is this many of them.
GREGORIAN_OFFSET = 62167219200
PAGE_SIZE_DEFAULT = 50
PAGE_SIZE_MAX = 1000
UNPAGED_MAX = 10000  # paginate=false: everything, up to this many

# Our job states as the document's processing states. `held` waits for an
# administrator and may still go out: pending, with our own state next to it.
STATUS = {"queued": "pending", "deferred": "pending", "held": "pending",
          "submitting": "processing", "submitted": "processing",
          "done": "completed", "failed": "failed"}


class ApiError(Exception):
    """An answer in Kazoo's error shape: `data` names the field that is wrong."""

    def __init__(self, code: int, message: str, data: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.data = code, message, data or {}


def field_error(field: str, kind: str, message: str, code: int = 400,
                value: Any = None) -> ApiError:
    """`{"data": {field: {kind: {"message": …}}}, "error": "400", "message":
    "invalid data", …}`; `field` may be dotted (document.url)."""
    detail: dict[str, Any] = {"message": message}
    if value is not None:
        detail["value"] = value
    return ApiError(code, "invalid data" if code == 400 else message,
                    {field: {kind: detail}})


def new_request_id() -> str:
    return uuid.uuid4().hex


def error_response(err: ApiError, request_id: str, auth_token: str | None = None
                   ) -> JSONResponse:
    body: dict[str, Any] = {"data": err.data, "error": str(err.code), "message": err.message,
                            "status": "error", "request_id": request_id}
    if auth_token:
        body["auth_token"] = auth_token
    return JSONResponse(body, status_code=err.code, headers={"X-Request-ID": request_id})


def success(data: Any, request_id: str, auth_token: str | None, code: int = 200,
            **extra: Any) -> JSONResponse:
    body: dict[str, Any] = {"data": data, **extra, "status": "success",
                            "request_id": request_id}
    if auth_token:
        body["auth_token"] = auth_token
    return JSONResponse(body, status_code=code, headers={"X-Request-ID": request_id})


def greg(t: float | None) -> int | None:
    return None if t is None else int(t) + GREGORIAN_OFFSET


def unix(g: int) -> float:
    return float(g - GREGORIAN_OFFSET)


# ------------------------------------------------------------------ paging
def page_query(q: Mapping[str, str]) -> dict[str, Any]:
    """page_size, start_key, created_from, created_to (Gregorian seconds) and
    paginate=false, checked; the store's arguments (limit is one more than shown)."""
    out: dict[str, Any] = {"start_key": q.get("start_key") or None}
    unpaged = q.get("paginate", "").lower() == "false"
    size = PAGE_SIZE_DEFAULT if not unpaged else UNPAGED_MAX
    if "page_size" in q and not unpaged:
        try:
            size = int(q["page_size"])
        except ValueError:
            size = 0
        if not 1 <= size <= PAGE_SIZE_MAX:
            raise field_error("page_size", "type", f"expected a whole number from 1 to "
                              f"{PAGE_SIZE_MAX}", value=q["page_size"])
    out["page_size"], out["unpaged"] = size, unpaged
    for key in ("created_from", "created_to"):
        if key in q:
            try:
                out[key] = unix(int(q[key]))
            except ValueError:
                raise field_error(key, "type", "expected Gregorian seconds (seconds since "
                                  "0001-01-01, as `created` shows them)", value=q[key]) from None
        else:
            out[key] = None
    return out


def paged(items: list[Any], page: dict[str, Any], key: Any) -> tuple[list[Any], dict[str, Any]]:
    """The page to show and the envelope's paging keys: page_size (items shown),
    start_key (when given) and next_start_key whenever more items remain."""
    shown = items[:page["page_size"]]
    extra: dict[str, Any] = {"page_size": len(shown)}
    if page["start_key"] is not None:
        extra["start_key"] = page["start_key"]
    if len(items) > len(shown) and not page["unpaged"]:
        extra["next_start_key"] = str(key(items[len(shown)]))
    return shown, extra


# ------------------------------------------------------------------ views
def _numbers(recipients: list[JobRecipient]) -> str | list[str]:
    nums = [r.number for r in recipients]
    return nums[0] if len(nums) == 1 else nums


def tx_result(job: Job, recipients: list[JobRecipient]) -> dict[str, Any]:
    errors = [f"{r.number}: {r.status} {r.reason or ''}".strip() for r in recipients
              if r.status and r.status.upper() != "OK"]
    return {"error_message": job.last_error or "; ".join(errors),
            "fax_bad_rows": 0, "fax_error_correction": False,
            "fax_receiver_id": next((r.remote_csid for r in recipients if r.remote_csid), ""),
            "fax_speed": 0,
            "pages_sent": max((r.pages or 0 for r in recipients), default=0),
            "success": job.state == "done" and bool(recipients)
            and all((r.status or "").upper() == "OK" for r in recipients),
            "time_elapsed": sum(r.duration or 0 for r in recipients)}


def fax_summary(job: Job, recipients: list[JobRecipient]) -> dict[str, Any]:
    api = job.options.get("api") or {}
    return {"id": job.id, "created": greg(job.created), "status": STATUS.get(job.state, job.state),
            "from": api.get("from_number") or job.sender, "to": _numbers(recipients),
            "subject": job.subject or ""}


def fax_document(job: Job, recipients: list[JobRecipient],
                 documents: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """A job as the document's fax document, with our own facts under `faxbridge`."""
    api = job.options.get("api") or {}
    out: dict[str, Any] = {
        "id": job.id, "created": greg(job.created), "status": STATUS.get(job.state, job.state),
        "to_number": _numbers(recipients),
        "to_name": api.get("to_name") or next((r.display_name for r in recipients
                                               if r.display_name), ""),
        "from_name": api.get("from_name", ""), "from_number": api.get("from_number", ""),
        "retries": api.get("retries", 1), "attempts": job.attempts,
        "subject": job.subject or "",
        "tx_result": tx_result(job, recipients),
        "faxbridge": {"state": job.state, "sender": job.sender, "rule": job.rule,
                      "source": "api" if api else "smtp", "last_error": job.last_error,
                      "recipients": [{"number": r.number, "status": r.status,
                                      "reason": r.reason, "pages": r.pages}
                                     for r in recipients]},
    }
    if api.get("document"):
        out["document"] = api["document"]
    if api.get("notifications"):
        out["notifications"] = api["notifications"]
    if job.state in ("done", "failed"):
        out["delivered"] = greg(job.updated)
    if documents is not None:
        out["faxbridge"]["documents"] = documents
        out["faxbridge"]["payload_deleted"] = not documents
    return out


def inbox_document(fax: InboundFax, files: list[str] | None = None) -> dict[str, Any]:
    meta = fax.metadata
    out: dict[str, Any] = {
        "id": fax.id, "created": greg(fax.created),
        "from_number": str(meta.get("callingNumber") or ""),
        "to_number": str(meta.get("calledNumber") or ""),
        "from_name": str(meta.get("remoteCsid") or ""),
        "rx_result": {"pages_received": meta.get("pages") or 0,
                      "success": True, "error_message": ""},
        "faxbridge": {"state": fax.state, "topic": fax.topic, "fax_id": fax.fax_id,
                      "acked": bool(fax.acked), "delivered_to": fax.delivered_to,
                      "last_error": fax.last_error, "metadata": meta},
    }
    if files is not None:
        out["faxbridge"]["files"] = files
        out["faxbridge"]["payload_deleted"] = not files
    return out


def inbox_summary(fax: InboundFax) -> dict[str, Any]:
    meta = fax.metadata
    return {"id": fax.id, "created": greg(fax.created),
            "from": str(meta.get("callingNumber") or ""), "to": str(meta.get("calledNumber") or ""),
            "status": fax.state}


def smtplog_document(rec: LogEntry) -> dict[str, Any]:
    import json
    return {"id": str(rec.id), "created": greg(rec.ts), "from": rec.mail_from or "",
            "to": [r.get("address") for r in json.loads(rec.recipients_json)],
            "subject": rec.subject or "", "fax_id": rec.job_id, "ok": bool(rec.ok),
            "reply": rec.reply or "", "peer": rec.peer, "auth_user": rec.auth_user,
            "recipients": json.loads(rec.recipients_json), "parts": json.loads(rec.parts_json),
            "message_id": rec.message_id, "size": rec.size}
