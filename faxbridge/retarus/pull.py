"""Fax2WSPull client (docs/retarus-wire.md §3; Retarus Fax2WSPull page).

A fetch locks the returned faxes (60 s by default); they are acknowledged by
passing their ids to the next call — the `next` URL (ack + fetch more) or the
`exit` URL (ack only, fetch=0). Anything not acknowledged comes back.
"""

from __future__ import annotations

from collections.abc import Sequence

import httpx

from faxbridge.retarus.http import request
from faxbridge.retarus.models import PullResponse


class PullClient:
    def __init__(self, base_url: str, customer_number: str, password: str,
                 timeout: float = 30.0, client: httpx.AsyncClient | None = None) -> None:
        self.base = base_url.rstrip("/")
        # fax2ws-pull.md: Basic auth is "<Retarus Customer Number>:<Password>".
        self.http = client or httpx.AsyncClient(
            auth=httpx.BasicAuth(customer_number, password),
            timeout=httpx.Timeout(timeout, connect=min(10.0, timeout)))

    async def aclose(self) -> None:
        await self.http.aclose()

    def topic_url(self, topic: str) -> str:
        return f"{self.base}/topics/{topic}"

    async def poll(self, topic: str, fetch: int, ack_ids: Sequence[str] = ()) -> PullResponse:
        """POST /topics/{topic}?fetch=N[&ids=a,b]: ack `ack_ids`, fetch up to N more."""
        params: dict[str, str | int] = {"fetch": fetch}
        if ack_ids:
            params["ids"] = ",".join(ack_ids)
        resp = await request(self.http, "POST", self.topic_url(topic), f"poll topic {topic}",
                             params=params, json={})
        return PullResponse.model_validate_json(resp.content)

    async def follow(self, url: str, what: str = "follow") -> PullResponse:
        """Call a `next` or `exit` URL as given by the server (it carries the ids)."""
        resp = await request(self.http, "POST", url, f"pull {what}", json={})
        return PullResponse.model_validate_json(resp.content)

    async def download(self, url: str) -> tuple[bytes, str]:
        """GET /files/{id}.{ext}: raw bytes and the content type (may be absent)."""
        resp = await request(self.http, "GET", url, f"download {url}")
        return resp.content, resp.headers.get("content-type", "application/octet-stream")
