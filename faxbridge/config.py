"""Configuration: TOML → frozen pydantic models.

Every section forbids unknown keys, so a typo is an error with its key path
(`senders[1].allow[0]`) instead of a silently ignored setting. Secrets are
never in the file itself: `*_env` names an environment variable, `*_file` a file.

Longer than our other modules on purpose: it is the whole schema, one model per
section, mirroring config.example.toml section by section, so an admin's key path
and the code that checks it are found in one file.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
import zoneinfo
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from faxbridge.errors import ConfigError

# Retarus Fax4A hosts (docs/retarus-wire.md §1.1, Retarus 'Fax4A overview'): the HA URL is for sending only; reports
# live on the data center that processed the job and must be asked there.
REGIONS: dict[str, tuple[str | None, tuple[str, ...]]] = {
    "de": ("https://faxws-ha.de.retarus.com/rest/v1",
           ("https://faxws.de1.retarus.com/rest/v1", "https://faxws.de2.retarus.com/rest/v1")),
    "us": ("https://faxws-ha.us.retarus.com/rest/v1",
           ("https://faxws.us1.retarus.com/rest/v1", "https://faxws.us2.retarus.com/rest/v1")),
    "ch": (None, ("https://faxws.ch1.retarus.com/rest/v1",)),
    "sg": (None, ("https://faxws.sg1.retarus.com/rest/v1",)),
}
# Simulator paths (README "The Retarus simulator"; tests rely on them), relative to the simulator's base URL.
SIM_REGIONS: dict[str, tuple[str | None, tuple[str, ...]]] = {
    "de": ("/fax4a/ha-de/rest/v1", ("/fax4a/de1/rest/v1", "/fax4a/de2/rest/v1")),
    "us": ("/fax4a/ha-us/rest/v1", ("/fax4a/us1/rest/v1", "/fax4a/us2/rest/v1")),
    "ch": (None, ("/fax4a/ch1/rest/v1",)),
    "sg": (None, ("/fax4a/sg1/rest/v1",)),
}

_E164_PATTERN = re.compile(r"^\+[0-9*?\[\]]+$")


def _listen(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected HOST:PORT (e.g. 127.0.0.1:2525), got {value!r}")
    return value


def _number_pattern(value: str) -> str:
    if not _E164_PATTERN.match(value):
        raise ValueError(
            f"expected an E.164 pattern starting with '+' (digits, '*' or '?'), got {value!r}")
    return value


def _email_pattern(value: str) -> str:
    if value.startswith(("user:", "net:")):
        kind, _, rest = value.partition(":")
        if not rest:
            raise ValueError(f"{kind}: needs a value, e.g. '{kind}:alice'")
        if kind == "net":
            try:
                ipaddress.ip_network(rest, strict=False)
            except ValueError as exc:
                raise ValueError(f"bad network {rest!r}: {exc}") from None
        return value
    if value == "*" or re.fullmatch(r"[^@\s]+@[^@\s]+", value):
        return value.lower()
    raise ValueError(
        "expected an address ('a@example.com'), a domain pattern ('*@example.com'), "
        f"'user:NAME', 'net:CIDR' or '*', got {value!r}")


def _address(value: str) -> str:
    if not re.fullmatch(r"[^@\s]+@[^@\s]+", value):
        raise ValueError(f"expected a mail address such as portal@example.com, got {value!r}")
    return value.lower()


Listen = Annotated[str, AfterValidator(_listen)]
NumberPattern = Annotated[str, AfterValidator(_number_pattern)]
SenderPattern = Annotated[str, AfterValidator(_email_pattern)]


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Secret(Model):
    """A secret taken from an environment variable or a file, never from the TOML."""

    env: str | None = None
    file: Path | None = None

    def resolve(self) -> str | None:
        if self.env:
            return os.environ.get(self.env)
        if self.file:
            return self.file.read_text(encoding="utf-8").strip()
        return None


def _user_address(value: str) -> str:
    if re.fullmatch(r"[^@\s*?]+@[^@\s*?]+", value):
        return value.lower()
    raise ValueError(f"expected an address ('scanner@example.com'), got {value!r}")


def _send_as_pattern(value: str) -> str:
    if value == "*" or re.fullmatch(r"[^@\s]+@[^@\s]+", value):
        return value.lower()
    raise ValueError("expected an address ('a@example.com'), a domain pattern "
                     f"('*@example.com') or '*', got {value!r}")


UserAddress = Annotated[str, AfterValidator(_user_address)]
SendAsPattern = Annotated[str, AfterValidator(_send_as_pattern)]


class SmtpUser(Model):
    name: str
    # Hash produced by `faxbridge hash-password` (pbkdf2_sha256$iterations$salt$hash).
    password_hash: str = Field(pattern=r"^pbkdf2_sha256\$\d+\$[0-9a-f]+\$[0-9a-f]+$")
    # Identity, not claims (Postfix's smtpd_sender_login_maps): the user's own
    # mailboxes. MAIL FROM must be one of them or match send_as; reports go to MAIL
    # FROM when it is one of them, else to the first.
    addresses: tuple[UserAddress, ...] = ()
    # Further MAIL FROM addresses the user may use without owning them (a scanner
    # that writes scan@copier.example): their reports go to addresses[0].
    send_as: tuple[SendAsPattern, ...] = ()
    # The sender rule this user's faxes go by, whatever MAIL FROM says. Without it,
    # the first rule that names the user ('user:NAME' in its match) applies.
    rule: str | None = None

    @model_validator(mode="after")
    def _report_address(self) -> SmtpUser:
        if self.send_as and not self.addresses:
            raise ValueError("send_as needs addresses: the reports of mails sent as "
                             "another address go to the user's first address")
        return self


class SmtpConfig(Model):
    listen: Listen = "127.0.0.1:2525"
    hostname: str = "faxbridge.local"
    banner: str = "faxbridge ESMTP"
    max_message_size: int = Field(default=25 * 1024 * 1024, gt=0)
    max_recipients: int = Field(default=50, gt=0, le=1000)
    # The idle timeout: seconds of client silence before the session is closed
    # (421 4.4.2). Inside DATA every received line counts as progress and resets it.
    timeout: float = Field(default=300.0, gt=0)
    # The total time one DATA phase may take, however steadily bytes flow: sized
    # so that a mail of max_message_size still gets through a slow link (25 MB in
    # an hour is about 7 KB/s).
    data_timeout: float = Field(default=3600.0, gt=0)
    # Concurrent sessions, in all and from one client address; beyond: 421 4.7.0.
    max_sessions: int = Field(default=100, ge=1, le=100_000)
    max_sessions_per_client: int = Field(default=30, ge=1, le=100_000)
    # Commands one session may send (all commands counted); then 421 4.7.0.
    max_commands: int = Field(default=1000, ge=10)
    # Bytes all unfinished DATA phases together may hold in memory; beyond, a
    # session's further DATA goes to an unnamed temporary file in
    # <data_dir>/spool (so a big mail still gets through, and many unfinished
    # ones cannot exhaust memory).
    data_memory_limit: int = Field(default=32 * 1024 * 1024, ge=0)
    # Processes that parse the MIME of mails up to 1 MiB beside the listener (on
    # another core: the interpreter runs one thread at a time); 0 parses in threads
    # of the listener's own process. Larger mails always parse in threads.
    parse_processes: int = Field(default=1, ge=0, le=16)
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # RFC 4954 §4: PLAIN/LOGIN send the password in clear; only allow it in clear on request.
    auth_require_tls: bool = True
    users: tuple[SmtpUser, ...] = ()
    # Failed AUTH: the session is closed with 421 after this many failures, and
    # each further attempt from the same client address or for the same user
    # waits first (auth_failure_delay, doubling per failure, at most
    # auth_failure_delay_max) until auth_failure_window seconds pass without one.
    auth_max_failures: int = Field(default=3, ge=1, le=100)
    auth_failure_delay: float = Field(default=0.5, ge=0, le=60)
    auth_failure_delay_max: float = Field(default=8.0, ge=0, le=600)
    auth_failure_window: float = Field(default=900.0, gt=0)
    trusted_networks: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
    # MTAs in front of the bridge (Postfix: smtp_send_xforward_command = yes) whose
    # XFORWARD is believed: the original client's address then stands in for the
    # MTA's own in `net:` sender rules, the SMTP log and the log lines. Others get
    # no XFORWARD in EHLO and 550 if they send it (anyone could claim any address).
    xforward_networks: tuple[str, ...] = ()
    # Envelope senders of recipient verification probes (Postfix
    # reject_unverified_recipient sends MAIL FROM:<double-bounce@its hostname>):
    # like the null sender, their RCPT is answered by the number alone and DATA is
    # refused, so a probe never becomes a fax.
    probe_senders: tuple[str, ...] = ("double-bounce@*",)

    @field_validator("trusted_networks", "xforward_networks")
    @classmethod
    def _nets(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for net in v:
            try:
                ipaddress.ip_network(net, strict=False)
            except ValueError as exc:
                raise ValueError(f"bad network {net!r}: {exc}") from None
        return v

    @model_validator(mode="after")
    def _tls_pair(self) -> SmtpConfig:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key must be given together")
        if self.auth_failure_delay_max < self.auth_failure_delay:
            raise ValueError(f"auth_failure_delay_max ({self.auth_failure_delay_max}) must be "
                             f"at least auth_failure_delay ({self.auth_failure_delay})")
        return self


class FaxConfig(Model):
    domains: tuple[str, ...] = ("fax.local",)
    default_country: str = Field(default="DE", pattern=r"^[A-Z]{2}$")
    paper_format: Literal["A4", "LETTER"] = "A4"
    resolution: Literal["HIGH", "LOW"] = "HIGH"
    csid: str = Field(default="", max_length=20)
    # Jinja-free on purpose: {subject}, {sender}, {number} only. Retarus expands
    # its own %-codes (%d.%m.%Y etc.) in the header afterwards.
    header_template: str = Field(default="{subject}", max_length=200)
    header_max_length: int = Field(default=80, gt=0, le=200)
    cover_page_template: str | None = None
    allowed_types: tuple[str, ...] = (
        "application/pdf", "image/tiff", "text/plain", "image/png", "image/jpeg", "image/gif",
        "application/msword", "application/rtf",
        "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        "application/vnd.ms-excel",
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        "application/vnd.oasis.opendocument.text",
    )
    # How long a job may keep retrying submission before it is failed.
    submit_deadline_seconds: int = Field(default=3600, gt=0)
    # Jobs submitted to Fax4A at the same time (each its own HTTP request).
    submit_concurrency: int = Field(default=8, ge=1, le=64)
    # While mail arrives in a burst (50 or more jobs accepted a second), submissions
    # wait up to this long, so that the CPU answers the clients first; 0: never wait.
    burst_hold_seconds: float = Field(default=5.0, ge=0, le=60)
    # How long to keep following a job's report before giving up; sent to Retarus as
    # meta.jobValid.end, after which a job it never listed was never taken.
    job_valid_seconds: int = Field(default=86400, gt=0)
    # Report polling: first poll after the min, then doubling up to the max.
    report_poll_min_seconds: float = Field(default=10.0, gt=0)
    report_poll_max_seconds: float = Field(default=300.0, gt=0)

    @field_validator("domains")
    @classmethod
    def _domains(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if not v:
            raise ValueError("at least one fax domain is needed")
        for d in v:
            if not re.fullmatch(r"[A-Za-z0-9.-]+", d):
                raise ValueError(f"not a domain name: {d!r}")
        return tuple(d.lower() for d in v)


class RetarusConfig(Model):
    # "simulator": the embedded stand-in (no account needed); "live": real Retarus.
    mode: Literal["simulator", "live"] = "simulator"
    customer_number: str = "99999TE"
    username: str = "faxbridge"
    password: Secret = Secret()
    region: Literal["de", "us", "ch", "sg"] = "de"
    # Overrides of the region's URLs (e.g. an external simulator).
    send_url: str | None = None
    datacenter_urls: tuple[str, ...] = ()
    timeout: float = Field(default=30.0, gt=0)
    # Delete a job's report at Retarus once its final state is stored (Fax4A docs advise it).
    delete_reports: bool = True
    # Status push credentials: Retarus POSTs reports to our webhook with these.
    push_url: str | None = None
    push_username: str = "retarus"
    push_password: Secret = Secret()
    # How Retarus authenticates the push: the job asks for it (authMethod HTTP_BASIC or
    # HTTP_DIGEST) and the webhook accepts only that. Digest keeps the password off the wire.
    push_auth: Literal["basic", "digest"] = "basic"
    # The status push webhook on a listener of its own ("HOST:PORT"), serving only
    # POST /retarus/push: expose that one to Retarus, not http.listen (/admin, /metrics).
    # Unset: the push is served on http.listen.
    push_listen: Listen | None = None


class SimulatorConfig(Model):
    listen: Listen = "127.0.0.1:0"
    # Seconds until a job's report turns from PENDING to final.
    complete_after: float = Field(default=2.0, ge=0)
    lock_seconds: float = Field(default=60.0, gt=0)


class SenderOptions(Model):
    express: bool = False
    blacklist: bool = True
    resolution: Literal["HIGH", "LOW"] | None = None
    paper_format: Literal["A4", "LETTER"] | None = None
    csid: str | None = Field(default=None, max_length=20)
    cover_page_template: str | None = None


# Number types a rule can refuse (phonenumbers' types, plus the global
# satellite and international-network country codes, which libphonenumber types as
# mobile or not at all).
NUMBER_TYPES = ("premium_rate", "shared_cost", "satellite", "international_network",
                "personal_number", "uan", "voip", "pager", "voicemail", "toll_free",
                "mobile", "fixed_line", "fixed_line_or_mobile", "unknown")
NumberType = Literal["premium_rate", "shared_cost", "satellite", "international_network",
                     "personal_number", "uan", "voip", "pager", "voicemail", "toll_free",
                     "mobile", "fixed_line", "fixed_line_or_mobile", "unknown"]
# Costly destinations a fax gateway is abused for (toll fraud): refused by type for
# every country, from libphonenumber's metadata, not a hand-kept prefix list.
DEFAULT_REFUSED_TYPES: tuple[NumberType, ...] = ("premium_rate", "shared_cost", "satellite",
                                                 "international_network")
# What a rate limit counts faxes by: the sender (the authenticated user, else MAIL
# FROM), the client's IP address, the recipient number.
RateScope = Literal["sender", "client", "number"]


class SenderRule(Model):
    name: str = Field(min_length=1)
    # Who: exact address, '*@domain', 'user:NAME' (SMTP AUTH), 'net:CIDR', or '*'.
    match: tuple[SenderPattern, ...] = Field(min_length=1)
    allow: tuple[NumberPattern, ...] = ("+*",)
    deny: tuple[NumberPattern, ...] = ("+49900*", "+1900*")
    refuse_number_types: tuple[NumberType, ...] = DEFAULT_REFUSED_TYPES
    billing_code: str | None = Field(default=None, max_length=80)
    body: Literal["first", "ignore"] = "first"
    notify: Literal["always", "failure", "never"] = "always"
    attach_documents: bool = False
    max_per_hour: int | None = Field(default=None, gt=0)
    max_per_day: int | None = Field(default=None, gt=0)
    # Each limit holds per sender, per client address and per recipient number (each
    # counted over all faxes); a relay that sends for many users from one address
    # drops "client".
    rate_limit_by: tuple[RateScope, ...] = Field(default=("sender", "client", "number"),
                                                 min_length=1)
    options: SenderOptions = SenderOptions()


class Mailbox(Model):
    number: str
    addresses: tuple[str, ...] = Field(min_length=1)


class Topic(Model):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    url: str | None = None  # Fax2WSPull base URL (…/faxin/rest/v1); simulator when None
    customer_number: str = "99999TE"
    password: Secret = Secret()
    addresses: tuple[str, ...] = Field(min_length=1)
    numbers: tuple[Mailbox, ...] = ()
    poll_interval: float = Field(default=10.0, gt=0)
    batch_size: int = Field(default=10, gt=0, le=100)
    file_format: Literal["pdf", "tif"] = "pdf"


class RelayConfig(Model):
    host: str = "127.0.0.1"
    port: int = Field(default=25, ge=1, le=65535)
    tls: Literal["none", "starttls", "implicit"] = "starttls"
    username: str | None = None
    password: Secret = Secret()
    timeout: float = Field(default=30.0, gt=0)


class MailConfig(Model):
    transport: Literal["maildir", "smtp"] = "maildir"
    from_address: str = "faxbridge@localhost"
    relay: RelayConfig = RelayConfig()
    template_dir: Path | None = None
    fallback_mailbox: str = "postmaster@localhost"
    # Relay down or 4xx: retry with backoff from retry_min up to retry_max seconds,
    # and give up (mail marked failed, visible to the admin) after give_up_after.
    retry_min_seconds: float = Field(default=5.0, gt=0)
    retry_max_seconds: float = Field(default=600.0, gt=0)
    give_up_after_seconds: float = Field(default=5 * 86400, gt=0)
    # Times in report and received-fax mails are shown in this IANA zone
    # ("Europe/Berlin"); unset: the host's local time zone.
    timezone: str | None = None
    # A received fax that Retarus delivered as TIFF is attached as PDF: every mail
    # client and phone opens a PDF, many show no multi-page TIFF.
    tiff_to_pdf: bool = True

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}: expected an IANA name such as "
                             "'Europe/Berlin' or 'UTC'") from None
        return value


class StorageConfig(Model):
    data_dir: Path = Path("faxbridge-data")
    smtp_log_retention_days: int = Field(default=90, gt=0)
    # After this many days the payload of a finished fax goes (the mail as received,
    # its documents, the received fax files and the mails carrying them); the
    # metadata, timeline and SMTP log stay. None keeps payloads until deleted.
    # The per-direction keys override it for sent / received faxes.
    payload_retention_days: int | None = Field(default=None, gt=0)
    outbound_payload_retention_days: int | None = Field(default=None, gt=0)
    inbound_payload_retention_days: int | None = Field(default=None, gt=0)
    # How long a commit waits for a lock before the SMTP client gets 451 4.3.0.
    busy_timeout_ms: int = Field(default=10000, ge=0)
    # PostgreSQL shared by several bridges (README "Running two or more nodes");
    # None: SQLite under data_dir. FAXBRIDGE_DATABASE_URL and --database-url win.
    database_url: str | None = None
    # A node that has not renewed its lease for this long is dead for the others,
    # which then take over its claimed work (PostgreSQL only).
    node_lease_seconds: float = Field(default=30.0, ge=1.0, le=3600.0)

    @field_validator("database_url")
    @classmethod
    def _postgres_url(cls, v: str | None) -> str | None:
        if v in (None, ""):
            return None
        if not v.startswith(("postgresql://", "postgres://")):
            raise ValueError("expected a postgresql://user@host:port/database URL")
        return v


class HttpConfig(Model):
    listen: Listen = "127.0.0.1:8025"
    admin_token: Secret = Secret()
    # Open connections (idle keep-alive ones included) beyond which requests get 503.
    max_concurrency: int = Field(default=100, ge=1, le=100_000)
    # A keep-alive connection with no request for this long is closed.
    idle_timeout: float = Field(default=10.0, gt=0, le=3600)
    # A request's headers must be complete this long after its first byte (or after
    # the connection opened); otherwise the connection is closed.
    header_timeout: float = Field(default=10.0, gt=0, le=3600)


class ApiToken(Model):
    """One client of the Faxes API (`X-Auth-Token`): who it acts as."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    token: Secret
    # The address the token sends as: sender rules, limits and reports apply to it
    # exactly as to a mail from this address.
    sender: Annotated[str, AfterValidator(_address)]
    # The {ACCOUNT_ID} of /v2/accounts/{ACCOUNT_ID}/faxes (default: the name).
    account_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.-]+$")
    # Received faxes of these topics are in the token's inbox (empty: all topics).
    topics: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _secret(self) -> ApiToken:
        if not (self.token.env or self.token.file):
            raise ValueError("token: expected { env = \"VAR\" } or { file = \"path\" }")
        return self

    @property
    def account(self) -> str:
        return self.account_id or self.name


