"""`serve`'s workers process, seen from both ends.

The listener (role "accept") starts the child, restarts it when it dies
unexpectedly (WorkersSupervisor), and merges the status snapshots the child sends
into its own Health, so that its /metrics, /readyz and dashboard tell about the
stages that run in the child. The child (role "workers") sends them
(StatusSender): one JSON line per second, and a last one at stop, on a pipe of
their own (the child's stdout and stderr stay the operator's)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import signal
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from faxbridge.runtime.children import RestartDelay, stop_child
from faxbridge.runtime.health import Health

log = logging.getLogger("faxbridge")

# The write end of the status pipe in the child (its fd number).
ENV_STATUS_FD = "FAXBRIDGE_WORKERS_STATUS_FD"
SNAPSHOT_SECONDS = 1.0
# No snapshot for this long from a running child: it is stuck (readiness says so).
STALE_SECONDS = 10.0
# Restart delays after unexpected exits: 1 s, doubling up to 30 s; back to 1 s once
# a child ran for a minute (a crash loop must not spin, a rare crash must not wait).
BACKOFF_FIRST, BACKOFF_MAX, BACKOFF_RESET = 1.0, 30.0, 60.0
# A snapshot larger than this still unsent: the listener does not read; skip one.
MAX_BUFFERED = 1 << 20


@dataclass
class PeerTopicState:
    """A topic poller's state as the workers process reported it."""

    status: str = "starting"
    last_poll: float | None = None
    last_success: float | None = None
    last_error: str | None = None
    received: int = 0
    errors: int = 0


def encode_snapshot(health: Health, state: str) -> bytes:
    topics = {}
    for name, st in health.topic_states.items():
        topics[name] = asdict(PeerTopicState(st.status, st.last_poll, st.last_success,
                                             st.last_error, st.received, st.errors))
    m = health.metrics
    snap = {"state": state, "pid": os.getpid(), "last_contact": health.last_contact,
            "topics": topics,
            "mail_failing": [[stage, kind, since, error] for (stage, kind), (since, error)
                             in m.mail_failing.items()],
            "metrics": m.families()}
    return json.dumps(snap, separators=(",", ":")).encode() + b"\n"


def apply_snapshot(health: Health, snap: dict[str, Any]) -> None:
    # the latest of each contact: a restarted child starts without any
    for what, ts in snap["last_contact"].items():
        health.peer_last_contact[str(what)] = max(float(ts),
                                                  health.peer_last_contact.get(what, 0.0))
    health.peer_topic_states = {name: PeerTopicState(**d) for name, d in snap["topics"].items()}
    health.metrics.peer_mail_failing = {(stage, kind): (since, error)
                                        for stage, kind, since, error in snap["mail_failing"]}
    health.metrics.peer_families = snap["metrics"]


