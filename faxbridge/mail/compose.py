"""Jinja templates → EmailMessage (multipart/alternative text + HTML, attachments).

Templates are `<what>.<event>.{subject,txt,html}.j2`. An admin directory
(mail.template_dir) overrides any of them; a template that fails to render falls
back to the built-in one and the error is logged: a report is never lost to a typo.
The built-in templates ship with the package (faxbridge.resources); `check()` finds
a missing or broken one before the bridge starts, not at the first report.

Filters for people (registered in every environment, built-in and override):
`when` (a time in mail.timezone: "Mon 30 Nov 2026, 14:05 CET"), `nobr` (HTML: keep a
number or a time on one line, with and without CSS), `pages` ("1 page", "3 pages"),
`duration` ("1 min 12 s").
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import zoneinfo
from email.header import Header
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path
from typing import Any

import jinja2
import jinja2.meta
from markupsafe import Markup, escape

from faxbridge.errors import FaxbridgeError
from faxbridge.resources import builtin_templates_dir

log = logging.getLogger("faxbridge.mail")

# Every mail the code composes: report.<event> (outbound.report.event_for) and
# the mail of a received fax (inbound.deliver).
KINDS = ("report.delivered", "report.partial", "report.failed", "report.notsubmitted",
         "inbound.fax")
PARTS = ("subject", "txt", "html")


class ComposeError(FaxbridgeError):
    """A mail could not be composed (a template missing, broken, or failing to render)."""


class TemplateError(FaxbridgeError):
    """Templates that make the bridge unable to compose its mails; one line per problem."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("mail templates: " + "; ".join(problems))


DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def to_datetime(value: Any) -> dt.datetime | None:
    """A time from Retarus (ISO 8601, "Z" or an offset; naive means UTC) or from the
    store (seconds since the epoch); None when it is neither."""
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.UTC)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return dt.datetime.fromtimestamp(value, dt.UTC)
    if isinstance(value, str) and value.strip():
        try:
            parsed = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            return None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)
    return None


def format_when(value: Any, tz: dt.tzinfo | None) -> str:
    """'Mon 30 Nov 2026, 14:05 CET' in `tz` (None: the host's zone). English names,
    not the process locale's: the rest of the mail is English too. A value that is
    not a time is shown as it came."""
    when = to_datetime(value)
    if when is None:
        return "" if value is None else str(value)
    local = when.astimezone(tz)
    zone = local.tzname() or ""
    if zone[:1] in "+-":  # zones without an abbreviation are named by their offset
        zone = f"UTC{zone}"
    return (f"{DAYS[local.weekday()]} {local.day} {MONTHS[local.month - 1]} {local.year}, "
            f"{local:%H:%M} {zone}").strip()


def nobr(value: Any) -> Markup:
    """HTML that keeps `value` on one line: the CSS for clients that have it,
    non-breaking spaces for those that drop styles."""
    text = "" if value is None else str(value)
    return Markup('<span style="white-space:nowrap">%s</span>') % escape(
        text.replace(" ", "\u00a0"))


def pages_text(n: Any) -> str:
    try:
        count = int(n)
    except (TypeError, ValueError):
        return ""
    return f"{count} page" + ("" if count == 1 else "s")


def duration_text(seconds: Any) -> str:
    try:
        total = int(seconds)
    except (TypeError, ValueError):
        return ""
    minutes, secs = divmod(max(0, total), 60)
    return f"{minutes} min {secs} s" if minutes else f"{secs} s"


