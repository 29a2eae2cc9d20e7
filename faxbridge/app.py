"""Builds the parts from a Config, starts and stops them, handles signals.

The only module that knows every part: it builds the services (config provider,
store + executor, Retarus clients, mail composer/transport, wake-ups, health
state) and hands each part just the ones it needs. Nothing below imports this
module (pyproject.toml's import contracts check that).

Longer than 300 lines on purpose: start, reload and stop of every part are one
ordering problem (nothing closed before its replacement is ready, nothing stopped
before what feeds it), and it reads best in one place."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import signal
import ssl
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from faxbridge.config import Config, with_database_url
from faxbridge.errors import ConfigError
from faxbridge.housekeeping import Housekeeper
from faxbridge.inbound.deliver import Deliverer, FaxMail
from faxbridge.inbound.poll import TopicPoller
from faxbridge.listen import HttpServer, ListenError
from faxbridge.mail.compose import Composer, TemplateError
from faxbridge.mail.service import MailService
from faxbridge.mail.worker import Mailer
from faxbridge.metrics import Metrics
from faxbridge.outbound.submit import Submitter
from faxbridge.outbound.track import Finisher, ReportCleaner, Tracker
from faxbridge.preflight import preflight
from faxbridge.retarus.clients import SIM_PASSWORD, RetarusClients
from faxbridge.retarus.fax4a import Fax4AClient
from faxbridge.runner import Runner
from faxbridge.runtime.config import ConfigProvider
from faxbridge.runtime.db import Db
from faxbridge.runtime.health import Health
from faxbridge.runtime.inflight import InFlight
from faxbridge.runtime.listening import write_listening
from faxbridge.runtime.parsers import ParsePool
from faxbridge.runtime.wakeups import Wakeups
from faxbridge.runtime.workers import StatusSender, WorkersSupervisor
from faxbridge.runtime.workers_lock import WorkersLock
from faxbridge.simulator.app import SimState, build_app
from faxbridge.smtp.handler import FaxHandler
from faxbridge.smtp.server import start_smtp
from faxbridge.store import open_store
from faxbridge.store.groupcommit import GroupCommitter
from faxbridge.store.protocol import Store
from faxbridge.web.admin import admin_routes
from faxbridge.web.app import PUSH_PATH, build_push_app, build_web_app
from faxbridge.web.dashboard import dashboard_routes
from faxbridge.web.fax_create import FaxCreator
from faxbridge.web.faxes_api import faxes_routes

log = logging.getLogger("faxbridge")

# How long a stop waits for the runners to finish the item in hand before
# cancelling them (a Fax4A POST in flight is given its chance to be answered).
STOP_SECONDS = 20.0

# `serve` (its workers process is the default): what the accepting process hands
# its workers process (the embedded simulator's URL, the per-run push secret) and how it wakes it.
ENV_SIM_URL = "FAXBRIDGE_WORKERS_SIM_URL"
ENV_PUSH_SECRET = "FAXBRIDGE_WORKERS_PUSH_SECRET"
WAKE_BYTES = {"submit": b"s", "mail": b"m", "inbound": b"i"}
ACCEPT_BYTE = b"a"  # a job accepted (a submit wake-up that also counts the pace)


class _ForwardedEvent(asyncio.Event):
    """A wake-up in the accepting process whose stage runs in the workers process:
    setting it also sends one byte down the workers' stdin."""

    def __init__(self, send: Callable[..., None]) -> None:
        super().__init__()
        self._send = send

    def set(self) -> None:
        super().set()
        self._send()


class _WakeReader(asyncio.Protocol):
    """The workers process's end of the wake-up pipe: a byte sets its event; end of
    file means the accepting process is gone, and the workers stop too."""

    def __init__(self, wakeups: Wakeups, gone: Callable[[], None]) -> None:
        self.wakeups, self.gone = wakeups, gone

    def data_received(self, data: bytes) -> None:
        for name, byte in WAKE_BYTES.items():
            if byte in data:
                getattr(self.wakeups, name).set()
        if accepted := data.count(ACCEPT_BYTE):
            self.wakeups.accepted(accepted)

    def connection_lost(self, exc: Exception | None) -> None:
        self.gone()


@dataclass
class Overrides:
    data_dir: Path | None = None
    smtp_listen: str | None = None
    http_listen: str | None = None
    simulator_listen: str | None = None
    database_url: str | None = None


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
    # --database-url, else FAXBRIDGE_DATABASE_URL, else the file's storage.database_url
    return with_database_url(cfg.model_copy(update=upd), o.database_url)


