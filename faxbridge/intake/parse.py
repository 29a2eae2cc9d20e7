"""Everything the end of DATA needs from a mail's text, in one pure call: the MIME
extraction, the decoded subject and the display names of the To/Cc headers.

One call so that it can run where the accept loop does not pay for it: a parse
process (runtime/parsers.py) for ordinary mails, a thread for large ones. Its
arguments and result are plain data (they cross a process boundary by pickle)."""

from __future__ import annotations

from dataclasses import dataclass
from email.parser import BytesHeaderParser
from email.utils import getaddresses

from faxbridge.intake.clean import clean_text
from faxbridge.intake.mime import Extraction, extract
from faxbridge.intake.numbers import parse_number, split_address
from faxbridge.intake.slim import header_block
from faxbridge.intake.subject import decode_subject


@dataclass
class Parsed:
    ext: Extraction
    subject: str               # decoded, one clean line
    names: dict[str, str]      # E.164 number → display name from To/Cc


def parse_mail(raw: bytes | bytearray, allowed: tuple[str, ...], body_mode: str,
               country: str) -> Parsed:
    ext = extract(raw, allowed, body_mode)
    return Parsed(ext, decode_subject(ext.subject), display_names(raw, country))


def display_names(raw: bytes | bytearray, country: str) -> dict[str, str]:
    """E.164 number → display name, from the To/Cc headers (keyed by number: the
    header may spell the address differently from the envelope)."""
    try:
        # the header block only: parsing all of a 30 MB mail for two headers cost
        # eight times its size in memory (the body is skipped anyway)
        headers = BytesHeaderParser().parsebytes(header_block(raw))
        pairs = getaddresses(headers.get_all("To", []) + headers.get_all("Cc", []))
    except Exception:  # noqa: BLE001
        return {}
    out = {}
    for name, addr in pairs:
        if name and addr:
            parsed = parse_number(split_address(addr)[0], country)
            if parsed.ok:
                # RFC 2047 decoded and made one clean line, like the subject
                out[parsed.number] = clean_text(decode_subject(name), 200)
    return out
