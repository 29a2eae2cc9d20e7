"""Builds the parts from a Config, starts and stops them, handles signals."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import secrets
import signal
import ssl
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx

from faxbridge.config import Config
from faxbridge.errors import ConfigError
from faxbridge.preflight import preflight
from faxbridge.retarus.fax4a import Fax4AClient, Fax4AEndpoints, make_client
from faxbridge.simulator.app import SimState, build_app
from faxbridge.store import Store
from faxbridge.web.server import HttpServer

log = logging.getLogger("faxbridge")
T = TypeVar("T")

SIM_PASSWORD = "simulator"  # the embedded simulator's own credentials; never a real secret


@dataclass
class Overrides:
    data_dir: Path | None = None
    smtp_listen: str | None = None
    http_listen: str | None = None
    simulator_listen: str | None = None


def apply_overrides(cfg: Config, o: Overrides) -> Config:
    """`serve` flags win over the config file (README "Command line")."""
    upd = {}
    if o.data_dir:
        upd["storage"] = cfg.storage.model_copy(update={"data_dir": o.data_dir})
    if o.smtp_listen:
        upd["smtp"] = cfg.smtp.model_copy(update={"listen": o.smtp_listen})
    if o.http_listen:
        upd["http"] = cfg.http.model_copy(update={"listen": o.http_listen})
    if o.simulator_listen:
        upd["simulator"] = cfg.simulator.model_copy(update={"listen": o.simulator_listen})
    return cfg.model_copy(update=upd)


class Bridge:
    """Everything `faxbridge serve` runs, in one process and one event loop."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.store: Store | None = None
        self.sim_state: SimState | None = None
        self.sim_server: HttpServer | None = None
        self.sim_url: str | None = None
        self.http_server: HttpServer | None = None
        self.smtp_server: asyncio.base_events.Server | None = None
        self.smtp_address: str | None = None
        self.fax4a: Fax4AClient | None = None
        self._http: httpx.AsyncClient | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._old_http: list[httpx.AsyncClient] = []
        self.submit_wakeup = asyncio.Event()
        self.mail_wakeup = asyncio.Event()
        self.inbound_wakeup = asyncio.Event()
        self.topic_states: dict[str, Any] = {}
        # kind → coroutine(row, refused|error): the inbound issue hooks its states here.
        self.mail_sent_hooks: dict[str, Callable[..., Any]] = {}
        self.mail_failed_hooks: dict[str, Callable[..., Any]] = {}
        from faxbridge.mail.compose import Composer
        from faxbridge.mail.transport import make_transport
        self.composer = Composer(cfg.mail.template_dir, cfg.smtp.hostname)
        self.transport = make_transport(cfg.mail, cfg.storage.data_dir)
        # The status push secret (set in start, after the preflight has checked that
        # a configured one can be read).
        self.push_secret: str | None = None
        # The STARTTLS context new SMTP sessions use (None: no STARTTLS), and the
        # fingerprint of the files it came from; built by the preflight.
        self.smtp_tls: ssl.SSLContext | None = None
        self.smtp_tls_fingerprint: str | None = None
        from faxbridge.web.metrics import Metrics
        self.metrics = Metrics()
        self.accepting = True          # False while shutting down: new sessions get 421
        self.sessions_in_data = 0      # sessions between DATA and its reply
        self._topic_tasks: dict[str, asyncio.Task[None]] = {}
        self.last_contact: dict[str, float] = {}   # "retarus", "relay" → time of last success
        # Own thread pools: store commits (serialised by the store's lock anyway) and
        # MIME parsing must not queue behind other users of asyncio's default pool.
        self._db_pool = ThreadPoolExecutor(4, thread_name_prefix="store")
        self._cpu_pool = ThreadPoolExecutor(2, thread_name_prefix="parse")

    async def db(self, fn: Callable[..., T], *args: Any, **kw: Any) -> T:
        """Run a blocking store call off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(
            self._db_pool, functools.partial(fn, *args, **kw))

    async def cpu(self, fn: Callable[..., T], *args: Any, **kw: Any) -> T:
        """Run CPU-bound work (MIME parsing) off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(
            self._cpu_pool, functools.partial(fn, *args, **kw))

    # ------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        cfg = self.cfg
        # What `faxbridge check` validates, before anything is bound or created: a
        # missing certificate or secret is a ConfigError naming its key, not a traceback.
        pre = preflight(cfg)
        if pre.errors:
            raise ConfigError(pre.errors)
        for warning in pre.warnings:
            log.warning("config: %s", warning)
        self.smtp_tls, self.smtp_tls_fingerprint = pre.tls, pre.tls_fingerprint
        # Configured, or (simulator) a random one per run that travels to the
        # simulator inside each job, like the real credentials would.
        self.push_secret = cfg.retarus.push_password.resolve() or (
            secrets.token_urlsafe(18) if cfg.retarus.mode == "simulator" else None)
        # Before anything binds: a bridge that cannot compose its report and fax mails
        # must not accept faxes (TemplateError: one line per problem, no traceback).
        from faxbridge.mail.compose import TemplateError
        if problems := self.composer.check():
            raise TemplateError(problems)
        data_dir = cfg.storage.data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        self.store = Store(data_dir / "faxbridge.sqlite3", cfg.storage.busy_timeout_ms)
        from faxbridge.store.groupcommit import GroupCommitter
        self.committer = GroupCommitter(self.store, self.db)
        if cfg.retarus.mode == "simulator" and not cfg.retarus.send_url:
            self.sim_state = SimState(customer_number=cfg.retarus.customer_number,
                                      username=cfg.retarus.username,
                                      password=cfg.retarus.password.resolve() or SIM_PASSWORD,
                                      pull_password=SIM_PASSWORD,
                                      complete_after=cfg.simulator.complete_after,
                                      lock_seconds=cfg.simulator.lock_seconds)
            self.sim_server = HttpServer(build_app(self.sim_state), cfg.simulator.listen,
                                         "simulator.listen")
            await self.sim_server.start()
            self.sim_url = self.sim_server.url
        self._connect_retarus()
        from faxbridge.web.app import build_web_app
        self.http_server = HttpServer(build_web_app(self), cfg.http.listen, "http.listen")
        await self.http_server.start()
        await self._start_smtp()
        self._start_workers()

    async def _start_smtp(self) -> None:
        from faxbridge.smtp.server import start_smtp
        self.smtp_server, self.smtp_address = await start_smtp(self)

    def _start_workers(self) -> None:
        from faxbridge.workers import workers_for
        for name, coro in workers_for(self):
            task = asyncio.create_task(coro, name=name)
            self._tasks.append(task)
        self._start_topics()

    def _start_topics(self) -> None:
        from faxbridge.inbound.poll import TopicPoller
        for t in self.cfg.topics:
            if t.url or self.sim_url:
                self._topic_tasks[t.name] = asyncio.create_task(
                    TopicPoller(self, t).run(), name=f"topic:{t.name}")

    async def _stop_topics(self) -> None:
        # Cancelling a poller acknowledges its committed batch through the exit URL.
        for task in self._topic_tasks.values():
            task.cancel()
        for task in self._topic_tasks.values():
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._topic_tasks.clear()

    async def reload(self, new: Config) -> list[str]:
        """Switch to a validated config. New SMTP sessions and new jobs use it at once
        (the handler reads bridge.cfg per command); nothing in flight is dropped.

        Nothing running is closed before everything new is ready: the preflight
        (certificate and key, secrets, data directory) runs first, then any changed
        listen address is bound; only then the old listeners close. A certificate
        change on the same port swaps the STARTTLS context that new sessions take,
        without rebinding, so the port is never closed. If any step fails, the old
        config, listeners and TLS context stay in force and the problems are logged."""
        from faxbridge.mail.compose import Composer
        from faxbridge.mail.transport import make_transport
        from faxbridge.smtp.server import start_smtp
        from faxbridge.web.app import build_web_app
        from faxbridge.web.server import ListenError
        if problems := Composer(new.mail.template_dir, new.smtp.hostname).check():
            log.error("reload refused, keeping the running config: mail templates: %s",
                      "; ".join(problems))
            return []
        old, changes = self.cfg, []
        pre = preflight(new)
        if pre.errors:
            for problem in pre.errors:
                log.error("reload refused, keeping the running config: %s", problem)
            return []
        for warning in pre.warnings:
            log.warning("config: %s", warning)
        fresh_smtp: tuple[asyncio.base_events.Server, str] | None = None
        fresh_http: HttpServer | None = None
        try:
            if new.smtp.listen != old.smtp.listen:
                fresh_smtp = await start_smtp(self, new.smtp.listen)
            if new.http.listen != old.http.listen and self.http_server is not None:
                fresh_http = HttpServer(build_web_app(self), new.http.listen, "http.listen")
                await fresh_http.start()
        except (ListenError, OSError) as exc:
            if fresh_smtp is not None:
                fresh_smtp[0].close()
            if fresh_http is not None:
                with contextlib.suppress(Exception):
                    await fresh_http.stop()
                fresh_http.sock.close()
            log.error("reload refused, keeping the running config: %s", exc)
            return []
        # Everything new is ready: switch, then close what it replaces.
        self.cfg = new
        if fresh_smtp is not None:
            if self.smtp_server is not None:
                self.smtp_server.close()  # existing sessions go on on their sockets
            self.smtp_server, self.smtp_address = fresh_smtp
            changes.append("smtp listener")
        if fresh_http is not None:
            assert self.http_server is not None
            await self.http_server.stop()
            self.http_server = fresh_http
            changes.append("http listener")
        if pre.tls_fingerprint != self.smtp_tls_fingerprint:
            changes.append("smtp TLS")
        # Always the freshly loaded context: it is the one the preflight validated.
        self.smtp_tls, self.smtp_tls_fingerprint = pre.tls, pre.tls_fingerprint
        self.composer = Composer(new.mail.template_dir, new.smtp.hostname)
        self.transport = make_transport(new.mail, new.storage.data_dir)
        if new.retarus != old.retarus:
            self._connect_retarus()
            changes.append("retarus")
        if new.topics != old.topics:
            await self._stop_topics()
            self._start_topics()
            changes.append("topics")
        for section in ("senders", "fax", "mail", "smtp"):
            if getattr(new, section) != getattr(old, section) and section not in changes:
                changes.append(section)
        for section in ("storage", "simulator", "logging"):
            if getattr(new, section) != getattr(old, section):
                log.warning("[%s] changed: takes effect at the next restart", section)
        log.info("configuration reloaded (%s)", ", ".join(changes) or "nothing changed")
        return changes

    def _connect_retarus(self) -> None:
        """(Re)build the Fax4A client from the current config; a replaced client is
        closed at stop, so requests in flight on it finish."""
        cfg = self.cfg
        password = cfg.retarus.password.resolve() or (
            SIM_PASSWORD if cfg.retarus.mode == "simulator" else None)
        if password is None:  # the preflight catches this first; never a traceback
            raise ConfigError(["retarus.password: no password in live mode (set "
                               "retarus.password.env or retarus.password.file)"])
        if self._http is not None:
            self._old_http.append(self._http)
        self._http = make_client(cfg.retarus.username, password, cfg.retarus.timeout)
        self.fax4a = Fax4AClient(
            Fax4AEndpoints(cfg.retarus.customer_number, cfg.send_url(self.sim_url),
                           cfg.datacenter_urls(self.sim_url)), self._http)

    async def stop(self, grace: float = 30.0) -> None:
        """Stop accepting (newcomers get 421), let sessions in DATA finish within
        `grace`, stop workers between items, ack the current pull batches, close."""
        self.accepting = False
        deadline = asyncio.get_running_loop().time() + grace
        while self.sessions_in_data and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        if self.smtp_server is not None:
            self.smtp_server.close()
        await self._stop_topics()
        if getattr(self, "committer", None) is not None:
            await self.committer.close()
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            # the submitter lets its POSTs in flight finish (≤ 15 s); a worker that
            # ignores its cancellation must not keep the process from stopping
            done, stuck = await asyncio.wait(self._tasks, timeout=20)
            for task in done:
                if not task.cancelled() and task.exception() is not None:
                    log.error("worker %s had failed: %r", task.get_name(), task.exception())
            for task in stuck:
                log.error("worker %s did not stop within 20 s; leaving it", task.get_name())
        for srv in (self.http_server, self.sim_server):
            if srv is not None:
                await srv.stop()
        if self.sim_state is not None:
            await self.sim_state.aclose()
        for client in (*self._old_http, self._http):
            if client is not None:
                await client.aclose()
        self._cpu_pool.shutdown(wait=True)
        self._db_pool.shutdown(wait=True)
        if self.store is not None:
            self.store.close()

    def push_url(self) -> str | None:
        """Where Retarus should POST status pushes: configured, or (simulator) ours."""
        if self.push_secret is None:
            return None  # no credentials to protect the webhook: do not ask for pushes
        if self.cfg.retarus.push_url:
            return self.cfg.retarus.push_url
        if self.cfg.retarus.mode == "simulator" and self.http_server is not None:
            return self.http_server.url + "/retarus/push"
        return None

    def wake_submitter(self) -> None:
        self.submit_wakeup.set()

    def addresses(self) -> dict[str, str]:
        out = {}
        if self.smtp_address:
            out["smtp"] = self.smtp_address
        if self.http_server:
            out["http"] = self.http_server.url
        if self.sim_url:
            out["simulator"] = self.sim_url
        return out


