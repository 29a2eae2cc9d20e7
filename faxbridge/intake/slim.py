"""Cut large base64 bodies out of a message before the email package parses it.

The email package holds a message as text: a 34 MB mail with a 25 MB PDF becomes
the decoded str, its list of lines, the joined payload, its bytes again and the
decoded document (about eight copies, measured with tracemalloc). Here every
base64 leaf body above a threshold is replaced by a short token; the parser sees a
small message, and the extractor decodes each cut body straight from the received
bytes (binascii.a2b_base64 on a memoryview: no copy but the result).

A body is cut only when it is certainly one leaf's whole payload: it lies between
the part's blank line and the next delimiter of the enclosing multipart (RFC 2046
§5.1.1) and holds nothing but base64 characters and line breaks, so no boundary
of any level can hide in it. Anything unusual stays in place for the parser.
The caller checks that every token came back as a base64 leaf's payload, or
parses the whole message instead (see mime.extract).
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field
from email.message import Message
from email.parser import BytesHeaderParser
from email.policy import compat32

THRESHOLD = 256 * 1024  # smaller bodies cost little to parse the usual way
MAX_DEPTH = 20

_BLANK_LINE = re.compile(rb"\r?\n\r?\n")
_BASE64_AND_BREAKS = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=\r\n"
_STEP = 1 << 20


@dataclass
class Slimmed:
    data: bytes | bytearray  # the message to parse, with tokens for the cut bodies
    cuts: dict[str, tuple[int, int]] = field(default_factory=dict)  # token → raw range


def slim(raw: bytes | bytearray, threshold: int | None = None) -> Slimmed:
    threshold = THRESHOLD if threshold is None else threshold
    if len(raw) < threshold:
        return Slimmed(raw)
    nonce = secrets.token_hex(8).upper()
    ranges: list[tuple[int, int]] = []
    _scan(raw, 0, len(raw), ranges, threshold, 0)
    if not ranges:
        return Slimmed(raw)
    out: list[bytes] = []
    cuts: dict[str, tuple[int, int]] = {}
    pos = 0
    for n, (start, end) in enumerate(ranges):
        token = f"FBCUT{nonce}X{n}"
        cuts[token] = (start, end)
        out += [raw[pos:start], token.encode("ascii")]
        pos = end
    out.append(raw[pos:])
    return Slimmed(b"".join(out), cuts)


def header_block(raw: bytes | bytearray) -> bytes | bytearray:
    """The header section up to its blank line (CRLF as SMTP sends it, or bare LF),
    without touching the body; all of `raw` if there is no blank line."""
    m = _BLANK_LINE.search(raw)
    return raw if m is None else raw[:m.end()]


def _headers(raw: bytes | bytearray, start: int, end: int) -> tuple[Message, int] | None:
    """The header block of the entity at raw[start:end] and where its body begins."""
    if raw.startswith(b"\r\n", start) or raw.startswith(b"\n", start):  # no headers
        return Message(), start + (2 if raw[start] == 0x0D else 1)
    m = _BLANK_LINE.search(raw, start, end)
    if m is None:
        return None
    return BytesHeaderParser(policy=compat32).parsebytes(raw[start:m.end()]), m.end()


def _scan(raw: bytes | bytearray, start: int, end: int, ranges: list[tuple[int, int]],
          threshold: int, depth: int) -> None:
    """Find cuttable bodies in the entity raw[start:end] (headers, blank line, body)."""
    if depth > MAX_DEPTH or end - start < threshold:
        return
    parsed = _headers(raw, start, end)
    if parsed is None:
        return
    headers, body = parsed
    ctype = headers.get_content_type()
    cte = str(headers.get("Content-Transfer-Encoding", "")).strip().lower()
    if ctype.startswith("multipart/"):
        boundary = headers.get_param("boundary")
        if isinstance(boundary, str) and boundary:
            _scan_multipart(raw, body, end, boundary.encode("ascii", "replace"), ranges,
                            threshold, depth)
        return
    if ctype == "message/rfc822" and cte in ("", "7bit", "8bit", "binary"):
        _scan(raw, body, end, ranges, threshold, depth + 1)
        return
    if cte != "base64" or end - body < threshold:
        return
    # 1 MB at a time: translate() is fast but copies what it looks at
    if any(raw[i:min(i + _STEP, end)].translate(None, _BASE64_AND_BREAKS)
           for i in range(body, end, _STEP)):
        return  # something else in there: leave it to the parser
    ranges.append((body, end))


def _scan_multipart(raw: bytes | bytearray, start: int, end: int, boundary: bytes,
                    ranges: list[tuple[int, int]], threshold: int, depth: int) -> None:
    delimiter = b"--" + boundary
    # the first delimiter may open the body; later ones follow a line break
    if raw.startswith(delimiter, start):
        pos = start
    else:
        pos = raw.find(b"\n" + delimiter, start, end)
        if pos < 0:
            return
        pos += 1
    while True:
        line_end = raw.find(b"\n", pos, end)
        if line_end < 0 or raw.startswith(delimiter + b"--", pos):
            return  # close-delimiter (or truncated): the epilogue is left alone
        part_start = line_end + 1
        nxt = raw.find(b"\n" + delimiter, part_start, end)
        if nxt < 0:
            return  # no closing delimiter: the parser's business
        part_end = nxt - 1 if nxt > part_start and raw[nxt - 1] == 0x0D else nxt
        _scan(raw, part_start, part_end, ranges, threshold, depth + 1)
        pos = nxt + 1
