"""What /readyz and /metrics report, written by the parts that know it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from faxbridge.metrics import Metrics


@dataclass
class Health:
    metrics: Metrics = field(default_factory=Metrics)
    # "retarus", "relay" → time of the last successful contact
    last_contact: dict[str, float] = field(default_factory=dict)
    # topic name → its poller's TopicState (status, last poll, errors, …)
    topic_states: dict[str, Any] = field(default_factory=dict)
    accepting: bool = True       # False while shutting down: new SMTP sessions get 421
    sessions_in_data: int = 0    # SMTP sessions between DATA and its reply
    smtp_address: str | None = None
    # `serve` with its workers process: the child's last contacts and topic states as
    # of its last snapshot, and the link to it (runtime/workers.py: WorkersSupervisor,
    # which tells whether the child runs and reports); None when one process does all.
    peer_last_contact: dict[str, float] = field(default_factory=dict)
    peer_topic_states: dict[str, Any] = field(default_factory=dict)
    workers: Any = None

    def contacts(self) -> dict[str, float]:
        """The last successful contacts, of this process or of its workers process."""
        out = dict(self.peer_last_contact)
        for what, ts in self.last_contact.items():
            out[what] = max(ts, out.get(what, ts))
        return out

    def all_topic_states(self) -> dict[str, Any]:
        return {**self.peer_topic_states, **self.topic_states}