class Composer:
    def __init__(self, override_dir: Path | None = None, domain: str = "faxbridge.local",
                 builtin_dir: Path | None = None, *, timezone: str | None = None,
                 tiff_to_pdf: bool = True) -> None:
        self.domain = domain
        # None: the host's zone, looked up at each use (it follows the TZ of the process)
        self.tz: dt.tzinfo | None = zoneinfo.ZoneInfo(timezone) if timezone else None
        # read by the mail of a received fax (inbound.deliver): attach TIFF as PDF
        self.tiff_to_pdf = tiff_to_pdf
        self.override_dir = override_dir
        self.builtin_dir = builtin_dir or builtin_templates_dir()
        # A missing directory is not an error here: check() reports it, and compose()
        # raises ComposeError (jinja's TemplateNotFound) for each mail.
        builtin_loader: jinja2.BaseLoader = (
            jinja2.FileSystemLoader(str(self.builtin_dir)) if self.builtin_dir
            else jinja2.DictLoader({}))
        self.builtin = self._env(builtin_loader)
        # Overrides first, built-ins behind them, so an override can include the
        # built-in partials (_report_table.*) and override only what it wants.
        self.override = (self._env(jinja2.ChoiceLoader([
            jinja2.FileSystemLoader(str(override_dir)), builtin_loader]))
            if override_dir else None)

    @classmethod
    def for_config(cls, mail: Any, domain: str) -> Composer:
        """The composer of a config's [mail] section (config.MailConfig)."""
        return cls(mail.template_dir, domain, timezone=mail.timezone,
                   tiff_to_pdf=mail.tiff_to_pdf)

    def _env(self, loader: jinja2.BaseLoader) -> jinja2.Environment:
        # HTML autoescaped (senders' subjects and file names are untrusted).
        env = jinja2.Environment(
            loader=loader, undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
            autoescape=jinja2.select_autoescape(enabled_extensions=("html.j2",),
                                                default_for_string=False))
        env.filters.update(when=lambda value: format_when(value, self.tz), nobr=nobr,
                           pages=pages_text, duration=duration_text)
        return env

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

    def check(self) -> list[str]:
        """Problems that would stop mails from being composed: every built-in template
        the code uses must load and compile, with the templates it includes; every
        override in mail.template_dir must parse. Empty when all is well."""
        problems: list[str] = []
        if self.builtin_dir is None:
            return ["the built-in templates are not installed (no package "
                    "faxbridge.templates): reinstall faxbridge"]
        if not self.builtin_dir.is_dir():
            return [f"the built-in templates directory {self.builtin_dir} does not exist"]
        for kind in KINDS:
            for part in PARTS:
                problems += self._check(self.builtin, f"{kind}.{part}.j2", "built-in template",
                                        str(self.builtin_dir))
        if self.override is not None:
            assert self.override_dir is not None
            if not self.override_dir.is_dir():
                problems.append(f"mail.template_dir: {self.override_dir} is not a directory")
            else:
                own = jinja2.FileSystemLoader(str(self.override_dir)).list_templates()
                for name in (n for n in own if n.endswith(".j2")):
                    problems += self._check(self.override, name, "mail.template_dir: template",
                                            f"{self.override_dir} and the built-in templates")
        return list(dict.fromkeys(problems))

    @staticmethod
    def _check(env: jinja2.Environment, name: str, what: str, where: str,
               seen: set[str] | None = None) -> list[str]:
        seen = set() if seen is None else seen
        if name in seen:
            return []
        seen.add(name)
        assert env.loader is not None
        try:
            source, _, _ = env.loader.get_source(env, name)
            env.get_template(name)
            # {% include %} / {% extends %} are resolved at render time only
            refs = [r for r in jinja2.meta.find_referenced_templates(env.parse(source)) if r]
        except jinja2.TemplateNotFound:
            return [f"{what} {name} is missing from {where}"]
        except jinja2.TemplateSyntaxError as exc:
            return [f"{what} {name} line {exc.lineno}: {exc.message}"]
        except Exception as exc:  # noqa: BLE001 - unreadable file, bad encoding, …
            return [f"{what} {name} cannot be loaded: {type(exc).__name__}: {exc}"]
        out = []
        for ref in refs:
            out += Composer._check(env, ref, what, where, seen)
        return out

    def compose(self, kind: str, ctx: dict[str, Any], *, mail_from: str, to: list[str],
                in_reply_to: str | None = None,
                attachments: list[tuple[str, str, bytes]] = (),
                inline: dict[str, tuple[str, bytes]] | None = None,
                headers: dict[str, str] | None = None) -> EmailMessage:
        """The mail; ComposeError (one line, naming the template) if it cannot be made.

        `inline` maps a name to (content type, data) of an image the HTML shows: it
        goes into a multipart/related beside the HTML (RFC 2387) and the templates
        find its URL as `cid[name]` ("cid:…", RFC 2392). `headers` are added as they
        are (references for admins, kept out of the text people read)."""
        try:
            return self._compose(kind, ctx, mail_from=mail_from, to=to,
                                 in_reply_to=in_reply_to, attachments=attachments,
                                 inline=inline or {}, headers=headers or {})
        except jinja2.TemplateNotFound as exc:
            raise ComposeError(f"{kind} mail: template {exc.name} not found in "
                               f"{self.builtin_dir}") from exc
        except Exception as exc:  # noqa: BLE001 - the caller decides: retry, hold, 503
            raise ComposeError(f"{kind} mail: {type(exc).__name__}: {exc}") from exc

    def _compose(self, kind: str, ctx: dict[str, Any], *, mail_from: str, to: list[str],
                 in_reply_to: str | None,
                 attachments: list[tuple[str, str, bytes]],
                 inline: dict[str, tuple[str, bytes]],
                 headers: dict[str, str]) -> EmailMessage:
        base = f"{kind}"
        cids = {name: make_msgid(name, domain=self.domain) for name in inline}
        ctx = {**ctx, "cid": {name: "cid:" + cid[1:-1] for name, cid in cids.items()}}
        msg = EmailMessage()
        msg["From"] = mail_from
        msg["To"] = ", ".join(to)
        subject = " ".join(self.render(f"{base}.subject.j2", ctx).split())
        # A sender's subject may hold a literal "=?utf-8?b?...?=": set as it is, the
        # header parser would decode it (possibly into control characters), and the
        # generator would write it out unencoded for the reader's client to decode.
        # So it is encoded by us, whole (RFC 2047 §5: an "=?" in text must itself be
        # encoded), folded into lines the generator keeps as they are: a long subject
        # folds with a line break, which an assigned header value may not contain.
        if "=?" in subject:
            msg.set_raw("Subject", Header(subject, "utf-8", header_name="Subject").encode())
        else:
            msg["Subject"] = subject
        msg["Date"] = formatdate(localtime=True)
        msg["Message-ID"] = make_msgid(domain=self.domain)
        # RFC 3834: machine-generated; autoresponders must not answer (no mail loops).
        msg["Auto-Submitted"] = "auto-generated"
        if in_reply_to:
            # Threads under the original in the sender's client (RFC 5322 §3.6.4).
            msg["In-Reply-To"] = in_reply_to
            msg["References"] = in_reply_to
        for name, value in headers.items():
            msg[name] = value
        # Partials and conditional sections leave runs of blank lines: one is enough.
        text = re.sub(r"\n[ \t]*(?:\n[ \t]*)+\n", "\n\n", self.render(f"{base}.txt.j2", ctx))
        msg.set_content(text.lstrip("\n"))
        msg.add_alternative(self.render(f"{base}.html.j2", ctx), subtype="html")
        if inline:
            html = msg.get_payload()[1]
            for name, (ctype, data) in inline.items():
                maintype, _, subtype = ctype.partition("/")
                html.add_related(data, maintype=maintype, subtype=subtype, cid=cids[name],
                                 disposition="inline")
        for name, ctype, data in attachments:
            maintype, _, subtype = ctype.partition("/")
            msg.add_attachment(data, maintype=maintype, subtype=subtype or "octet-stream",
                               filename=name)
        return msg

