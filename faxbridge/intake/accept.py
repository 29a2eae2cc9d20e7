"""The accept path: what the SMTP listener answers at MAIL, RCPT and DATA.

Pure functions of the config and the facts the caller looked up (peer, AUTH user,
TLS, sender, what the transaction accepted so far, the sender's rate-limit counts,
the extraction result): no I/O, no asyncio, no store. The SMTP handler turns each
Decision into its reply and SMTP log record; `faxbridge route` runs the same
functions in the same order (`simulate`) and prints the steps, so the admin's
"why was this refused?" gets the listener's answer, not a second opinion.

A little over 300 lines on purpose: MAIL, RCPT, DATA and `simulate` (the route
command's run of them in the listener's order) must change together.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Mapping, Sequence
from dataclasses import KW_ONLY, dataclass, field, replace
from email._header_value_parser import get_angle_addr
from email.errors import HeaderParseError
from typing import Any

from faxbridge import replies
from faxbridge.config import Config, SenderRule
from faxbridge.intake.mime import Extraction
from faxbridge.intake.numbers import parse_number, split_address
from faxbridge.intake.rules import (
    Who,
    destination_allowed,
    find_rule,
    in_networks,
    matching_pattern,
    sender_login,
)


@dataclass(frozen=True)
class Limit:
    """One rate limit of a sender rule on one key: at most `limit` faxes (recipient
    numbers) in `seconds` for the sender, the client address or the number."""

    scope: str   # "user" / "sender" / "client" / "number": what `key` is
    key: str     # the user name, the MAIL FROM address, the client's IP, the E.164 number
    label: str   # "hour" / "day": the word the reply uses
    seconds: int
    limit: int

    @property
    def id(self) -> tuple[str, str, str]:
        return self.scope, self.key, self.label

    def describe(self) -> str:
        return {"user": f"for user {self.key}", "sender": f"for sender {self.key}",
                "client": f"for client address {self.key}",
                "number": f"to number {self.key}"}[self.scope]


# How the caller counts a limit's faxes: (scope, key, window label) → the faxes
# accepted in the window by other transactions (committed, and in flight in other
# sessions). This transaction's own recipients are added here.
Counts = Mapping[tuple[str, str, str], int]


@dataclass(frozen=True)
class Decision:
    """An answer to one SMTP command: the exact reply line, and the steps that led
    to it for a human. RCPT decisions also carry what the SMTP log keeps."""

    reply: str
    steps: tuple[str, ...] = ()
    number: str | None = None       # RCPT: the E.164 number, once the number parsed
    pretty: str | None = None       # RCPT: the number for humans
    rule: SenderRule | None = None  # RCPT: the sender rule, once one matched
    why: str | None = None          # RCPT: the destination check's result
    duplicate: bool = False         # RCPT: a number this mail has already
    probe: bool = False             # RCPT: answered for a verification probe only
    # RCPT: the rate limits still to be checked. The caller counts the faxes of
    # each and asks again with the counts (no store in here).
    pending: tuple[Limit, ...] = ()
    # RCPT accepted: the (scope, key) pairs this fax counts against, for the
    # caller to hold while the transaction is in flight
    keys: tuple[tuple[str, str], ...] = ()
    report_to: str | None = None    # MAIL: where the job's reports go (None: MAIL FROM)

    @property
    def code(self) -> int:
        return int(self.reply[:3])

    @property
    def accepted(self) -> bool:
        return self.reply.startswith("2")

    @property
    def verdict(self) -> str:
        """'accept', 'defer <reply>' (4xx: the client tries again later) or
        'reject <reply>'."""
        if self.accepted:
            return "accept"
        return ("defer " if self.reply.startswith("4") else "reject ") + self.reply


@dataclass(frozen=True)
class Client:
    """The SMTP session's facts about the client."""

    peer: str | None
    # the rest by keyword only: several optional facts of one type, easily swapped
    _: KW_ONLY
    auth_user: str | None = None  # the user the client authenticated as (AUTH succeeded)
    tls: bool = False
    # A Faxes API token's name: the token is the identity, and the sender it acts as
    # is the one the admin configured for it ([[api.tokens]] sender), not a claim.
    api_token: str | None = None
    # The original client's address as the MTA in front told it (XFORWARD ADDR, only
    # from smtp.xforward_networks): `net:` sender rules judge this one.
    origin: str | None = None


