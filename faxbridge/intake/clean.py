"""Normalising text taken from a mail before it reaches a mail header, a log line or
a terminal (pure; no I/O).

A sender controls every header of its mail. Left as they are, a CR/LF in a folded
Message-ID makes the report's In-Reply-To impossible to write (the job then never
gets its report), and an ESC sequence in a subject rewrites the admin's terminal when
`faxbridge jobs` prints it. Everything read from a mail goes through here once, at
intake, and the command line runs what it prints through `printable()` again (rows
stored before this normalisation existed).
"""

from __future__ import annotations

import re

# C0 (CR and LF included) except TAB, DEL, C1, and the Unicode line and paragraph
# separators (str.splitlines() and some terminals treat them as line breaks).
CONTROL = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")
# Lone surrogates: what 8-bit garbage becomes after a surrogateescape decoding; they
# cannot be encoded, so a header holding one cannot be written.
SURROGATE = re.compile("[\ud800-\udfff]")

# Longer texts are cut: a subject is one line in a report, a log and a terminal.
MAX_TEXT = 1000

# RFC 5322 §3.6.4 msg-id: "<" id-left "@" id-right ">", id-left a dot-atom-text,
# id-right a dot-atom-text or a no-fold-literal.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_DOT_ATOM = rf"{_ATEXT}(?:\.{_ATEXT})*"
MSG_ID = re.compile(rf"<({_DOT_ATOM})@({_DOT_ATOM}|\[[\x21-\x5a\x5e-\x7e]*\])>")
# RFC 5322 §2.1.1: a line is at most 998 characters; a longer msg-id cannot be one.
MAX_MSG_ID = 998


def clean_text(value: object, max_len: int = MAX_TEXT) -> str:
    """One line of text safe for a header, a log and a terminal: control characters
    and undecodable bytes become spaces / U+FFFD, runs of white space one space, and
    the result at most `max_len` characters (cut with "…")."""
    if value is None:
        return ""
    text = value if isinstance(value, str) else str(value)
    # cut early: a 1 MB subject must not be scanned several times over
    text = text[: max_len * 4]
    text = SURROGATE.sub("\ufffd", CONTROL.sub(" ", text.replace("\t", " ")))
    text = " ".join(text.split())
    if len(text) > max_len:
        text = text[: max_len - 1].rstrip() + "…"
    return text


def printable(value: object) -> str:
    """Text for a terminal or a log line, which may span lines (a log record's
    detail): control characters other than TAB and LF are replaced by U+FFFD, so
    nothing printed can move the cursor, set colours or retitle the window."""
    if value is None:
        return ""
    text = value if isinstance(value, str) else str(value)
    lines = text.replace("\r\n", "\n").split("\n")
    return "\n".join(SURROGATE.sub("\ufffd", CONTROL.sub("\ufffd", line)) for line in lines)


def clean_message_id(raw: object) -> str | None:
    """The first RFC 5322 msg-id token of a Message-ID header, `<left@right>`, or
    None when there is none: whatever surrounds it (a continuation line, a comment,
    a second id) is dropped."""
    if not raw:
        return None
    text = raw if isinstance(raw, str) else str(raw)
    m = MSG_ID.search(text[: 64 * 1024])
    if m is None or len(m.group(0)) > MAX_MSG_ID:
        return None
    return m.group(0)
