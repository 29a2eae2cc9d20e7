"""What an administrator does to a bridge's store, once for both interfaces: the CLI
(`faxbridge jobs|inbox|log`) and the admin HTTP API (/admin/…) call these functions
and only print or serialise what they return, so the two cannot diverge.

Every function takes the store (and the configuration where it needs one), runs
synchronously (the web side runs it off the event loop) and returns plain,
JSON-ready data: the CLI's --json output and the API's answer are the same value."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from faxbridge.config import Config
    from faxbridge.mail.compose import Composer
    from faxbridge.store.protocol import Store
    from faxbridge.store.rows import InboundFax

# Columns never shown: the mail as received and the stored request are large and have
# their own views (`jobs show --raw`), and file data is binary.
HIDDEN = frozenset({"raw", "request_json", "data"})
RESEND_NOTE = "Sent again at the administrator's request."
# How far back a resend by Retarus fax id (rather than topic/id) looks.
FIND_BY_FAX_ID_LIMIT = 1000


class BadQuery(ValueError):
    """A filter value that cannot be understood; the message says what was expected."""


class NotFound(LookupError):
    pass


@dataclass(frozen=True)
class Outcome:
    """The result of a change: whether it was made, and a sentence for the admin."""

    ok: bool
    message: str


def _fields(row: Any) -> dict[str, Any]:
    # The store's rows are dataclasses (store.rows); plain mappings are accepted too.
    if dataclasses.is_dataclass(row) and not isinstance(row, type):
        return dataclasses.asdict(row)
    return dict(row)  # a mapping (e.g. a test's dict)


def public(row: Any) -> dict[str, Any]:
    """A row as shown to the admin: hidden columns left out, JSON columns decoded
    under their name without the `_json` suffix."""
    out = {k: v for k, v in _fields(row).items() if k not in HIDDEN}
    for key in [k for k in out if k.endswith("_json")]:
        out[key.removesuffix("_json")] = json.loads(out.pop(key))
    return out


def parse_since(value: str | None, now: float | None = None) -> float | None:
    """'2h', '30m', '7d', an ISO date or time, or seconds since the epoch."""
    if not value:
        return None
    now = time.time() if now is None else now
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if value[-1] in units and value[:-1].isdigit():
        return now - int(value[:-1]) * units[value[-1]]
    try:
        return float(value)
    except ValueError:
        pass
    try:
        return dt.datetime.fromisoformat(value).timestamp()
    except ValueError:
        raise BadQuery(f"expected e.g. 2h, 30m, 7d, 2026-11-22 or seconds since the epoch, "
                       f"got {value!r}") from None


# ------------------------------------------------------------------ outbound jobs
def list_jobs(store: Store, *, state: str | None = None, sender: str | None = None,
              limit: int = 100) -> list[dict[str, Any]]:
    return [public(r) for r in store.list_jobs(state=state, sender=sender, limit=limit)]


def show_job(store: Store, job_id: str) -> dict[str, Any] | None:
    """One job with its recipients, documents (without their data), timeline and,
    for a held unconfirmed submission, what releasing it would mean."""
    from faxbridge.outbound.submit import confirmation
    job = store.job(job_id)
    if job is None:
        return None
    docs = [{"name": d.name, "type": d.content_type, "size": len(d.data)}
            for d in store.job_documents(job_id)]
    return {**public(job), "confirmation": confirmation(job),
            "outcome_recorded": outcome_recorded(job),
            "recipients": [public(r) for r in store.job_recipients(job_id)],
            "documents": docs,
            "events": [public(e) for e in store.job_events(job_id)]}


def held_jobs(store: Store, limit: int = 100) -> list[dict[str, Any]]:
    """Held jobs, newest first, each with why (last_error) and, for an unconfirmed
    submission, what releasing it would mean (as show_job, without loading documents)."""
    from faxbridge.outbound.submit import confirmation
    return [{**public(j), "confirmation": confirmation(j),
             "outcome_recorded": outcome_recorded(j)}
            for j in store.list_jobs(state="held", limit=limit)]


def job_message(store: Store, job_id: str) -> bytes | None:
    """The mail exactly as it was received, for debugging routing."""
    return store.job_raw(job_id)


def release_job(store: Store, job_id: str, *, by: str, force: bool = False) -> Outcome:
    """Put a held job back in the queue. One the confirmation pass is still looking
    for at Retarus is refused unless forced (it may be sent twice)."""
    from faxbridge.outbound.submit import release_job as release
    ok, message = release(store, job_id, by=by, force=force)
    return Outcome(ok, message)


def outcome_recorded(job: Any) -> bool:
    """Whether a held job was sent and its outcome recorded, only its report mail
    could not be composed: such a job is resolved, never released (that would send
    the fax again)."""
    from faxbridge.outbound.report import REPORT_HELD
    return job.state == "held" and (job.last_error or "").startswith(REPORT_HELD)


def resolve_job(store: Store, job_id: str, *, by: str, composer: Composer | None = None,
                mail_from: str | None = None) -> Outcome:
    """Close a held job whose outcome is recorded (its report mail could not be
    composed): done or failed by that outcome, with a timeline entry naming `by`.
    Once finished, the report cleaner deletes its report at Retarus, as for any
    finished job (a held job's report is kept there: it is the evidence).

    With a composer, the sender also gets a plain fallback report, made as the
    poison check made it: nothing taken from the mail (no Message-ID, subject,
    display names or documents), only the recorded results. If even that cannot be
    composed, or the job's notify setting does not want one, the job is resolved
    without a mail and the timeline says so. Raises NotFound; a held job without a
    recorded outcome is refused (release is the way for those)."""
    from faxbridge.outbound.report import build_report, event_for, report_to, wanted
    job = store.job(job_id)
    if job is None:
        raise NotFound(f"no job {job_id}")
    if job.state != "held":
        return Outcome(False, f"job {job_id} is {job.state}, not held: nothing to resolve")
    if not outcome_recorded(job):
        return Outcome(False, f"job {job_id} is held without a recorded outcome "
                              f"({job.last_error or 'no reason given'}): there is no result "
                              "to close it with; release it instead")
    results = [{"idx": r.idx, "number": r.number, "display_name": None, "status": r.status,
                "reason": r.reason, "sent_ts": r.sent_ts, "duration": r.duration,
                "pages": r.pages, "remote_csid": r.remote_csid,
                "sent_to_number": r.sent_to_number} for r in store.job_recipients(job_id)]
    # a job that never reached Retarus has no Retarus id (not submitted)
    event = event_for(results, submitted=job.retarus_job_id is not None)
    state = "done" if event in ("delivered", "partial") else "failed"
    mail, note = None, "no report mail (the job's notify setting wants none)"
    if composer is None or mail_from is None:
        note = "no report mail (none asked for)"
    elif wanted(job.notify, event):
        plain = dataclasses.replace(job, message_id=None, subject="")
        pages = max((r["pages"] or 0 for r in results), default=0) or None
        try:
            raw = build_report(composer, plain, results, event, mail_from=mail_from,
                               pages=pages)
        except Exception as exc:  # noqa: BLE001 - resolving must not depend on the mail
            from faxbridge.intake.clean import clean_text
            note = clean_text(f"no report mail (even a plain one cannot be composed: "
                              f"{type(exc).__name__}: {exc})", 500)
        else:
            mail = (mail_from, report_to(job), raw)
            note = f"a plain fallback report mail to {', '.join(mail[1])}"
    summary = ", ".join(f"{r['number']} {r['status'] or '-'}" for r in results)
    detail = f"resolved by {by}: {state} by the recorded outcome ({event}: {summary}); {note}"
    if not store.finish_job(job_id, state, event="resolved", detail=detail, mail=mail,
                            expect=("held",)):
        return Outcome(False, f"job {job_id} is not held any more")
    return Outcome(True, f"job {job_id} resolved: {state} ({event}); {note}")


# ------------------------------------------------------------------ received faxes
def _inbox_entry(store: Store, r: InboundFax) -> dict[str, Any]:
    return {"id": r.id, "fax_id": r.fax_id, "topic": r.topic, "state": r.state,
            "acked": bool(r.acked), "received": r.created,
            "delivered_to": r.delivered_to, "last_error": r.last_error,
            "metadata": r.metadata,
            "files": [f.name for f in store.inbound_files(r.id)]}


def list_inbox(store: Store, limit: int = 100) -> list[dict[str, Any]]:
    """Received faxes, newest first, with their ack and delivery state."""
    return [_inbox_entry(store, r) for r in store.list_inbound(limit)]


def find_inbound(store: Store, key: str) -> InboundFax | None:
    """A received fax by its key (topic/fax id) or by the Retarus fax id alone."""
    return store.inbound(key) or next(
        (r for r in store.list_inbound(FIND_BY_FAX_ID_LIMIT) if r.fax_id == key), None)


def resend_inbound(store: Store, cfg: Config, composer: Composer, key: str,
                   to: list[str] | None = None) -> dict[str, Any]:
    """Queue the mail of a received fax again: to `to`, or to the addresses its topic
    maps it to (the fallback mailbox when the topic is gone). The running bridge's
    mail worker sends it. Raises NotFound, and ComposeError when the mail cannot be
    composed (nothing is queued then)."""
    from faxbridge.inbound.deliver import compose_fax_mail, mapped_addresses
    row = find_inbound(store, key)
    if row is None:
        raise NotFound(f"no received fax {key}")
    note = RESEND_NOTE
    if not to:
        to, gone = mapped_addresses(cfg, row)
        note = " ".join(filter(None, (note, gone)))
    raw = compose_fax_mail(composer, cfg.mail.from_address, row, store.inbound_files(row.id),
                           to, note=note)
    store.queue_mail("inbound", row.id, cfg.mail.from_address, to, raw,
                     inbound_state=(row.id, "mailing"))
    return {"resent": row.id, "to": list(to)}


# ------------------------------------------------------------------ SMTP log
def list_log(store: Store, *, failed: bool = False, sender: str | None = None,
             number: str | None = None, since: float | None = None,
             limit: int = 100) -> list[dict[str, Any]]:
    """SMTP transactions, newest first; `number` matches any recipient's number."""
    return [public(r) for r in store.list_log(failed=failed, sender=sender, number=number,
                                              since=since, limit=limit)]


def log_record(store: Store, log_id: int) -> dict[str, Any] | None:
    """One SMTP transaction with every decision: recipients, parts, reply, timings."""
    row = store.log_entry(log_id)
    return public(row) if row is not None else None


# ------------------------------------------------------------------ routing and figures
class RateCounter:
    """The faxes each rate limit counts, read from the store as the listener reads
    them (runtime.inflight.stored_counts), remembering what it counted so that the
    answer can say so. `faxbridge route` and the dashboard's route form count so.
    Without a store every limit counts 0, and the summary says that."""

    def __init__(self, store: Store | None, where: str = "the store") -> None:
        self.store, self.where = store, where
        self.seen: list[str] = []

    def count(self, limit: Any) -> int:
        from faxbridge.runtime.inflight import stored_counts
        n = stored_counts(self.store, [limit])[limit.id] if self.store is not None else 0
        self.seen.append(f"{n} fax(es) in the last {limit.label} {limit.describe()}")
        return n

    def summary(self) -> str:
        if self.store is None:
            return f"no store at {self.where}: counted as 0 faxes"
        return f"counted in {self.where}: " + ("; ".join(self.seen) or "no limit applies")


def explain_route(cfg: Config, store: Store | None, *, sender: str, recipients: list[str],
                  peer: str | None = "127.0.0.1", user: str | None = None,
                  tls: bool = False, where: str = "the store") -> dict[str, Any]:
    """What the SMTP listener would answer this transaction now, step by step: the
    accept path's own run (`intake.accept.simulate`), with the rate limits counted
    in the store when there is one. `faxbridge route` and the dashboard show this."""
    from faxbridge.intake.accept import simulate
    counter = RateCounter(store, where)
    route = simulate(cfg, peer=peer, sender=sender, recipients=recipients, user=user, tls=tls,
                     count=counter.count)
    return {"from": sender, "to": list(recipients), "rate_counts": counter.summary(),
            "ok": route.ok, "route": route, **route.as_dict()}


def figures(store: Store) -> dict[str, Any]:
    """Queue figures as /metrics has them: outbound jobs per state, and per queue the
    items waiting and the time of the oldest."""
    from faxbridge.store.new import OUT_STATES
    counts = store.job_state_counts()
    return {"jobs": {state: counts.get(state, 0) for state in OUT_STATES},
            "queues": {name: {"waiting": n, "oldest": oldest}
                       for name, (n, oldest) in store.queues().items()}}


def rules(cfg: Config) -> dict[str, Any]:
    """The sender rules and inbound topics in force (secrets appear as where they are
    read from, never as their value)."""
    return {"senders": [r.model_dump(mode="json") for r in cfg.senders],
            "topics": [t.model_dump(mode="json") for t in cfg.topics]}


# ------------------------------------------------------------------ deleting
# The Faxes API (DELETE /v2/faxes/outbox|inbox/{id}[/attachment]), the admin API
# (DELETE /admin/jobs|inbox/{id}[/payload]) and the CLI (`jobs|inbox delete`) all
# delete through these, so what may be deleted and what stays is decided once.
def delete_fax(store: Store, job_id: str, *, payload_only: bool, by: str) -> Outcome:
    """A sent fax (job) with everything of it, or only its payload (the mail as
    received, its documents, its settled report mails), keeping the job, its
    results and timeline. Only a finished job (done or failed)."""
    job = store.job(job_id)
    if job is None:
        raise NotFound(f"no job {job_id}")
    if payload_only:
        ok = store.delete_job_payload(job_id, f"payload deleted by {by}")
        what = f"payload of job {job_id} deleted; its metadata and timeline are kept"
    else:
        ok = store.delete_job(job_id)
        what = f"job {job_id} deleted"
    if not ok:
        return Outcome(False, f"job {job_id} is {job.state}: only a finished job (done or "
                              "failed) can be deleted")
    return Outcome(True, what)


def delete_received(store: Store, key: str, *, payload_only: bool) -> Outcome:
    """A received fax with its files and mails, or only those (its row stays). Only
    once it is delivered or held; deleting it whole also needs its Fax2WSPull ack
    (else Retarus offers it again and it comes back)."""
    row = find_inbound(store, key)
    if row is None:
        raise NotFound(f"no received fax {key}")
    if payload_only:
        ok = store.delete_inbound_payload(row.id)
        what = f"files of received fax {row.id} deleted; its metadata is kept"
    else:
        ok = store.delete_inbound(row.id)
        what = f"received fax {row.id} deleted"
    if not ok:
        return Outcome(False, f"received fax {row.id} is {row.state}"
                              f"{'' if row.acked else ', not acknowledged'}: only a "
                              "delivered or held fax" + ("" if payload_only else
                                                         " that Retarus knows is fetched")
                              + " can be deleted")
    return Outcome(True, what)


def apply_retention(store: Store, cfg: Config, *, days: int | None = None,
                    now: float | None = None) -> dict[str, Any]:
    """Remove the payloads past storage.payload_retention_days (or `days` for both
    directions) now, as the housekeeping loop does every hour."""
    from faxbridge.housekeeping import apply_retention as run
    from faxbridge.housekeeping import retention_days
    gone = run(store, cfg, now, days)
    keep = retention_days(cfg) if days is None else dict.fromkeys(gone, days)
    return {d: {"days": keep.get(d), "removed": ids} for d, ids in gone.items()}
