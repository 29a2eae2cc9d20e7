"""Mail transports: a Maildir per recipient address (the embedded default) and an
SMTP relay through aiosmtplib. Errors map to Transient (relay down, 4xx) or
Permanent (5xx for every recipient)."""

from __future__ import annotations

import asyncio
import mailbox
import os
import re
import socket
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import aiosmtplib

from faxbridge.config import RelayConfig
from faxbridge.errors import Permanent, Transient


@dataclass(frozen=True)
class Sent:
    """A delivered mail: the recipients refused while others were accepted, and what
    the other side said, e.g. a relay's "250 2.0.0 Ok: queued as 4dXyz1" (its queue
    id is what the relay's own log knows the mail by)."""

    refused: list[str] = field(default_factory=list)
    reply: str = ""


class Transport(Protocol):
    async def send(self, mail_from: str, recipients: list[str], raw: bytes,
                   key: str | None = None) -> Sent:
        """Deliver; returns the refusals and the reply."""
        ...


def maildir_path(root: Path, address: str) -> Path:
    # One Maildir per address under <data-dir>/mail/<address>/ (README "Quick start"; tests and operators rely on it);
    # the address is made safe as a directory name.
    safe = re.sub(r"[^A-Za-z0-9@._+-]", "_", address.lower()).lstrip(".") or "_"
    return root / safe


class MaildirTransport:
    def __init__(self, root: Path) -> None:
        self.root = root

    def _deliver(self, recipients: list[str], raw: bytes, key: str | None) -> None:
        for rcpt in recipients:
            self.root.mkdir(parents=True, exist_ok=True)
            box = maildir_path(self.root, rcpt)
            mailbox.Maildir(str(box), create=True).close()  # new/ cur/ tmp/
            if key is None:
                box_obj = mailbox.Maildir(str(box), create=False)
                box_obj.add(raw)
                box_obj.close()
                continue
            # A name fixed by the outbox id makes redelivery after a crash (written,
            # not yet recorded as sent) a no-op: each mail lands once per mailbox.
            name = f"faxbridge-{key}.{socket.gethostname()}"
            if (box / "new" / name).exists() or any((box / "cur").glob(name + ":*")) \
                    or (box / "cur" / name).exists():
                continue
            tmp = box / "tmp" / name
            with tmp.open("wb") as fh:
                fh.write(raw.replace(b"\r\n", b"\n"))
                fh.flush()
                os.fsync(fh.fileno())
            os.rename(tmp, box / "new" / name)  # Maildir delivery: tmp/ → new/

    async def send(self, mail_from: str, recipients: list[str], raw: bytes,
                   key: str | None = None) -> Sent:
        try:
            await asyncio.to_thread(self._deliver, recipients, raw, key)
        except OSError as exc:
            raise Transient(f"Maildir delivery failed: {exc}") from exc
        return Sent([], f"written to Maildir {self.root}")


class SmtpRelayTransport:
    def __init__(self, cfg: RelayConfig) -> None:
        self.cfg = cfg
        # Built once: a default context loads the CA store, tens of ms of CPU per mail.
        self.ctx = ssl.create_default_context() if cfg.tls != "none" else None

    async def send(self, mail_from: str, recipients: list[str], raw: bytes,
                   key: str | None = None) -> Sent:
        cfg = self.cfg
        ctx = self.ctx
        password = cfg.password.resolve()
        try:
            errors, message = await aiosmtplib.send(
                raw, sender=mail_from, recipients=recipients, hostname=cfg.host,
                port=cfg.port, use_tls=cfg.tls == "implicit",
                start_tls=cfg.tls == "starttls",
                tls_context=ctx,
                username=cfg.username, password=password if cfg.username else None,
                timeout=cfg.timeout)
        except aiosmtplib.SMTPRecipientsRefused as exc:
            codes = [r.code for r in exc.recipients]
            detail = "; ".join(f"{r.recipient}: {r.code} {r.message}" for r in exc.recipients)
            if all(500 <= c < 600 for c in codes):
                raise Permanent(f"relay refused every recipient: {detail}") from exc
            raise Transient(f"relay deferred: {detail}") from exc
        except aiosmtplib.SMTPResponseException as exc:
            if 500 <= exc.code < 600:
                raise Permanent(f"relay answered {exc.code} {exc.message}",
                                status=exc.code) from exc
            raise Transient(f"relay answered {exc.code} {exc.message}", status=exc.code) from exc
        except (TimeoutError, aiosmtplib.SMTPException, OSError) as exc:
            raise Transient(f"relay {cfg.host}:{cfg.port} unreachable: {exc}") from exc
        # Some recipients refused while others were accepted: the mail is out; the
        # refusals are reported, never retried into duplicates for the others.
        # aiosmtplib hands back the text of the final 250 (to DATA) without its code
        return Sent([f"{rcpt}: {resp.code} {resp.message}" for rcpt, resp in errors.items()],
                    f"250 {message}")


def make_transport(mail_cfg, data_dir: Path) -> Transport:  # noqa: ANN001
    if mail_cfg.transport == "smtp":
        return SmtpRelayTransport(mail_cfg.relay)
    return MaildirTransport(data_dir / "mail")