class ApiConfig(Model):
    tokens: tuple[ApiToken, ...] = ()
    # URL prefixes a document URL must start with to be fetched (e.g.
    # "https://portal.example.com/faxes/"); empty: the bridge fetches nothing.
    fetch_allow: tuple[str, ...] = ()
    fetch_timeout_seconds: float = Field(default=30.0, gt=0, le=600)
    # A fetched or uploaded document larger than this is refused.
    max_document_bytes: int = Field(default=20 * 1024 * 1024, gt=0)


class LoggingConfig(Model):
    format: Literal["plain", "json"] = "plain"
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


class Config(Model):
    logging: LoggingConfig = LoggingConfig()
    smtp: SmtpConfig = SmtpConfig()
    fax: FaxConfig = FaxConfig()
    retarus: RetarusConfig = RetarusConfig()
    simulator: SimulatorConfig = SimulatorConfig()
    senders: tuple[SenderRule, ...] = ()
    topics: tuple[Topic, ...] = ()
    mail: MailConfig = MailConfig()
    storage: StorageConfig = StorageConfig()
    http: HttpConfig = HttpConfig()
    api: ApiConfig = ApiConfig()

    @model_validator(mode="after")
    def _unique_names(self) -> Config:
        for what, items in (("senders", self.senders), ("topics", self.topics),
                            ("api.tokens", self.api.tokens)):
            seen: set[str] = set()
            for i, item in enumerate(items):
                if item.name in seen:
                    raise ValueError(f"{what}[{i}].name: duplicate name {item.name!r}")
                seen.add(item.name)
        rules = [r.name for r in self.senders]
        users: set[str] = set()
        for i, user in enumerate(self.smtp.users):
            if user.name in users:
                raise ValueError(f"smtp.users[{i}].name: duplicate user {user.name!r}")
            users.add(user.name)
            if user.rule is not None and user.rule not in rules:
                raise ValueError(f"smtp.users[{i}].rule: no sender rule named {user.rule!r} "
                                 f"(senders: {', '.join(rules) or 'none'})")
        return self

    def send_url(self, sim_base: str | None = None) -> str:
        if self.retarus.send_url:
            return self.retarus.send_url
        table = SIM_REGIONS if self.retarus.mode == "simulator" else REGIONS
        ha, dcs = table[self.retarus.region]
        url = ha or dcs[0]
        return (sim_base or "") + url if self.retarus.mode == "simulator" else url

    def datacenter_urls(self, sim_base: str | None = None) -> tuple[str, ...]:
        if self.retarus.datacenter_urls:
            return self.retarus.datacenter_urls
        table = SIM_REGIONS if self.retarus.mode == "simulator" else REGIONS
        _, dcs = table[self.retarus.region]
        if self.retarus.mode == "simulator":
            return tuple((sim_base or "") + d for d in dcs)
        return dcs


