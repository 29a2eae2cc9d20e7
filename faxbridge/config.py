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


class SmtpUser(Model):
    name: str
    # Hash produced by `faxbridge hash-password` (pbkdf2_sha256$iterations$salt$hash).
    password_hash: str = Field(pattern=r"^pbkdf2_sha256\$\d+\$[0-9a-f]+\$[0-9a-f]+$")


class SmtpConfig(Model):
    listen: Listen = "127.0.0.1:2525"
    hostname: str = "faxbridge.local"
    banner: str = "faxbridge ESMTP"
    max_message_size: int = Field(default=25 * 1024 * 1024, gt=0)
    max_recipients: int = Field(default=50, gt=0, le=1000)
    timeout: float = Field(default=300.0, gt=0)
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


class SenderRule(Model):
    name: str = Field(min_length=1)
    # Who: exact address, '*@domain', 'user:NAME' (SMTP AUTH), 'net:CIDR', or '*'.
    match: tuple[SenderPattern, ...] = Field(min_length=1)
    allow: tuple[NumberPattern, ...] = ("+*",)
    deny: tuple[NumberPattern, ...] = ("+49900*", "+1900*")
    billing_code: str | None = Field(default=None, max_length=80)
    body: Literal["first", "ignore"] = "first"
    notify: Literal["always", "failure", "never"] = "always"
    attach_documents: bool = False
    max_per_hour: int | None = Field(default=None, gt=0)
    max_per_day: int | None = Field(default=None, gt=0)
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


class StorageConfig(Model):
    data_dir: Path = Path("faxbridge-data")
    smtp_log_retention_days: int = Field(default=90, gt=0)
    # How long a commit waits for a lock before the SMTP client gets 451 4.3.0.
    busy_timeout_ms: int = Field(default=10000, ge=0)


class HttpConfig(Model):
    listen: Listen = "127.0.0.1:8025"
    admin_token: Secret = Secret()


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

    @model_validator(mode="after")
    def _unique_names(self) -> Config:
        for what, items in (("senders", self.senders), ("topics", self.topics)):
            seen: set[str] = set()
            for i, item in enumerate(items):
                if item.name in seen:
                    raise ValueError(f"{what}[{i}].name: duplicate name {item.name!r}")
                seen.add(item.name)
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
        f"storage:  {cfg.storage.data_dir}",
        f"http:     listen {cfg.http.listen}",
    ]
    return lines
