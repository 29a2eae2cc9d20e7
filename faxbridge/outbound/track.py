"""Tracking: follow each submitted job to its final report, by polling the data
centers (never the HA URL, fax4a-api "Always check both data centers") and by
the status push. Both paths end in apply_report(), which is idempotent."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

from faxbridge.errors import AuthError, NotFound, Transient
from faxbridge.intake.clean import clean_text
from faxbridge.intake.numbers import same_number
from faxbridge.mail.compose import ComposeError
from faxbridge.mail.service import MailService
from faxbridge.outbound.report import REPORT_HELD, build_report, event_for, report_to, wanted
from faxbridge.retarus.clients import RetarusClients
from faxbridge.retarus.fax4a import Fax4AClient
from faxbridge.retarus.models import FaxReport
from faxbridge.runner import Runner
from faxbridge.runtime.config import ConfigProvider
from faxbridge.runtime.db import Db
from faxbridge.runtime.health import Health
from faxbridge.runtime.wakeups import Wakeups
from faxbridge.store.rows import Job, JobRecipient

log = logging.getLogger("faxbridge.track")


def match_results(recipients: list[JobRecipient], report: FaxReport) -> list[dict[str, Any]]:
    """Pair report entries with our recipients: by number (the report may format it,
    e.g. '+49 89 1234567-8900'), else by position."""
    statuses = list(report.recipientStatus)
    out = []
    for i, r in enumerate(recipients):
        hit = next((s for s in statuses if same_number(s.number, r.number)), None)
        if hit is None and i < len(report.recipientStatus):
            hit = report.recipientStatus[i]
        if hit is not None and hit in statuses:
            statuses.remove(hit)
        out.append({"idx": r.idx, "number": r.number, "display_name": r.display_name,
                    "status": hit.status if hit else None,
                    "reason": hit.reason if hit else "not in the report",
                    "sent_ts": hit.sentTs if hit else None,
                    "duration": hit.durationInSecs if hit else None,
                    "pages": report.pages, "remote_csid": hit.remoteCsid if hit else None,
                    "sent_to_number": hit.sentToNumber if hit else None})
    return out


class Finisher:
    """Records a job's final outcome: the submitter (never submitted), the tracker
    (poll, timeout) and the status push webhook all end a job here."""

    def __init__(self, db: Db, config: ConfigProvider, mail: MailService, health: Health,
                 wakeups: Wakeups) -> None:
        self.db, self.config, self.mail, self.health = db, config, mail, health
        self.wakeups = wakeups

    async def finish(self, job: Job, *, results: list[dict[str, Any]],
                     submitted: bool, source: str, pages: int | None = None,
                     error: str | None = None, datacenter: str | None = None,
                     expect: tuple[str, ...] = ("submitted",)) -> bool:
        """Final state + per-recipient results + report mail, in one transaction."""
        store, cfg, metrics = self.db.store, self.config.current, self.health.metrics
        event = event_for(results, submitted)
        mail = None
        if wanted(job.notify, event):
            # listed in every report (what was faxed), attached only if the rule says so
            docs = [(d.name, d.content_type, d.data)
                    for d in await self.db.run(store.job_documents, job.id)]
            try:
                raw = self._report(job, results, event, pages=pages, error=error,
                                   documents=docs)
            except ComposeError as exc:
                metrics.compose_failed("report", str(exc))
                if not self._only_this_job(job, results, event, pages, error):
                    raise  # no report can be composed: retried, /readyz says why
                # This job's own data breaks its report (a poison item): the outcome
                # is recorded and the job held with the reason, its final disposition.
                # Retrying would fail the same way on every poll and push, forever.
                metrics.mail_ok("compose", "report")
                return await self._hold(job, results, event, source, exc,
                                        error=error, datacenter=datacenter, expect=expect)
            metrics.mail_ok("compose", "report")
            mail = (cfg.mail.from_address, report_to(job), raw)
        state = "done" if event in ("delivered", "partial") else "failed"
        summary = ", ".join(f"{r['number']} {r['status'] or '-'}" for r in results)
        changed = await self.db.run(store.finish_job, job.id, state, event=state,
                                    detail=f"{event} ({source}): {summary}" + (
                                        f"; {error}" if error else ""),
                                    recipients=results, error=error, datacenter=datacenter,
                                    mail=mail, expect=expect)
        if changed:
            if submitted:
                metrics.report_latency.observe(time.time() - job.created)
            log.info("job=%s message_id=%s %s via %s", job.id, job.message_id, event,
                     source)
            self.wakeups.mail.set()
        return changed

    def _report(self, job: Job, results: list[dict[str, Any]], event: str, *,
                pages: int | None, error: str | None,
                documents: list[tuple[str, str, bytes]]) -> bytes:
        """The report mail; any failure to make it (the template, the context, writing
        its headers) as one ComposeError."""
        try:
            return build_report(self.mail.composer, job, results, event,
                                mail_from=self.config.current.mail.from_address,
                                pages=pages, error=error, documents=documents,
                                attach=bool(job.attach_documents))
        except ComposeError:
            raise
        except Exception as exc:  # noqa: BLE001 - the caller holds the job or retries
            raise ComposeError(f"report mail: {type(exc).__name__}: {exc}") from exc

    def _only_this_job(self, job: Job, results: list[dict[str, Any]], event: str,
                       pages: int | None, error: str | None) -> bool:
        """Whether the same report composes for a stand-in of this job with nothing
        taken from its mail (no Message-ID, subject, display names, documents): then
        the failure is this job's own, and holding it loses nothing the next poll
        could win. If the stand-in fails too, the templates are broken for every job,
        and jobs are retried until an admin fixes them."""
        plain = dataclasses.replace(job, message_id=None, subject="")
        plain_results = [{**r, "display_name": None} for r in results]
        try:
            self._report(plain, plain_results, event, pages=pages, error=error,
                         documents=[])
        except ComposeError:
            return False
        return True

    async def _hold(self, job: Job, results: list[dict[str, Any]], event: str, source: str,
                    exc: ComposeError, *, error: str | None, datacenter: str | None,
                    expect: tuple[str, ...]) -> bool:
        # the exception's text may quote the mail's data: one clean line
        reason = clean_text(f"{REPORT_HELD}: {exc}", 500)
        summary = ", ".join(f"{r['number']} {r['status'] or '-'}" for r in results)
        changed = await self.db.run(
            self.db.store.finish_job, job.id, "held", event="held",
            detail=f"{event} ({source}): {summary}" + (f"; {error}" if error else "")
            + f"; {reason}", recipients=results, error=reason, datacenter=datacenter,
            mail=None, expect=expect)
        if changed:
            log.warning("job=%s %s via %s; held: %s", job.id, event, source, reason)
        return changed

    async def apply_report(self, job: Job, report: FaxReport, source: str,
                           datacenter: str | None = None) -> bool:
        recipients = await self.db.run(self.db.store.job_recipients, job.id)
        results = match_results(recipients, report)
        return await self.finish(job, results=results, submitted=True, source=source,
                                 pages=report.pages, datacenter=datacenter)


@dataclass(frozen=True)
class PushOutcome:
    """What a final status push led to: whether the job's outcome changed, and a
    word for the webhook's answer ("recorded", "not final at Retarus", …)."""

    changed: bool
    status: str
    retry: bool = False  # Retarus could not be asked: answer so that it pushes again


