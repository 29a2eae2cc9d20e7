"""Wake-up events: a producer that commits new work wakes the stage that takes it,
instead of that stage finding it at its next idle poll."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field


@dataclass
class Wakeups:
    submit: asyncio.Event = field(default_factory=asyncio.Event)   # jobs queued / released
    mail: asyncio.Event = field(default_factory=asyncio.Event)     # mails queued
    inbound: asyncio.Event = field(default_factory=asyncio.Event)  # faxes stored, mails settled
