"""Mail subject → fax header line (renderingOptions.header)."""

from __future__ import annotations

import unicodedata
from email.header import decode_header

from faxbridge.intake.clean import CONTROL, clean_text


def decode_subject(raw: str | None) -> str:
    """RFC 2047 decode, tolerant of broken encoded-words; one clean line (an
    encoded-word may carry CR/LF or ESC, raw 8-bit bytes may not decode)."""
    if not raw:
        return ""
    try:
        text = "".join(_decoded(part, charset) for part, charset in decode_header(raw))
    except Exception:  # noqa: BLE001 - any broken encoded-word: keep the raw text
        text = str(raw)
    return clean_text(text)


def _decoded(part: bytes | str, charset: str | None) -> str:
    """One piece of decode_header()'s result; bytes invalid in their charset become
    U+FFFD rather than losing the whole subject to the raw encoded-words."""
    if isinstance(part, str):
        return part
    try:
        return part.decode(charset or "ascii", "replace")
    except LookupError:  # an unknown charset name
        return part.decode("latin-1")


def header_line(subject: str, template: str, max_len: int, **fields: str) -> str:
    """Fill the configured template and make it safe for Retarus.

    The header is a Retarus template in which `%` starts a control sequence
    (`%d`, `%C`, `%tz=…`, fax4a-send-fax.md renderingOptions.header). A subject must
    not inject those, so every `%` coming from the mail is removed; the admin's
    template keeps its own %-codes."""
    clean = CONTROL.sub(" ", unicodedata.normalize("NFC", subject)).replace("%", "")
    clean = " ".join(clean.split())
    safe = {k: CONTROL.sub(" ", v).replace("%", "") for k, v in fields.items()}
    try:
        text = template.format(subject=clean, **safe)
    except (KeyError, IndexError, ValueError):
        text = clean
    if len(text) > max_len:
        text = text[: max_len - 1].rstrip() + "…"
    return text
