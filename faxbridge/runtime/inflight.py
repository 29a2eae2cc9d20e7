"""Faxes accepted but not yet committed, so rate limits hold across concurrent
sessions (and Faxes API requests, which count against the same limits).

A session answers RCPT long before its job is committed at the end of DATA: eight
sessions that each count the store at RCPT all see the same committed faxes and
all pass a limit of three. So each accepted recipient is held here, per
transaction, under the keys it counts against (user or sender, client address,
number), until its job is committed (then the store counts it) or the transaction
ends without one. A count is the store's committed faxes plus the faxes other
transactions hold here.

The one race left is a commit that lands while a count is being read from the
store: the read may or may not contain that job, and its hold is gone. `settled`
keeps the faxes committed while any read runs, so the reader can tell; the
handler then reads again, and adds them (counting them twice at worst: a
temporary refusal, never a fax over the limit) if commits keep landing.

All methods run on the event loop (no locks needed): the count-and-hold of one
RCPT is not interrupted by another session between the count and the hold.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable
from typing import Any, Protocol

from faxbridge.runtime.db import Db
from faxbridge.store.protocol import Store

Key = tuple[str, str]  # (scope, key) as accept.rate_keys gives them
LimitId = tuple[str, str, str]  # (scope, key, window label): accept.Limit.id


class Limit(Protocol):
    """What counting needs of intake.accept.Limit (runtime sits below intake)."""

    scope: str
    key: str
    seconds: int

    @property
    def id(self) -> LimitId: ...


def stored_counts(store: Store, limits: Iterable[Limit],
                  now: float | None = None) -> dict[LimitId, int]:
    """The committed faxes under each limit, as the store has them. The listener,
    the Faxes API, `faxbridge route` and the dashboard all count with this."""
    now = time.time() if now is None else now
    return {lim.id: store.count_faxes_since(lim.scope, lim.key, now - lim.seconds)
            for lim in limits}


class InFlight:
    def __init__(self) -> None:
        self._held: dict[object, Counter[Key]] = {}
        self._total: Counter[Key] = Counter()
        self._settled: Counter[Key] = Counter()
        self._reads = 0

    def hold(self, owner: object, keys: Iterable[Key]) -> None:
        """One more accepted fax of `owner`'s transaction."""
        mine = self._held.setdefault(owner, Counter())
        for k in keys:
            mine[k] += 1
            self._total[k] += 1

    def others(self, owner: object, key: Key) -> int:
        """Faxes that transactions other than `owner`'s hold under `key`."""
        return self._total[key] - self._held.get(owner, Counter())[key]

    def release(self, owner: object, committed: bool = False) -> None:
        """The transaction ended: its job is committed (`committed`: the store
        counts its faxes from now on) or there is none."""
        mine = self._held.pop(owner, None)
        if not mine:
            return
        self._total -= mine
        if committed and self._reads:
            self._settled += mine

    def begin_read(self, keys: Iterable[Key]) -> dict[Key, int]:
        """Before reading committed counts from the store: a mark to compare with."""
        self._reads += 1
        return {k: self._settled[k] for k in keys}

    def end_read(self, mark: dict[Key, int]) -> dict[Key, int]:
        """After the read: the faxes of each key committed meanwhile (the read may
        or may not contain them)."""
        self._reads -= 1
        racing = {k: self._settled[k] - n for k, n in mark.items()}
        if not self._reads:
            self._settled.clear()  # no read holds a mark: nothing to compare with
        return racing

    def holding(self) -> int:
        """Transactions holding faxes (for tests and metrics)."""
        return len(self._held)


async def count_limits(db: Db, inflight: InFlight, owner: object,
                       limits: tuple[Any, ...]) -> dict[LimitId, int]:
    """Other transactions' faxes under each limit: committed in the store plus held
    by unfinished ones. Run on the event loop; the caller holds its own fax with no
    await between this count and `inflight.hold`."""
    keys = {(lim.scope, lim.key) for lim in limits}
    for attempt in range(3):
        mark = inflight.begin_read(keys)
        try:
            stored = await db.run(stored_counts, db.store, limits)
        finally:
            racing = inflight.end_read(mark)
        if not any(racing.values()) or attempt == 2:
            break  # else a commit landed during the read: read again
    return {lim.id: stored[lim.id] + racing[(lim.scope, lim.key)]
            + inflight.others(owner, (lim.scope, lim.key)) for lim in limits}
