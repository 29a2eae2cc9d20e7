"""Validation of a FaxJobRequest exactly as the Fax4A docs describe it
(Retarus sendJobRequest / Definitions pages; docs/retarus-wire.md §2.1, §5). Written independently of the client's
models on purpose: the simulator must catch our client's mistakes, not share them.
Returns a list of problems; empty means the job would be accepted.

Only what the pages document is refused. Fields the pages do not list are tolerated,
at the top level as inside objects (the pages say nothing about unknown fields, and
the official SDKs send fields of their own, e.g. recipients[].alternativeNumbers), and
`null` is taken as absent for optional fields (the Java SDK sends explicit nulls).
Where a check is our reading of a page rather than its words, it says GUESS."""

from __future__ import annotations

import base64
import binascii
import re
from datetime import datetime
from typing import Any

NAME_RE = re.compile(r"^[a-zA-Z0-9\-_.]{1,32}$")
CHARSETS = {"US-ASCII", "UTF-8", "UTF-16", "UTF-16BE", "UTF-16LE", "ISO-8859-1", "Windows-1252"}
# Charset names are case-insensitive (RFC 2978); the official SDKs send "utf-8" and
# "WINDOWS-1252", so the page's spelling is not the only one accepted.
CHARSETS_FOLDED = {c.casefold() for c in CHARSETS}
# Enums as tuples, not sets: `in` then compares, so a list or object sent as a value
# is a plain mismatch instead of an unhashable-type error.
PAPER = ("A4", "LETTER")
RESOLUTION = ("LOW", "HIGH")
OVERLAY_MODES = ("ALL_PAGES", "NO_OVERLAY", "FIRST_PAGE", "LAST_PAGE", "ALL_BUT_FIRST_PAGE",
                 "ALL_BUT_LAST_PAGE", "ALL_BUT_FIRST_AND_LAST_PAGE", "FIRST_FILE")
IMAGE_MODES = ("NEVER", "SUCCESS_ONLY", "FAILURE_ONLY", "ALWAYS")
IMAGE_FORMATS = ("TIFF", "PDF", "PDF_WITH_OCR")
AUTH_METHODS = ("NONE", "HTTP_BASIC", "HTTP_DIGEST", "OAUTH2")
# meta.jobValid: "ISO 8601 format" (start, end), end "also durations ... PT80M"; the
# OpenAPI formats "date-time" and "duration" are RFC 3339's, whose date-time carries
# a time zone (the send page: a start without one is refused).
DATE_TIME_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d(:\d\d(\.\d+)?)?(Z|[+-]\d\d:?\d\d)$",
                          re.IGNORECASE)
DURATION_RE = re.compile(r"^P(?!$)(\d+Y)?(\d+M)?(\d+W)?(\d+D)?"
                         r"(T(?=\d)(\d+H)?(\d+M)?(\d+(\.\d+)?S)?)?$", re.IGNORECASE)


def _str(v: Any) -> bool:
    return isinstance(v, str)


def _obj(body: dict[str, Any], key: str, where: str, p: list[str]) -> dict[str, Any]:
    """An optional object field: {} when absent or null, a problem when not an object."""
    v = body.get(key)
    if v is None:
        return {}
    if not isinstance(v, dict):
        p.append(f"{where} must be an object")
        return {}
    return v


def _date_time(v: Any) -> bool:
    if not _str(v) or not DATE_TIME_RE.match(v):
        return False
    try:  # the numbers must make a real date and time, not only the right shape
        datetime.fromisoformat(v.upper().replace("Z", "+00:00"))
    except ValueError:
        return False
    return True


def job_valid_problems(jv: dict[str, Any]) -> list[str]:
    """"If this data is not defined correctly, you will receive a Job Expiration error."
    Only the format is checked: whether Retarus also refuses an end in the past or
    before the start is not documented (GUESS: not refused here)."""
    p = []
    start, end = jv.get("start"), jv.get("end")
    if start is not None and not _date_time(start):
        p.append(f"Job Expiration error: meta.jobValid.start {start!r} is not an ISO 8601 "
                 "date-time with a time zone")
    if end is not None and not (_date_time(end) or (_str(end) and DURATION_RE.match(end))):
        p.append(f"Job Expiration error: meta.jobValid.end {end!r} is neither an ISO 8601 "
                 "date-time with a time zone nor a duration such as PT80M")
    return p


