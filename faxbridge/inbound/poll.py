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
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from faxbridge.config import Topic
from faxbridge.errors import AuthError, FaxbridgeError
from faxbridge.retarus.http import backoff
from faxbridge.retarus.models import PullResponse
from faxbridge.retarus.pull import PullClient

if TYPE_CHECKING:
    from faxbridge.app import Bridge

log = logging.getLogger("faxbridge.inbound")
AUTH_RETRY_SECONDS = 300.0


@dataclass
class TopicState:
    """What /readyz and the metrics tell about a topic."""

    status: str = "starting"          # ok, auth-refused, error
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


class TopicPoller:
    def __init__(self, bridge: Bridge, topic: Topic) -> None:
        self.bridge = bridge
        self.topic = topic
        self.state = bridge.topic_states.setdefault(topic.name, TopicState())
        base = topic.url or f"{bridge.sim_url}/faxin/rest/v1"
        password = topic.password.resolve()
        if password is None and bridge.cfg.retarus.mode == "simulator":
            from faxbridge.app import SIM_PASSWORD
            password = SIM_PASSWORD
        self.client = PullClient(base, topic.customer_number, password or "",
                                 timeout=bridge.cfg.retarus.timeout)

    async def run(self) -> None:
        failures = 0
        last: PullResponse | None = None
        try:
            while True:
                self.state.last_poll = time.time()
                try:
                    last = await self.cycle(last)
                except AuthError as exc:
                    self.state.status, self.state.last_error = "auth-refused", str(exc)
                    self.state.errors += 1
                    log.error("topic %s: Fax2WSPull refused the credentials (%s); retrying in "
                              "%.0fs", self.topic.name, exc, AUTH_RETRY_SECONDS)
                    await asyncio.sleep(AUTH_RETRY_SECONDS)
                    continue
                except Exception as exc:  # noqa: BLE001 - transient or a bug: back off
                    if not isinstance(exc, FaxbridgeError):
                        log.exception("topic %s: unexpected error", self.topic.name)
                    failures += 1
                    self.state.status, self.state.last_error = "error", str(exc)
                    self.state.errors += 1
                    delay = backoff(failures, base=self.topic.poll_interval, cap=300.0,
                                    retry_after_s=getattr(exc, "retry_after", None))
                    log.warning("topic %s: %s; retrying in %.1fs", self.topic.name, exc, delay)
                    await asyncio.sleep(delay)
                    continue
                failures = 0
                self.state.status, self.state.last_success = "ok", time.time()
                if last is None or len(last.results) < self.topic.batch_size:
                    await asyncio.sleep(self.topic.poll_interval)
        finally:
            await self.shutdown(last)

    async def cycle(self, last: PullResponse | None) -> PullResponse:
        """Ack what the previous batch committed, fetch the next batch, commit it."""
        pending = self.state.pending_ack
        if last is not None and last.meta.next and pending and \
                {f.id for f in last.results} == set(pending):
            resp = await self.client.follow(last.meta.next, "next")
        else:
            resp = await self.client.poll(self.topic.name, self.topic.batch_size, pending)
        if pending:
            await self.bridge.db(self.bridge.store.mark_acked, self.topic.name, list(pending))
            log.info("topic %s: acknowledged %s", self.topic.name, ",".join(pending))
        self.state.pending_ack = []
        for fax in resp.results:
            if await self.take(fax):
                self.state.pending_ack.append(fax.id)
        return resp

    async def take(self, fax) -> bool:  # noqa: ANN001
        """Download and commit one fax; True when it is safe to acknowledge."""
        store = self.bridge.store
        assert store is not None
        if await self.bridge.db(store.has_inbound, self.topic.name, fax.id):
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
        stored = await self.bridge.db(store.store_inbound, fax.id, self.topic.name,
                                      fax.metadata(), files)
        if stored:
            self.state.received += 1
            self.bridge.metrics.inbound_fetched.labels(self.topic.name).inc()
            log.info("topic %s: fax %s stored (%d file(s))", self.topic.name, fax.id, len(files))
            self.bridge.inbound_wakeup.set()
        return True

    async def shutdown(self, last: PullResponse | None) -> None:
        """Acknowledge what was committed, via the exit URL when it covers exactly that."""
        pending = self.state.pending_ack
        with contextlib.suppress(Exception):
            if pending:
                if last is not None and last.meta.exit and \
                        {f.id for f in last.results} == set(pending):
                    async with asyncio.timeout(5):
                        await self.client.follow(last.meta.exit, "exit")
                else:
                    async with asyncio.timeout(5):
                        await self.client.poll(self.topic.name, 0, pending)
                self.bridge.store.mark_acked(self.topic.name, list(pending))
        with contextlib.suppress(Exception):
            await self.client.aclose()

