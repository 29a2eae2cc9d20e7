"""Submission worker: claims queued jobs, sends them to Fax4A, records the jobId.

Transient errors are retried with backoff until the job's deadline; permanent
ones fail the job at once with the reason kept for the report; anything
unexpected holds the job for the admin. One job's failure never stops the worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import TYPE_CHECKING

from pydantic import ValidationError

from faxbridge.aio import wait_event
from faxbridge.errors import AuthError, FaxbridgeError, Permanent, Transient, Unconfirmed
from faxbridge.outbound.request import submission_body
from faxbridge.retarus.http import backoff

if TYPE_CHECKING:
    import sqlite3

    from faxbridge.app import Bridge

log = logging.getLogger("faxbridge.submit")


class Submitter:
    def __init__(self, bridge: Bridge, idle: float = 1.0) -> None:
        self.bridge = bridge
        self.idle = idle
        self._next_confirm = 0.0

    async def run(self) -> None:
        """Dispatch due jobs to up to fax.submit_concurrency concurrent submissions;
        a job is never in flight twice (and the store's claim is guarded anyway)."""
        await self.recover()
        store = self.bridge.store
        assert store is not None
        inflight: set[str] = set()
        tasks: set[asyncio.Task[None]] = set()
        try:
            while True:
                limit = self.bridge.cfg.fax.submit_concurrency - len(inflight)
                jobs = (await self.bridge.db(store.next_jobs, limit, frozenset(inflight))
                        if limit > 0 else [])
                if time.monotonic() >= self._next_confirm:
                    self._next_confirm = time.monotonic() + \
                        self.bridge.cfg.fax.report_poll_min_seconds
                    await self.confirm_unconfirmed()
                if not jobs:
                    self.bridge.submit_wakeup.clear()
                    await wait_event(self.bridge.submit_wakeup,
                                     self.idle if limit > 0 else 0.05)
                    continue
                for job in jobs:
                    inflight.add(job["id"])
                    task = asyncio.create_task(self._one(job))
                    tasks.add(task)
                    task.add_done_callback(
                        lambda t, i=job["id"]: (inflight.discard(i), tasks.discard(t),
                                                self.bridge.submit_wakeup.set()))
        finally:
            # Stop between items: submissions in flight finish (a POST is short), so a
            # graceful stop leaves no job claimed but unsent; only a hang is cut off.
            if tasks:
                with contextlib.suppress(BaseException):
                    await asyncio.wait(list(tasks), timeout=15)
            for task in list(tasks):
                task.cancel()

    async def _one(self, job: sqlite3.Row) -> None:
        store = self.bridge.store
        assert store is not None
        try:
            await self.dispose(job)
        except Exception as exc:  # noqa: BLE001 - never let one job stop the worker
            log.exception("job=%s message_id=%s unexpected error; holding it", job["id"],
                          job["message_id"])
            await self.bridge.db(store.set_job_state, job["id"], "held",
                                 event="held", detail=f"unexpected error: {exc!r}",
                                 error=repr(exc))

    async def dispose(self, job: sqlite3.Row) -> None:
        store, fax4a = self.bridge.store, self.bridge.fax4a
        assert store is not None and fax4a is not None
        job_id = job["id"]
        docs = await self.bridge.db(store.job_documents, job_id)
        push_secret = self.bridge.push_secret
        try:
            body = submission_body(json.loads(job["request_json"]),
                                   [(d["name"], d["charset"], d["data"]) for d in docs],
                                   push_secret)
        except ValidationError as exc:
            await self.bridge.db(store.set_job_state, job_id, "held", event="held",
                                 detail=f"request invalid before sending: {exc}",
                                 error=str(exc), expect=("queued", "deferred"))
            return
        # Everything is prepared (validated, serialised but for the base64 data, which
        # is encoded as it is sent): claim, then POST at once (a crash in between is
        # the only window recovery cannot decide; it is kept as small as possible).
        if not await self.bridge.db(store.claim_job, job_id):
            return
        try:
            retarus_id, base = await fax4a.send(body)
        except Unconfirmed as exc:
            # It may be at Retarus already: hold it as unconfirmed; the confirmation
            # pass promotes it once Retarus lists it under our customerDefinedId.
            log.warning("job=%s message_id=%s %s; not resending", job_id, job["message_id"],
                        exc)
            await self.bridge.db(store.set_job_state, job_id, "held", event="unconfirmed",
                                 detail=f"{exc}; {UNCONFIRMED_HINT}", error=UNCONFIRMED)
            return
        except (Transient, AuthError) as exc:
            now = time.time()
            if now >= job["deadline"]:
                await self.not_submitted(
                    job, f"The fax service could not be reached before the deadline ({exc}).")
                return
            delay = backoff(job["attempts"] + 1, base=2.0, cap=300.0,
                            retry_after_s=getattr(exc, "retry_after", None))
            if isinstance(exc, AuthError):
                log.error("job=%s message_id=%s Retarus refused our credentials: %s", job_id,
                          job["message_id"], exc)
                delay = max(delay, 60.0)
            self.bridge.metrics.submit_retries.inc()
            await self.bridge.db(store.set_job_state, job_id, "deferred", event="deferred",
                                    detail=f"{exc}; next try in {delay:.0f}s", error=str(exc),
                                    next_attempt=now + delay)
            return
        except Permanent as exc:
            await self.not_submitted(job, f"The fax service refused the job ({exc}).")
            return
        self.bridge.last_contact["retarus"] = time.time()
        await self.bridge.db(store.set_job_state, job_id, "submitted", event="submitted",
                                detail=f"Retarus jobId {retarus_id} via {base}",
                                retarus_job_id=retarus_id, datacenter=base)
        log.info("job=%s message_id=%s submitted as %s", job_id, job["message_id"], retarus_id)

    async def not_submitted(self, job: sqlite3.Row, error: str) -> None:
        """Fail a job that never reached Retarus, with its "could not be sent" report."""
        from faxbridge.outbound.track import finish
        recipients = await self.bridge.db(self.bridge.store.job_recipients, job["id"])
        results = [{"idx": r["idx"], "number": r["number"], "display_name": r["display_name"],
                    "status": "NOT_SENT", "reason": "not submitted"} for r in recipients]
        await finish(self.bridge, job, results=results, submitted=False, source="submit",
                     error=error, expect=("submitting",))

    async def recover(self) -> None:
        """Jobs left in `submitting` by a crash: the POST may or may not have reached
        Retarus. They become unconfirmed and go through the confirmation pass: found
        by customerDefinedId → submitted; not found → held for the admin, never resent."""
        store = self.bridge.store
        assert store is not None
        for job in await self.bridge.db(store.jobs_in, ("submitting",)):
            await self.bridge.db(store.set_job_state, job["id"], "held", event="unconfirmed",
                                 detail=f"interrupted while submitting; {UNCONFIRMED_HINT}",
                                 error=UNCONFIRMED)
        await self.confirm_unconfirmed()

    async def confirm_unconfirmed(self) -> None:
        """Look for unconfirmed jobs at Retarus (the list endpoint shows completed jobs
        with their reference.customerDefinedId) and promote the ones found."""
        store, fax4a = self.bridge.store, self.bridge.fax4a
        assert store is not None and fax4a is not None
        waiting = [j for j in await self.bridge.db(store.jobs_in, ("held",))
                   if j["last_error"] == UNCONFIRMED and j["valid_until"] > time.time()]
        if not waiting:
            return
        try:
            reports = await fax4a.list_all_reports()
        except FaxbridgeError as exc:
            log.warning("cannot look for %d unconfirmed job(s) at Retarus: %s", len(waiting),
                        exc)
            return
        by_ref = {(r.reference or {}).get("customerDefinedId"): (r, base) for r, base in reports}
        for job in waiting:
            found = by_ref.get(job["id"])
            if found:
                rep, base = found
                await self.bridge.db(
                    store.set_job_state, job["id"], "submitted", event="confirmed",
                    detail=f"found at Retarus as {rep.jobId} ({base})",
                    retarus_job_id=rep.jobId, datacenter=base, next_attempt=0,
                    expect=("held",))
                log.info("job=%s message_id=%s confirmed at Retarus as %s", job["id"],
                         job["message_id"], rep.jobId)


UNCONFIRMED = "unconfirmed submission"
UNCONFIRMED_HINT = ("Retarus may have the job; it is looked up by customerDefinedId and "
                    "promoted when found. If it never shows up, `faxbridge jobs release ID` "
                    "sends it again")
