"""Phone numbers: the project's one place that reads, compares and formats them
(with the `phonenumbers` library).

Recipient address → E.164 fax number: the local part is the number: +4989123456,
004989123456 (international prefix of the default country), national 089123456;
separators - . ( ) / are allowed. Numbers others write (Retarus reports, received
faxes' metadata) are compared by `same_number` and shown by `pretty`.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

import phonenumbers

SEPARATORS = re.compile(r"[-.()/ ]")


@dataclass(frozen=True)
class Parsed:
    ok: bool
    number: str = ""       # E.164, e.g. +4989123456
    pretty: str = ""       # international format for humans, e.g. +49 89 123456
    error: str = ""
    kind: str = ""         # the number's type (number_kind), e.g. fixed_line, premium_rate


def split_address(address: str) -> tuple[str, str]:
    local, _, domain = address.rpartition("@")
    return local, domain.lower()


# Pure and asked for the same few numbers again and again (one office faxes the
# same pharmacies and courts): libphonenumber's parse, validation and typing of a
# number cost more than the rest of a RCPT decision.
@functools.lru_cache(maxsize=4096)
def parse_number(local: str, default_country: str) -> Parsed:
    if not local:
        return Parsed(False, error="the part before @ is empty; it must be the fax number")
    cleaned = SEPARATORS.sub("", local)
    if not re.fullmatch(r"\+?[0-9]+", cleaned):
        bad = sorted({c for c in cleaned if not (c.isdigit() or c == "+")})
        return Parsed(False, error=(f"'{local}' contains {''.join(bad)!r}; use digits, a leading"
                                    " '+' and the separators - . ( ) /"))
    try:
        num = phonenumbers.parse(cleaned, default_country)
    except phonenumbers.NumberParseException as exc:
        return Parsed(False, error=f"'{local}' is not a phone number ({exc._msg})")
    e164 = phonenumbers.format_number(num, phonenumbers.PhoneNumberFormat.E164)
    if not phonenumbers.is_valid_number(num):
        region = phonenumbers.region_code_for_country_code(num.country_code)
        why = phonenumbers.is_possible_number_with_reason(num)
        length = {phonenumbers.ValidationResult.TOO_SHORT: "too short",
                  phonenumbers.ValidationResult.TOO_LONG: "too long"}.get(why, "not valid")
        return Parsed(False, error=(f"'{local}' read as {e164} is {length} for country code "
                                    f"+{num.country_code} ({region})"))
    pretty = phonenumbers.format_number(num, phonenumbers.PhoneNumberFormat.INTERNATIONAL)
    return Parsed(True, number=e164, pretty=pretty, kind=_kind(num))


# Global country codes whose numbers cost like premium rate but that libphonenumber
# types as mobile (+881 Iridium/Globalstar, +870 Inmarsat) or leaves untyped (+882,
# +883: Thuraya and other international networks) (ITU-T E.164 list of assigned
# country codes).
SATELLITE_CODES = frozenset({870, 881})
INTERNATIONAL_NETWORK_CODES = frozenset({882, 883})
_TYPE_NAMES = {getattr(phonenumbers.PhoneNumberType, n): n.lower()
               for n in ("FIXED_LINE", "MOBILE", "FIXED_LINE_OR_MOBILE", "TOLL_FREE",
                         "PREMIUM_RATE", "SHARED_COST", "VOIP", "PERSONAL_NUMBER", "PAGER",
                         "UAN", "VOICEMAIL", "UNKNOWN")}


def _kind(num: phonenumbers.PhoneNumber) -> str:
    if num.country_code in SATELLITE_CODES:
        return "satellite"
    if num.country_code in INTERNATIONAL_NETWORK_CODES:
        return "international_network"
    return _TYPE_NAMES.get(phonenumbers.number_type(num), "unknown")


def number_kind(e164: str) -> str:
    """The type of a number by libphonenumber's metadata for its country
    (premium_rate, shared_cost, fixed_line, …; satellite and international_network
    by country code); 'unknown' when it cannot be read."""
    try:
        return _kind(phonenumbers.parse(e164, None))
    except phonenumbers.NumberParseException:
        return "unknown"


KIND_TEXT = {"premium_rate": "a premium-rate number", "shared_cost": "a shared-cost number",
             "satellite": "a satellite number", "toll_free": "a toll-free number",
             "international_network": "a number of an international network",
             "personal_number": "a personal number", "uan": "a universal access number",
             "voip": "a VoIP number", "pager": "a pager number",
             "voicemail": "a voicemail number", "mobile": "a mobile number",
             "fixed_line": "a fixed-line number",
             "fixed_line_or_mobile": "a fixed-line or mobile number",
             "unknown": "a number of unknown type"}


def pretty(number: object) -> str:
    """An international number for humans (+49 89 123456); as given when it is not one."""
    text = str(number)
    try:
        return phonenumbers.format_number(phonenumbers.parse(text, None),
                                          phonenumbers.PhoneNumberFormat.INTERNATIONAL)
    except phonenumbers.NumberParseException:
        return text


def digits(number: object) -> str:
    """The comparison key of an international number as others write it: its digits,
    without the international prefix 00 ('+49 89 1234567-8900', '0049891234567 8900'
    and '+49891234567 8900' are the same number)."""
    d = re.sub(r"\D", "", str(number or ""))
    return d[2:] if d.startswith("00") else d


def same_number(a: object, b: object) -> bool:
    key = digits(a)
    return bool(key) and key == digits(b)
