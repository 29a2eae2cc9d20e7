"""The HTTP boundary: httpx and Retarus status codes → Transient / Permanent / AuthError.

Status codes per docs/retarus-wire.md §2.7: 400/404/409 permanent; 401/403 authentication;
429, 5xx and Retarus' 520 UNKNOWN_ERROR transient. Error bodies are documented as
"No Content", so nothing here requires a body.
"""

from __future__ import annotations

import email.utils
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


def check(resp: httpx.Response, what: str) -> httpx.Response:
    """Raise the project's error kind for a non-2xx response."""
    code = resp.status_code
    if 200 <= code < 300:
        return resp
    body = resp.text[:200].strip() if resp.content else ""
    detail = f"{what}: HTTP {code}" + (f" ({body})" if body else "")
    if code in (401, 403):
        raise AuthError(detail + " — credentials refused", status=code)
    if code == 404:
        raise NotFound(detail, status=code)
    if code == 429 or code >= 500:
        raise Transient(detail, status=code, retry_after=retry_after(resp))
    raise Permanent(detail, status=code)


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
