"""One poller per Fax2WSPull topic (Retarus Fax2WSPull page; docs/retarus-wire.md §3).

fetch a batch → download every document → commit the fax locally → only then
acknowledge it. The ack rides on the next call (the documented `next` URL when
every fax of the batch was committed, else our own `ids=` list of the committed
ones) or, on shutdown, the `exit` URL. A fax whose download failed is left
unacknowledged: Retarus offers it again after its lock. A re-offered fax that is
already stored (its ack was lost) is acknowledged again, never stored or mailed twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Hashable
from dataclasses import dataclass, field

from faxbridge.config import Topic
from faxbridge.errors import AuthError, FaxbridgeError
from faxbridge.retarus.clients import RetarusClients
from faxbridge.retarus.models import PullFax, PullResponse
from faxbridge.retry import backoff
from faxbridge.runner import Runner
from faxbridge.runtime.db import Db
from faxbridge.runtime.health import Health
from faxbridge.runtime.wakeups import Wakeups

log = logging.getLogger("faxbridge.inbound")
AUTH_RETRY_SECONDS = 300.0


@dataclass
class TopicState:
    """What /readyz and the metrics tell about a topic."""

    status: str = "starting"          # ok, auth-refused, error, standby (another node polls)
    last_poll: float | None = None
    last_success: float | None = None
    last_error: str | None = None
    received: int = 0
    errors: int = 0
    pending_ack: list[str] = field(default_factory=list)


def preferred(documents: list, fmt: str) -> list:  # noqa: ANN001
    """When a fax offers the same document in several formats (<id>.pdf and
    <id>.tif), keep the one of topics[].file_format; single formats are kept."""
    by_stem: dict[str, list] = {}
    for doc in documents:
        name = doc.url.rstrip("/").rsplit("/", 1)[-1]
        by_stem.setdefault(name.rsplit(".", 1)[0], []).append(doc)
    out = []
    for docs in by_stem.values():
        exts = {d.url.rsplit(".", 1)[-1].lower(): d for d in docs}
        want = {"pdf": ("pdf",), "tif": ("tif", "tiff")}[fmt]
        pick = next((exts[e] for e in want if e in exts), None)
        out.extend([pick] if pick is not None else docs)
    return out


class TopicPoller(Runner[PullFax]):
    """A round: acknowledge what the previous batch committed and fetch the next
    batch (the claim), then download and commit each fax (an item)."""

    log = log

    def __init__(self, topic: Topic, db: Db, retarus: RetarusClients, health: Health,
                 wakeups: Wakeups) -> None:
        super().__init__()
        self.name = f"topic {topic.name}"
        self.topic = topic
        self.db, self.health, self.wakeups = db, health, wakeups
        self.state = health.topic_states.setdefault(topic.name, TopicState())
        self.client = retarus.pull_client(topic)
        self.last: PullResponse | None = None
        self.failures_in_a_row = 0

    async def claim(self, limit: int, busy: frozenset[Hashable]) -> list[PullFax]:
        """Ack what the previous batch committed, fetch the next batch."""
        last, pending = self.last, self.state.pending_ack
        if not await self.db.run(self.db.store.lead, f"topic:{self.topic.name}"):
            # Another node on the same database polls this topic: two pollers would
            # split its batches and their acks. Acknowledge what this one committed.
            if pending:
                await self.client.poll(self.topic.name, 0, pending)
                await self.db.run(self.db.store.mark_acked, self.topic.name, list(pending))
                self.state.pending_ack = []
            self.last = None
            self.state.status = "standby"
            return []
        self.state.last_poll = time.time()
        if last is not None and last.meta.next and pending and \
                {f.id for f in last.results} == set(pending):
            resp = await self.client.follow(last.meta.next, "next")
        else:
            resp = await self.client.poll(self.topic.name, self.topic.batch_size, pending)
        if pending:
            await self.db.run(self.db.store.mark_acked, self.topic.name, list(pending))
            log.info("topic %s: acknowledged %s", self.topic.name, ",".join(pending))
        self.state.pending_ack = []
        self.last = resp
        self.failures_in_a_row = 0
        self.state.status, self.state.last_success = "ok", time.time()
        return list(resp.results)

    async def claim_failed(self, exc: Exception) -> None:
        self.state.errors += 1
        if isinstance(exc, AuthError):
            self.state.status, self.state.last_error = "auth-refused", str(exc)
            log.error("topic %s: Fax2WSPull refused the credentials (%s); retrying in "
                      "%.0fs", self.topic.name, exc, AUTH_RETRY_SECONDS)
            await self.wait(AUTH_RETRY_SECONDS)
            return
        if not isinstance(exc, FaxbridgeError):
            log.exception("topic %s: unexpected error", self.topic.name)
        self.failures_in_a_row += 1
        self.state.status, self.state.last_error = "error", str(exc)
        delay = backoff(self.failures_in_a_row, base=self.topic.poll_interval, cap=300.0,
                        retry_after_s=getattr(exc, "retry_after", None))
        log.warning("topic %s: %s; retrying in %.1fs", self.topic.name, exc, delay)
        await self.wait(delay)

    async def pause(self, claimed: int, failed: int) -> None:
        # A full batch: more may be waiting, fetch again at once.
        if claimed < self.topic.batch_size:
            await self.wait(self.topic.poll_interval)

    def key(self, item: PullFax) -> Hashable:
        return item.id

    def describe(self, item: PullFax) -> str:
        return f"fax {item.id} (not acknowledged: it will be offered again)"

    async def dispose(self, fax: PullFax) -> None:
        if await self.take(fax):
            self.state.pending_ack.append(fax.id)

    async def take(self, fax: PullFax) -> bool:
        """Download and commit one fax; True when it is safe to acknowledge."""
        store = self.db.store
        if await self.db.run(store.has_inbound, self.topic.name, fax.id):
            log.info("topic %s: fax %s offered again (ack lost); acknowledging only",
                     self.topic.name, fax.id)
            return True
        files: list[tuple[str, str, bytes]] = []
        try:
            for doc in preferred(fax.documents, self.topic.file_format):
                data, ctype = await self.client.download(doc.url)
                name = doc.url.rstrip("/").rsplit("/", 1)[-1]
                files.append((name, ctype.split(";")[0].strip(), data))
        except FaxbridgeError as exc:
            # Not acknowledged: Retarus offers it again after the lock.
            log.warning("topic %s: fax %s download failed (%s); it will be offered again",
                        self.topic.name, fax.id, exc)
            return False
        stored = await self.db.run(store.store_inbound, fax.id, self.topic.name,
                                   fax.metadata(), files)
        if stored:
            self.state.received += 1
            self.health.metrics.inbound_fetched.labels(self.topic.name).inc()
            log.info("topic %s: fax %s stored (%d file(s))", self.topic.name, fax.id, len(files))
            self.wakeups.inbound.set()
        return True

    async def finish(self) -> None:
        """Acknowledge what was committed, via the exit URL when it covers exactly that."""
        last, pending = self.last, self.state.pending_ack
        with contextlib.suppress(Exception):
            if pending:
                if last is not None and last.meta.exit and \
                        {f.id for f in last.results} == set(pending):
                    async with asyncio.timeout(5):
                        await self.client.follow(last.meta.exit, "exit")
                else:
                    async with asyncio.timeout(5):
                        await self.client.poll(self.topic.name, 0, pending)
                # On the loop, not the store's pool: this also runs when cancelled,
                # and a cancelled await would not wait for the commit.
                self.db.store.mark_acked(self.topic.name, list(pending))
        with contextlib.suppress(Exception):
            await self.client.aclose()
