"""The HTTP boundary: httpx and Retarus status codes → Transient / Permanent / AuthError.

Status codes per docs/retarus-wire.md §2.7: 400/404/409 permanent; 401/403 authentication;
429, 5xx and Retarus' 520 UNKNOWN_ERROR transient. The send page documents 400/401 bodies
as JSON `{"code", "message"}`, the report pages document "No Content": an error may come
with either (or with any text), so the body is read when there is one and never required.
"""

from __future__ import annotations

import email.utils
import json
import time
from typing import TypeVar

import httpx

from faxbridge.errors import AuthError, NotFound, Permanent, Transient

T = TypeVar("T")


def retry_after(resp: httpx.Response) -> float | None:
    """Retry-After as seconds: delta-seconds or HTTP-date (RFC 9110 §10.2.3)."""
    value = resp.headers.get("Retry-After")
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def error_message(resp: httpx.Response) -> str | None:
    """The server's reason for an error answer: the `message` of a JSON
    `{"code", "message"}` body (sendJobRequest), else a short plain-text body, else
    None (an empty body, as the report pages document, or an HTML error page)."""
    if not resp.content:
        return None
    text = resp.text.strip()
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if isinstance(data, dict):
        msg = data.get("message")
        if msg is None:
            return None
        return str(msg).strip()[:500] or None
    if data is not None or text.startswith("<"):
        return None  # JSON of another shape, or a proxy's HTML page: nothing to quote
    return text[:200] or None


def check(resp: httpx.Response, what: str) -> httpx.Response:
    """Raise the project's error kind for a non-2xx response."""
    code = resp.status_code
    if 200 <= code < 300:
        return resp
    reason = error_message(resp)
    detail = f"{what}: HTTP {code}" + (f": {reason}" if reason else "")
    if code in (401, 403):
        raise AuthError(detail + " — credentials refused", status=code, reason=reason)
    if code == 404:
        raise NotFound(detail, status=code, reason=reason)
    if code == 429 or code >= 500:
        raise Transient(detail, status=code, retry_after=retry_after(resp), reason=reason)
    raise Permanent(detail, status=code, reason=reason)


async def request(client: httpx.AsyncClient, method: str, url: str, what: str,
                  **kwargs: object) -> httpx.Response:
    """One HTTP call with library exceptions mapped to Transient."""
    try:
        resp = await client.request(method, url, **kwargs)  # type: ignore[arg-type]
    except httpx.TimeoutException as exc:
        raise Transient(f"{what}: timeout ({type(exc).__name__})") from exc
    except httpx.TransportError as exc:
        raise Transient(f"{what}: connection failed ({type(exc).__name__}: {exc})") from exc
    return check(resp, what)