def _statuses(report: FaxReport) -> list[tuple[str, str]]:
    return sorted((r.number, r.status.upper()) for r in report.recipientStatus)


async def confirm_push(finisher: Finisher, fax4a: Fax4AClient, job: Job,
                       pushed: FaxReport) -> PushOutcome:
    """A final status push is a claim, not the outcome: anyone who can reach the
    webhook with the push credentials (or a push that arrives early) could end a
    job with a status Retarus never reported, and the report would then be deleted
    at Retarus, where the truth was. So the job's report is fetched from Retarus
    (GET /fax/reports/{jobId}, fax4a-api "getStatusReport") and *its* statuses are
    applied; a push that disagrees is logged. The report is deleted afterwards by
    the ReportCleaner, only once the confirmed outcome is committed."""
    try:
        report, base = await fax4a.get_report(job.retarus_job_id or pushed.jobId)
    except NotFound:
        log.warning("job=%s status push says final (%s), but no data center has a report "
                    "for %s: not applied; the report poll goes on", job.id,
                    _brief(pushed), pushed.jobId)
        return PushOutcome(False, "not confirmed: Retarus has no report for this job")
    except (Transient, AuthError) as exc:
        log.warning("job=%s status push not confirmed, Retarus could not be asked: %s",
                    job.id, exc)
        return PushOutcome(False, f"not confirmed: {exc}", retry=True)
    finisher.health.last_contact["retarus"] = time.time()
    if not report.final:
        log.warning("job=%s status push says final (%s), but the report at Retarus is "
                    "still pending: not applied (a premature or forged push)", job.id,
                    _brief(pushed))
        return PushOutcome(False, "not final at Retarus, noted")
    if _statuses(report) != _statuses(pushed):
        log.warning("job=%s status push (%s) disagrees with the report at Retarus (%s): "
                    "the report's statuses apply", job.id, _brief(pushed), _brief(report))
    changed = await finisher.apply_report(job, report, "push", datacenter=base)
    return PushOutcome(changed, "recorded" if changed else "already final")


def _brief(report: FaxReport) -> str:
    return clean_text(", ".join(f"{n} {st}" for n, st in _statuses(report)), 300)


