"""Fetching a Faxes API document URL: only under `api.fetch_allow`, streamed, cut
off over `api.max_document_bytes` and after `api.fetch_timeout_seconds` in all.

A failure is the document's processing state `failed` with "could not retrieve
file, http response …" (docs/kazoo-faxes-api.md, "Processing States")."""

from __future__ import annotations

import asyncio
import posixpath
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx

from faxbridge.config import ApiConfig


class FetchFailed(Exception):
    """The document could not be had; the message is the job's error."""


@dataclass(frozen=True)
class Fetched:
    name: str
    content_type: str
    data: bytes


def allowed(cfg: ApiConfig, url: str) -> bool:
    """Whether the bridge may fetch `url`: it starts with one of the configured
    prefixes (compared on the URL as given: no redirect is followed)."""
    return any(url.startswith(prefix) for prefix in cfg.fetch_allow)


def _failed(status: int | str, why: str = "") -> FetchFailed:
    return FetchFailed(f"could not retrieve file, http response {status}"
                       + (f": {why}" if why else ""))


async def fetch_document(cfg: ApiConfig, document: dict[str, Any]) -> Fetched:
    """GET (or POST `document.content`) the URL; raises FetchFailed."""
    try:
        return await asyncio.wait_for(_fetch(cfg, document), cfg.fetch_timeout_seconds)
    except TimeoutError:
        raise _failed("none", f"no complete answer within {cfg.fetch_timeout_seconds:g} s "
                              "(api.fetch_timeout_seconds)") from None


async def _fetch(cfg: ApiConfig, document: dict[str, Any]) -> Fetched:
    url = document["url"]
    method = str(document.get("method") or "get").upper()
    headers = {k: str(document[f]) for k, f in (("Host", "host"), ("Referer", "referer"))
               if document.get(f)}
    content: bytes | None = None
    if method == "POST":
        content = str(document.get("content") or "").encode()
        if document.get("content_type"):
            headers["Content-Type"] = str(document["content_type"])
    limit = cfg.max_document_bytes
    # Redirects are not followed: the next hop could be outside api.fetch_allow.
    async with httpx.AsyncClient(follow_redirects=False, trust_env=False,
                                 timeout=cfg.fetch_timeout_seconds) as client:
        try:
            async with client.stream(method, url, headers=headers, content=content) as resp:
                if resp.status_code != 200:
                    raise _failed(resp.status_code)
                declared = resp.headers.get("content-length", "")
                if declared.isdigit() and int(declared) > limit:
                    raise _failed(200, f"the document has {declared} bytes, more than "
                                       f"api.max_document_bytes ({limit})")
                chunks, size = [], 0
                async for chunk in resp.aiter_bytes():
                    size += len(chunk)
                    if size > limit:
                        raise _failed(200, f"the document is larger than "
                                           f"api.max_document_bytes ({limit} bytes)")
                    chunks.append(chunk)
                ctype = resp.headers.get("content-type", "application/octet-stream")
        except httpx.HTTPError as exc:
            raise _failed("none", f"{type(exc).__name__}: {exc}") from None
    if not size:
        raise _failed(200, "the document is empty")
    name = posixpath.basename(unquote(urlsplit(url).path)) or "document"
    return Fetched(name, ctype.split(";")[0].strip().lower(), b"".join(chunks))
