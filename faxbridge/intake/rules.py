"""Sender rules: first match wins (config order). Pure functions of the config
and the facts of one SMTP transaction, so `faxbridge route` explains exactly
what the listener decides."""

from __future__ import annotations

import fnmatch
import ipaddress
from dataclasses import dataclass

from faxbridge.config import SenderRule


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
            return ipaddress.ip_address(who.peer_ip) in ipaddress.ip_network(pattern[4:],
                                                                              strict=False)
        except ValueError:
            return False
    # Addresses compare case-insensitively: mail clients and MTAs change the case of
    # addresses freely, and a gateway that compares them exactly refuses real senders.
    return fnmatch.fnmatchcase(who.sender.lower(), pattern.lower())


def find_rule(rules: tuple[SenderRule, ...], who: Who) -> SenderRule | None:
    for rule in rules:
        if any(_matches(p, who) for p in rule.match):
            return rule
    return None


def matching_pattern(rule: SenderRule, who: Who) -> str:
    return next((p for p in rule.match if _matches(p, who)), "")


def in_networks(ip: str | None, networks: tuple[str, ...]) -> bool:
    if not ip:
        return False
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return False
    if addr.version == 6 and addr.ipv4_mapped:
        addr = addr.ipv4_mapped
    return any(addr in ipaddress.ip_network(n, strict=False) for n in networks)


def destination_allowed(rule: SenderRule, e164: str) -> tuple[bool, str]:
    for pat in rule.deny:
        if fnmatch.fnmatchcase(e164, pat):
            return False, f"denied by pattern {pat}"
    for pat in rule.allow:
        if fnmatch.fnmatchcase(e164, pat):
            return True, f"allowed by pattern {pat}"
    return False, "matches none of the allowed patterns " + ", ".join(rule.allow)
