"""Build the FaxJobRequest for a job (pure), at submission time, from the stored job.

At accept time only the sender rule's resolved fax options are stored with the job
(`fax_options`); the request is built when the job is sent (`job_request`), so what
belongs to the running bridge (the status push URL) is current, and the store keeps
facts rather than a serialised request. Document data is added from job_documents
at submit time, as a body that is base64-encoded while it is sent (never whole in
memory)."""

from __future__ import annotations

import json
import secrets
from collections.abc import Sequence
from typing import Any

from faxbridge.config import Config, SenderRule
from faxbridge.retarus.body import Body
from faxbridge.retarus.models import FaxJobRequest
from faxbridge.store.rows import Job, JobRecipient


def fax_options(cfg: Config, rule: SenderRule) -> dict[str, Any]:
    """The options a job is sent with, fixed when it is accepted: the rule's own,
    else the fax section's (a later config change does not alter an accepted job)."""
    opts = rule.options
    return {"billing_code": rule.billing_code, "express": opts.express,
            "blacklist": opts.blacklist,
            "paper_format": opts.paper_format or cfg.fax.paper_format,
            "resolution": opts.resolution or cfg.fax.resolution,
            "csid": opts.csid or cfg.fax.csid or None,
            "cover_page_template": opts.cover_page_template or cfg.fax.cover_page_template}


def job_request(cfg: Config, job: Job, recipients: Sequence[JobRecipient],
                push_url: str | None = None) -> dict[str, Any]:
    """The FaxJobRequest of a stored job, everything but the documents: its options,
    header and recipients (number, display name) as stored, the push URL as now."""
    opts = job.options
    req: dict[str, Any] = {
        # The bridge's own id travels as customerDefinedId so a job caught by a
        # crash between POST and commit can be found again (docs/retarus-wire.md §2.1: customerDefinedId).
        "reference": {"customerDefinedId": job.id},
        "recipients": [
            {"number": r.number,
             **({"properties": [{"key": "ToName", "value": r.display_name[:100]}]}
                if r.display_name else {})}
            for r in recipients],
        "transportOptions": {"isExpress": bool(opts.get("express")),
                             "isBlacklistEnabled": bool(opts.get("blacklist", True))},
        # a row migrated from a stored request always has both; the fallback is for safety
        "renderingOptions": {"paperFormat": opts.get("paper_format") or cfg.fax.paper_format,
                             "resolution": opts.get("resolution") or cfg.fax.resolution},
    }
    if opts.get("billing_code"):
        req["reference"]["billingCode"] = opts["billing_code"]
    if opts.get("csid"):
        req["transportOptions"]["csid"] = opts["csid"]
    if job.header:
        req["renderingOptions"]["header"] = job.header
    if opts.get("cover_page_template"):
        req["renderingOptions"]["coverpageTemplate"] = opts["cover_page_template"]
    if push_url:
        auth_method = {"basic": "HTTP_BASIC", "digest": "HTTP_DIGEST"}[cfg.retarus.push_auth]
        push: dict[str, Any] = {"targetUrl": push_url, "authMethod": auth_method,
                                "principal": cfg.retarus.push_username}
        req["statusReportOptions"] = {"httpStatusPush": push}
    return req


def _with_documents(skeleton: dict[str, Any], documents: list[tuple[str, str | None, str]],
                    push_password: str | None) -> dict[str, Any]:
    body = dict(skeleton)
    body["documents"] = [{"name": name, **({"charset": charset} if charset else {}),
                          "data": data} for name, charset, data in documents]
    push = (body.get("statusReportOptions") or {}).get("httpStatusPush")
    if push is not None and push_password:
        body["statusReportOptions"] = {
            "httpStatusPush": {**push, "credentials": push_password}}
    return body


def submission_body(skeleton: dict[str, Any], documents: list[tuple[str, str | None, bytes]],
                    push_password: str | None = None) -> Body:
    """Validate the request as FaxJobRequest (with a stand-in for each document's
    data) and cut its JSON where the data goes. Raises pydantic's ValidationError."""
    nonce = secrets.token_hex(8)
    # an empty document keeps its empty data, so the model refuses it as before
    marks = [f"fb-data-{nonce}-{i}" if d else "" for i, (_, _, d) in enumerate(documents)]
    req = FaxJobRequest.model_validate(_with_documents(
        skeleton, [(n, c, m) for (n, c, _), m in zip(documents, marks, strict=True)],
        push_password))
    text = json.dumps(req.wire(), separators=(",", ":"))
    pieces = []
    for mark in marks:
        head, sep, text = text.partition(f'"{mark}"')
        assert sep, "document placeholder missing from the serialised request"
        pieces.append(head.encode())
    pieces.append(text.encode())
    return Body(tuple(pieces), tuple(d for _, _, d in documents))
