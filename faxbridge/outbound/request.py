"""Build the FaxJobRequest for a job (pure). Document data is kept out of the
stored request and added from job_documents at submit time, as a body that is
base64-encoded while it is sent (never whole in memory)."""

from __future__ import annotations

import json
import secrets
from typing import Any

from faxbridge.config import Config, SenderRule
from faxbridge.retarus.body import Body
from faxbridge.retarus.models import FaxJobRequest


def request_skeleton(cfg: Config, rule: SenderRule, job_id: str, header: str,
                     recipients: list[tuple[str, str | None]],
                     push_url: str | None = None) -> dict[str, Any]:
    """Everything but the documents. `recipients` = [(e164, display name)]."""
    opts = rule.options
    req: dict[str, Any] = {
        # The bridge's own id travels as customerDefinedId so a job caught by a
        # crash between POST and commit can be found again (docs/retarus-wire.md §2.1: customerDefinedId).
        "reference": {"customerDefinedId": job_id},
        "recipients": [
            {"number": num, **({"properties": [{"key": "ToName", "value": name[:100]}]}
                               if name else {})}
            for num, name in recipients],
        "transportOptions": {"isExpress": opts.express,
                             "isBlacklistEnabled": opts.blacklist},
        "renderingOptions": {"paperFormat": opts.paper_format or cfg.fax.paper_format,
                             "resolution": opts.resolution or cfg.fax.resolution},
    }
    if rule.billing_code:
        req["reference"]["billingCode"] = rule.billing_code
    csid = opts.csid or cfg.fax.csid
    if csid:
        req["transportOptions"]["csid"] = csid
    if header:
        req["renderingOptions"]["header"] = header
    cover = opts.cover_page_template or cfg.fax.cover_page_template
    if cover:
        req["renderingOptions"]["coverpageTemplate"] = cover
    if push_url:
        push: dict[str, Any] = {"targetUrl": push_url, "authMethod": "HTTP_BASIC",
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