@dataclass
class MailState:
    """What one transaction has accepted so far (MAIL … DATA)."""

    sender: str                # as given in MAIL FROM
    client: Client
    rcpt_count: int = 0        # RCPTs answered 250, duplicates included
    # (e164, address, pretty) of each accepted number, without duplicates
    numbers: list[tuple[str, str, str]] = field(default_factory=list)
    rule: SenderRule | None = None  # the rule of the first accepted recipient
    report_to: str | None = None    # the user's address when MAIL FROM is not its own
    probe: bool = False        # a verification probe's RCPT was answered: DATA is refused

    def who(self) -> Who:
        return Who(sender=self.sender.lower(), auth_user=self.client.auth_user,
                   peer_ip=self.client.origin or self.client.peer)

    def record(self, address: str, d: Decision) -> None:
        """Take an accepted RCPT into the transaction."""
        if not d.accepted:
            return
        if d.probe:
            self.probe = True
            return
        self.rcpt_count += 1
        self.rule = self.rule or d.rule
        if not d.duplicate and d.number:
            self.numbers.append((d.number, address, d.pretty or d.number))


# The rate windows a sender rule can limit: (label, seconds).
WINDOWS = (("hour", 3600), ("day", 86400))


def rate_keys(state: MailState, number: str) -> tuple[tuple[str, str], ...]:
    """What one fax of this transaction counts against: (scope, key) for the
    sender (the authenticated user, else MAIL FROM), the client address, the number."""
    user = state.client.auth_user
    keys = [("user", user) if user is not None else ("sender", state.sender.lower())]
    if state.client.peer:
        keys.append(("client", state.client.peer))
    keys.append(("number", number))
    return tuple(keys)


def rate_limits(rule: SenderRule, state: MailState, number: str) -> tuple[Limit, ...]:
    values = {"hour": rule.max_per_hour, "day": rule.max_per_day}
    by = {"user": "sender", "sender": "sender", "client": "client", "number": "number"}
    return tuple(Limit(scope, key, label, seconds, values[label])
                 for scope, key in rate_keys(state, number) if by[scope] in rule.rate_limit_by
                 for label, seconds in WINDOWS if values[label])


def envelope_address(text: str) -> str | None:
    """The address the listener's protocol layer hands on for `MAIL FROM:<text>` /
    `RCPT TO:<text>` (aiosmtpd parses it as RFC 5322 angle-addr: a parenthesised
    part is a comment and dropped, a local part with spaces comes quoted, the null
    sender is '<>'); None where it answers 553 malformed address."""
    try:
        addr, rest = get_angle_addr(f"<{text}>")
    except HeaderParseError:
        return None
    return addr.addr_spec if not rest else None


# ----------------------------------------------------------------- session
def login(cfg: Config, peer: str | None, user: str | None, tls: bool) -> tuple[Client, list[str]]:
    """The Client a session reaches when it asks for STARTTLS (`tls`) and logs in as
    `user` with the right password: what aiosmtpd lets it do under this config.
    For `faxbridge route`; the listener knows the outcome from the session itself."""
    steps: list[str] = []
    if tls and cfg.smtp.tls_cert is None:
        steps.append("TLS: not possible, this server has no certificate (smtp.tls_cert), "
                     "so STARTTLS is not offered")
        tls = False
    elif tls:
        steps.append("TLS: STARTTLS done")
    auth_user = None
    if user is not None:
        if not cfg.smtp.users:
            steps.append(f"AUTH as {user}: not offered, smtp.users is empty")
        elif cfg.smtp.auth_require_tls and not tls:
            steps.append(f"AUTH as {user}: refused without TLS (smtp.auth_require_tls; "
                         "the listener answers 538 5.7.11)")
        elif user not in {u.name for u in cfg.smtp.users}:
            steps.append(f"AUTH as {user}: fails, no such user in smtp.users (535)")
        else:
            steps.append(f"AUTH as {user}: succeeds (given the right password)")
            auth_user = user
    return Client(peer, auth_user=auth_user, tls=tls), steps


def mail(cfg: Config, client: Client, sender: str) -> Decision:
    """MAIL FROM: may this client send at all, and from this sender? An
    authenticated client only from an address its user may use."""
    steps: list[str] = []
    nets = ", ".join(cfg.smtp.trusted_networks) or "none"
    if client.api_token is not None:
        steps.append(f"Faxes API token {client.api_token}, acting as its configured sender")
    elif client.auth_user is not None:
        steps.append(f"client authenticated as {client.auth_user}")
    elif in_networks(client.peer, cfg.smtp.trusted_networks):
        steps.append(f"peer {client.peer} is in smtp.trusted_networks ({nets})")
    else:
        steps.append(f"peer {client.peer} is not in smtp.trusted_networks ({nets}) and "
                     "the client did not authenticate")
        return Decision(replies.S530_AUTH.format(peer=client.peer), tuple(steps))
    if client.origin is not None:
        steps.append(f"forwarded for client {client.origin} (XFORWARD from {client.peer}, "
                     "in smtp.xforward_networks)")
    if is_probe(cfg, sender):
        # Taken up to RCPT only: an MTA in front (Postfix reject_unverified_recipient)
        # asks whether a fax number exists this way. DATA is refused, so a bounce never
        # becomes a fax (a mail loop costs money per page) and no outcome has to be
        # told to a sender who cannot receive it.
        steps.append(f"sender {sender or '<>'} is the null sender or a verification probe "
                     "(smtp.probe_senders): recipients are checked, nothing is faxed")
        return Decision(replies.S250_SENDER_OK, tuple(steps))
    steps.append(f"sender {sender}")
    report_to = None
    if client.auth_user is not None:
        user = next((u for u in cfg.smtp.users if u.name == client.auth_user), None)
        if user is None:  # removed from the config since this session logged in
            steps.append(f"user {client.auth_user} is no longer in smtp.users")
            return Decision(replies.S553_SENDER_LOGIN.format(sender=sender,
                                                             user=client.auth_user),
                            tuple(steps))
        report_to, why = sender_login(user, sender)
        steps.append(why)
        if report_to is None:
            return Decision(replies.S553_SENDER_LOGIN.format(sender=sender, user=user.name),
                            tuple(steps))
        if report_to == sender.lower():
            report_to = None
    return Decision(replies.S250_SENDER_OK, tuple(steps), report_to=report_to)


