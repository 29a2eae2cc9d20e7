"""A private Postfix instance for tests: its own config, queue and data directories
in a temporary directory, listening on loopback only, never the system instance.

Postfix cannot bind port 0 and report the port it got, so its listener's port is
one the kernel handed out a moment before (bound and closed here): the only place in
the suite that does this. If Postfix then fails to bind it, `start` says so.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

from tests.waiting import wait_until

POSTFIX = "/usr/sbin/postfix"
POSTCONF = "/usr/sbin/postconf"
POSTQUEUE = "/usr/sbin/postqueue"


def missing() -> str | None:
    """Why a private Postfix cannot run here, or None."""
    if not (os.path.exists(POSTFIX) and os.path.exists(POSTCONF)):
        return "postfix is not installed (Debian package 'postfix')"
    if os.geteuid() != 0:
        return "a Postfix instance must be started as root (its master drops privileges)"
    try:
        import pwd
        pwd.getpwnam("postfix")
    except KeyError:
        return "the user 'postfix' does not exist"
    return None


def _loopback_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _daemon_directory() -> str:
    out = subprocess.run([POSTCONF, "-dh", "daemon_directory"], capture_output=True,
                         text=True, check=True)
    return out.stdout.strip()


class PrivatePostfix:
    """main.cf/master.cf written from `settings`; smtpd on 127.0.0.1:`port` and, with
    `extra_smtpd`, further listeners with their own `-o` overrides (name → options)."""

    def __init__(self, settings: dict[str, str],
                 extra_smtpd: dict[str, dict[str, str]] | None = None) -> None:
        # Not under pytest's tmp_path: that is mode 0700 and root's, and Postfix's
        # daemons run as the user postfix and must reach their queue.
        self.root = Path(tempfile.mkdtemp(prefix="fb-postfix-"))
        self.root.chmod(0o755)
        self.config_dir = self.root / "etc"
        self.queue_dir = self.root / "queue"
        self.data_dir = self.root / "data"
        self.maillog = self.root / "maillog"
        self.port = _loopback_port()
        self.ports = {name: _loopback_port() for name in (extra_smtpd or {})}
        for d in (self.config_dir, self.queue_dir, self.data_dir):
            d.mkdir()
        # the queue's top directory is root's; Postfix makes its subdirectories
        shutil.chown(self.queue_dir, "root", "root")
        shutil.chown(self.data_dir, "postfix", "postfix")
        main = {
            "compatibility_level": "3.6",
            "queue_directory": str(self.queue_dir),
            "data_directory": str(self.data_dir),
            "daemon_directory": _daemon_directory(),
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            "inet_interfaces": "127.0.0.1",
            "inet_protocols": "ipv4",
            "myhostname": "mta.example.test",
            "mydomain": "example.test",
            "myorigin": "$myhostname",
            "mydestination": "",
            "mynetworks": "127.0.0.0/8",
            "local_recipient_maps": "",
            "alias_maps": "",
            "alias_database": "",
            "biff": "no",
            "smtputf8_enable": "no",
            # no DNS anywhere: every destination is a [host]:port of a transport map
            "disable_dns_lookups": "yes",
            "smtp_host_lookup": "native",
            "smtp_dns_support_level": "disabled",
            "maillog_file": str(self.maillog),
            "maillog_file_prefixes": str(self.root),
            "syslog_name": f"postfix-test-{self.port}",
            "import_environment": "MAIL_CONFIG MAIL_DEBUG MAIL_LOGTAG TZ LANG=C",
        }
        main.update(settings)
        (self.config_dir / "main.cf").write_text(
            "".join(f"{k} = {v}\n" for k, v in main.items()))
        services = [f"127.0.0.1:{self.port} inet n - n - - smtpd"]
        for name, opts in (extra_smtpd or {}).items():
            services.append(f"127.0.0.1:{self.ports[name]} inet n - n - - smtpd\n"
                            + "".join(f"  -o {{ {k} = {v} }}\n" for k, v in opts.items()).rstrip())
        services += [
            "pickup unix n - n 60 1 pickup",
            "cleanup unix n - n - 0 cleanup",
            "qmgr unix n - n 300 1 qmgr",
            "rewrite unix - - n - - trivial-rewrite",
            "bounce unix - - n - 0 bounce",
            "defer unix - - n - 0 bounce",
            "trace unix - - n - 0 bounce",
            "verify unix - - n - 1 verify",
            "flush unix n - n 1000? 0 flush",
            "proxymap unix - - n - - proxymap",
            "smtp unix - - n - - smtp",
            "relay unix - - n - - smtp",
            "showq unix n - n - - showq",
            "error unix - - n - - error",
            "retry unix - - n - - error",
            "discard unix - - n - - discard",
            "anvil unix - - n - 1 anvil",
            "scache unix - - n - 1 scache",
            "postlog unix-dgram n - n - 1 postlogd",
        ]
        (self.config_dir / "master.cf").write_text("\n".join(services) + "\n")

    def _postfix(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([POSTFIX, "-c", str(self.config_dir), *args],
                              capture_output=True, text=True, timeout=60)

    def start(self) -> None:
        out = self._postfix("start")
        if out.returncode != 0:
            raise AssertionError(f"postfix start failed ({out.returncode}):\n{out.stdout}"
                                 f"{out.stderr}\n{self.log()}")
        for port in [self.port, *self.ports.values()]:
            self._wait_listening(port)

    def _wait_listening(self, port: int, timeout: float = 30.0) -> None:
        def greets() -> bool:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                    return s.recv(512).startswith(b"220")
            except OSError:
                return False
        try:
            wait_until(greets, timeout, f"Postfix greeting on 127.0.0.1:{port}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}:\n{self.log()}") from None

    def flush(self) -> None:
        """Try deferred mail now (postqueue -f), instead of waiting for the queue run."""
        subprocess.run([POSTQUEUE, "-c", str(self.config_dir), "-f"], capture_output=True,
                       timeout=60)

    def queue(self) -> str:
        return subprocess.run([POSTQUEUE, "-c", str(self.config_dir), "-p"],
                              capture_output=True, text=True, timeout=60).stdout

    def log(self) -> str:
        try:
            return self.maillog.read_text(errors="replace")
        except OSError:
            return "(no maillog)"

    def stop(self) -> None:
        try:
            pid = int((self.queue_dir / "pid" / "master.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            pid = None
        self._postfix("stop")
        # `postfix stop` returns before the master and its children are gone
        if pid is not None:
            with contextlib.suppress(AssertionError):  # still there: aborted below
                wait_until(lambda: not _alive(pid), 30, "Postfix master gone", 0.05)
        if pid is not None and _alive(pid):
            self._postfix("abort")
        shutil.rmtree(self.root, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie is gone for our purpose (its parent is not us)
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False
