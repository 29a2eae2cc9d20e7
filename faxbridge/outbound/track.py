"""Tracking: follow each submitted job to its final report, by polling the data
centers (never the HA URL, fax4a-api "Always check both data centers") and by
the status push. Both paths end in apply_report(), which is idempotent."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from faxbridge.errors import AuthError, NotFound, Transient
from faxbridge.intake.numbers import same_number
from faxbridge.mail.compose import ComposeError
from faxbridge.outbound.report import build_report, event_for, wanted
from faxbridge.retarus.models import FaxReport

if TYPE_CHECKING:
    import sqlite3

    from faxbridge.app import Bridge

log = logging.getLogger("faxbridge.track")


def match_results(recipients: list[sqlite3.Row], report: FaxReport) -> list[dict[str, Any]]:
    """Pair report entries with our recipients: by number (the report may format it,
    e.g. '+49 89 1234567-8900'), else by position."""
    statuses = list(report.recipientStatus)
    out = []
    for i, r in enumerate(recipients):
        hit = next((s for s in statuses if same_number(s.number, r["number"])), None)
        if hit is None and i < len(report.recipientStatus):
            hit = report.recipientStatus[i]
        if hit is not None and hit in statuses:
            statuses.remove(hit)
        out.append({"idx": r["idx"], "number": r["number"], "display_name": r["display_name"],
                    "status": hit.status if hit else None,
                    "reason": hit.reason if hit else "not in the report",
                    "sent_ts": hit.sentTs if hit else None,
                    "duration": hit.durationInSecs if hit else None,
                    "pages": report.pages, "remote_csid": hit.remoteCsid if hit else None,
                    "sent_to_number": hit.sentToNumber if hit else None})
    return out


async def finish(bridge: Bridge, job: sqlite3.Row, *, results: list[dict[str, Any]],
                 submitted: bool, source: str, pages: int | None = None,
                 error: str | None = None, datacenter: str | None = None,
                 expect: tuple[str, ...] = ("submitted",)) -> bool:
    """Final state + per-recipient results + report mail, in one transaction."""
    store = bridge.store
    assert store is not None
    event = event_for(results, submitted)
    mail = None
    if wanted(job["notify"], event):
        docs: list[tuple[str, str, bytes]] = []
        if job["attach_documents"]:
            docs = [(d["name"], d["content_type"], d["data"])
                    for d in await bridge.db(store.job_documents, job["id"])]
        try:
            raw = build_report(bridge.composer, job, results, event,
                               mail_from=bridge.cfg.mail.from_address, pages=pages,
                               error=error, documents=docs)
        except ComposeError as exc:
            bridge.metrics.compose_failed("report", str(exc))
            raise
        bridge.metrics.mail_ok("compose", "report")
        mail = (bridge.cfg.mail.from_address, [job["sender"]], raw)
    state = "done" if event in ("delivered", "partial") else "failed"
    summary = ", ".join(f"{r['number']} {r['status'] or '-'}" for r in results)
    changed = await bridge.db(store.finish_job, job["id"], state, event=state,
                              detail=f"{event} ({source}): {summary}" + (
                                  f"; {error}" if error else ""),
                              recipients=results, error=error, datacenter=datacenter,
                              mail=mail, expect=expect)
    if changed:
        if submitted:
            bridge.metrics.report_latency.observe(time.time() - job["created"])
        log.info("job=%s message_id=%s %s via %s", job["id"], job["message_id"], event, source)
        bridge.mail_wakeup.set()
    return changed


async def apply_report(bridge: Bridge, job: sqlite3.Row, report: FaxReport, source: str,
                       datacenter: str | None = None) -> bool:
    recipients = await bridge.db(bridge.store.job_recipients, job["id"])
    results = match_results(recipients, report)
    return await finish(bridge, job, results=results, submitted=True, source=source,
                        pages=report.pages, datacenter=datacenter)


class Tracker:
    def __init__(self, bridge: Bridge) -> None:
        self.bridge = bridge

    async def run(self) -> None:
        store = self.bridge.store
        assert store is not None
        while True:
            due = await self.bridge.db(store.due_submitted, time.time())
            for job in due:
                try:
                    await self.poll(job)
                except ComposeError as exc:  # nothing recorded: the next poll tries again
                    log.error("job=%s final report not recorded: %s", job["id"], exc)
                    await self.bridge.db(store.schedule_poll, job["id"],
                                         time.time() + self._interval(job),
                                         f"final, but {exc}", str(exc))
                except Exception:  # noqa: BLE001 - one job never stops the tracker
                    log.exception("job=%s tracking error", job["id"])
                    await self.bridge.db(store.schedule_poll, job["id"],
                                         time.time() + self._interval(job), "tracking error",
                                         "tracking error (see the log)")
            await asyncio.sleep(min(1.0, self.bridge.cfg.fax.report_poll_min_seconds / 2))

    def _interval(self, job: sqlite3.Row) -> float:
        fax = self.bridge.cfg.fax
        age = time.time() - job["created"]
        return min(fax.report_poll_max_seconds, max(fax.report_poll_min_seconds, age / 2))

    async def poll(self, job: sqlite3.Row) -> None:
        store, fax4a = self.bridge.store, self.bridge.fax4a
        assert store is not None and fax4a is not None
        now = time.time()
        if now > job["valid_until"]:
            recipients = await self.bridge.db(store.job_recipients, job["id"])
            results = [{"idx": r["idx"], "number": r["number"],
                        "display_name": r["display_name"], "status": "UNKNOWN",
                        "reason": "no final report before the job's validity ended"}
                       for r in recipients]
            await finish(self.bridge, job, results=results, submitted=True, source="timeout",
                         error="No final report arrived from the fax service in time.")
            return
        error = None
        try:
            report, base = await fax4a.get_report(job["retarus_job_id"])
        except NotFound:
            detail = "no data center has the report yet"
        except (Transient, AuthError) as exc:
            detail = error = f"report poll failed: {exc}"
        else:
            self.bridge.last_contact["retarus"] = time.time()
            if report.final:
                await apply_report(self.bridge, job, report, "poll", datacenter=base)
                return
            detail = f"PENDING at {base}"
        await self.bridge.db(store.schedule_poll, job["id"], now + self._interval(job), detail,
                             error)


class ReportCleaner:
    """Deletes final reports at Retarus once stored here (the Fax4A docs recommend
    deleting fetched reports; the list endpoint only shows the oldest 1000)."""

    def __init__(self, bridge: Bridge, every: float = 5.0) -> None:
        self.bridge = bridge
        self.every = every

    async def run(self) -> None:
        while True:
            if self.bridge.cfg.retarus.delete_reports:
                try:
                    await self.once()
                except Exception:  # noqa: BLE001
                    log.exception("report clean-up failed; will retry")
            await asyncio.sleep(self.every)

    async def once(self) -> None:
        store, fax4a = self.bridge.store, self.bridge.fax4a
        assert store is not None and fax4a is not None
        rows = await self.bridge.db(store.reports_to_delete)
        by_dc: dict[str | None, list[sqlite3.Row]] = {}
        for r in rows:
            dc = r["datacenter"] if r["datacenter"] in fax4a.ep.datacenter_urls else None
            by_dc.setdefault(dc, []).append(r)
        for dc, jobs in by_dc.items():
            if dc is None:  # data center unknown: delete where it is found
                for j in jobs:
                    try:
                        rep = await fax4a.delete_report(j["retarus_job_id"])
                    except Transient as exc:  # one unreachable DC: the next pass retries
                        log.warning("job=%s report clean-up deferred: %s", j["id"], exc)
                        continue
                    await self.bridge.db(store.mark_reports_deleted, [j["id"]],
                                         f"deleted at Retarus: {rep.deleted} {rep.reason or ''}")
                continue
            ids = {j["retarus_job_id"]: j["id"] for j in jobs}
            results = await fax4a.bulk("DELETE", list(ids), dc)
            await self.bridge.db(store.mark_reports_deleted, list(ids.values()),
                                 f"bulk delete at {dc}: " + ", ".join(
                                     f"{r.jobId} {'deleted' if r.deleted else r.reason}"
                                     for r in results)[:500])