def is_probe(cfg: Config, sender: str) -> bool:
    """The null sender, or a sender of recipient verification probes."""
    s = sender.lower()
    return s in ("", "<>") or any(fnmatch.fnmatchcase(s, p.lower())
                                  for p in cfg.smtp.probe_senders)


# --------------------------------------------------------------- recipient
def recipient(cfg: Config, state: MailState, address: str,
              counts: Counts | None = None) -> Decision:
    """RCPT TO. `counts`: the other transactions' faxes per limit (Limit.id), once
    looked up; while a limit needs them and they are missing, the decision says
    `pending`."""
    steps: list[str] = []
    fields: dict[str, Any] = {}

    def done(reply: str, **more: Any) -> Decision:
        return Decision(reply, tuple(steps), **{**fields, **more})

    limit = cfg.smtp.max_recipients
    if state.rcpt_count >= limit:
        steps.append(f"this mail has {state.rcpt_count} recipient(s) already "
                     f"(smtp.max_recipients {limit})")
        return done(replies.S452_TOO_MANY.format(limit=limit))
    local, domain = split_address(address)
    if domain not in cfg.fax.domains:
        steps.append(f"domain {domain or '(none)'} is not a fax domain")
        return done(replies.S550_RELAY.format(domain=domain or "(none)",
                                              domains=", ".join(cfg.fax.domains)))
    steps.append(f"domain {domain} is a fax domain")
    parsed = parse_number(local, cfg.fax.default_country)
    if not parsed.ok:
        steps.append(f"number {local!r}: {parsed.error}")
        return done(replies.S553_NUMBER.format(address=address, why=parsed.error))
    fields.update(number=parsed.number, pretty=parsed.pretty)
    steps.append(f"number {local!r} → {parsed.number} ({parsed.pretty})")
    if is_probe(cfg, state.sender):
        # No sender rule can match a probe's sender; the question is only whether
        # the number exists. DATA is refused for this sender.
        steps.append("verification probe: the number is valid; DATA would be refused")
        return done(replies.S250_PROBE_OK.format(number=parsed.pretty), probe=True)
    who = state.who()
    users = cfg.smtp.users
    rule = find_rule(cfg.senders, who, users)
    if rule is None and who.auth_user is not None:
        steps.append(f"user {who.auth_user} has no sender rule (no smtp.users rule, and no "
                     f"rule matches 'user:{who.auth_user}'); MAIL FROM does not choose one")
        return done(replies.S550_USER_NO_RULE.format(user=who.auth_user))
    if rule is None:
        steps.append("no sender rule matches (rules tried: "
                     + (", ".join(r.name for r in cfg.senders) or "none") + ")")
        return done(replies.S550_SENDER.format(sender=state.sender))
    fields["rule"] = rule
    steps.append(f"sender rule '{rule.name}' matches by {matching_pattern(rule, who, users)}")
    steps.append(f"number type {parsed.kind}")
    ok, why = destination_allowed(rule, parsed.number, parsed.kind)
    fields["why"] = why
    steps.append(f"destination {why}")
    if not ok:
        return done(replies.S550_DEST.format(number=parsed.pretty, rule=rule.name, why=why))
    if any(n == parsed.number for n, *_ in state.numbers):
        steps.append("this mail has the number already: faxed once")
        return done(replies.S250_RCPT_OK.format(number=parsed.pretty) + " (duplicate)",
                    duplicate=True)
    # Rate limits count faxes, one per recipient number: this transaction's own
    # accepted numbers count too (a mail to 20 numbers is 20 faxes).
    limits = rate_limits(rule, state, parsed.number)
    if limits and counts is None:
        return done("", pending=limits)
    for lim in limits:
        own = len(state.numbers) if lim.scope != "number" else 0
        count = (counts or {}).get(lim.id, 0) + own
        steps.append(f"rate limit {lim.describe()}: {count} of at most {lim.limit} faxes in "
                     f"the last {lim.label}" + (f" ({own} in this mail)" if own else ""))
        if count >= lim.limit:
            reply = replies.S452_RATE if own else replies.S450_RATE
            return done(reply.format(rule=rule.name, count=count, window=lim.label,
                                     scope=lim.describe(), limit=lim.limit))
    steps.append(f"billing code {rule.billing_code or '-'}, body {rule.body}, "
                 f"notify {rule.notify}")
    return done(replies.S250_RCPT_OK.format(number=parsed.pretty),
                keys=rate_keys(state, parsed.number))


