"""MIME parsing beside the accept loop: in child processes for ordinary mails, in
threads for large ones.

The interpreter runs one thread at a time: a parse in a thread still takes the
accept loop's time (28 % of the SMTP listener's per 10 KB mail in
bench/README.md's profile). A child process parses on another core, and the listener
pays only for handing it the bytes and reading back the result (pickle over a
pipe, on the event loop: no extra thread). Mails above PROCESS_MAX_BYTES stay in
the thread pool: shipping tens of megabytes to a child and the documents back
would cost more memory than the parse saves (their bodies are cut out before
parsing anyway, intake/slim.py).

A child that dies (killed, out of memory) fails only the calls it held, with
ParserUnavailable (the listener answers 451: nothing was queued); until its
replacement is up, calls go to the threads. A child that stops answering (stopped,
or looping on a pathological mail) is killed after DEADLINE seconds on one call,
so that it cannot hold every later mail too: the same 451, the same replacement.

The same `run(fn, *args)` as runtime.db.Offload, so callers do not care where
the parse runs; `fn` must be a module-level function (it is pickled by name)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pickle
import signal
import struct
import sys
import time
from collections.abc import Callable
from typing import Any, TypeVar

from faxbridge.runtime.children import RestartDelay, stop_child
from faxbridge.runtime.db import Offload

T = TypeVar("T")
log = logging.getLogger("faxbridge.parse")

# Mails up to this size are parsed in a child process; larger ones in a thread.
PROCESS_MAX_BYTES = 1 << 20
# A frame: request id and payload length, then the pickled payload.
_FRAME = struct.Struct("!QI")
# Restart delays after a child died: 0.5 s doubling to 30 s, back to 0.5 s once a
# child ran for a minute.
_RESTART = (0.5, 30.0, 60.0)
# One parse of a mail up to PROCESS_MAX_BYTES takes milliseconds; a child that has
# not answered a call in this long is stuck, and is killed. Generous for a loaded
# machine, well inside an SMTP client's DATA timeout (RFC 5321 4.5.3.2.6: 10 min).
DEADLINE = 30.0


class ParserUnavailable(Exception):
    """The parse process died while it held this call."""


class _Child:
    """One parse process and the calls waiting for its answers."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.pending: dict[int, asyncio.Future[Any]] = {}
        self.next_id = 0
        self.served = 0
        self.started = time.monotonic()
        self.reader = asyncio.create_task(self._read(), name=f"parse-child-{proc.pid}")

    @property
    def alive(self) -> bool:
        return not self.reader.done()

    def call(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> asyncio.Future[Any]:
        assert self.proc.stdin is not None
        self.next_id += 1
        payload = pickle.dumps((fn, args), protocol=pickle.HIGHEST_PROTOCOL)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.pending[self.next_id] = fut
        self.proc.stdin.write(_FRAME.pack(self.next_id, len(payload)))
        self.proc.stdin.write(payload)
        return fut

    async def _read(self) -> None:
        out = self.proc.stdout
        assert out is not None
        try:
            while True:
                rid, size = _FRAME.unpack(await out.readexactly(_FRAME.size))
                ok, value = pickle.loads(await out.readexactly(size))
                fut = self.pending.pop(rid, None)
                self.served += 1
                if fut is None or fut.done():
                    continue
                if ok:
                    fut.set_result(value)
                else:
                    fut.set_exception(value)
        except (asyncio.IncompleteReadError, ConnectionError, pickle.UnpicklingError,
                struct.error):
            pass  # the child is gone (or spoke nonsense): fail what it held
        finally:
            for fut in self.pending.values():
                if not fut.done():
                    fut.set_exception(ParserUnavailable(
                        f"the parse process (pid {self.proc.pid}) ended"))
            self.pending.clear()

    async def stop(self) -> None:
        await stop_child(self.proc, 5, "parse process")
        self.reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.reader


class ParsePool:
    """`processes` child processes (0: threads only) and a thread pool."""

    def __init__(self, processes: int, threads: int = 2, deadline: float = DEADLINE) -> None:
        self.threads = Offload(threads, "parse")
        self.processes = processes
        self.deadline = deadline
        self.children: list[_Child] = []
        self._keeper: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._closing = False

    def start(self) -> None:
        """Start the children in the background: calls use the threads until they
        are up, so a bridge's start never waits for them."""
        if self.processes > 0 and self._keeper is None:
            self._keeper = asyncio.create_task(self._keep(), name="parse-processes")

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """fn(*args) in a child when the first argument is a mail of at most
        PROCESS_MAX_BYTES and a child is up; in a thread otherwise."""
        raw = args[0] if args else None
        if isinstance(raw, (bytes, bytearray)) and len(raw) <= PROCESS_MAX_BYTES:
            live = [c for c in self.children if c.alive]
            if live:
                child = min(live, key=lambda c: len(c.pending))
                answer = child.call(fn, args)
                try:
                    # shielded: on the deadline the kill below fails it (and any
                    # other call the child held) with ParserUnavailable
                    return await asyncio.wait_for(asyncio.shield(answer), self.deadline)
                except TimeoutError:
                    log.error("parse process (pid %d) did not answer in %.0f s; killing "
                              "it", child.proc.pid, self.deadline)
                    with contextlib.suppress(ProcessLookupError):
                        child.proc.kill()
                    return await answer
                finally:
                    if not child.alive:
                        self._wake.set()  # the keeper replaces it
        return await self.threads.run(fn, *args)

    def pids(self) -> list[int]:
        return [c.proc.pid for c in self.children if c.alive]

    @property
    def served(self) -> int:
        """Calls the children answered (all of them, since the start)."""
        return self._served_before + sum(c.served for c in self.children)

    _served_before = 0

    async def _keep(self) -> None:
        """Keep `processes` children running; a dead one is replaced after a delay
        (runtime/children.py), meanwhile mails are parsed in threads."""
        restart = RestartDelay(*_RESTART)
        while not self._closing:
            while len(self.children) < self.processes:
                try:
                    self.children.append(_Child(await _spawn()))
                except OSError as exc:
                    log.error("cannot start a parse process: %s (parsing in threads "
                              "meanwhile)", exc)
                    break
            ran = 0.0  # a start failed: try again after a delay
            if len(self.children) == self.processes:
                self._wake.clear()
                waiter = asyncio.ensure_future(self._wake.wait())
                await asyncio.wait([waiter, *(c.reader for c in self.children)],
                                   return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
                dead = [c for c in self.children if not c.alive]
                if self._closing or not dead:
                    continue
                now = time.monotonic()
                for child in dead:
                    self.children.remove(child)
                    self._served_before += child.served
                    code = await child.proc.wait()
                    log.error("parse process (pid %d) ended with status %s; starting "
                              "another (parsing in threads meanwhile)", child.proc.pid, code)
                ran = min(now - c.started for c in dead)
            await asyncio.sleep(restart.after(ran))

    async def close(self) -> None:
        self._closing = True
        self._wake.set()
        if self._keeper is not None:
            self._keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keeper
        for child in self.children:
            await child.stop()
        self.children.clear()
        self.threads.shutdown()


async def _spawn() -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "faxbridge.runtime.parsers",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)


def _child_main() -> None:
    """The parse process: frames in on stdin, answers out on stdout, one at a time,
    until stdin ends (the listener stopped or died)."""
    # Ctrl-C in a terminal reaches the whole process group: the listener decides
    # when to stop, and its stdin closing ends this process.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    inp, out = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # nothing else may write into the answer stream
    while True:
        head = inp.read(_FRAME.size)
        if len(head) < _FRAME.size:
            return
        rid, size = _FRAME.unpack(head)
        payload = inp.read(size)
        if len(payload) < size:
            return
        try:
            fn, args = pickle.loads(payload)
            answer = (True, fn(*args))
        except Exception as exc:  # noqa: BLE001 - the caller decides what it means
            answer = (False, exc)
        try:
            data = pickle.dumps(answer, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:  # noqa: BLE001 - an exception that does not pickle
            data = pickle.dumps((False, RuntimeError(f"{type(exc).__name__}: {exc}")))
        out.write(_FRAME.pack(rid, len(data)))
        out.write(data)
        out.flush()


if __name__ == "__main__":
    # the listener may be killed without closing our stdin in time: exit with it
    with contextlib.suppress(BrokenPipeError, KeyboardInterrupt):
        _child_main()
    os._exit(0)