class Bridge:
    """Everything `faxbridge serve` runs, in one process and one event loop.

    Its attributes are the services and listeners; the read-only properties
    (store, fax4a, composer, metrics, …) are the view tests and the CLI use."""

    def __init__(self, cfg: Config, role: str = "all",
                 workers_argv: list[str] | None = None, workers_nice: int = 0) -> None:
        """role "all" (`serve --single-process`): one process does everything.
        "accept" (`serve`): SMTP, HTTP and the commits here, the downstream stages
        (submission, tracking, report and fax mails, housekeeping, topic polls, the
        push listener when it has one) in a child started with `workers_argv`, so that
        they do not take the accept loop's CPU (the interpreter runs one thread at a
        time). "workers": that child."""
        self.role = role
        self.workers_argv = workers_argv
        self.workers_nice = workers_nice
        # (accept) the workers process's supervisor; (workers, all) the lock that keeps
        # a second set of runners off the same SQLite file, and what the child is doing
        self.supervisor: WorkersSupervisor | None = None
        self.workers_lock: WorkersLock | None = None
        self.workers_state = "starting"
        self.config = ConfigProvider(cfg)
        self.health = Health(metrics=Metrics())
        self.wakeups = Wakeups()
        if role == "accept":
            self.wakeups = Wakeups(**{name: _ForwardedEvent(self._wake_sender(byte))
                                      for name, byte in WAKE_BYTES.items()})
            # one byte per accepted job: the workers process counts the pace
            self.wakeups.on_accept = self._wake_sender(ACCEPT_BYTE)
        # faxes accepted but not yet committed, counted by every rate limit: the SMTP
        # listener's transactions and the Faxes API's requests alike
        self.inflight = InFlight()
        self.mail = MailService(cfg)
        self.db: Db | None = None
        self.retarus: RetarusClients | None = None
        self.committer: GroupCommitter | None = None
        self.finisher: Finisher | None = None
        self.fax_mail: FaxMail | None = None
        self.handler: FaxHandler | None = None
        self.sim_state: SimState | None = None
        self.sim_server: HttpServer | None = None
        self.sim_url: str | None = None
        self.http_server: HttpServer | None = None
        # the status push on its own listener (retarus.push_listen), when configured
        self.push_server: HttpServer | None = None
        self.smtp_server: asyncio.base_events.Server | None = None
        # The STARTTLS context new SMTP sessions use (None: no STARTTLS), and the
        # fingerprint of the files it came from; built by the preflight.
        self.smtp_tls: ssl.SSLContext | None = None
        self.smtp_tls_fingerprint: str | None = None
        # MIME parsing off the event loop: child processes (smtp.parse_processes) for
        # ordinary mails, a thread pool of its own for large ones (runtime/parsers.py)
        self.cpu = ParsePool(cfg.smtp.parse_processes if role != "workers" else 0)
        self._runners: list[tuple[Runner, asyncio.Task[None]]] = []
        self._topics: dict[str, tuple[TopicPoller, asyncio.Task[None]]] = {}

    # ------------------------------------------------------------- the view
    @property
    def cfg(self) -> Config:
        return self.config.current

    @property
    def store(self) -> Store | None:
        return self.db.store if self.db is not None else None

    @property
    def metrics(self) -> Metrics:
        return self.health.metrics

    @property
    def composer(self) -> Composer:
        return self.mail.composer

    @composer.setter
    def composer(self, composer: Composer) -> None:
        self.mail.composer = composer

    @property
    def fax4a(self) -> Fax4AClient | None:
        return self.retarus.fax4a if self.retarus is not None else None

    @property
    def push_secret(self) -> str | None:
        return self.retarus.push_secret if self.retarus is not None else None

    @property
    def topic_states(self) -> dict:
        return self.health.topic_states

    @property
    def smtp_address(self) -> str | None:
        return self.health.smtp_address

    @property
    def workers(self) -> asyncio.subprocess.Process | None:
        """(accept) The running workers process, if any."""
        return self.supervisor.process if self.supervisor is not None else None

    # ------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        cfg = self.cfg
        # What `faxbridge check` validates, before anything is bound or created: a
        # missing certificate or secret is a ConfigError naming its key, not a traceback.
        pre = preflight(cfg)
        if pre.errors:
            raise ConfigError(pre.errors)
        if self.role != "workers":  # said once, by the listener
            for warning in pre.warnings:
                log.warning("config: %s", warning)
        self.smtp_tls, self.smtp_tls_fingerprint = pre.tls, pre.tls_fingerprint
        # Before anything binds: a bridge that cannot compose its report and fax mails
        # must not accept faxes (TemplateError: one line per problem, no traceback).
        if problems := self.mail.composer.check():
            raise TemplateError(problems)
        data_dir = cfg.storage.data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        self.db = db = Db(open_store(data_dir / "faxbridge.sqlite3", cfg.storage.busy_timeout_ms,
                                     cfg.storage.database_url,
                                     lease_seconds=cfg.storage.node_lease_seconds,
                                     # PostgreSQL: a node is a set of workers (claims,
                                     # leads, lease); the listener claims nothing
                                     as_node=self.role != "accept"))
        self.committer = GroupCommitter(db.store, db.run)
        if self.role == "workers":
            self.sim_url = os.environ.get(ENV_SIM_URL) or None
        elif cfg.retarus.mode == "simulator" and not cfg.retarus.send_url:
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
        # The status push secret: configured, or (simulator) a random one per run that
        # travels to the simulator inside each job, like the real credentials would.
        push_secret = cfg.retarus.push_password.resolve() or (
            os.environ.get(ENV_PUSH_SECRET) if self.role == "workers" else None) or (
            secrets.token_urlsafe(18) if cfg.retarus.mode == "simulator" else None)
        self.retarus = RetarusClients(self.config, self.sim_url, push_secret)
        self.retarus.connect()
        parts = (db, self.config, self.mail, self.health, self.wakeups)
        self.finisher, self.fax_mail = Finisher(*parts), FaxMail(*parts)
        if self.role == "workers":
            await self._start_workers_role(push_secret)
            return
        if cfg.retarus.push_listen and self.role == "all":
            self.push_server = _http_server(
                build_push_app(self.db, self.config, self.retarus, self.finisher), cfg,
                cfg.retarus.push_listen, "retarus.push_listen")
            await self.push_server.start()
        self.http_server = _http_server(self._web_app(), cfg)
        await self.http_server.start()
        self.retarus.webhook_url = self._webhook_base() + PUSH_PATH
        self.cpu.start()
        self.handler = FaxHandler(self.config, db, self.cpu, self.committer,
                                  self.health.metrics, self.wakeups, self.inflight)
        self.smtp_server, self.health.smtp_address = await self._start_smtp()
        if self.role == "accept":
            await self._spawn_workers(push_secret)
        else:
            await self._lock_and_start_runners()

    async def _start_workers_role(self, push_secret: str | None) -> None:
        """The workers process: the runners, the topic pollers and the status push
        webhook on a listener of its own (retarus.push_listen; with the simulator and
        none configured, an ephemeral loopback port), so that a push and the report
        mail it triggers are handled here, not in the accepting process."""
        cfg = self.cfg
        assert self.db and self.retarus and self.finisher
        listen = cfg.retarus.push_listen
        if listen is None and cfg.retarus.mode == "simulator" and push_secret:
            listen = "127.0.0.1:0"
        if listen is not None:
            self.push_server = _http_server(
                build_push_app(self.db, self.config, self.retarus, self.finisher), cfg,
                listen, "retarus.push_listen")
            await self.push_server.start()
            self.retarus.webhook_url = self.push_server.url + PUSH_PATH
        await self._lock_and_start_runners()

    async def _lock_and_start_runners(self) -> None:
        """With SQLite, the runners must be the only ones on the file (see
        runtime/workers_lock.py): wait for a previous set to stop first. PostgreSQL
        is shared by several nodes on purpose; no lock there."""
        cfg = self.cfg
        if not cfg.storage.database_url:
            self.workers_lock = WorkersLock(cfg.storage.data_dir)

            def waiting(pid: str) -> None:
                self.workers_state = (f"waiting for the previous workers process "
                                      f"(pid {pid}) to stop")
            await self.workers_lock.acquire(waiting)
        self.workers_state = "running"
        self._start_runners()

    def _wake_sender(self, byte: bytes) -> Callable[[int], None]:
        def send(count: int = 1) -> None:
            w = self.workers
            if w is not None and w.stdin is not None and not w.stdin.is_closing():
                w.stdin.write(byte * count)
        return send

    async def _spawn_workers(self, push_secret: str | None) -> None:
        assert self.workers_argv is not None
        env = {**os.environ}
        if self.sim_url:
            env[ENV_SIM_URL] = self.sim_url
        if push_secret:
            env[ENV_PUSH_SECRET] = push_secret

        def started() -> None:
            # anything queued before this (re)start, e.g. while a crashed child was down
            for event in (self.wakeups.submit, self.wakeups.mail, self.wakeups.inbound):
                event.set()
        self.supervisor = WorkersSupervisor(self.workers_argv, env, self.workers_nice,
                                            self.health, STOP_SECONDS, started)
        await self.supervisor.start()

    async def listen_to_parent(self, gone: Callable[[], None]) -> None:
        """(workers process) Wake-ups from the accepting process on stdin."""
        await asyncio.get_running_loop().connect_read_pipe(
            lambda: _WakeReader(self.wakeups, gone), sys.stdin)

    def _web_app(self):  # noqa: ANN202 - a Starlette app
        assert self.db and self.retarus and self.finisher and self.fax_mail
        assert self.committer is not None
        admin = admin_routes(self.db, self.config, self.wakeups, self.fax_mail) + \
            dashboard_routes(self.db, self.config, self.health, self.wakeups, self.fax_mail)
        creator = FaxCreator(self.db, self.cpu, self.committer, self.wakeups, self.inflight)
        api = faxes_routes(self.db, self.config, creator)
        # with its own listener, the push is served there (by the workers process
        # when there is one), not on the main listener
        push = self.push_server is None and not (self.role == "accept"
                                                  and self.cfg.retarus.push_listen)
        return build_web_app(self.db, self.config, self.health, self.retarus, self.finisher,
                             [*admin, *api], push=push)

    def _webhook_base(self) -> str:
        server = self.push_server or self.http_server
        assert server is not None
        return server.url

    async def _start_smtp(self, listen: str | None = None
                          ) -> tuple[asyncio.base_events.Server, str]:
        assert self.handler is not None
        return await start_smtp(self.handler, self.config, self.health,
                                lambda: self.smtp_tls, listen)

    def _start_runners(self) -> None:
        db, cfg, health, wk = self.db, self.config, self.health, self.wakeups
        retarus, finisher, fax_mail = self.retarus, self.finisher, self.fax_mail
        assert db and retarus and finisher and fax_mail
        for runner in (Submitter(db, cfg, retarus, health, wk, finisher),
                       Tracker(db, cfg, retarus, health, finisher),
                       Mailer(db, cfg, self.mail, health, wk),
                       ReportCleaner(db, cfg, retarus),
                       Housekeeper(db, cfg),
                       Deliverer(db, fax_mail, wk)):
            self._runners.append((runner, asyncio.create_task(runner.run(), name=runner.name)))
        self._start_topics()

    def _start_topics(self) -> None:
        assert self.db and self.retarus
        for t in self.cfg.topics:
            if self.retarus.polls(t):
                poller = TopicPoller(t, self.db, self.retarus, self.health, self.wakeups)
                self._topics[t.name] = (poller, asyncio.create_task(poller.run(),
                                                                    name=f"topic:{t.name}"))

    async def _stop_topics(self) -> None:
        # A stopped poller acknowledges its committed batch through the exit URL.
        await _stop_all(list(self._topics.values()), 10.0)
        self._topics.clear()

    async def reload(self, new: Config) -> list[str]:
        """Switch to a validated config. New SMTP sessions and new jobs use it at once
        (every part reads the config provider's current config); nothing in flight
        is dropped.

        Nothing running is closed before everything new is ready: the preflight
        (certificate and key, secrets, data directory) runs first, then any changed
        listen address is bound; only then the old listeners close. A certificate
        change on the same port swaps the STARTTLS context that new sessions take,
        without rebinding, so the port is never closed. If any step fails, the old
        config, listeners and TLS context stay in force and the problems are logged."""
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
            if new.smtp.listen != old.smtp.listen and self.handler is not None:
                fresh_smtp = await self._start_smtp(new.smtp.listen)
            if new.http.listen != old.http.listen and self.http_server is not None:
                fresh_http = _http_server(self._web_app(), new)
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
        self.config.swap(new)
        if fresh_smtp is not None:
            if self.smtp_server is not None:
                self.smtp_server.close()  # existing sessions go on on their sockets
            self.smtp_server, self.health.smtp_address = fresh_smtp
            changes.append("smtp listener")
        if fresh_http is not None:
            assert self.http_server is not None
            await self.http_server.stop()
            self.http_server = fresh_http
            if self.retarus is not None:
                self.retarus.webhook_url = self._webhook_base() + PUSH_PATH
            changes.append("http listener")
        if pre.tls_fingerprint != self.smtp_tls_fingerprint:
            changes.append("smtp TLS")
        # Always the freshly loaded context: it is the one the preflight validated.
        self.smtp_tls, self.smtp_tls_fingerprint = pre.tls, pre.tls_fingerprint
        self.mail.rebuild(new)
        if new.retarus != old.retarus and self.retarus is not None:
            self.retarus.connect()
            changes.append("retarus")
        if new.topics != old.topics and self.role != "accept":
            await self._stop_topics()
            self._start_topics()
            changes.append("topics")
        for section in ("senders", "fax", "mail", "smtp"):
            if getattr(new, section) != getattr(old, section) and section not in changes:
                changes.append(section)
        # Built into the listener (see _http_server, start_smtp): only a new one has them.
        limits = ("max_concurrency", "idle_timeout", "header_timeout")
        if fresh_http is None and any(getattr(new.http, k) != getattr(old.http, k)
                                      for k in limits):
            log.warning("[http] %s changed: takes effect at the next restart",
                        "/".join(limits))
        if (fresh_smtp is None
                and new.smtp.data_memory_limit != old.smtp.data_memory_limit):
            log.warning("smtp.data_memory_limit changed: takes effect at the next restart")
        if new.smtp.parse_processes != old.smtp.parse_processes:
            log.warning("smtp.parse_processes changed: takes effect at the next restart")
        for section in ("storage", "simulator", "logging"):
            if getattr(new, section) != getattr(old, section):
                log.warning("[%s] changed: takes effect at the next restart", section)
        if new.retarus.push_listen != old.retarus.push_listen:
            log.warning("retarus.push_listen changed: takes effect at the next restart")
        log.info("configuration reloaded (%s)", ", ".join(changes) or "nothing changed")
        return changes

    async def stop(self, grace: float = 30.0) -> None:
        """Stop accepting (newcomers get 421), let sessions in DATA finish within
        `grace`, stop runners between items, ack the current pull batches, close."""
        self.health.accepting = False
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while self.health.sessions_in_data and loop.time() < deadline:
            await asyncio.sleep(0.05)
        if self.smtp_server is not None:
            self.smtp_server.close()
        await self._stop_topics()
        if self.committer is not None:
            await self.committer.close()
        await _stop_all(self._runners, STOP_SECONDS)
        self._runners.clear()
        if self.workers_lock is not None:
            self.workers_lock.release()
        if self.supervisor is not None:
            await self.supervisor.stop()
        for srv in (self.http_server, self.push_server, self.sim_server):
            if srv is not None:
                await srv.stop()
        if self.sim_state is not None:
            await self.sim_state.aclose()
        if self.retarus is not None:
            await self.retarus.aclose()
        await self.cpu.close()
        if self.db is not None:
            self.db.close()

    def push_url(self) -> str | None:
        return self.retarus.push_url() if self.retarus is not None else None

    def addresses(self) -> dict[str, str]:
        out = {}
        if self.smtp_address:
            out["smtp"] = self.smtp_address
        if self.http_server:
            out["http"] = self.http_server.url
        if self.push_server:
            out["push"] = self.push_server.url
        if self.sim_url:
            out["simulator"] = self.sim_url
        return out