def embedded_default() -> Config:
    """The config `faxbridge serve` runs on with no file: simulator, Maildir, SQLite,
    loopback senders may fax any valid number (README "Quick start")."""
    # FAXBRIDGE_TRUSTED_NETWORKS widens the demo beyond loopback: in a container the
    # client connects through Docker's network, never from loopback. It shapes only
    # this default (a simulator, no real faxes); a config file says for itself.
    nets = ("127.0.0.0/8", "::1/128")
    env = os.environ.get("FAXBRIDGE_TRUSTED_NETWORKS", "").strip()
    if env:
        nets = tuple(n.strip() for n in env.split(",") if n.strip())
        bad = []
        for net in nets:
            try:
                ipaddress.ip_network(net, strict=False)
            except ValueError as exc:
                bad.append(f"FAXBRIDGE_TRUSTED_NETWORKS: bad network {net!r}: {exc} "
                           "(expected comma-separated CIDRs, e.g. 172.16.0.0/12,127.0.0.0/8)")
        if bad:
            raise ConfigError(bad, "environment")
    return Config(
        smtp=SmtpConfig(trusted_networks=nets),
        senders=(SenderRule(name="trusted-networks" if env else "loopback",
                            match=tuple(f"net:{n}" for n in nets)),),
        topics=(Topic(name="demo", addresses=("fax-inbox@localhost",), poll_interval=1.0),),
    )


