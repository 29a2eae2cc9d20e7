"""Preflight: what a valid config names outside itself must be there and usable.

The config model (config.py) checks the file; this checks the environment it
points at: TLS files load into an SSLContext (and the key matches the
certificate), every secret that will be needed resolves, the data directory can
be written. `faxbridge check`, `faxbridge serve` and a live reload all call
`preflight()`, so what `check` calls ok is what `serve` starts, and a reload
that would break the running listener is refused before anything is closed.

Each problem is one line: the key path, the file or variable, what is wrong.
"""

from __future__ import annotations

import hashlib
import os
import ssl
from dataclasses import dataclass, field
from pathlib import Path

from faxbridge.config import Config, Secret


@dataclass
class Preflight:
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    # The SMTP STARTTLS context built from smtp.tls_cert/tls_key (None without TLS):
    # the listener serves exactly the context that was validated here.
    tls: ssl.SSLContext | None = None
    # sha256 over the certificate and key files as loaded, so a reload can tell a
    # renewed certificate at the same path from an unchanged one.
    tls_fingerprint: str | None = None

    @property
    def ok(self) -> bool:
        return not self.errors


def _shown(path: Path) -> str:
    """The path as written, plus where it points when relative: relative paths are
    taken from the working directory, which under a service manager surprises."""
    return str(path) if path.is_absolute() else f"{path} (= {path.absolute()})"


def _read(key: str, path: Path, errors: list[str]) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        errors.append(f"{key}: {_shown(path)}: file not found")
    except IsADirectoryError:
        errors.append(f"{key}: {_shown(path)}: is a directory, expected a file")
    except PermissionError:
        errors.append(f"{key}: {_shown(path)}: permission denied (cannot read it as "
                      f"uid {os.getuid()})")
    except OSError as exc:
        errors.append(f"{key}: {_shown(path)}: cannot read it ({exc.strerror})")
    return None


class _EncryptedKey(Exception):
    pass


def _no_passphrase() -> str:
    # Without a callback OpenSSL would prompt on the terminal for an encrypted key
    # and hang a service; refuse instead and say why.
    raise _EncryptedKey


def tls_context(cert: Path, key: Path, prefix: str = "smtp") -> tuple[ssl.SSLContext | None,
                                                                      list[str], str | None]:
    """A server SSLContext from a PEM certificate (with chain) and its key, or the
    problems found, each naming `<prefix>.tls_cert` or `<prefix>.tls_key`."""
    errors: list[str] = []
    cert_key, key_key = f"{prefix}.tls_cert", f"{prefix}.tls_key"
    cert_bytes = _read(cert_key, cert, errors)
    key_bytes = _read(key_key, key, errors)
    if cert_bytes is not None and b"-----BEGIN CERTIFICATE-----" not in cert_bytes:
        errors.append(f"{cert_key}: {_shown(cert)}: no PEM certificate in it (expected a "
                      "'-----BEGIN CERTIFICATE-----' block)")
        cert_bytes = None
    elif cert_bytes is not None:
        try:  # parse every certificate block on its own, before pairing it with the key
            ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_verify_locations(cafile=str(cert))
        except (ssl.SSLError, ValueError) as exc:
            errors.append(f"{cert_key}: {_shown(cert)}: not a valid PEM certificate ({exc})")
            cert_bytes = None
    if cert_bytes is None or key_bytes is None:
        return None, errors, None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        ctx.load_cert_chain(str(cert), str(key), password=_no_passphrase)
    except _EncryptedKey:
        errors.append(f"{key_key}: {_shown(key)}: the private key is encrypted; give an "
                      "unencrypted key (a service cannot type a passphrase)")
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            errors.append(f"{key_key}: {_shown(key)}: the key does not match the certificate "
                          f"in {cert_key} ({_shown(cert)})")
        else:
            errors.append(f"{key_key}: {_shown(key)}: not a usable PEM private key for the "
                          f"certificate in {cert_key} ({exc.strerror or exc})")
    except OSError as exc:  # the file went away between reading and loading
        errors.append(f"{cert_key}/{key_key}: cannot load ({exc})")
    if errors:
        return None, errors, None
    return ctx, [], hashlib.sha256(cert_bytes + b"\0" + key_bytes).hexdigest()


