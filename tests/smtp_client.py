"""A step-by-step SMTP client for tests: every reply of the transaction is kept,
so a test can assert the exact code of each stage. Runs smtplib in a thread
(the bridge runs in the test's event loop)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
import smtplib
import ssl
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage


@dataclass
class Transcript:
    ehlo: tuple[int, str] = (0, "")
    mail: tuple[int, str] = (0, "")
    rcpt: list[tuple[int, str]] = field(default_factory=list)
    data: tuple[int, str] | None = None

    @property
    def job_id(self) -> str | None:
        if self.data and self.data[0] == 250 and "Queued as " in self.data[1]:
            return self.data[1].split("Queued as ", 1)[1].split(":", 1)[0]
        return None


def _send(host: str, port: int, mail_from: str, rcpts: list[str], raw: bytes,
          login: tuple[str, str] | None, starttls: bool) -> Transcript:
    t = Transcript()
    with smtplib.SMTP(host, port, timeout=30) as s:
        code, msg = s.ehlo()
        t.ehlo = (code, msg.decode())
        if starttls:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            s.starttls(context=ctx)
            s.ehlo()
        if login:
            s.login(*login)
        code, msg = s.mail(mail_from)
        t.mail = (code, msg.decode())
        if code != 250:
            return t
        for r in rcpts:
            code, msg = s.rcpt(r)
            t.rcpt.append((code, msg.decode()))
        if not any(c == 250 for c, _ in t.rcpt):
            s.rset()
            return t
        code, msg = s.data(raw)
        t.data = (code, msg.decode())
    return t


async def send(address: str, msg: EmailMessage | bytes, *, mail_from: str | None = None,
               rcpts: list[str] | None = None, login: tuple[str, str] | None = None,
               starttls: bool = False) -> Transcript:
    host, _, port = address.rpartition(":")
    if isinstance(msg, EmailMessage):
        mail_from = mail_from if mail_from is not None else msg["From"]
        if rcpts is None:
            from email.utils import getaddresses
            rcpts = [a for _, a in getaddresses(msg.get_all("To", []) + msg.get_all("Cc", []))]
        raw = msg.as_bytes()
    else:
        raw = msg
    # Mail clients send CRLF (RFC 5321 §2.3.8); smtplib passes bytes through as-is.
    raw = re.sub(rb"\r?\n", b"\r\n", raw)
    assert mail_from is not None and rcpts is not None
    return await asyncio.to_thread(_send, host, int(port), mail_from, rcpts, raw, login,
                                   starttls)


def numbered_mail(n: int) -> bytes:
    m = EmailMessage()
    m["From"], m["To"], m["Subject"] = "alice@example.com", "+4989123456@fax.local", f"m{n}"
    m["Message-ID"] = f"<stream-{n}@example.com>"
    m.set_content(f"mail number {n}")
    return m.as_bytes().replace(b"\n", b"\r\n")


def stream(address: str, counter: itertools.count, accepted: list[str],
           stop: threading.Event) -> None:
    """For kill tests (run in a thread): one mail per connection until the bridge dies
    or `stop` is set; the job id of every 250 goes to `accepted`."""
    host, port = address.split(":")
    while not stop.is_set():
        try:
            # generous: on a loaded machine a live bridge may be slow; a killed one
            # resets the connection at once
            with smtplib.SMTP(host, int(port), timeout=30) as s:
                s.ehlo()
                s.mail("alice@example.com")
                s.rcpt("+4989123456@fax.local")
                code, msg = s.data(numbered_mail(next(counter)))
        except (OSError, smtplib.SMTPException):
            return
        if code == 250:
            accepted.append(msg.decode().split("Queued as ")[1].split(":")[0])


def _start_streams(address: str, counter: itertools.count, accepted: list[str],
                   connections: int) -> tuple[threading.Event, list[threading.Thread]]:
    stop = threading.Event()
    threads = [threading.Thread(target=stream, args=(address, counter, accepted, stop))
               for _ in range(connections)]
    for th in threads:
        th.start()
    return stop, threads


@contextlib.asynccontextmanager
async def astreaming(address: str, counter: itertools.count, accepted: list[str],
                     connections: int = 3) -> AsyncIterator[None]:
    """`streaming` for async tests: the threads are joined without blocking the loop."""
    stop, threads = _start_streams(address, counter, accepted, connections)
    try:
        yield
    finally:
        stop.set()
        for th in threads:
            await asyncio.to_thread(th.join)


@contextlib.contextmanager
def streaming(address: str, counter: itertools.count, accepted: list[str],
              connections: int = 3) -> Iterator[None]:
    """`stream` on several connections in threads for the duration of the block."""
    stop, threads = _start_streams(address, counter, accepted, connections)
    try:
        yield
    finally:
        stop.set()
        for th in threads:
            th.join()