def load_for_reload(path: Path, overrides: Overrides) -> Config:
    from faxbridge.config import load
    return apply_overrides(load(path), overrides)


def _mtimes(path: Path) -> tuple[float, ...]:
    from faxbridge.config import included_files
    out = []
    for p in (path, *included_files(path)):
        try:
            out.append(p.stat().st_mtime)
        except OSError:
            out.append(0.0)
    return tuple(out)


async def run(cfg: Config, *, print_fn: Callable[[str], None] = print,
              config_path: Path | None = None, overrides: Overrides | None = None) -> None:
    bridge = Bridge(cfg)
    try:
        await bridge.start()
    except BaseException:
        await bridge.stop(grace=0)
        raise
    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    signals = {"count": 0}

    def on_signal() -> None:
        signals["count"] += 1
        if signals["count"] > 1:
            # Second signal: leave now. Everything acknowledged is already committed.
            print_fn("faxbridge: second signal, exiting at once")
            os._exit(0)
        done.set()

    async def do_reload(reason: str) -> None:
        assert config_path is not None
        try:
            new = load_for_reload(config_path, overrides or Overrides())
        except ConfigError as exc:
            for problem in exc.problems:  # one line per problem, each with its key path
                log.error("reload (%s) refused, keeping the running config: %s", reason,
                          problem)
            return
        try:
            await bridge.reload(new)
        except Exception:  # noqa: BLE001 - a failed switch must not kill the bridge
            log.exception("reload (%s) failed while switching", reason)

    async def watch() -> None:
        assert config_path is not None
        seen = _mtimes(config_path)
        while True:
            await asyncio.sleep(1.0)
            now = _mtimes(config_path)
            if now != seen:
                seen = now
                await do_reload("file changed")

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    watcher = None
    if config_path is not None:
        loop.add_signal_handler(signal.SIGHUP,
                                lambda: asyncio.ensure_future(do_reload("SIGHUP")))
        watcher = asyncio.create_task(watch())
    # Announced only once the signal handlers are in place: a supervisor (or a test)
    # that sends SIGHUP/SIGTERM as soon as it reads this line must not kill the
    # process with the signal's default action.
    addrs = bridge.addresses()
    print_fn(f"faxbridge listening: SMTP {addrs.get('smtp')}, HTTP {addrs.get('http')}"
             + (f", simulator {addrs['simulator']}" if "simulator" in addrs else ""))
    print_fn(f"data directory: {cfg.storage.data_dir.resolve()}")
    try:
        await done.wait()
    finally:
        print_fn("faxbridge stopping")
        if watcher is not None:
            watcher.cancel()
        await bridge.stop()
        print_fn("faxbridge stopped")
