"""The project's own few error kinds.

Library exceptions (httpx, sqlite3, aiosmtplib) are mapped into these at the
boundary, so workers decide retry / fail / hold by kind, never by library type.
"""

from __future__ import annotations


class FaxbridgeError(Exception):
    """Base of every error faxbridge raises on purpose."""


class Transient(FaxbridgeError):
    """Try again later: timeouts, connection errors, 429, 5xx, 520, relay 4xx."""

    def __init__(self, message: str, *, status: int | None = None,
                 retry_after: float | None = None, reason: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after
        self.reason = reason  # the server's own words (Retarus' "message"), if it gave any


class Unconfirmed(Transient):
    """The request went out but no answer came back (read timeout, connection dropped
    after sending): the server may have acted on it. Never resend blindly."""


class Permanent(FaxbridgeError):
    """Retrying cannot help: 400, 404, 409 from Retarus, 5xx from a mail relay."""

    def __init__(self, message: str, *, status: int | None = None,
                 reason: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason  # the server's own words (Retarus' "message"), if it gave any


class AuthError(Permanent):
    """Credentials refused (401/403). Permanent for the item, loud for the admin."""


class NotFound(Permanent):
    """The thing asked for does not exist there (e.g. a report on the other data center)."""


class ConfigError(FaxbridgeError):
    """A configuration file that cannot be used; carries every problem found."""

    def __init__(self, problems: list[str], source: str = "") -> None:
        self.problems = problems
        self.source = source
        head = f"{source}: " if source else ""
        super().__init__(head + "; ".join(problems))


class StoreError(FaxbridgeError):
    """The durable store failed; nothing was committed."""