def _http_server(app: object, cfg: Config, listen: str | None = None,
                 key: str = "http.listen") -> HttpServer:
    """An HTTP listener of the bridge (the main one, or the push webhook's own) with
    the [http] limits (they take effect when the listener is built: at start, and
    when a reload changes http.listen)."""
    h = cfg.http
    return HttpServer(app, listen or h.listen, key, max_concurrency=h.max_concurrency,
                      idle_timeout=h.idle_timeout, header_timeout=h.header_timeout)


async def _stop_all(running: list[tuple[Runner, asyncio.Task[None]]],
                    within: float) -> None:
    """Ask every runner to stop after the item in hand; cancel those still busy
    after `within` seconds; one that ignores even that must not keep the process
    from stopping (it is logged and left)."""
    for runner, _ in running:
        runner.stop()
    tasks = [task for _, task in running]
    if not tasks:
        return
    done, busy = await asyncio.wait(tasks, timeout=within)
    for task in busy:
        log.warning("%s did not stop within %.0f s; cancelling it", task.get_name(), within)
        task.cancel()
    if busy:
        done2, stuck = await asyncio.wait(busy, timeout=5)
        done |= done2
        for task in stuck:
            log.error("%s did not stop when cancelled; leaving it", task.get_name())
    for task in done:
        if not task.cancelled() and task.exception() is not None:
            log.error("%s had failed: %r", task.get_name(), task.exception())


