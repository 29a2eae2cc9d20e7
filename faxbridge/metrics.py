"""Prometheus metrics of one bridge (own registry, text exposition format)."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.samples import Sample

if TYPE_CHECKING:
    from faxbridge.store.protocol import Store


# Fixed label values (bounded cardinality), keyed by how each reply of replies.py starts.
REASONS = (
    ("Relaying denied", "relay_denied"), ("Sender ", "sender_not_allowed"),
    ("Fax number ", "destination_blocked"), ("Bad fax number", "bad_number"),
    ("Rate limit", "rate_limited"), ("Too many recipients", "too_many_recipients"),
    ("Nothing to fax", "nothing_to_fax"), ("The mail could not be read", "unreadable"),
    ("The null sender", "null_sender"), ("Authentication required", "auth_required"),
    ("Temporary failure storing", "store_failure"), ("No valid fax recipient", "no_recipient"),
)


def reply_reason(reply: str) -> str:
    """'550 5.7.1 Relaying denied: …' → 'relay_denied'; anything else → its code."""
    m = re.match(r"(\d{3})(?: (\d\.\d{1,3}\.\d{1,3}))?\s*(.*)", reply or "", re.S)
    if not m:
        return "other"
    for prefix, key in REASONS:
        if m.group(3).startswith(prefix):
            return key
    return f"smtp_{m.group(1)}"


# How long composing or delivering a kind of mail may keep failing before /readyz
# says not ready: long enough for a relay restart, short enough to page before
# a queue of reports and received faxes builds up.
MAIL_GRACE_SECONDS = 60.0

WHAT = {"report": "status report mails", "inbound": "received-fax mails"}


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.mails = Counter("faxbridge_smtp_mails", "SMTP transactions by result and reason",
                             ["result", "reason"], registry=r)
        self.sessions = Gauge("faxbridge_smtp_sessions_open", "SMTP sessions open", registry=r)
        # The DATA phases not finished yet (smtp.data_memory_limit): their bytes in
        # all, those held in memory, and how many of them spool to disk.
        self.data_unfinished = Gauge("faxbridge_smtp_data_unfinished_bytes",
                                     "Bytes received by unfinished DATA phases", registry=r)
        self.data_memory = Gauge("faxbridge_smtp_data_memory_bytes",
                                 "Bytes of unfinished DATA phases held in memory", registry=r)
        self.data_spooled = Gauge("faxbridge_smtp_data_spooled",
                                  "Unfinished DATA phases writing to the spool", registry=r)
        self.submit_retries = Counter("faxbridge_submit_retries",
                                      "Fax4A submissions deferred for a retry", registry=r)
        self.report_latency = Histogram(
            "faxbridge_report_latency_seconds", "From acceptance to the final report",
            buckets=(5, 15, 30, 60, 120, 300, 600, 1800, 3600, 14400, 86400), registry=r)
        self.inbound_fetched = Counter("faxbridge_inbound_fetched", "Faxes stored, by topic",
                                       ["topic"], registry=r)
        self.inbound_delivered = Counter("faxbridge_inbound_delivered", "Faxes mailed",
                                         registry=r)
        self.mail_failures = Counter("faxbridge_mail_transport_failures",
                                     "Outgoing mails deferred or refused", ["kind", "outcome"],
                                     registry=r)
        self.compose_failures = Counter(
            "faxbridge_mail_compose_failures",
            "Mails that could not be composed from their templates", ["kind"], registry=r)
        # (stage, kind) → (first failure with no success since, last error): what
        # /readyz reports; stage is "compose" or "deliver", kind "report" or "inbound".
        self.mail_failing: dict[tuple[str, str], tuple[float, str]] = {}
        # The workers process's (`serve` runs its stages in a child): its families and
        # failing mails as of its last snapshot, merged into what this one exposes.
        self.peer_families: list[dict[str, Any]] = []
        self.peer_mail_failing: dict[tuple[str, str], tuple[float, str]] = {}
        self.mail_grace_seconds = MAIL_GRACE_SECONDS
        self.jobs = Gauge("faxbridge_jobs", "Outbound jobs by state", ["state"], registry=r)
        self.queue_depth = Gauge("faxbridge_queue_depth", "Items waiting", ["queue"], registry=r)
        self.queue_age = Gauge("faxbridge_queue_oldest_age_seconds", "Age of the oldest item",
                               ["queue"], registry=r)
        self.topic_up = Gauge("faxbridge_topic_ok", "1 if the topic's last poll succeeded",
                              ["topic"], registry=r)

    def smtp_reply(self, reply: str, ok: bool) -> None:
        self.mails.labels("accepted" if ok else "rejected",
                          "250" if ok else reply_reason(reply)).inc()

    def compose_failed(self, kind: str, error: str) -> None:
        self.compose_failures.labels(kind).inc()
        self._failing("compose", kind, error)

    def mail_deferred(self, kind: str, error: str) -> None:
        """A mail the relay or the Maildir could not take now; it is retried."""
        self.mail_failures.labels(kind, "deferred").inc()
        self._failing("deliver", kind, error)

    def mail_ok(self, stage: str, kind: str) -> None:
        self.mail_failing.pop((stage, kind), None)

    def _failing(self, stage: str, kind: str, error: str) -> None:
        since = self.mail_failing.get((stage, kind), (time.time(), ""))[0]
        self.mail_failing[(stage, kind)] = (since, error)

    def mail_problems(self, now: float | None = None) -> tuple[dict[str, str], list[str]]:
        """Every failing (stage, kind) described; and the reasons for not being ready:
        those failing for longer than mail_grace_seconds. A refused mail (5xx) is not
        among them: it is finished, reported, and says nothing about the next one."""
        now = time.time() if now is None else now
        status, reasons = {}, []
        failing = dict(self.peer_mail_failing)
        for key, (since, error) in self.mail_failing.items():
            if key not in failing or since < failing[key][0]:
                failing[key] = (since, error)
        for (stage, kind), (since, error) in sorted(failing.items()):
            what = WHAT.get(kind, f"{kind} mails")
            verb = "composed" if stage == "compose" else "delivered"
            text = f"{what} could not be {verb} for {now - since:.0f} s: {error}"
            status[f"{kind} {stage}"] = text
            if now - since >= self.mail_grace_seconds:
                reasons.append(text)
        return status, reasons

    def render(self, store: Store, topic_states: dict) -> bytes:
        """Refresh the gauges that are read from the store, then expose everything."""
        from faxbridge.store.new import OUT_STATES
        now = time.time()
        counts = store.job_state_counts()
        for state in OUT_STATES:
            self.jobs.labels(state).set(counts.get(state, 0))
        for queue, (n, oldest) in store.queues().items():
            self.queue_depth.labels(queue).set(n)
            self.queue_age.labels(queue).set(now - oldest if oldest else 0)
        for name, st in topic_states.items():
            self.topic_up.labels(name).set(1 if st.status == "ok" else 0)
        return generate_latest(_Merged(self.registry, self.peer_families))

    def families(self) -> list[dict[str, Any]]:
        """This registry's samples as JSON-able data (the workers process's snapshot)."""
        return [{"name": f.name, "type": f.type, "documentation": f.documentation,
                 "samples": [[s.name, s.labels, s.value] for s in f.samples]}
                for f in self.registry.collect()]


class _Merged:
    """A registry's families with the peer process's samples added: the same
    names as when one process does everything, so dashboards and alerts do not
    change. Values of the same sample add up (counters, histogram buckets, gauges
    that only one of the two processes sets); a `_created` timestamp is the
    earlier one."""

    def __init__(self, registry: CollectorRegistry, peer: list[dict[str, Any]]) -> None:
        self.registry, self.peer = registry, peer

    def collect(self) -> Iterator[Metric]:
        peer = {f["name"]: f for f in self.peer}
        for fam in self.registry.collect():
            other = peer.pop(fam.name, None)
            if other is None:
                yield fam
                continue
            values: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
            for s in fam.samples:
                values[(s.name, tuple(sorted(s.labels.items())))] = s.value
            for name, labels, value in other["samples"]:
                key = (name, tuple(sorted(labels.items())))
                if key not in values:
                    values[key] = value
                elif name.endswith("_created"):
                    values[key] = min(values[key], value)
                else:
                    values[key] += value
            merged = Metric(fam.name, fam.documentation, fam.type)
            merged.samples = [Sample(n, dict(labels), v) for (n, labels), v in values.items()]
            yield merged
        for f in peer.values():  # a family only the peer has
            extra = Metric(f["name"], f["documentation"], f["type"])
            extra.samples = [Sample(n, labels, v) for n, labels, v in f["samples"]]
            yield extra
