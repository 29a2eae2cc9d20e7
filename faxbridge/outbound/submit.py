"""Submission worker: claims queued jobs, sends them to Fax4A, records the jobId.

Transient errors are retried with backoff until the job's deadline; permanent
ones fail the job at once with the reason kept for the report; anything
unexpected holds the job for the admin. One job's failure never stops the worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from faxbridge.errors import AuthError, FaxbridgeError, Permanent, Transient, Unconfirmed
from faxbridge.outbound.report import REPORT_HELD
from faxbridge.outbound.request import job_request, submission_body
from faxbridge.outbound.track import Finisher
from faxbridge.retarus.clients import RetarusClients
from faxbridge.retry import backoff
from faxbridge.runner import Runner
from faxbridge.runtime.config import ConfigProvider
from faxbridge.runtime.db import Db
from faxbridge.runtime.health import Health
from faxbridge.runtime.wakeups import Wakeups
from faxbridge.store.rows import Job

if TYPE_CHECKING:
    from faxbridge.store.protocol import Store

log = logging.getLogger("faxbridge.submit")


def refusal(exc: Permanent) -> str:
    """The report's and last_error's text for a refused job: Retarus' own `message`
    when it gave one (sendJobRequest documents `{"code", "message"}` for 400/401)."""
    code = f" (HTTP {exc.status})" if exc.status else ""
    if exc.reason:
        return f"The fax service refused the job{code}: {exc.reason}"
    return f"The fax service refused the job{code} without giving a reason."


# Accepted jobs per second from which mail counts as arriving in a burst: faster
# than the downstream stages follow for long (they sustain about 25 a second on
# the reference machine, README "Performance"), so that submitting at once would
# not shorten the backlog anyway; an office's steady stream stays far below.
BURST_RATE = 50


def burst_hold(rate: int, since: float | None, now: float, hold: float
               ) -> tuple[bool, float | None]:
    """Whether submissions wait now, and since when the burst runs (None: no burst).

    While jobs are accepted at BURST_RATE a second or more, the first `hold` seconds
    of the burst belong to the listener: the machine's CPU goes to answering the
    clients (a 250 after the durable commit), the durable queue keeps the jobs, and
    they are submitted when the burst ends or `hold` seconds into it, whichever
    comes first. A fax takes tens of seconds to transmit; a few seconds more before
    it starts are not noticed, a client waiting for its 250 is."""
    if hold <= 0 or rate < BURST_RATE:
        return False, None
    since = now if since is None else since
    return now - since < hold, since


class Submitter(Runner[Job]):
    """Up to fax.submit_concurrency submissions at once; a job is never in flight twice
    (and the store's claim is guarded anyway). The confirmation pass runs beside it
    on its own clock."""

    name = "submit"
    log = log

    def __init__(self, db: Db, config: ConfigProvider, retarus: RetarusClients,
                 health: Health, wakeups: Wakeups, finisher: Finisher,
                 idle: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(wakeups.submit)
        self.db, self.config, self.retarus, self.health = db, config, retarus, health
        self.finisher = finisher
        self.idle = idle
        self.wakeups, self.clock = wakeups, clock
        self.burst_since: float | None = None  # see burst_hold

    @property
    def concurrency(self) -> int:  # type: ignore[override]
        return self.config.current.fax.submit_concurrency

    async def run(self) -> None:
        # Its own task, not a step of the dispatch loop: a listing of thousands of
        # reports must not hold up submissions, and the pass must keep its period
        # whether the dispatcher is idle, saturated or waiting on the store.
        confirmer = asyncio.create_task(self.confirm_loop(), name="confirm")
        try:
            await super().run()
        finally:
            confirmer.cancel()
            with contextlib.suppress(BaseException):
                await confirmer

    async def prepare(self) -> None:
        await self.recover()

    async def claim(self, limit: int, busy: frozenset[Hashable]) -> list[Job]:
        now = self.clock()
        hold = self.config.current.fax.burst_hold_seconds
        began = self.burst_since
        held, self.burst_since = burst_hold(self.wakeups.accept_rate(now), began, now, hold)
        if held:
            if began is None:
                log.info("mail is arriving in a burst: submissions wait up to %.0f s "
                         "(fax.burst_hold_seconds)", hold)
            return []  # each accept wakes this runner; the idle wait ends the burst
        return await self.db.run(self.db.store.next_jobs, limit, busy)

    def key(self, item: Job) -> Hashable:
        return item.id

    def describe(self, item: Job) -> str:
        return f"job={item.id} message_id={item.message_id}"

    async def failed(self, job: Job, exc: Exception) -> None:
        await self.db.run(self.db.store.set_job_state, job.id, "held", event="held",
                          detail=f"unexpected error: {exc!r}", error=repr(exc))

    async def confirm_loop(self) -> None:
        """Run the confirmation pass every fax.report_poll_min_seconds for as long as
        the submitter runs. Nothing that goes wrong in one pass (Retarus down, an
        unreadable answer, a busy store) ends the loop: an unconfirmed job that
        nobody looks for any more would sit held until an admin sends it twice."""
        while True:
            try:
                # one node at a time looks (with several nodes on one database); it
                # also takes over what a node that died left `submitting`
                if await self.db.run(self.db.store.lead, "confirm"):
                    await self.recover(at_start=False)
                    await self.confirm_unconfirmed()
            except Exception:  # noqa: BLE001 - the next pass tries again
                log.exception("confirmation pass failed; trying again in %.0fs",
                              self.config.current.fax.report_poll_min_seconds)
            await asyncio.sleep(self.config.current.fax.report_poll_min_seconds)

    async def dispose(self, job: Job) -> None:
        store, fax4a = self.db.store, self.retarus.fax4a
        job_id = job.id
        docs = await self.db.run(store.job_documents, job_id)
        recipients = await self.db.run(store.job_recipients, job_id)
        push_secret = self.retarus.push_secret
        try:
            # built now from the stored job (not at accept time): the push URL is current
            request = job_request(self.config.current, job, recipients,
                                  self.retarus.push_url())
            body = submission_body(with_validity(request, job),
                                   [(d.name, d.charset, d.data) for d in docs],
                                   push_secret)
        except ValidationError as exc:
            await self.db.run(store.set_job_state, job_id, "held", event="held",
                              detail=f"request invalid before sending: {exc}",
                              error=str(exc), expect=("queued", "deferred"))
            return
        # Everything is prepared (validated, serialised but for the base64 data, which
        # is encoded as it is sent): claim, then POST at once (a crash in between is
        # the only window recovery cannot decide; it is kept as small as possible).
        if not await self.db.run(store.claim_job, job_id):
            return
        if time.time() >= job.valid_until:
            # Retarus would refuse a job whose jobValid.end has passed (Job Expiration),
            # and the tracker would not follow it any more: say so instead of trying.
            await self.not_submitted(
                job, "The job's validity ended before it could be sent to the fax service.")
            return
        try:
            retarus_id, base = await fax4a.send(body)
        except Unconfirmed as exc:
            # It may be at Retarus already: hold it as unconfirmed; the confirmation
            # pass promotes it once Retarus lists it under our customerDefinedId.
            log.warning("job=%s message_id=%s %s; not resending", job_id, job.message_id,
                        exc)
            await self.db.run(store.set_job_state, job_id, "held", event="unconfirmed",
                              detail=f"{exc}; {UNCONFIRMED_HINT}", error=UNCONFIRMED)
            return
        except (Transient, AuthError) as exc:
            now = time.time()
            if now >= job.deadline:
                await self.not_submitted(
                    job, f"The fax service could not be reached before the deadline ({exc}).")
                return
            delay = backoff(job.attempts + 1, base=2.0, cap=300.0,
                            retry_after_s=getattr(exc, "retry_after", None))
            if isinstance(exc, AuthError):
                log.error("job=%s message_id=%s Retarus refused our credentials: %s", job_id,
                          job.message_id, exc)
                delay = max(delay, 60.0)
            self.health.metrics.submit_retries.inc()
            await self.db.run(store.set_job_state, job_id, "deferred", event="deferred",
                              detail=f"{exc}; next try in {delay:.0f}s", error=str(exc),
                              next_attempt=now + delay)
            return
        except Permanent as exc:
            # Retrying cannot help (400, 404, 409): the sender must change something,
            # so the report quotes Retarus' own reason and says "fix", not "later".
            await self.not_submitted(job, refusal(exc), refused=True)
            return
        self.health.last_contact["retarus"] = time.time()
        await self.db.run(store.set_job_state, job_id, "submitted", event="submitted",
                          detail=f"Retarus jobId {retarus_id} via {base}",
                          retarus_job_id=retarus_id, datacenter=base)
        log.info("job=%s message_id=%s submitted as %s", job_id, job.message_id, retarus_id)

    async def not_submitted(self, job: Job, error: str, *, refused: bool = False) -> None:
        """Fail a job that never reached Retarus, with its "could not be sent" report:
        REFUSED when Retarus turned it down for good (the sender must fix something),
        NOT_SENT when it could not be handed over before its deadline (try later)."""
        recipients = await self.db.run(self.db.store.job_recipients, job.id)
        status, reason = (("REFUSED", "refused by the fax service") if refused
                          else ("NOT_SENT", "not submitted"))
        results = [{"idx": r.idx, "number": r.number, "display_name": r.display_name,
                    "status": status, "reason": reason} for r in recipients]
        await self.finisher.finish(job, results=results, submitted=False, source="submit",
                                   error=error, expect=("submitting",))

    async def recover(self, at_start: bool = True) -> None:
        """Jobs left in `submitting` by a crash (of this bridge, or of another node on
        the same database): the POST may or may not have reached Retarus. They become
        unconfirmed and go through the confirmation pass: found by customerDefinedId →
        submitted; not found → held for the admin, never resent."""
        store = self.db.store
        for job in await self.db.run(store.abandoned_submissions, at_start):
            await self.db.run(store.set_job_state, job.id, "held", event="unconfirmed",
                              detail=f"interrupted while submitting; {UNCONFIRMED_HINT}",
                              error=UNCONFIRMED, expect=("submitting",))

    async def confirm_unconfirmed(self) -> None:
        """Look for unconfirmed jobs at Retarus and promote the ones found.

        Fax4A cannot be asked for a job by customerDefinedId: the only view that
        carries it without knowing the jobId is the list of *completed* reports
        (GET /fax/reports, oldest 1000 per data center). A job still in progress is
        not in it, so each unconfirmed job is looked for on every pass until Retarus
        must have finished it: its jobValid.end (= valid_until, sent with the job)
        plus one report_poll_max_seconds for the report to be listed. Not listed by
        then means Retarus never had it; the job stays held, marked safe to release."""
        store, fax4a = self.db.store, self.retarus.fax4a
        waiting = await self.db.run(store.held_for, UNCONFIRMED)
        if not waiting:
            return
        started = time.time()
        try:
            reports = await fax4a.list_all_reports()
        except FaxbridgeError as exc:
            log.warning("cannot look for %d unconfirmed job(s) at Retarus: %s", len(waiting),
                        exc)
            return
        self.health.last_contact["retarus"] = time.time()
        per_dc = Counter(base for _, base in reports)
        # A full list may hide our report behind older ones: no conclusion from it.
        full = sorted(base for base, n in per_dc.items() if n >= LIST_LIMIT)
        by_ref = {(r.reference or {}).get("customerDefinedId"): (r, base) for r, base in reports}
        grace = self.config.current.fax.report_poll_max_seconds
        for job in waiting:
            found = by_ref.get(job.id)
            if found:
                rep, base = found
                await self.db.run(
                    store.set_job_state, job.id, "submitted", event="confirmed",
                    detail=f"found at Retarus as {rep.jobId} ({base})",
                    retarus_job_id=rep.jobId, datacenter=base, next_attempt=0,
                    expect=("held",))
                log.info("job=%s message_id=%s confirmed at Retarus as %s", job.id,
                         job.message_id, rep.jobId)
            elif started >= job.valid_until + grace:
                if full:
                    log.warning("job=%s not in the report lists, but %s list(s) are full "
                                "(%d reports): still looking", job.id, ", ".join(full),
                                LIST_LIMIT)
                    continue
                await self.db.run(
                    store.set_job_state, job.id, "held", event="not-found",
                    detail=(f"Retarus does not list customerDefinedId {job.id} although "
                                  f"the job's validity ended {_iso(job.valid_until)}: it was "
                                  "never taken, so the fax was not sent. "
                                  "`faxbridge jobs release ID` sends it now"),
                    error=NOT_FOUND, expect=("held",))
                log.warning("job=%s message_id=%s never found at Retarus; held for the admin "
                            "(safe to release)", job.id, job.message_id)


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def with_validity(skeleton: dict[str, Any], job: Job) -> dict[str, Any]:
    """The request with meta.jobValid.end = the job's valid_until. Retarus finishes
    (sends or expires) a job by then, so its report is listed afterwards: that is
    what lets the confirmation pass conclude "never taken" for a job it cannot find.
    Without it Retarus keeps a job for a month (fax4a-send-fax "meta.jobValid")."""
    meta = dict(skeleton.get("meta") or {})
    # customerReference is required inside meta (Go SDK, Retarus SAP swagger)
    meta.setdefault("customerReference", job.id)
    meta["jobValid"] = {**(meta.get("jobValid") or {}), "end": _iso(job.valid_until)}
    return {**skeleton, "meta": meta}


def confirmation(job: Job) -> dict[str, Any] | None:
    """For job views: whether the confirmation pass is still looking for this job at
    Retarus, and what that means for releasing it. None for other jobs."""
    if job.state != "held" or job.last_error not in (UNCONFIRMED, NOT_FOUND):
        return None
    if job.last_error == UNCONFIRMED:
        return {"looking": True, "until": _iso(job.valid_until),
                "note": ("may be at Retarus already; looked for by customerDefinedId until "
                         f"its validity ends ({_iso(job.valid_until)}, plus a poll "
                         "interval). Releasing it now may send the fax twice (--force)")}
    return {"looking": False, "until": _iso(job.valid_until),
            "note": "never found at Retarus: not sent; releasing it sends it"}


def release_job(store: Store, job_id: str, *, by: str, force: bool = False) -> tuple[bool, str]:
    """Put a held job back in the queue with a fresh validity and deadline (each as
    long as the job had at first), so it can be sent and followed again. A job the
    confirmation pass is still looking for is refused unless forced: Retarus may be
    sending it, and releasing it would send the fax twice."""
    job = store.job(job_id)
    if job is None or job.state != "held":
        return False, f"job {job_id} is not held"
    if (job.last_error or "").startswith(REPORT_HELD):
        return False, (f"job {job_id} was sent and its outcome is recorded; only its report "
                       "mail could not be composed. Releasing it would send the fax again")
    looking = job.last_error == UNCONFIRMED
    if looking and not force:
        return False, (f"job {job_id} is an unconfirmed submission that may be at Retarus "
                       "already; it is looked for until its validity ends "
                       f"({_iso(job.valid_until)}). Releasing it now may send the fax "
                       "twice; force it only if you know Retarus does not have it")
    now = time.time()
    detail = f"released by {by}" + (
        " while still unconfirmed (forced: it may be sent twice)" if looking else "")
    if not store.release_job(job_id, detail=detail,
                             deadline=now + (job.deadline - job.created),
                             valid_until=now + (job.valid_until - job.created)):
        return False, f"job {job_id} is not held"
    return True, f"job {job_id} released"


UNCONFIRMED = "unconfirmed submission"
NOT_FOUND = "unconfirmed submission never found at Retarus (not sent; safe to release)"
UNCONFIRMED_HINT = ("Retarus may have the job; it is looked up by customerDefinedId until its "
                    "validity ends and promoted when found; releasing it before then may send "
                    "the fax twice")
LIST_LIMIT = 1000  # GET /fax/reports lists "the oldest 1000" reports of a data center
