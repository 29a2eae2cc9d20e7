"""HTTP Basic authentication (RFC 7617) checks shared by the webhook and the simulator."""

from __future__ import annotations

import base64
import binascii
import secrets


def basic_ok(authorization: str, user: str, password: str | None) -> bool:
    """True when the Authorization header carries exactly user:password."""
    if not password or not authorization.lower().startswith("basic "):
        return False
    try:
        got = base64.b64decode(authorization[6:], validate=True)
    except (binascii.Error, ValueError):
        return False
    return secrets.compare_digest(got, f"{user}:{password}".encode())