class StatusSender:
    """(workers process) Snapshots of its Health to the listener."""

    def __init__(self, health: Health, state: Callable[[], str]) -> None:
        self.health, self.state = health, state
        self._transport: asyncio.WriteTransport | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        fd = os.environ.get(ENV_STATUS_FD)
        if not fd:
            return  # started by hand, not by a listener: nobody to tell
        pipe = os.fdopen(int(fd), "wb", buffering=0)
        self._transport, _ = await asyncio.get_running_loop().connect_write_pipe(
            asyncio.Protocol, pipe)
        self._task = asyncio.create_task(self._loop(), name="workers status")

    async def _loop(self) -> None:
        while True:
            self.send()
            await asyncio.sleep(SNAPSHOT_SECONDS)

    def send(self) -> None:
        t = self._transport
        if t is None or t.is_closing() or t.get_write_buffer_size() > MAX_BUFFERED:
            return
        try:
            t.write(encode_snapshot(self.health, self.state()))
        except Exception:  # noqa: BLE001 - a snapshot must never stop the workers
            log.exception("workers status snapshot failed")

    async def close(self) -> None:
        """The last snapshot (after the runners stopped), then end of file."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.send()
        if self._transport is not None:
            self._transport.close()


def exit_text(rc: int | None) -> str:
    if rc is not None and rc < 0:
        with contextlib.suppress(ValueError):
            return f"exit status {rc}, killed by {signal.Signals(-rc).name}"
    return f"exit status {rc}"


class WorkersSupervisor:
    """(listener) Starts the workers process, watches it and restarts it after an
    unexpected exit with a backoff; reads its snapshots into `health`; tells
    readiness (problem/describe) whether the workers run and report."""

    def __init__(self, argv: list[str], env: dict[str, str], nice: int, health: Health,
                 stop_seconds: float, on_started: Callable[[], None]) -> None:
        self.argv, self.env, self.nice, self.health = argv, env, nice, health
        self.stop_seconds, self.on_started = stop_seconds, on_started
        self.process: asyncio.subprocess.Process | None = None
        self.stopping = False
        self._started_at = 0.0          # monotonic, of the running child
        self._last_seen = 0.0           # monotonic, of its last snapshot (or start)
        self._state = "starting"        # what its last snapshot said
        self._down: tuple[str, float] | None = None  # (exit text, restart at) while down
        self.restart = RestartDelay(BACKOFF_FIRST, BACKOFF_MAX, BACKOFF_RESET)
        self._watch: asyncio.Task[None] | None = None
        self._reader: asyncio.Task[None] | None = None
        health.workers = self

    async def start(self) -> None:
        await self._spawn()
        self._watch = asyncio.create_task(self._supervise(), name="workers supervisor")

    async def _spawn(self) -> None:
        read_fd, write_fd = os.pipe()
        env = {**self.env, ENV_STATUS_FD: str(write_fd)}
        nice = self.nice
        try:
            self.process = await asyncio.create_subprocess_exec(
                *self.argv, stdin=asyncio.subprocess.PIPE, env=env, pass_fds=(write_fd,),
                # its own session: a Ctrl-C in the terminal reaches the listener only,
                # which then stops the child (end of its stdin) after the listener's
                # sessions are done, instead of the child dying on its own
                start_new_session=True,
                # a lower CPU priority: accepting (the 250 a client waits for) goes
                # first, the durable queue absorbs what the workers have not done yet
                preexec_fn=(lambda: os.nice(nice)) if nice else None)
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)  # the child's copy is the only one: its exit is our EOF
        now = time.monotonic()
        self._started_at = self._last_seen = now
        self._state, self._down = "starting", None
        self._reader = asyncio.create_task(self._read(read_fd), name="workers status reader")
        log.info("workers process started (pid %d)", self.process.pid)
        self.on_started()

    async def _read(self, fd: int) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=16 << 20)
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(fd, "rb", buffering=0))
        try:
            while line := await reader.readline():
                try:
                    snap = json.loads(line)
                    apply_snapshot(self.health, snap)
                except (ValueError, KeyError, TypeError) as exc:
                    log.warning("workers status: unreadable snapshot: %s", exc)
                    continue
                self._last_seen = time.monotonic()
                self._state = str(snap.get("state", "running"))
        finally:
            transport.close()

    async def _supervise(self) -> None:
        while not self.stopping:
            proc = self.process
            assert proc is not None
            rc = await proc.wait()
            if self.stopping:
                return
            ran = time.monotonic() - self._started_at
            delay = self.restart.after(ran)
            text = exit_text(rc)
            self._down = (text, time.monotonic() + delay)
            log.error("workers process (pid %d) exited unexpectedly (%s) after %.0f s; "
                      "restarting it in %.0f s (accepted mail waits in the queue)",
                      proc.pid, text, ran, delay)
            await asyncio.sleep(delay)
            while not self.stopping:
                try:
                    await self._spawn()
                    break
                except OSError as exc:
                    delay = self.restart.after(0.0)
                    self._down = (f"could not start: {exc}", time.monotonic() + delay)
                    log.error("workers process could not be started: %s; retrying in "
                              "%.0f s", exc, delay)
                    await asyncio.sleep(delay)

    def problem(self) -> str | None:
        """Why the workers are not doing their job now (a readiness reason), if so."""
        now = time.monotonic()
        if self.stopping:
            return None
        if self._down is not None:
            text, restart_at = self._down
            return (f"workers process not running ({text}), restarting in "
                    f"{math.ceil(max(0.0, restart_at - now))} s")
        pid = self.process.pid if self.process is not None else None
        if now - self._last_seen > STALE_SECONDS:
            return (f"workers process (pid {pid}) sent no status for "
                    f"{now - self._last_seen:.0f} s")
        if self._state.startswith("waiting"):
            return f"workers process (pid {pid}) {self._state}"
        return None

    def describe(self) -> str:
        if (problem := self.problem()) is not None:
            return problem
        pid = self.process.pid if self.process is not None else None
        return f"{self._state} (pid {pid})"

    def hangup(self) -> None:
        """SIGHUP (reload) forwarded to the child: it rereads the config file too."""
        p = self.process
        if p is not None and p.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGHUP)

    async def stop(self) -> None:
        """End of its stdin tells the workers process to stop (between items, as the
        runners do); it is killed only if it takes too long. Not restarted."""
        self.stopping = True
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        p, self.process = self.process, None
        if p is not None:
            await stop_child(p, self.stop_seconds + 10, "workers process")
        if self._reader is not None:
            # its last snapshot (what it counted until it stopped) is read to the end
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._reader, 5)