# ----------------------------------------------------------------- content
def content(cfg: Config, ext: Extraction, size: int, job_id: str,
            state: MailState) -> Decision:
    """After DATA: is there something to fax, and does it fit?"""
    limit = cfg.smtp.max_message_size
    if size > limit:
        return Decision(replies.S552_TOO_BIG.format(limit=limit),
                        (f"the mail has {size} bytes (smtp.max_message_size {limit})",))
    if not ext.documents:
        why = ext.why_nothing()
        return Decision(replies.S554_NOTHING.format(why=why)[:900], (f"nothing to fax: {why}",))
    steps = tuple(f"document {d.name} ({d.content_type}, {len(d.data)} bytes)"
                  for d in ext.documents)
    return Decision(replies.S250_QUEUED.format(
        job_id=job_id, numbers=", ".join(p for *_, p in state.numbers)), steps)


# ------------------------------------------------------------------- route
@dataclass
class Route:
    """What the listener answers one whole transaction (for `faxbridge route`)."""

    session: list[str]
    mail: Decision
    recipients: list[tuple[str, Decision]]

    @property
    def verdict(self) -> str:
        """The mail's fate: the MAIL refusal, else accept when a recipient is accepted
        (the listener takes the DATA for those), else the last refusal."""
        if not self.mail.accepted:
            return self.mail.verdict
        accepted = [d for _, d in self.recipients if d.accepted]
        if accepted and all(d.probe for d in accepted):
            return "reject " + replies.S550_NULL_SENDER  # at DATA: probes are never faxed
        if accepted:
            return "accept"
        return self.recipients[-1][1].verdict if self.recipients else "reject (no recipient)"

    @property
    def ok(self) -> bool:
        return self.mail.accepted and all(d.accepted for _, d in self.recipients)

    def steps(self) -> list[str]:
        out = list(self.session)
        out += [f"MAIL: {s}" for s in self.mail.steps] + [f"MAIL: {self.mail.reply}"]
        for address, d in self.recipients:
            out += [f"RCPT {address}: {s}" for s in d.steps] + [f"RCPT {address}: {d.reply}"]
        return out

    def as_dict(self) -> dict[str, Any]:
        return {
            "session": self.session,
            "mail": {"reply": self.mail.reply, "verdict": self.mail.verdict,
                     "report_to": self.mail.report_to, "steps": list(self.mail.steps)},
            "recipients": [{"address": a, "reply": d.reply, "verdict": d.verdict,
                            "number": d.number, "rule": d.rule.name if d.rule else None,
                            "steps": list(d.steps)} for a, d in self.recipients],
            "steps": self.steps(),
            "verdict": self.verdict,
        }


def simulate(cfg: Config, *, peer: str | None, sender: str, recipients: Sequence[str],
             user: str | None = None, tls: bool = False,
             count: Callable[[Limit], int] | None = None) -> Route:
    """One transaction as the listener runs it: login, MAIL, then each RCPT with the
    transaction's state. `count`: the faxes already accepted under a rate limit (the
    caller reads them from the store; without it, every limit counts 0)."""
    client, session = login(cfg, peer, user, tls)
    address = envelope_address(sender)
    if address is None:
        return Route(session, Decision(replies.S553_MALFORMED,
                                       (f"{sender!r} is not an SMTP address",)), [])
    m = mail(cfg, client, address)
    route = Route(session, m, [])
    if not m.accepted:
        return route  # the listener answers 503 to every RCPT after a refused MAIL
    state = MailState(address, client, report_to=m.report_to)
    for text in recipients:
        address = envelope_address(text)
        if address is None:
            d = Decision(replies.S553_MALFORMED, (f"{text!r} is not an SMTP address",))
        else:
            d = recipient(cfg, state, address)
            if d.pending:
                d = recipient(cfg, state, address,
                              {lim.id: count(lim) if count else 0 for lim in d.pending})
            if address != text:
                d = replace(d, steps=(f"the listener reads {text!r} as {address!r} "
                                      "(SMTP address syntax)", *d.steps))
            state.record(address, d)
        route.recipients.append((text, d))
    return route
