"""Validation of a FaxJobRequest exactly as the Fax4A docs describe it
(Retarus sendJobRequest / Definitions pages; docs/retarus-wire.md §2.1, §5). Written independently of the client's
models on purpose: the simulator must catch our client's mistakes, not share them.
Returns a list of problems; empty means the job would be accepted."""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any

NAME_RE = re.compile(r"^[a-zA-Z0-9\-_.]{1,32}$")
CHARSETS = {"US-ASCII", "UTF-8", "UTF-16", "UTF-16BE", "UTF-16LE", "ISO-8859-1", "Windows-1252"}
PAPER = {"A4", "LETTER"}
RESOLUTION = {"LOW", "HIGH"}
OVERLAY_MODES = {"ALL_PAGES", "NO_OVERLAY", "FIRST_PAGE", "LAST_PAGE", "ALL_BUT_FIRST_PAGE",
                 "ALL_BUT_LAST_PAGE", "ALL_BUT_FIRST_AND_LAST_PAGE", "FIRST_FILE"}
IMAGE_MODES = {"NEVER", "SUCCESS_ONLY", "FAILURE_ONLY", "ALWAYS"}
IMAGE_FORMATS = {"TIFF", "PDF", "PDF_WITH_OCR"}
AUTH_METHODS = {"NONE", "HTTP_BASIC", "HTTP_DIGEST", "OAUTH2"}
TOP_KEYS = {"reference", "recipients", "documents", "transportOptions", "renderingOptions",
            "statusReportOptions", "meta"}


def _str(v: Any) -> bool:
    return isinstance(v, str)


def validate_job(body: Any) -> list[str]:
    p: list[str] = []
    if not isinstance(body, dict):
        return ["body must be a JSON object"]
    for k in body:
        if k not in TOP_KEYS:
            p.append(f"unknown field {k}")
    ref = body.get("reference")
    if ref is not None:
        if not isinstance(ref, dict):
            p.append("reference must be an object")
        else:
            for key, limit in (("customerDefinedId", 256), ("billingCode", 80),
                               ("billingInfo", 80)):
                v = ref.get(key)
                if v is not None and (not _str(v) or len(v) > limit):
                    p.append(f"reference.{key} must be a string of at most {limit} characters")
    recips = body.get("recipients")
    if not isinstance(recips, list) or not recips:
        p.append("recipients is required and must not be empty")
    else:
        for i, r in enumerate(recips):
            if not isinstance(r, dict) or not _str(r.get("number")) or not r["number"].strip():
                p.append(f"recipients[{i}].number is required")
                continue
            if not re.fullmatch(r"\+?[0-9 ()/.\-]{3,32}", r["number"]):
                p.append(f"recipients[{i}].number is not a dialable number")
            for j, prop in enumerate(r.get("properties") or []):
                if not isinstance(prop, dict) or not _str(prop.get("key")) \
                        or not _str(prop.get("value")):
                    p.append(f"recipients[{i}].properties[{j}] needs string key and value")
    docs = body.get("documents")
    if docs is not None and not isinstance(docs, list):
        p.append("documents must be an array")
        docs = None
    for i, d in enumerate(docs or []):
        if not isinstance(d, dict):
            p.append(f"documents[{i}] must be an object")
            continue
        name = d.get("name")
        if not _str(name) or not NAME_RE.match(name):
            p.append(f"documents[{i}].name {name!r}: at most 32 characters of a-zA-Z0-9-_.")
        cs = d.get("charset")
        if cs is not None and cs not in CHARSETS:
            p.append(f"documents[{i}].charset {cs!r} is not one of {sorted(CHARSETS)}")
        data, refurl = d.get("data"), d.get("reference")
        if not data and not refurl:
            p.append(f"documents[{i}] needs data or reference")
        if data:
            try:
                base64.b64decode(data, validate=True)
            except (binascii.Error, ValueError, TypeError):
                p.append(f"documents[{i}].data is not valid base64")
    ro = body.get("renderingOptions") or {}
    if not isinstance(ro, dict):
        p.append("renderingOptions must be an object")
        ro = {}
    if ro.get("paperFormat") is not None and ro["paperFormat"] not in PAPER:
        p.append(f"renderingOptions.paperFormat {ro['paperFormat']!r} not in {sorted(PAPER)}")
    if ro.get("resolution") is not None and ro["resolution"] not in RESOLUTION:
        p.append(f"renderingOptions.resolution {ro['resolution']!r} not in {sorted(RESOLUTION)}")
    ov = ro.get("overlay")
    if ov is not None and (not isinstance(ov, dict) or not _str(ov.get("name"))
                           or ov.get("mode") not in OVERLAY_MODES):
        p.append("renderingOptions.overlay needs a name and a valid mode")
    if ro.get("header") is not None and not _str(ro["header"]):
        p.append("renderingOptions.header must be a string")
    if not docs and not ro.get("coverpageTemplate"):
        p.append("no document and no cover page: the job cannot be accepted")
    to = body.get("transportOptions") or {}
    if to.get("csid") is not None and (not _str(to["csid"]) or len(to["csid"]) > 20):
        p.append("transportOptions.csid must be at most 20 characters")
    for flag in ("isExpress", "isBlacklistEnabled"):
        if to.get(flag) is not None and not isinstance(to[flag], bool):
            p.append(f"transportOptions.{flag} must be a boolean")
    sro = body.get("statusReportOptions") or {}
    rm = sro.get("reportMail")
    if rm:
        if rm.get("attachedFaxImageMode") not in (None, *IMAGE_MODES):
            p.append("statusReportOptions.reportMail.attachedFaxImageMode is invalid")
        if rm.get("attachedFaxImageFormat") not in (None, *IMAGE_FORMATS):
            p.append("statusReportOptions.reportMail.attachedFaxImageFormat is invalid")
    push = sro.get("httpStatusPush")
    if push:
        if not _str(push.get("targetUrl")):
            p.append("statusReportOptions.httpStatusPush.targetUrl is required")
        if push.get("authMethod") not in (None, *AUTH_METHODS):
            p.append("statusReportOptions.httpStatusPush.authMethod is invalid")
    meta = body.get("meta")
    if meta is not None:
        if not isinstance(meta, dict) or not _str(meta.get("customerReference")):
            p.append("meta.customerReference is required inside meta")
        else:
            start = (meta.get("jobValid") or {}).get("start")
            if start is not None and not re.search(r"(Z|[+-]\d\d:?\d\d)$", str(start)):
                p.append("meta.jobValid.start must carry a time zone")
    return p


def page_count(body: dict[str, Any]) -> int:
    """Rough page count: PDF page objects, else one page per document."""
    pages = 0
    for d in body.get("documents") or []:
        try:
            raw = base64.b64decode(d.get("data") or "")
        except (binascii.Error, ValueError):
            raw = b""
        n = len(re.findall(rb"/Type\s*/Page(?!s)", raw)) if raw.startswith(b"%PDF") else 0
        pages += max(1, n)
    if (body.get("renderingOptions") or {}).get("coverpageTemplate"):
        pages += 1
    return pages