def format_loc(loc: tuple[Any, ...]) -> str:
    """('senders', 1, 'allow', 0) → 'senders[1].allow[0]'."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif str(part).startswith(("function-after", "function-before")):
            continue
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def _problems(exc: ValidationError) -> list[str]:
    problems = []
    errors = exc.errors()
    locs = [e["loc"] for e in errors]
    for err in errors:
        path = format_loc(err["loc"])
        # A list whose item failed also reports "too short"; the item error says it all.
        if err["type"] == "too_short" and any(
                len(other) > len(err["loc"]) and other[:len(err["loc"])] == err["loc"]
                for other in locs):
            continue
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling against config.example.toml)"
        elif err["type"] == "missing":
            msg = "required key is missing"
        elif "input" in err and err["type"] not in ("value_error",):
            msg = f"{msg} (got {err['input']!r})"
        if not err["loc"] and re.match(r"[\w.\[\]]+: ", msg):
            problems.append(msg)  # a check across sections names its own key path
        else:
            problems.append(f"{path}: {msg}")
    return problems


def parse(data: dict[str, Any], source: str = "") -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_problems(exc), source) from None


def load(path: Path, replace: dict[Path, dict[str, Any]] | None = None) -> Config:
    """Load and validate a TOML file; `include` lists further TOML files (relative
    to this one) whose `senders` and `topics` are appended: the CLI keeps the rules
    it manages in such a file so that the admin's own file keeps its comments."""
    data = _read_toml(path)
    for inc in data.pop("include", []):
        inc_path = (path.parent / inc) if not Path(inc).is_absolute() else Path(inc)
        if replace and inc_path.resolve() in replace:
            extra = replace[inc_path.resolve()]
        elif not inc_path.exists():
            continue  # an include the CLI has not created yet
        else:
            extra = _read_toml(inc_path)
        for key, value in extra.items():
            if key not in ("senders", "topics"):
                raise ConfigError([f"{key}: only 'senders' and 'topics' may be in an "
                                   f"included file"], str(inc_path))
            data[key] = list(data.get(key, [])) + list(value)
    return parse(data, str(path))


