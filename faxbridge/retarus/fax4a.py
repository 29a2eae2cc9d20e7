"""Fax4A REST v1 client (docs/retarus-wire.md §1–§2).

Sending goes to the region's HA URL; reports live only on the data center that
processed the job, so report calls ask every data-center URL and treat a 404 from
one of them as normal ("Always check both data centers", fax4a-api docs).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import httpx

from faxbridge.errors import NotFound, Permanent, Transient, Unconfirmed
from faxbridge.retarus.body import Body
from faxbridge.retarus.http import check, error_message, request, retry_after
from faxbridge.retarus.models import (
    DeletionList,
    DeletionReport,
    FaxJobRequest,
    FaxJobResponse,
    FaxReport,
    ReportList,
)

BULK_MAX = 1000  # "max 1000 jobIds per request" (bulkstatusreports)


@dataclass(frozen=True)
class Fax4AEndpoints:
    customer_number: str
    send_url: str
    datacenter_urls: tuple[str, ...]


def make_client(username: str, password: str, timeout: float) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        auth=httpx.BasicAuth(username, password),
        timeout=httpx.Timeout(timeout, connect=min(10.0, timeout)),
        headers={"Accept": "application/json"},
    )


class Fax4AClient:
    def __init__(self, endpoints: Fax4AEndpoints, client: httpx.AsyncClient) -> None:
        self.ep = endpoints
        self.http = client

    def _url(self, base: str, path: str) -> str:
        return f"{base.rstrip('/')}/{self.ep.customer_number}{path}"

    @staticmethod
    def encode(job: FaxJobRequest) -> bytes:
        """The request body, serialised once (it carries base64 documents)."""
        return json.dumps(job.wire(), separators=(",", ":")).encode()

    async def send(self, job: FaxJobRequest | bytes | Body) -> tuple[str, str]:
        """Submit a job; returns (jobId, base URL that took it).

        Falls over to the data-center URLs only when the HA URL refused the
        connection or answered 503: then the job surely was not taken. No answer
        after the request went out raises Unconfirmed (it may have been accepted;
        the submit worker looks for it by customerDefinedId, never resends blindly)."""
        body = job if isinstance(job, bytes | Body) else self.encode(job)
        # An explicit length: httpx then streams a Body without chunked encoding,
        # which a plain HTTP/1.1 server need not accept (RFC 9112 §6.1).
        headers = {"Content-Type": "application/json", "Content-Length": str(len(body))}
        urls = (self.ep.send_url, *[u for u in self.ep.datacenter_urls
                                    if u != self.ep.send_url])
        last: Exception | None = None
        for base in urls:
            try:
                resp = await self.http.post(self._url(base, "/fax"), content=body,
                                            headers=headers)
            except httpx.ConnectError as exc:
                last = Transient(f"send fax: cannot connect to {base}: {exc}")
                continue
            except (httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
                # never left this machine: safe to call it a plain transient error
                raise Transient(f"send fax: timeout connecting to {base}") from exc
            except (httpx.ReadTimeout, httpx.ReadError, httpx.RemoteProtocolError) as exc:
                # the body went out and no answer came: Fax4A may have taken the job
                raise Unconfirmed(f"send fax: no answer from {base} after sending "
                                  f"({type(exc).__name__})") from exc
            except httpx.TransportError as exc:
                raise Transient(f"send fax: connection to {base} failed: {exc}") from exc
            if resp.status_code == 503:
                # Keep the server's Retry-After (RFC 9110 §10.2.3): the longest one
                # asked for by any URL decides when the job is tried again.
                wait = max(filter(None, (retry_after(resp),
                                         getattr(last, "retry_after", None))), default=None)
                reason = error_message(resp)
                last = Transient(f"send fax: {base} answered 503"
                                 + (f": {reason}" if reason else ""), status=503,
                                 retry_after=wait, reason=reason)
                continue
            check(resp, f"send fax via {base}")
            try:
                # 200 or 201 both mean accepted (send-a-fax-job-request status table).
                return FaxJobResponse.model_validate_json(resp.content).jobId, base
            except ValueError as exc:
                raise Transient(f"send fax: unreadable answer from {base}: "
                                f"{resp.text[:200]!r}") from exc
        assert last is not None
        raise last

    async def get_report(self, job_id: str) -> tuple[FaxReport, str]:
        """Ask each data center; the one that has the report answers 200."""
        transient: Transient | None = None
        for base in self.ep.datacenter_urls:
            try:
                resp = await request(self.http, "GET", self._url(base, f"/fax/reports/{job_id}"),
                                     f"get report {job_id} at {base}")
            except NotFound:
                continue
            except Transient as exc:
                transient = exc
                continue
            return FaxReport.model_validate_json(resp.content), base
        if transient is not None:
            raise transient  # could be on the data center we could not reach
        raise NotFound(f"no data center has a report for {job_id}", status=404)

    async def list_reports(self, base: str) -> list[FaxReport]:
        """The oldest ≤1000 completed reports of one data center."""
        try:
            resp = await request(self.http, "GET", self._url(base, "/fax/reports"),
                                 f"list reports at {base}")
        except NotFound:
            return []  # empty list may be a 404 (docs/retarus-wire.md §2.3: unknown)
        return ReportList.model_validate_json(resp.content).reports

    async def list_all_reports(self) -> list[tuple[FaxReport, str]]:
        out: list[tuple[FaxReport, str]] = []
        for base in self.ep.datacenter_urls:
            out += [(r, base) for r in await self.list_reports(base)]
        return out

    async def bulk(self, action: str, job_ids: Sequence[str], base: str) -> list:
        """Bulk GET or DELETE on one data center, in chunks of ≤1000 ids."""
        action = action.upper()
        if action not in ("GET", "DELETE"):
            raise Permanent(f"bulk action must be GET or DELETE, not {action!r}")
        out: list = []
        for i in range(0, len(job_ids), BULK_MAX):
            chunk = list(job_ids[i:i + BULK_MAX])
            resp = await request(self.http, "POST", self._url(base, "/fax/reports"),
                                 f"bulk {action} at {base}",
                                 json={"action": action, "jobIds": chunk})
            model = ReportList if action == "GET" else DeletionList
            out += model.model_validate_json(resp.content).reports
        return out

    async def delete_report(self, job_id: str, base: str | None = None) -> DeletionReport:
        """Delete one report where it lives (or on each data center in turn).
        An unknown job may be answered 404 or 400 (docs/retarus-wire.md §2.5): both mean not found.
        A data center that cannot be reached does not stop the search on the others;
        if the report was found nowhere, its error is raised so the caller tries again."""
        transient: Transient | None = None
        for dc in ([base] if base else list(self.ep.datacenter_urls)):
            try:
                resp = await request(self.http, "DELETE",
                                     self._url(dc, f"/fax/reports/{job_id}"),
                                     f"delete report {job_id} at {dc}")
            except NotFound:
                continue
            except Transient as exc:
                transient = exc
                continue
            except Permanent as exc:
                if exc.status == 400:
                    continue
                raise
            rep = DeletionReport.model_validate_json(resp.content)
            if rep.deleted:
                return rep
        if transient is not None:
            raise transient
        return DeletionReport(jobId=job_id, deleted=False, reason="NOT_FOUND")
