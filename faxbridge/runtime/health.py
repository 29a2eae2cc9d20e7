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