def _secret(key: str, secret: Secret, *, used: bool, needed: str | None,
            errors: list[str]) -> None:
    """Mirror Secret.resolve(): the env variable when one is named, else the file.
    `used`: the running bridge reads it (a named file that cannot be read would
    fail there); `needed`: why an absent value is an error (None: absence is fine)."""
    if not used:
        return
    if secret.env:
        value = os.environ.get(secret.env)
        if value is None and needed:
            errors.append(f"{key}: environment variable {secret.env} is not set ({needed})")
        elif value is not None and not value.strip() and needed:
            errors.append(f"{key}: environment variable {secret.env} is empty ({needed})")
        return
    if secret.file:
        data = _read(f"{key}.file", secret.file, errors)
        if data is None:
            return
        try:
            text = data.decode("utf-8").strip()
        except UnicodeDecodeError:
            errors.append(f"{key}.file: {_shown(secret.file)}: not UTF-8 text")
            return
        if not text and needed:
            errors.append(f"{key}.file: {_shown(secret.file)}: the file is empty ({needed})")
        return
    if needed:
        errors.append(f"{key}: no secret configured: set {key} = {{ env = \"…\" }} or "
                      f"{{ file = \"…\" }} ({needed})")


def _data_dir(path: Path, errors: list[str]) -> None:
    """storage.data_dir must be a writable directory, or creatable (serve creates it)."""
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        errors.append(f"storage.data_dir: {_shown(path)}: {probe} is not a directory")
    elif not os.access(probe, os.W_OK | os.X_OK):
        what = "is not writable" if probe == path else (
            f"does not exist and cannot be created ({probe} is not writable)")
        errors.append(f"storage.data_dir: {_shown(path)}: {what} as uid {os.getuid()}")


def preflight(cfg: Config) -> Preflight:
    """Every problem of the environment a valid config would meet at `serve`."""
    out = Preflight()
    errors, warnings = out.errors, out.warnings
    live = cfg.retarus.mode == "live"

    if cfg.smtp.tls_cert is not None and cfg.smtp.tls_key is not None:
        out.tls, tls_errors, out.tls_fingerprint = tls_context(cfg.smtp.tls_cert,
                                                               cfg.smtp.tls_key)
        errors.extend(tls_errors)

    # In simulator mode an absent Retarus/pull/push secret falls back to the
    # simulator's own credentials (or a random push secret per run): only live needs them.
    _secret("retarus.password", cfg.retarus.password, used=True,
            needed="needed in live mode" if live else None, errors=errors)
    push_set = bool(cfg.retarus.push_password.env or cfg.retarus.push_password.file)
    _secret("retarus.push_password", cfg.retarus.push_password, used=True,
            needed="configured for the status push in live mode" if live and push_set
            else None, errors=errors)
    if live and cfg.retarus.push_url and not push_set:
        warnings.append("retarus.push_url: set, but retarus.push_password is not: status "
                        "pushes are not requested (reports are polled instead)")
    for i, topic in enumerate(cfg.topics):
        _secret(f"topics[{i}].password", topic.password, used=True,
                needed=f"the Fax2WSPull password of topic '{topic.name}' in live mode"
                if live else None, errors=errors)
        if live and not topic.url:
            warnings.append(f"topics[{i}].url: not set: in live mode topic '{topic.name}' "
                            "is not polled (give its Fax2WSPull URL)")
    relay = cfg.mail.relay
    smtp_mail = cfg.mail.transport == "smtp"
    _secret("mail.relay.password", relay.password, used=smtp_mail,
            needed=f"needed to log in to the relay as mail.relay.username {relay.username!r}"
            if smtp_mail and relay.username else None, errors=errors)
    # Unset admin token = admin API disabled (403), as documented; a named file must read.
    _secret("http.admin_token", cfg.http.admin_token, used=True, needed=None, errors=errors)
    for i, token in enumerate(cfg.api.tokens):
        _secret(f"api.tokens[{i}].token", token.token, used=True,
                needed=f"the Faxes API token '{token.name}'", errors=errors)

    _data_dir(cfg.storage.data_dir, errors)

    if not cfg.senders:
        # First matching rule decides and no rule means 550 5.7.1 (intake/rules.py):
        # legitimate for an inbound-only bridge, a surprise otherwise.
        warnings.append("senders: no sender rules: every mail to a fax domain is refused "
                        "(550 5.7.1); fine only for an inbound-only bridge")
    return out