def validate_job(body: Any) -> list[str]:
    p: list[str] = []
    if not isinstance(body, dict):
        return ["body must be a JSON object"]
    ref = _obj(body, "reference", "reference", p)
    for key, limit in (("customerDefinedId", 256), ("billingCode", 80), ("billingInfo", 80)):
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
            # GUESS: the page says only "Dialed number (international format)"; digits
            # with an optional + and common separators is our reading of "dialed".
            if not re.fullmatch(r"\+?[0-9 ()/.\-]{3,32}", r["number"]):
                p.append(f"recipients[{i}].number is not a dialable number")
            props = r.get("properties")
            if props is not None and not isinstance(props, list):
                p.append(f"recipients[{i}].properties must be an array")
                props = None
            for j, prop in enumerate(props or []):
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
        if cs is not None and (not _str(cs) or cs.casefold() not in CHARSETS_FOLDED):
            p.append(f"documents[{i}].charset {cs!r} is not one of {sorted(CHARSETS)}")
        data, refurl = d.get("data"), d.get("reference")
        if not data and not refurl:
            p.append(f"documents[{i}] needs data or reference")
        if data:  # "If both are provided, the reference data is used": both is no error
            try:
                base64.b64decode(data, validate=True)
            except (binascii.Error, ValueError, TypeError):
                p.append(f"documents[{i}].data is not valid base64")
    ro = _obj(body, "renderingOptions", "renderingOptions", p)
    # "renderingOptions.paperFormat (string,null, required)": when renderingOptions is
    # sent, paperFormat must be in it; the documented type admits null (our reading:
    # present but null is accepted, absent is refused).
    if isinstance(body.get("renderingOptions"), dict) and "paperFormat" not in ro:
        p.append("renderingOptions.paperFormat is required when renderingOptions is sent "
                 f"(one of {sorted(PAPER)})")
    elif ro.get("paperFormat") is not None and ro["paperFormat"] not in PAPER:
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
    to = _obj(body, "transportOptions", "transportOptions", p)
    if to.get("csid") is not None and (not _str(to["csid"]) or len(to["csid"]) > 20):
        p.append("transportOptions.csid must be at most 20 characters")
    for flag in ("isExpress", "isBlacklistEnabled"):
        if to.get(flag) is not None and not isinstance(to[flag], bool):
            p.append(f"transportOptions.{flag} must be a boolean")
    sro = _obj(body, "statusReportOptions", "statusReportOptions", p)
    rm = _obj(sro, "reportMail", "statusReportOptions.reportMail", p)
    if rm:
        if rm.get("attachedFaxImageMode") not in (None, *IMAGE_MODES):
            p.append("statusReportOptions.reportMail.attachedFaxImageMode is invalid")
        if rm.get("attachedFaxImageFormat") not in (None, *IMAGE_FORMATS):
            p.append("statusReportOptions.reportMail.attachedFaxImageFormat is invalid")
    push = _obj(sro, "httpStatusPush", "statusReportOptions.httpStatusPush", p)
    if isinstance(sro.get("httpStatusPush"), dict):
        if not _str(push.get("targetUrl")):
            p.append("statusReportOptions.httpStatusPush.targetUrl is required")
        if push.get("authMethod") not in (None, *AUTH_METHODS):
            p.append("statusReportOptions.httpStatusPush.authMethod is invalid")
    meta = _obj(body, "meta", "meta", p)
    # meta.customerReference: not on the send page (only the older SAP swagger and the
    # Go SDK have it, as required); a string if sent, never demanded here.
    if meta.get("customerReference") is not None and not _str(meta["customerReference"]):
        p.append("meta.customerReference must be a string")
    p += job_valid_problems(_obj(meta, "jobValid", "meta.jobValid", p))
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
