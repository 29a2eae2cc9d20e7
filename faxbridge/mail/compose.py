"""Jinja templates → EmailMessage (multipart/alternative text + HTML, attachments).

Templates are `<what>.<event>.{subject,txt,html}.j2`. An admin directory
(mail.template_dir) overrides any of them; a template that fails to render falls
back to the built-in one and the error is logged: a report is never lost to a typo.
"""

from __future__ import annotations

import logging
import time
from email.message import EmailMessage
from email.utils import format_datetime, formatdate, make_msgid
from pathlib import Path
from typing import Any

import jinja2

log = logging.getLogger("faxbridge.mail")

BUILTIN = Path(__file__).resolve().parent.parent.parent / "templates"


class Composer:
    def __init__(self, override_dir: Path | None = None, domain: str = "faxbridge.local") -> None:
        self.domain = domain
        self.builtin = self._env(jinja2.FileSystemLoader(str(BUILTIN)))
        # Overrides first, built-ins behind them, so an override can include the
        # built-in partials (_report_table.*) and override only what it wants.
        self.override = (self._env(jinja2.ChoiceLoader([
            jinja2.FileSystemLoader(str(override_dir)), jinja2.FileSystemLoader(str(BUILTIN))]))
            if override_dir else None)

    @staticmethod
    def _env(loader: jinja2.BaseLoader) -> jinja2.Environment:
        # HTML autoescaped (senders' subjects and file names are untrusted).
        return jinja2.Environment(
            loader=loader, undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
            autoescape=jinja2.select_autoescape(enabled_extensions=("html.j2",),
                                                default_for_string=False))

    def render(self, name: str, ctx: dict[str, Any]) -> str:
        if self.override is not None:
            try:
                return self.override.get_template(name).render(**ctx)
            except jinja2.TemplateNotFound:
                pass
            except Exception as exc:  # noqa: BLE001 - any template error falls back
                log.error("override template %s failed (%s: %s); using the built-in one",
                          name, type(exc).__name__, exc)
        return self.builtin.get_template(name).render(**ctx)

    def compose(self, kind: str, ctx: dict[str, Any], *, mail_from: str, to: list[str],
                in_reply_to: str | None = None,
                attachments: list[tuple[str, str, bytes]] = ()) -> EmailMessage:
        base = f"{kind}"
        msg = EmailMessage()
        msg["From"] = mail_from
        msg["To"] = ", ".join(to)
        msg["Subject"] = " ".join(self.render(f"{base}.subject.j2", ctx).split())
        msg["Date"] = formatdate(localtime=True)
        msg["Message-ID"] = make_msgid(domain=self.domain)
        # RFC 3834: machine-generated; autoresponders must not answer (no mail loops).
        msg["Auto-Submitted"] = "auto-generated"
        if in_reply_to:
            # Threads under the original in the sender's client (RFC 5322 §3.6.4).
            msg["In-Reply-To"] = in_reply_to
            msg["References"] = in_reply_to
        msg.set_content(self.render(f"{base}.txt.j2", ctx))
        msg.add_alternative(self.render(f"{base}.html.j2", ctx), subtype="html")
        for name, ctype, data in attachments:
            maintype, _, subtype = ctype.partition("/")
            msg.add_attachment(data, maintype=maintype, subtype=subtype or "octet-stream",
                               filename=name)
        return msg


def fmt_time(ts: float | None) -> str:
    if not ts:
        return "unknown"
    import datetime as dt
    return format_datetime(dt.datetime.fromtimestamp(ts).astimezone())


def now() -> float:
    return time.time()