def included_files(path: Path) -> list[Path]:
    """The files a config includes (for the reload watcher and the rule editor)."""
    try:
        data = _read_toml(path)
    except ConfigError:
        return []
    return [(path.parent / i) if not Path(i).is_absolute() else Path(i)
            for i in data.get("include", [])]


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(["file not found"], str(path)) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"not valid TOML: {exc}"], str(path)) from None


DATABASE_URL_ENV = "FAXBRIDGE_DATABASE_URL"


def with_database_url(cfg: Config, flag: str | None = None) -> Config:
    """storage.database_url as the command line, then the environment, then the file
    say (README "Running two or more nodes")."""
    url = flag or os.environ.get(DATABASE_URL_ENV) or cfg.storage.database_url
    if url == cfg.storage.database_url:
        return cfg
    try:
        storage = StorageConfig.model_validate(
            {**cfg.storage.model_dump(), "database_url": url})
    except ValidationError as exc:
        where = "--database-url" if flag else DATABASE_URL_ENV
        raise ConfigError([f"{where}: {e['msg']}" for e in exc.errors()]) from None
    return cfg.model_copy(update={"storage": storage})


def _host_of(url: str) -> str:
    # the summary never shows the URL's password
    from urllib.parse import urlsplit
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port or 5432}{parts.path}"