async def _start_unless(bridge: Bridge, done: asyncio.Event) -> bool:
    """Start the bridge; False if `done` came first (the workers process's listener
    went away while it waited for the workers lock)."""
    starting = asyncio.ensure_future(bridge.start())
    ended = asyncio.ensure_future(done.wait())
    try:
        await asyncio.wait({starting, ended}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        ended.cancel()
    if starting.done():
        starting.result()  # its exception, if any
        return True
    starting.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await starting
    return False


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
              config_path: Path | None = None, overrides: Overrides | None = None,
              role: str = "all", workers_argv: list[str] | None = None,
              workers_nice: int = 0) -> None:
    bridge = Bridge(cfg, role, workers_argv, workers_nice)
    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    sender: StatusSender | None = None
    if role == "workers":
        # SIGHUP is forwarded by the listener; before the reload handler is in place
        # its default action would end this process
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        sender = StatusSender(bridge.health, lambda: bridge.workers_state)
        await sender.start()
        # end of stdin (the listener is gone) also ends a start that waits for the
        # workers lock
        await bridge.listen_to_parent(done.set)
    try:
        if not await _start_unless(bridge, done):
            await bridge.stop(grace=0)
            if sender is not None:
                await sender.close()
            return
    except BaseException:
        await bridge.stop(grace=0)
        if sender is not None:
            await sender.close()
        raise
    signals = {"count": 0}

    def on_signal() -> None:
        signals["count"] += 1
        if signals["count"] > 1:
            # Second signal: leave now. Everything acknowledged is already committed.
            print_fn("faxbridge: second signal, exiting at once")
            os._exit(0)
        done.set()

    async def do_reload(reason: str) -> None:
        try:
            await reload_here(reason)
        finally:
            # The workers process reloads after the listener, told by it (it watches
            # no file of its own): the listener's "configuration reloaded" line comes
            # first, and a mail sent after it meets the new rules.
            if bridge.supervisor is not None:
                bridge.supervisor.hangup()

    async def reload_here(reason: str) -> None:
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
            if role != "workers":  # the listener's addresses only (`faxbridge health`)
                write_listening(cfg.storage.data_dir, bridge.addresses())
        except Exception:  # noqa: BLE001 - a failed switch must not kill the bridge
            log.exception("reload (%s) failed while switching", reason)

    async def watch(seen: tuple[float, ...]) -> None:
        assert config_path is not None
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
        # the workers process: SIGHUP comes from its listener, after the listener's own
        # reload (a file change or a SIGHUP there)
        reason = "from the listener" if role == "workers" else "SIGHUP"
        loop.add_signal_handler(signal.SIGHUP,
                                lambda: asyncio.ensure_future(do_reload(reason)))
        if role != "workers":
            watcher = asyncio.create_task(watch(_mtimes(config_path)))
    # Only now, with the signal handlers in place and the config file's state taken:
    # whoever waits for this line may send SIGHUP or change the file at once (before
    # the handler, SIGHUP's default action would end the process).
    addrs = bridge.addresses()
    if role == "workers":
        print_fn(f"faxbridge workers process running (pid {os.getpid()})"
                 + (f", status push webhook: {addrs['push']}{PUSH_PATH}" if "push" in addrs
                    else ""))
        try:
            await done.wait()
        finally:
            if watcher is not None:
                watcher.cancel()
            bridge.workers_state = "stopping"
            await bridge.stop()
            if sender is not None:
                await sender.close()  # the last snapshot: everything counted until now
        return
    print_fn(f"faxbridge listening: SMTP {addrs.get('smtp')}, HTTP {addrs.get('http')}"
             + (f", simulator {addrs['simulator']}" if "simulator" in addrs else ""))
    if "push" in addrs:  # its own line: the listening line's format is relied on
        print_fn(f"status push webhook: {addrs['push']}{PUSH_PATH}")
    print_fn(f"data directory: {cfg.storage.data_dir.resolve()}")
    if cfg.storage.database_url and bridge.db is not None:
        info = bridge.db.store.database()
        print_fn(f"database: {info['location']} (schema {info['schema_version']}), "
                 + (f"this node {info['node']}" if info.get("node")
                    else "the workers process is this bridge's node"))
    write_listening(cfg.storage.data_dir, addrs)
    try:
        await done.wait()
    finally:
        print_fn("faxbridge stopping")
        if watcher is not None:
            watcher.cancel()
        await bridge.stop()
        print_fn("faxbridge stopped")
