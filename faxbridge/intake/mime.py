"""MIME message → fax documents (pure; no I/O).

Designed against the ways email-to-fax gateways lose documents in practice:
attachments nested in multipart/related or forwarded messages, inline logos faxed
as pages, text+HTML alternatives faxed twice, application/octet-stream ignored,
charset errors losing the mail, only one attachment honoured, and Outlook's
winmail.dat (TNEF). Every part is accounted for: used, or skipped and why.

One module on purpose (over 300 lines): the walker, the per-type decisions and the
per-part account they write are one piece of logic; split up, a part could be
decided in one place and accounted for in another.
"""

from __future__ import annotations

import binascii
import email
import email.policy
import html
import mimetypes
import re
import unicodedata
from dataclasses import dataclass, field
from email.message import Message
from html.parser import HTMLParser

import filetype

from faxbridge.intake.clean import clean_message_id, clean_text
from faxbridge.intake.slim import slim

MAX_PARTS = 500
MAX_DEPTH = 30
NAME_MAX = 32  # fax4a-send-fax.md documents.name

# Canonical extension per faxable type: Fax4A decides the file type by extension.
EXT_FOR_TYPE = {
    "application/pdf": "pdf", "image/tiff": "tif", "text/plain": "txt", "image/png": "png",
    "image/jpeg": "jpg", "image/gif": "gif", "application/msword": "doc",
    "application/rtf": "rtf",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document": "docx",
    "application/vnd.ms-excel": "xls",
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet": "xlsx",
    "application/vnd.oasis.opendocument.text": "odt",
    "application/vnd.ms-powerpoint": "ppt",
    "application/vnd.openxmlformats-officedocument.presentationml.presentation": "pptx",
}
GENERIC_TYPES = {"application/octet-stream", "application/x-download", "application/download",
                 "application/binary", "binary/octet-stream", "application/force-download",
                 "application/unknown", "application/x-unknown"}
TNEF_TYPES = {"application/ms-tnef", "application/vnd.ms-tnef"}
# ZIP-based office files are detected as application/zip by magic: trust the name.
ZIP_OFFICE = {"docx", "xlsx", "pptx", "odt"}


class MimeError(ValueError):
    """A mail whose structure cannot be taken apart; the message says why, for the
    SMTP reply (it names the problem, never the parser's internals)."""


@dataclass
class Document:
    name: str
    content_type: str
    data: bytes
    charset: str | None = None


@dataclass
class PartInfo:
    path: str
    content_type: str
    filename: str | None
    size: int
    used: bool
    why: str
    document: str | None = None

    def as_dict(self) -> dict[str, object]:
        return {"path": self.path, "type": self.content_type, "name": self.filename,
                "size": self.size, "used": self.used, "why": self.why,
                "document": self.document}


@dataclass
class Extraction:
    documents: list[Document] = field(default_factory=list)
    parts: list[PartInfo] = field(default_factory=list)
    subject: str | None = None
    message_id: str | None = None

    def why_nothing(self) -> str:
        if not self.parts:
            return "the mail has no content"
        return "; ".join(f"{p.filename or p.content_type}: {p.why}" for p in self.parts)