class Tracker(Runner[Job]):
    """Polls the final report of each submitted job that is due."""

    name = "track"
    log = log
    expected = (ComposeError,)

    def __init__(self, db: Db, config: ConfigProvider, retarus: RetarusClients,
                 health: Health, finisher: Finisher) -> None:
        super().__init__()
        self.db, self.config, self.retarus, self.health = db, config, retarus, health
        self.finisher = finisher

    @property
    def idle(self) -> float:  # type: ignore[override]
        return min(1.0, self.config.current.fax.report_poll_min_seconds / 2)

    async def claim(self, limit: int, busy: frozenset[Hashable]) -> list[Job]:
        return await self.db.run(self.db.store.due_submitted, time.time())

    async def pause(self, claimed: int, failed: int) -> None:
        await self.wait(self.idle)  # each job polled is scheduled again for later

    def key(self, item: Job) -> Hashable:
        return item.id

    def describe(self, item: Job) -> str:
        return f"job={item.id} message_id={item.message_id}"

    async def failed(self, job: Job, exc: Exception) -> None:
        if isinstance(exc, ComposeError):  # nothing recorded: the next poll tries again
            log.error("job=%s final report not recorded: %s", job.id, exc)
            detail, error = f"final, but {exc}", str(exc)
        else:
            detail, error = "tracking error", "tracking error (see the log)"
        await self.db.run(self.db.store.schedule_poll, job.id,
                          time.time() + self._interval(job), detail, error)

    def _interval(self, job: Job) -> float:
        fax = self.config.current.fax
        age = time.time() - job.created
        return min(fax.report_poll_max_seconds, max(fax.report_poll_min_seconds, age / 2))

    async def dispose(self, job: Job) -> None:
        store, fax4a = self.db.store, self.retarus.fax4a
        now = time.time()
        if now > job.valid_until:
            recipients = await self.db.run(store.job_recipients, job.id)
            results = [{"idx": r.idx, "number": r.number,
                        "display_name": r.display_name, "status": "UNKNOWN",
                        "reason": "no final report before the job's validity ended"}
                       for r in recipients]
            await self.finisher.finish(
                job, results=results, submitted=True, source="timeout",
                error="No final report arrived from the fax service in time.")
            return
        error = None
        try:
            report, base = await fax4a.get_report(job.retarus_job_id)
        except NotFound:
            detail = "no data center has the report yet"
        except (Transient, AuthError) as exc:
            detail = error = f"report poll failed: {exc}"
        else:
            self.health.last_contact["retarus"] = time.time()
            if report.final:
                await self.finisher.apply_report(job, report, "poll", datacenter=base)
                return
            detail = f"PENDING at {base}"
        await self.db.run(store.schedule_poll, job.id, now + self._interval(job), detail,
                          error)


class ReportCleaner(Runner[tuple[str | None, list[Job]]]):
    """Deletes final reports at Retarus once stored here (the Fax4A docs recommend
    deleting fetched reports; the list endpoint only shows the oldest 1000). One item
    is one data center's reports (a bulk delete), or one report whose data center is
    unknown."""

    name = "report-cleanup"
    log = log

    def __init__(self, db: Db, config: ConfigProvider, retarus: RetarusClients,
                 every: float = 5.0) -> None:
        super().__init__()
        self.db, self.config, self.retarus = db, config, retarus
        self.idle = every

    async def claim(self, limit: int, busy: frozenset[Hashable]
                    ) -> list[tuple[str | None, list[Job]]]:
        if not self.config.current.retarus.delete_reports:
            return []
        if not await self.db.run(self.db.store.lead, "report-cleanup"):
            return []  # another node on the same database does it
        rows = await self.db.run(self.db.store.reports_to_delete)
        known = self.retarus.fax4a.ep.datacenter_urls
        by_dc: dict[str | None, list[Job]] = {}
        for r in rows:
            dc = r.datacenter if r.datacenter in known else None
            by_dc.setdefault(dc, []).append(r)
        return [(dc, [j]) for j in by_dc.pop(None, [])] + list(by_dc.items())

    async def pause(self, claimed: int, failed: int) -> None:
        await self.wait(self.idle)  # one unreachable data center: the next pass retries

    def describe(self, item: tuple[str | None, list[Job]]) -> str:
        dc, jobs = item
        return f"report clean-up at {dc or 'an unknown data center'} (job={jobs[0].id}…)"

    async def dispose(self, item: tuple[str | None, list[Job]]) -> None:
        dc, jobs = item
        store, fax4a = self.db.store, self.retarus.fax4a
        if dc is None:  # data center unknown: delete where it is found
            j = jobs[0]
            try:
                rep = await fax4a.delete_report(j.retarus_job_id)
            except Transient as exc:
                log.warning("job=%s report clean-up deferred: %s", j.id, exc)
                return
            await self.db.run(store.mark_reports_deleted, [j.id],
                              f"deleted at Retarus: {rep.deleted} {rep.reason or ''}")
            return
        ids = {j.retarus_job_id: j.id for j in jobs}
        results = await fax4a.bulk("DELETE", list(ids), dc)
        await self.db.run(store.mark_reports_deleted, list(ids.values()),
                          f"bulk delete at {dc}: " + ", ".join(
                              f"{r.jobId} {'deleted' if r.deleted else r.reason}"
                              for r in results)[:500])