def summary(cfg: Config) -> list[str]:
    """The one-screen summary `faxbridge check` prints."""
    lines = [
        f"smtp:     listen {cfg.smtp.listen}, max {cfg.smtp.max_message_size} bytes, "
        f"TLS {'on' if cfg.smtp.tls_cert else 'off'}, {len(cfg.smtp.users)} AUTH user(s)",
        f"fax:      domains {', '.join(cfg.fax.domains)}, country {cfg.fax.default_country}, "
        f"{cfg.fax.paper_format}/{cfg.fax.resolution}",
        f"retarus:  {cfg.retarus.mode}, customer {cfg.retarus.customer_number}, "
        f"region {cfg.retarus.region}",
        f"senders:  {len(cfg.senders)} rule(s): " + ", ".join(r.name for r in cfg.senders),
        f"topics:   {len(cfg.topics)}: " + ", ".join(
            f"{t.name}→{','.join(t.addresses)}" for t in cfg.topics),
        f"mail:     {cfg.mail.transport}"
        + (f" via {cfg.mail.relay.host}:{cfg.mail.relay.port}"
           if cfg.mail.transport == "smtp" else ""),
        f"storage:  {cfg.storage.data_dir}" + (
            f", PostgreSQL at {_host_of(cfg.storage.database_url)}"
            if cfg.storage.database_url else ", SQLite"),
        f"http:     listen {cfg.http.listen}",
    ]
    return lines
