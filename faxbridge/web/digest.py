"""HTTP Digest authentication (RFC 7616) for the status push webhook, server side.

Retarus offers HTTP_DIGEST for the status push; with it the password never crosses
the wire. The webhook challenges with SHA-256 first and MD5 second (RFC 7616 §3.7:
in order of preference; MD5 for clients that know nothing newer), qop=auth only.

Nonces are stateless: the issue time and an HMAC of it under a key that lives as long
as the process. A nonce is good for NONCE_SECONDS; an older one (or one from before a
restart) is answered with a fresh challenge marked stale=true, so the client retries
without asking anyone for the password. Replays within that window are not tracked
(no nonce-count bookkeeping): a push replayed within minutes changes nothing, since a
final job is never finished twice.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from typing import Literal
from urllib.request import parse_http_list, parse_keqv_list

NONCE_SECONDS = 300.0
ALGORITHMS = {"SHA-256": hashlib.sha256, "SHA-256-SESS": hashlib.sha256,
              "MD5": hashlib.md5, "MD5-SESS": hashlib.md5}
Verdict = Literal["ok", "stale", "refused"]


class DigestAuthenticator:
    def __init__(self, realm: str, nonce_seconds: float = NONCE_SECONDS) -> None:
        self.realm = realm
        self.nonce_seconds = nonce_seconds
        self._key = secrets.token_bytes(32)
        self._opaque = secrets.token_hex(16)

    def _mac(self, issued: str) -> str:
        return hmac.new(self._key, issued.encode(), hashlib.sha256).hexdigest()[:32]

    def new_nonce(self) -> str:
        issued = f"{time.time():.3f}"
        return f"{issued}-{self._mac(issued)}"

    def _nonce_state(self, nonce: str) -> Verdict:
        issued, _, mac = nonce.partition("-")
        if not hmac.compare_digest(mac, self._mac(issued)):
            return "refused"
        try:
            age = time.time() - float(issued)
        except ValueError:
            return "refused"
        return "ok" if 0 <= age <= self.nonce_seconds else "stale"

    def challenges(self, stale: bool = False) -> list[str]:
        """WWW-Authenticate values, one per algorithm, the preferred first."""
        nonce = self.new_nonce()
        return [f'Digest realm="{self.realm}", qop="auth", algorithm={alg}, '
                f'nonce="{nonce}", opaque="{self._opaque}"' + (", stale=true" if stale else "")
                for alg in ("SHA-256", "MD5")]

    def check(self, authorization: str, method: str, uri: str, user: str,
              password: str | None) -> Verdict:
        """Whether an Authorization header answers one of our challenges for
        user:password on this request (method, request-target)."""
        if not password or authorization[:7].lower() != "digest ":
            return "refused"
        try:
            fields = parse_keqv_list(parse_http_list(authorization[7:]))
        except ValueError:
            return "refused"
        algorithm = fields.get("algorithm", "MD5").upper()
        hash_func = ALGORITHMS.get(algorithm)
        nonce, cnonce, nc = fields.get("nonce", ""), fields.get("cnonce", ""), fields.get("nc", "")
        if (hash_func is None or fields.get("qop") != "auth" or not cnonce or not nc
                or fields.get("realm") != self.realm or fields.get("uri") != uri
                or not hmac.compare_digest(fields.get("username", ""), user)):
            return "refused"

        def h(text: str) -> str:
            return hash_func(text.encode()).hexdigest()

        ha1 = h(f"{user}:{self.realm}:{password}")
        if algorithm.endswith("-SESS"):
            ha1 = h(f"{ha1}:{nonce}:{cnonce}")
        expected = h(f"{ha1}:{nonce}:{nc}:{cnonce}:auth:{h(f'{method}:{uri}')}")
        if not hmac.compare_digest(fields.get("response", ""), expected):
            return "refused"
        # the password was right: an old nonce only asks the client to answer a new one
        return self._nonce_state(nonce)
