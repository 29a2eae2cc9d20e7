"""SMTP AUTH users: PBKDF2-SHA256 password hashes (hashlib, no extra dependency)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import secrets
import time
from concurrent.futures import ThreadPoolExecutor

ITERATIONS = 200_000


def hash_password(password: str, iterations: int = ITERATIONS) -> str:
    salt = secrets.token_hex(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), bytes.fromhex(salt), iterations)
    return f"pbkdf2_sha256${iterations}${salt}${digest.hex()}"


def verify_password(password: str, encoded: str) -> bool:
    try:
        algo, iters, salt, digest = encoded.split("$")
        if algo != "pbkdf2_sha256":
            return False
        got = hashlib.pbkdf2_hmac("sha256", password.encode(), bytes.fromhex(salt), int(iters))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got.hex(), digest)


# Verified in place of a hash for a user name that does not exist: the unknown
# user then costs one PBKDF2 run like a known one, so the reply time does not
# tell an attacker which names exist. Its digest matches no password.
def dummy_hash(iterations: int = ITERATIONS) -> str:
    return f"pbkdf2_sha256${iterations}${'00' * 16}${'00' * 32}"


def printable(text: str, limit: int = 64) -> str:
    """A client-supplied name made safe for one log line: control characters
    (CR, LF, ESC …) escaped, cut to `limit` characters."""
    out = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text[:limit])
    return out + ("…" if len(text) > limit else "")


class FailureLog:
    """Recent failed AUTH attempts per client address and per user name, for the
    growing delay before the next attempt. Failures older than `window` seconds are
    forgotten; the tables are pruned so names made up by an attacker cannot grow
    them without bound."""

    MAX_KEYS = 10_000

    def __init__(self) -> None:
        self._by_key: dict[str, tuple[int, float]] = {}

    def count(self, key: str, window: float, now: float | None = None) -> int:
        now = time.monotonic() if now is None else now
        n, last = self._by_key.get(key, (0, 0.0))
        return n if now - last < window else 0

    def failed(self, key: str, window: float) -> None:
        now = time.monotonic()
        self._by_key[key] = (self.count(key, window, now) + 1, now)
        if len(self._by_key) > self.MAX_KEYS:
            self._by_key = {k: v for k, v in self._by_key.items() if now - v[1] < window}
            while len(self._by_key) > self.MAX_KEYS:  # all recent: drop the oldest
                del self._by_key[min(self._by_key, key=lambda k: self._by_key[k][1])]

    def succeeded(self, key: str) -> None:
        self._by_key.pop(key, None)


def failure_delay(failures: int, base: float, cap: float) -> float:
    """Seconds to wait before checking the next attempt: none before the first
    failure, then base, 2×base, 4×base … up to cap."""
    if failures <= 0 or base <= 0:
        return 0.0
    return min(cap, base * 2 ** min(failures - 1, 30))


_pool: ThreadPoolExecutor | None = None


def _hash_pool() -> ThreadPoolExecutor:
    # A pool of its own, half the cores: PBKDF2 releases the GIL, so hashing in
    # threads keeps the event loop free, and leaving a core to the loop keeps an
    # AUTH flood from starving every other session of CPU as well.
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(max(1, (os.cpu_count() or 2) // 2),
                                   thread_name_prefix="auth-hash")
    return _pool


# hashes being computed or queued right now (observable by tests and metrics)
in_progress = 0


async def verify_off_loop(password: str, encoded: str) -> bool:
    """verify_password on the hashing pool (45 ms of CPU must not block the loop)."""
    global in_progress
    in_progress += 1
    try:
        return await asyncio.get_running_loop().run_in_executor(
            _hash_pool(), verify_password, password, encoded)
    finally:
        in_progress -= 1
