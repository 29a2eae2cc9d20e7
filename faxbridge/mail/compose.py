"""Jinja templates → EmailMessage (multipart/alternative text + HTML, attachments).

Templates are `<what>.<event>.{subject,txt,html}.j2`. An admin directory
(mail.template_dir) overrides any of them; a template that fails to render falls
back to the built-in one and the error is logged: a report is never lost to a typo.
The built-in templates ship with the package (faxbridge.resources); `check()` finds
a missing or broken one before the bridge starts, not at the first report.
"""

from __future__ import annotations

import logging
from email.header import Header
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path
from typing import Any

import jinja2
import jinja2.meta

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


class Composer:
    def __init__(self, override_dir: Path | None = None, domain: str = "faxbridge.local",
                 builtin_dir: Path | None = None) -> None:
        self.domain = domain
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
                attachments: list[tuple[str, str, bytes]] = ()) -> EmailMessage:
        """The mail; ComposeError (one line, naming the template) if it cannot be made."""
        try:
            return self._compose(kind, ctx, mail_from=mail_from, to=to,
                                 in_reply_to=in_reply_to, attachments=attachments)
        except jinja2.TemplateNotFound as exc:
            raise ComposeError(f"{kind} mail: template {exc.name} not found in "
                               f"{self.builtin_dir}") from exc
        except Exception as exc:  # noqa: BLE001 - the caller decides: retry, hold, 503
            raise ComposeError(f"{kind} mail: {type(exc).__name__}: {exc}") from exc

    def _compose(self, kind: str, ctx: dict[str, Any], *, mail_from: str, to: list[str],
                 in_reply_to: str | None,
                 attachments: list[tuple[str, str, bytes]]) -> EmailMessage:
        base = f"{kind}"
        msg = EmailMessage()
        msg["From"] = mail_from
        msg["To"] = ", ".join(to)
        subject = " ".join(self.render(f"{base}.subject.j2", ctx).split())
        # A sender's subject may hold a literal "=?utf-8?b?...?=": set as it is, the
        # header parser would decode it (possibly into control characters). Encoded
        # by us, it is decoded back to exactly this text.
        msg["Subject"] = Header(subject, "utf-8").encode() if "=?" in subject else subject
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