class _TextFromHtml(HTMLParser):
    BLOCK = {"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "table",
             "blockquote", "pre", "hr"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.skip = 0

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag in ("style", "script", "head", "title"):
            self.skip += 1
        elif tag in self.BLOCK:
            self.out.append("\n")
        if tag == "li":
            self.out.append("- ")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("style", "script", "head", "title"):
            self.skip = max(0, self.skip - 1)
        elif tag in self.BLOCK:
            self.out.append("\n")

    def handle_data(self, data: str) -> None:
        if not self.skip:
            self.out.append(data)


def html_to_text(source: str) -> str:
    parser = _TextFromHtml()
    try:
        parser.feed(source)
        parser.close()
    except Exception:  # noqa: BLE001 - malformed HTML must not lose the mail
        return html.unescape(re.sub(r"<[^>]+>", " ", source))
    text = "".join(parser.out).replace("\xa0", " ")
    lines = [" ".join(line.split()) for line in text.splitlines()]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def strip_signature(text: str) -> str:
    """Drop everything after the usenet signature separator '-- ' (RFC 3676 §4.3)."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line == "-- " or line == "--":
            return "\n".join(lines[:i]).rstrip()
    return text.rstrip()


def sanitize_name(filename: str | None, ext: str, taken: set[str], fallback: str) -> str:
    """Make a Fax4A-valid name: ≤32 chars of [A-Za-z0-9-_.], extension kept,
    unique within the job."""
    base = filename or fallback
    base = base.replace("\\", "/").rsplit("/", 1)[-1]
    stem, dot, old_ext = base.rpartition(".")
    if not dot:
        stem = base
    ascii_stem = unicodedata.normalize("NFKD", stem).encode("ascii", "ignore").decode()
    ascii_stem = re.sub(r"[^A-Za-z0-9_-]+", "_", ascii_stem).strip("_.-") or fallback
    room = NAME_MAX - len(ext) - 1
    candidate = f"{ascii_stem[:room]}.{ext}"
    n = 2
    while candidate.lower() in taken:
        suffix = f"-{n}"
        candidate = f"{ascii_stem[:room - len(suffix)]}{suffix}.{ext}"
        n += 1
    taken.add(candidate.lower())
    return candidate


def _decode_text(payload: bytes, charset: str | None) -> str:
    for cs in (charset, "utf-8", "windows-1252"):
        if not cs:
            continue
        try:
            return payload.decode(cs)
        except (LookupError, ValueError):  # unknown charset, bad bytes, NUL in the name
            continue
    return payload.decode("latin-1")


def effective_type(declared: str, filename: str | None, data: bytes) -> str:
    """The type to fax as: the declared one unless it is generic; then the
    content's magic bytes; then the file name's extension."""
    declared = declared.lower()
    ext = (filename or "").rpartition(".")[2].lower() if filename and "." in filename else ""
    if declared not in GENERIC_TYPES:
        if declared == "image/tif":
            return "image/tiff"
        return declared
    kind = filetype.guess(data[:8192]) if data else None
    if kind is not None and not (kind.mime == "application/zip" and ext in ZIP_OFFICE):
        return kind.mime
    if ext:
        guessed, _ = mimetypes.guess_type(f"x.{ext}", strict=False)
        if guessed:
            return guessed
    if data and _looks_like_text(data):
        return "text/plain"
    return declared


def _looks_like_text(data: bytes) -> bool:
    sample = data[:4096]
    if b"\x00" in sample:
        return False
    try:
        sample.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


class _NotCut(Exception):
    """A body cut out by slim() did not come back as one base64 leaf's payload."""


class _Walker:
    def __init__(self, allowed: tuple[str, ...], body_mode: str,
                 raw: bytes | bytearray = b"",
                 cuts: dict[str, tuple[int, int]] | None = None) -> None:
        self.raw = raw
        self.cuts = cuts or {}
        self.used: set[str] = set()
        self.allowed = {t.lower() for t in allowed}
        self.body_mode = body_mode
        self.result = Extraction()
        self.taken: set[str] = set()
        self.count = 0
        self.body_plain: tuple[str, str] | None = None   # (path, text)
        self.body_html: tuple[str, str] | None = None
        self.attachments: list[tuple[str, str | None, str, bytes]] = []  # path,name,type,data

    def skip(self, path: str, ctype: str, name: str | None, size: int, why: str) -> None:
        self.result.parts.append(PartInfo(path, ctype, name, size, False, why))

    def walk(self, msg: Message, path: str = "1", depth: int = 0,
             in_related: bool = False, forwarded: bool = False) -> None:
        self.count += 1
        ctype = msg.get_content_type()
        if self.count > MAX_PARTS or depth > MAX_DEPTH:
            self.skip(path, ctype, None, 0, f"beyond the limit of {MAX_PARTS} parts / "
                                            f"{MAX_DEPTH} levels")
            return
        if msg.is_multipart():
            children = msg.get_payload()
            if not isinstance(children, list):
                return
            if ctype == "message/rfc822":
                for i, child in enumerate(children, 1):
                    self.walk(child, f"{path}.{i}", depth + 1, False, True)
                return
            related = ctype == "multipart/related"
            for i, child in enumerate(children, 1):
                self.walk(child, f"{path}.{i}", depth + 1, related or in_related, forwarded)
            return
        self.leaf(msg, path, ctype, in_related, forwarded)

    def leaf(self, part: Message, path: str, ctype: str, in_related: bool,
             forwarded: bool) -> None:
        try:
            filename = part.get_filename()
        except Exception:  # noqa: BLE001 - broken RFC 2231 parameters
            filename = None
        if filename and "=?" in filename:
            # Outlook and others put RFC 2047 words in filename= (not RFC 2231).
            from faxbridge.intake.subject import decode_subject
            filename = decode_subject(filename)
        # shown in the SMTP log and the report: no control characters, one line
        filename = (clean_text(filename, 255) or None) if filename else None
        try:
            payload = self.payload(part)
        except _NotCut:
            raise
        except Exception as exc:  # noqa: BLE001
            self.skip(path, ctype, filename, 0, f"could not be decoded ({exc})")
            return
        disposition = (part.get_content_disposition() or "").lower()
        size = len(payload)
        is_attachment = disposition == "attachment" or bool(filename)
        if ctype in TNEF_TYPES or (filename or "").lower() == "winmail.dat":
            self.tnef(path, ctype, filename, payload)
            return
        if not is_attachment and ctype in ("text/plain", "text/html"):
            if forwarded:
                self.skip(path, ctype, None, size, "text of a forwarded message (only its "
                                                   "attachments are faxed)")
                return
            text = _decode_text(payload, part.get_content_charset())
            slot = "body_plain" if ctype == "text/plain" else "body_html"
            if getattr(self, slot) is None:
                setattr(self, slot, (path, text))
                # placeholder; decided once the whole tree is seen
                self.result.parts.append(PartInfo(path, ctype, None, size, False, "body"))
            else:
                self.skip(path, ctype, None, size, "further body text part (only the first "
                                                   "is used)")
            return
        if ctype.startswith("image/") and in_related and part.get("Content-ID") \
                and disposition != "attachment":
            self.skip(path, ctype, filename, size, "inline image of the HTML body "
                                                   "(logo or signature), not faxed")
            return
        if not is_attachment:
            self.skip(path, ctype, filename, size, "not an attachment")
            return
        if size == 0:
            self.skip(path, ctype, filename, size, "empty attachment")
            return
        self.attachments.append((path, filename, ctype, payload))
        self.result.parts.append(PartInfo(path, ctype, filename, size, False, "attachment"))

    def payload(self, part: Message) -> bytes:
        """The decoded body; a body cut out by slim() is decoded from the received
        bytes (binascii ignores the line breaks, as RFC 2045 §6.8 asks)."""
        if self.cuts:
            try:  # undecoded; it may still fail on a broken charset= (left to below)
                undecoded = part.get_payload()
            except Exception:  # noqa: BLE001
                undecoded = None
            token = undecoded.rstrip("\r\n") if isinstance(undecoded, str) else None
            if token in self.cuts:
                cte = str(part.get("Content-Transfer-Encoding", "")).strip().lower()
                if cte != "base64" or token in self.used:
                    raise _NotCut(token)
                self.used.add(token)
                start, end = self.cuts[token]
                try:
                    return binascii.a2b_base64(memoryview(self.raw)[start:end])
                except binascii.Error as exc:  # bad padding: the email package's way
                    raise _NotCut(token) from exc
        return part.get_payload(decode=True) or b""

    def tnef(self, path: str, ctype: str, filename: str | None, payload: bytes) -> None:
        try:
            from tnefparse import TNEF
            tnef = TNEF(payload)
        except Exception as exc:  # noqa: BLE001 - any TNEF decoding error
            self.skip(path, ctype, filename, len(payload),
                      f"Outlook winmail.dat could not be unpacked ({exc})")
            return
        self.skip(path, ctype, filename, len(payload),
                  f"Outlook winmail.dat unpacked: {len(tnef.attachments)} attachment(s)")
        for i, att in enumerate(tnef.attachments, 1):
            name = att.long_filename() or att.name
            if isinstance(name, bytes):
                name = name.decode("latin-1", "replace")
            name = (clean_text(name, 255) or None) if name else None
            data = att.data if isinstance(att.data, bytes) else bytes(att.data or b"")
            guessed = mimetypes.guess_type(name or "", strict=False)[0] or \
                "application/octet-stream"
            sub = f"{path}.tnef{i}"
            self.attachments.append((sub, name, guessed, data))
            self.result.parts.append(PartInfo(sub, guessed, name, len(data), False, "attachment"))

    def finish(self) -> Extraction:
        res = self.result
        infos = {p.path: p for p in res.parts}
        # Body first, then attachments in order (FAXAGE: "collated in attachment order").
        body_text = None
        if self.body_plain is not None:
            body_text = self.body_plain[1]
            body_path = self.body_plain[0]
        elif self.body_html is not None:
            body_text = html_to_text(self.body_html[1])
            body_path = self.body_html[0]
        if self.body_html is not None and self.body_plain is not None:
            infos[self.body_html[0]].why = "HTML alternative of the text body (text used)"
        if body_text is not None:
            info = infos[body_path]
            if self.body_mode == "ignore":
                info.why = "mail body (the sender rule ignores the body)"
            else:
                text = strip_signature(body_text.replace("\r\n", "\n")).strip()
                if not text:
                    info.why = "mail body is empty (after removing the signature)"
                else:
                    name = sanitize_name("mail-body", "txt", self.taken, "mail-body")
                    res.documents.append(Document(name, "text/plain",
                                                  (text + "\n").encode("utf-8"), "UTF-8"))
                    info.used, info.why, info.document = True, "mail body as text", name
        for n, (path, filename, declared, data) in enumerate(self.attachments, 1):
            info = infos[path]
            etype = effective_type(declared, filename, data)
            info.content_type = etype if etype == declared else f"{declared} → {etype}"
            if etype not in self.allowed:
                info.why = (f"type {etype} cannot be faxed (allowed: "
                            f"{', '.join(sorted(self.allowed))})")
                continue
            ext = EXT_FOR_TYPE.get(etype) or (mimetypes.guess_extension(etype) or ".bin")[1:]
            given_ext = (filename or "").rpartition(".")[2].lower() if filename and "." in \
                filename else ""
            if given_ext and mimetypes.guess_type(f"x.{given_ext}", strict=False)[0] == etype:
                ext = given_ext  # keep the sender's spelling (.tiff, .jpeg)
            charset = None
            if etype == "text/plain":
                data = _decode_text(data, None).encode("utf-8")
                charset = "UTF-8"
            name = sanitize_name(filename, ext, self.taken, f"attachment-{n}")
            res.documents.append(Document(name, etype, data, charset))
            info.used, info.why, info.document = True, "faxed", name
        return res


def extract(raw: bytes | bytearray, allowed_types: tuple[str, ...],
            body_mode: str = "first") -> Extraction:
    """The documents of a mail. Raises MimeError for a structure that cannot be
    taken apart: the email package's parser recurses once per multipart level and
    runs out of stack a few hundred levels down (the walker itself stops at
    MAX_DEPTH and accounts for what lies below as skipped)."""
    try:
        return _extract_all(raw, allowed_types, body_mode)
    except RecursionError:
        raise MimeError(f"its MIME parts are nested too deeply (more than {MAX_DEPTH} "
                        "levels are not read)") from None


def _extract_all(raw: bytes | bytearray, allowed_types: tuple[str, ...],
                 body_mode: str) -> Extraction:
    slimmed = slim(raw)
    if slimmed.cuts:
        try:
            return _extract(slimmed.data, allowed_types, body_mode, raw, slimmed.cuts)
        except _NotCut:
            pass  # a cut body was not one leaf's payload after all: parse everything
    return _extract(raw, allowed_types, body_mode, raw, {})


def _extract(data: bytes | bytearray, allowed_types: tuple[str, ...], body_mode: str,
             raw: bytes | bytearray,
             cuts: dict[str, tuple[int, int]]) -> Extraction:
    msg = email.message_from_bytes(data, policy=email.policy.compat32)
    walker = _Walker(allowed_types, body_mode, raw, cuts)
    walker.walk(msg)
    if walker.used != set(cuts):
        raise _NotCut(", ".join(sorted(set(cuts) - walker.used)))
    res = walker.finish()
    res.subject = msg.get("Subject")
    # only the <left@right> token: a folded header's continuation lines never reach
    # the report's In-Reply-To, a log or a terminal
    res.message_id = clean_message_id(msg.get("Message-ID"))
    return res
