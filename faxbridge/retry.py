"""Retry delays shared by every stage that retries (submission, mail, inbound polls)."""

from __future__ import annotations

import random


def backoff(attempt: int, *, base: float = 1.0, cap: float = 300.0,
            retry_after_s: float | None = None) -> float:
    """Exponential backoff with full jitter (attempt 1 → up to `base`), capped;
    a server's Retry-After wins when it asks for longer."""
    delay = random.uniform(0, min(cap, base * (2 ** max(0, attempt - 1))))
    if retry_after_s is not None:
        delay = max(delay, min(retry_after_s, cap))
    return delay
