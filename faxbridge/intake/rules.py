"""Sender rules: first match wins (config order). Pure functions of the config
and the facts of one SMTP transaction, so `faxbridge route` explains exactly
what the listener decides."""

from __future__ import annotations

import fnmatch
import functools
import ipaddress
from dataclasses import dataclass

from faxbridge.config import SenderRule, SmtpUser
from faxbridge.intake.numbers import KIND_TEXT


@dataclass(frozen=True)
class Who:
    sender: str               # envelope sender, lower-cased
    auth_user: str | None = None
    peer_ip: str | None = None


def _matches(pattern: str, who: Who) -> bool:
    if pattern == "*":
        return True
    if pattern.startswith("user:"):
        return who.auth_user is not None and who.auth_user == pattern[5:]
    if pattern.startswith("net:"):
        if not who.peer_ip:
            return False
        try:
            return ipaddress.ip_address(who.peer_ip) in _network(pattern[4:])
        except ValueError:
            return False
    # Addresses compare case-insensitively: mail clients and MTAs change the case of
    # addresses freely, and a gateway that compares them exactly refuses real senders.
    return fnmatch.fnmatchcase(who.sender.lower(), pattern.lower())


def find_rule(rules: tuple[SenderRule, ...], who: Who,
              users: tuple[SmtpUser, ...] = ()) -> SenderRule | None:
    """The rule a transaction goes by. An authenticated client's user decides it
    (the rule the user is bound to, else the first rule naming 'user:NAME'), never
    MAIL FROM: a user could otherwise pick any rule by the address it claims."""
    if who.auth_user is not None:
        user = next((u for u in users if u.name == who.auth_user), None)
        if user is not None and user.rule is not None:
            return next((r for r in rules if r.name == user.rule), None)
        pattern = f"user:{who.auth_user}"
        return next((r for r in rules if pattern in r.match), None)
    for rule in rules:
        if any(_matches(p, who) for p in rule.match):
            return rule
    return None


def matching_pattern(rule: SenderRule, who: Who, users: tuple[SmtpUser, ...] = ()) -> str:
    """Why `rule` applies, for a human."""
    if who.auth_user is not None:
        if any(u.name == who.auth_user and u.rule == rule.name for u in users):
            return f"user {who.auth_user} is bound to it (smtp.users rule)"
        return f"'user:{who.auth_user}' (the authenticated user)"
    return repr(next((p for p in rule.match if _matches(p, who)), ""))


def sender_login(user: SmtpUser, sender: str) -> tuple[str | None, str]:
    """May `user` use `sender` as MAIL FROM (Postfix's reject_sender_login_mismatch)?
    (the address its reports go to, or None when not; why, for a human)."""
    address = sender.lower()
    if address in user.addresses:
        return address, f"{address} is an address of user {user.name}"
    for pat in user.send_as:
        if fnmatch.fnmatchcase(address, pat):
            return user.addresses[0], (f"user {user.name} may send as {address} (send_as "
                                       f"{pat}); reports go to {user.addresses[0]}")
    owned = ", ".join((*user.addresses, *user.send_as)) or "none configured"
    return None, f"{address} is not an address of user {user.name} (it may use: {owned})"


def in_networks(ip: str | None, networks: tuple[str, ...]) -> bool:
    if not ip:
        return False
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return False
    if addr.version == 6 and addr.ipv4_mapped:
        addr = addr.ipv4_mapped
    return any(addr in _network(n) for n in networks)


@functools.lru_cache(maxsize=256)
def _network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    # the config's few networks, asked for at every EHLO, MAIL and RCPT
    return ipaddress.ip_network(text, strict=False)


def destination_allowed(rule: SenderRule, e164: str, kind: str = "") -> tuple[bool, str]:
    """Deny patterns, then the refused number types (`kind`: numbers.number_kind),
    then the allow patterns."""
    for pat in rule.deny:
        if fnmatch.fnmatchcase(e164, pat):
            return False, f"denied by pattern {pat}"
    if kind in rule.refuse_number_types:
        return False, (f"{KIND_TEXT.get(kind, kind)} (number type {kind} is in "
                       "refuse_number_types)")
    for pat in rule.allow:
        if fnmatch.fnmatchcase(e164, pat):
            return True, f"allowed by pattern {pat}"
    return False, "matches none of the allowed patterns " + ", ".join(rule.allow)
