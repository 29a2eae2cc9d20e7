"""Shared fixtures: a real simulator and a real bridge on 127.0.0.1 port 0."""

from __future__ import annotations

import asyncio
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from faxbridge.app import Bridge
from faxbridge.config import Config, SenderRule, embedded_default, parse
from faxbridge.retarus.fax4a import Fax4AClient, Fax4AEndpoints, make_client
from faxbridge.simulator.app import SimState, build_app
from faxbridge.web.server import HttpServer

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"
SHARED = ROOT.parent / "shared" / "reference" / "retarus"


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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def wait_for(pred: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        await asyncio.sleep(interval)
    raise AssertionError("condition not met in time")


async def sim_jobs(url: str) -> list[dict[str, Any]]:
    async with httpx.AsyncClient() as c:
        return (await c.get(f"{url}/_sim/jobs")).json()


class Proc:
    """A faxbridge subprocess (for kill -9 tests)."""

    def __init__(self, args: list[str], cwd: Path, env: dict[str, str] | None = None) -> None:
        self.log = cwd / f"proc-{time.monotonic_ns()}.log"
        self.fh = self.log.open("wb")
        self.p = subprocess.Popen([sys.executable, "-m", "faxbridge", *args], cwd=cwd,
                                  stdout=self.fh, stderr=subprocess.STDOUT,
                                  env={**os.environ, **(env or {})})

    def wait_output(self, text: str, timeout: float = 20.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = self.log.read_text(errors="replace")
            if text in out:
                return out
            if self.p.poll() is not None:
                raise AssertionError(f"process exited early:\n{out}")
            time.sleep(0.05)
        raise AssertionError(f"{text!r} not seen:\n{self.log.read_text(errors='replace')}")

    def kill9(self) -> None:
        self.p.kill()
        self.p.wait()
        self.fh.close()

    def stop(self) -> None:
        if self.p.poll() is None:
            self.p.terminate()
            try:
                self.p.wait(10)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        self.fh.close()


def start_simulator(procs: list[Proc], cwd: Path, *args: str) -> str:
    """A simulator in its own process (it survives the bridge's kill -9); its URL."""
    port = free_port()
    sim = Proc(["simulator", "--listen", f"127.0.0.1:{port}", *args], cwd)
    procs.append(sim)
    sim.wait_output("Retarus simulator on")
    return f"http://127.0.0.1:{port}"


def retarus_toml(url: str) -> str:
    """The [retarus] section for a bridge process using the simulator at `url`."""
    return (f'[retarus]\nsend_url = "{url}/fax4a/ha-de/rest/v1"\n'
            f'datacenter_urls = ["{url}/fax4a/de1/rest/v1", "{url}/fax4a/de2/rest/v1"]\n')


ALL_SENDERS_TOML = '[[senders]]\nname = "all"\nmatch = ["*"]\n'


def serve_args(cfg: Path, smtp_port: int, http_port: int) -> list[str]:
    """`faxbridge serve` on fixed ports (kept across restarts of a kill test)."""
    return ["serve", "--config", str(cfg), "--smtp-listen", f"127.0.0.1:{smtp_port}",
            "--http-listen", f"127.0.0.1:{http_port}"]


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


# ---------------------------------------------------------------- port 0 processes
# Subprocesses bind port 0 and the test reads the port they print: a port picked
# by free_port() can be taken by anything else between the pick and the bind (and
# again at every restart). All of these block: call them through asyncio.to_thread
# from async tests.
LISTENING_RE = re.compile(r"^faxbridge listening: SMTP (\S+), HTTP (http://[^\s,]+)",
                          re.MULTILINE)
SIMULATOR_RE = re.compile(r"^Retarus simulator on (http://\S+) ", re.MULTILINE)


def wait_output_match(proc: Proc, pattern: re.Pattern[str],
                      timeout: float = 30.0) -> re.Match[str]:
    """The first complete line of `proc`'s output matching `pattern`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = proc.log.read_text(errors="replace")
        for m in pattern.finditer(out):
            if out.find("\n", m.end()) != -1:  # the whole line is written
                return m
        if proc.p.poll() is not None:
            raise AssertionError(f"process exited early:\n{out}")
        time.sleep(0.05)
    raise AssertionError(f"{pattern.pattern!r} not seen:\n{proc.log.read_text(errors='replace')}")


def start_simulator_port0(procs: list[Proc], cwd: Path, *args: str) -> str:
    """A simulator process on a port of its own choosing; its URL."""
    sim = Proc(["simulator", "--listen", "127.0.0.1:0", *args], cwd)
    procs.append(sim)
    return wait_output_match(sim, SIMULATOR_RE).group(1)


def serve_port0_args(cfg: Path) -> list[str]:
    """`faxbridge serve` letting the OS pick both ports (new ones at every restart)."""
    return ["serve", "--config", str(cfg), "--smtp-listen", "127.0.0.1:0",
            "--http-listen", "127.0.0.1:0"]


def start_bridge_port0(procs: list[Proc], cwd: Path, cfg: Path,
                       env: dict[str, str] | None = None) -> tuple[Proc, str, str]:
    """`faxbridge serve --config cfg` on port 0: (process, SMTP host:port, HTTP URL)."""
    bridge = Proc(serve_port0_args(cfg), cwd, env)
    procs.append(bridge)
    m = wait_output_match(bridge, LISTENING_RE)
    return bridge, m.group(1), m.group(2)
