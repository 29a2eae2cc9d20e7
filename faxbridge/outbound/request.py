"""Build the FaxJobRequest for a job (pure). Document data is kept out of the
stored request and added from job_documents at submit time."""

from __future__ import annotations

import base64
from typing import Any

from faxbridge.config import Config, SenderRule
from faxbridge.retarus.models import FaxJobRequest


def request_skeleton(cfg: Config, rule: SenderRule, job_id: str, header: str,
                     recipients: list[tuple[str, str | None]],
                     push_url: str | None = None) -> dict[str, Any]:
    """Everything but the documents. `recipients` = [(e164, display name)]."""
    opts = rule.options
    req: dict[str, Any] = {
        # The bridge's own id travels as customerDefinedId so a job caught by a
        # crash between POST and commit can be found again (DESIGN.md "No duplicates").
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


def full_request(skeleton: dict[str, Any], documents: list[tuple[str, str | None, bytes]],
                 push_password: str | None = None) -> FaxJobRequest:
    """Add base64 document data (and the push secret, never stored) and validate."""
    body = dict(skeleton)
    body["documents"] = [
        {"name": name, **({"charset": charset} if charset else {}),
         "data": base64.b64encode(data).decode("ascii")}
        for name, charset, data in documents]
    push = (body.get("statusReportOptions") or {}).get("httpStatusPush")
    if push is not None and push_password:
        body["statusReportOptions"] = {
            "httpStatusPush": {**push, "credentials": push_password}}
    return FaxJobRequest.model_validate(body)
