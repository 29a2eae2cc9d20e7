"""The SMTP listener: aiosmtpd's protocol on our own event loop (no thread), with
STARTTLS, AUTH, SIZE, timeouts and the limits on what one client may hold (sessions,
commands, DATA time and memory) from the config."""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import re
import ssl
from collections import Counter
from collections.abc import Awaitable, Callable
from email._header_value_parser import get_addr_spec, get_angle_addr
from email.errors import HeaderParseError
from pathlib import Path
from typing import Any

import aiosmtpd.smtp
from aiosmtpd.smtp import MISSING, SMTP, AuthResult, LoginPassword, syntax

from faxbridge import replies
from faxbridge.intake.rules import in_networks
from faxbridge.listen import address, bind
from faxbridge.runtime.config import ConfigProvider
from faxbridge.runtime.health import Health
from faxbridge.smtp.auth import (
    FailureLog,
    dummy_hash,
    failure_delay,
    printable,
    verify_off_loop,
)
from faxbridge.smtp.handler import FaxHandler
from faxbridge.smtp.spool import DataMemory, DataSink

log = logging.getLogger("faxbridge.smtp")

# aiosmtpd checks credentials in a synchronous callback (_authenticate); ours must
# await a thread, so that callback only hands the credentials back, marked with this.
_PENDING = "(credentials to check)"

# The most one socket read hands a session (see FaxSMTP.connection_made).
READ_SIZE = 16 * 1024


class Sessions:
    """The open sessions of one listener, in all and per client address."""

    def __init__(self) -> None:
        self.total = 0
        self.per_peer: Counter[str] = Counter()

    def admit(self, peer: str, limit: int, per_client: int) -> str | None:
        """Count a new session in, or the 421 that refuses it."""
        if self.per_peer[peer] >= per_client:
            return replies.S421_SESSIONS_CLIENT.format(peer=peer, limit=per_client)
        if self.total >= limit:
            return replies.S421_SESSIONS.format(limit=limit)
        self.total += 1
        self.per_peer[peer] += 1
        return None

    def release(self, peer: str) -> None:
        self.total -= 1
        self.per_peer[peer] -= 1
        if self.per_peer[peer] <= 0:
            del self.per_peer[peer]


class _InspectForAiosmtpd:
    """`inspect` as aiosmtpd.smtp sees it. SMTP.__init__ calls getmembers() on the
    protocol and on the handler at every connection, only to keep the members named
    auth_*; getmembers reads every attribute of both (properties included), which
    was the largest single cost of a one-mail session. This getmembers returns the
    same auth_* pairs, in the same order, reading only those."""

    _names: dict[type, list[str]] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(inspect, name)

    def getmembers(self, obj: object) -> list[tuple[str, Any]]:
        cls = type(obj)
        names = self._names.get(cls)
        if names is None:
            names = self._names[cls] = [n for n in dir(cls) if n.startswith("auth_")]
        own = [n for n in getattr(obj, "__dict__", {}) if n.startswith("auth_")]
        out = []
        for name in sorted(set(names).union(own)):
            try:
                out.append((name, getattr(obj, name)))
            except AttributeError:  # as inspect.getmembers does
                continue
        return out


aiosmtpd.smtp.inspect = _InspectForAiosmtpd()  # type: ignore[assignment]

# A plain <local@domain> (dot-atoms only), the form nearly every MTA sends: the
# answer of the RFC 5322 parser is the text itself, without building its token tree.
_PLAIN_ANGLE_ADDR = re.compile(
    r"<((?:[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*)"
    r"@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)>")


class FaxSMTP(SMTP):
    """aiosmtpd's SMTP plus: 421 to newcomers while shutting down or beyond the
    session limits, a command limit, an idle timeout that DATA progress resets and a
    total DATA deadline, a count of sessions inside DATA (shutdown waits for them),
    an open-sessions gauge, and the log record of a transaction whose client
    disconnects without QUIT."""

    health: Health
    fb_config: ConfigProvider
    auth_failures: FailureLog  # shared by all sessions of the listener
    sessions: Sessions         # likewise
    data_memory: DataMemory    # likewise
    spool_dir: Path            # where DATA beyond data_memory_limit goes
    _refused = False
    _peer = "?"
    _auth_failed = 0  # failed AUTH attempts in this session
    _commands = 0
    # Inside DATA: when the phase must end, and when the last line came.
    _data_deadline: float | None = None
    _last_progress = 0.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # aiosmtpd's way to change the EHLO answer is a handler hook; the listener
        # adds XFORWARD itself, so the handler stays protocol-free.
        self._handle_hooks["EHLO"] = self._ehlo
        self._ehlo_hook_ver = "new"

    # -------------------------------------------------------------- XFORWARD
    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        """aiosmtpd's own, without the typing.Protocol class it defines on every call
        (a new class per MAIL and RCPT was a visible share of the accept path)."""
        if not arg:
            return "", ""
        plain = _PLAIN_ANGLE_ADDR.match(arg)
        rest = arg[plain.end():].lstrip(" \t") if plain is not None else ""
        if plain is not None and not rest.startswith("("):  # a comment: the parser's job
            addr = plain.group(1)
            if self.local_part_limit and len(addr.rpartition("@")[0]) > self.local_part_limit:
                return None, None
            return addr, rest
        try:
            if arg.lstrip().startswith("<"):
                address_, rest = get_angle_addr(arg)
            else:
                address_, rest = get_addr_spec(arg)
        except HeaderParseError:
            return None, None
        addr = address_.addr_spec
        localpart = addr.rpartition("@")[0]
        if self.local_part_limit and len(localpart) > self.local_part_limit:
            return None, None
        return addr, rest

    def data_received(self, data: bytes) -> None:
        # Inside DATA any bytes are progress for the idle timeout: the block reader
        # waits for a buffer's worth or the terminator, not for each line.
        if self._data_deadline is not None:
            self._last_progress = self.loop.time()
        super().data_received(data)

    def _xforward_allowed(self) -> bool:
        peer = self.session.peer[0] if self.session and self.session.peer else None
        return in_networks(peer, self.fb_config.current.smtp.xforward_networks)

    async def _ehlo(self, server: Any, session: Any, envelope: Any, hostname: str,
                    responses: list[str]) -> list[str]:
        session.host_name = hostname  # the "new" hook sets it, not aiosmtpd
        if self._xforward_allowed():
            responses.insert(len(responses) - 1, "250-" + _XFORWARD_EHLO)
        return responses

    @syntax("XFORWARD attribute=value ...")
    async def smtp_XFORWARD(self, arg: str) -> None:
        """Postfix's XFORWARD (https://www.postfix.org/XFORWARD_README.html): the MTA
        in front tells who its client was. Believed only from smtp.xforward_networks;
        they apply to the next MAIL transaction (several XFORWARD commands add up)."""
        if await self.check_helo_needed():
            return
        assert self.session is not None
        if not self._xforward_allowed():
            await self.push("550 5.7.0 Error: insufficient authorization")
            return
        if self.envelope is not None and self.envelope.mail_from:
            await self.push("503 5.5.1 Error: MAIL transaction in progress")
            return
        attrs: dict[str, str | None] = {}
        for item in arg.split():
            name, eq, value = item.partition("=")
            if not eq or name.upper() not in _XFORWARD_ATTRS:
                await self.push(f"501 5.5.4 Bad XFORWARD attribute: {printable(item[:40])}")
                return
            value = _xtext(value)
            # [UNAVAILABLE] / [TEMPUNAVAIL]: the MTA does not know; IPv6 comes prefixed
            attrs[name.upper()] = (None if value.upper() in ("[UNAVAILABLE]", "[TEMPUNAVAIL]")
                                   else value.removeprefix("IPV6:").removeprefix("ipv6:"))
        if not attrs:
            await self.push("501 5.5.4 Syntax: XFORWARD attribute=value ...")
            return
        forwarded: dict[str, str | None] = getattr(self.session, "fb_xforward", {})
        self.session.fb_xforward = {**forwarded, **attrs}  # type: ignore[attr-defined]
        await self.push("250 2.0.0 Ok")

    def connection_made(self, transport: Any) -> None:
        if self._original_transport is not None:  # STARTTLS: the same session goes on
            super().connection_made(transport)
            return
        peername = transport.get_extra_info("peername")
        self._peer = str(peername[0]) if peername else "?"
        cfg = self.fb_config.current.smtp
        refusal = ("421 4.3.2 Service shutting down, try again later"
                   if not self.health.accepting else
                   self.sessions.admit(self._peer, cfg.max_sessions, cfg.max_sessions_per_client))
        if refusal is not None:
            self._refused = True
            if self.health.accepting:
                log.warning("session refused: peer=%s: %s", self._peer, refusal)
            transport.write(refusal.encode() + b"\r\n")
            transport.close()
            return
        # Every command counts against smtp.max_commands (aiosmtpd's own
        # command_call_limit counts each command separately, so NOOP, RSET, MAIL …
        # in turn would still keep a session forever).
        self._smtp_methods = {name: self._counted(method, cfg.max_commands)
                              for name, method in self._smtp_methods.items()}
        # asyncio's socket transport hands the protocol up to 256 KB per read, and
        # the stream reader keeps it until DATA consumes it: up to 75 MB for 300
        # busy sessions, outside smtp.data_memory_limit. Smaller reads cost a few
        # more system calls for a big mail.
        if hasattr(transport, "max_size"):
            transport.max_size = READ_SIZE
        self.health.metrics.sessions.inc()
        super().connection_made(transport)

    def _counted(self, method: Callable[[str], Awaitable[None]],
                 limit: int) -> Callable[[str], Awaitable[None]]:
        @functools.wraps(method)  # keeps aiosmtpd's syntax attributes (HELP)
        async def counted(arg: str) -> None:
            self._commands += 1
            if self._commands > limit:
                reply = replies.S421_COMMANDS.format(limit=limit)
                log.warning("session closed: peer=%s: %s", self._peer, reply)
                self._close_with(reply)
                return
            await method(arg)
        return counted

    def _close_with(self, reply: str) -> None:
        """Answer `reply` and end the session (its transaction logged with it)."""
        handler = self.event_handler
        if isinstance(handler, FaxHandler) and self.session is not None:
            handler.flush(self.session, reply)
        if self.transport is not None:
            self.transport.write(reply.encode() + b"\r\n")
            self.transport.close()

    def _timeout_cb(self) -> None:
        """aiosmtpd's idle timeout, reset by each command; inside DATA also by each
        line received (a slow link is not idle), up to the total DATA deadline."""
        if self.transport is None:
            return
        now = self.loop.time()
        if self._data_deadline is not None:
            if now >= self._data_deadline:
                self._close_with(replies.S421_DATA_DEADLINE.format(
                    seconds=self.fb_config.current.smtp.data_timeout))
                return
            idle_left = self._last_progress + self._timeout_duration - now
            if idle_left > 0:
                self._reset_timeout(max(0.001, min(idle_left, self._data_deadline - now)))
                return
        self._close_with(replies.S421_IDLE.format(seconds=self._timeout_duration))

    # ------------------------------------------------------------------ AUTH
    def _authenticate(self, mechanism: str, auth_data: Any) -> AuthResult:
        return AuthResult(success=False, handled=False, auth_data=auth_data, message=_PENDING)

    async def auth_PLAIN(self, _: Any, args: list[str]) -> AuthResult:
        return await self._check_credentials("PLAIN", await super().auth_PLAIN(_, args))

    async def auth_LOGIN(self, _: Any, args: list[str]) -> AuthResult:
        return await self._check_credentials("LOGIN", await super().auth_LOGIN(_, args))

    async def _check_credentials(self, mechanism: str, pending: AuthResult) -> AuthResult:
        """The password check of AUTH PLAIN/LOGIN, hardened against guessing: the
        hash runs in a thread (the loop serves every other session meanwhile), an
        unknown user costs one hash like a known one, each attempt after recent
        failures from this address or for this user waits first (asyncio.sleep:
        only this session waits), and too many failures end the session."""
        if pending.message is not _PENDING or not isinstance(pending.auth_data,
                                                             LoginPassword):
            return pending  # aiosmtpd already answered (bad base64, '*' abort …)
        assert self.session is not None
        creds: LoginPassword = pending.auth_data
        cfg = self.fb_config.current.smtp
        name = creds.login.decode("utf-8", "replace")
        peer = str(self.session.peer[0]) if self.session.peer else "?"
        keys = (f"addr:{peer}", f"user:{name}")
        window = cfg.auth_failure_window
        recent = max(self.auth_failures.count(k, window) for k in keys)
        delay = failure_delay(recent, cfg.auth_failure_delay, cfg.auth_failure_delay_max)
        if delay:
            await asyncio.sleep(delay)
            if self.transport is None:  # the client gave up meanwhile
                return AuthResult(success=False, handled=True)
        users = {u.name: u.password_hash for u in cfg.users}
        iterations = max((int(h.split("$")[1]) for h in users.values()), default=None)
        encoded = users.get(name) or (dummy_hash(iterations) if iterations else dummy_hash())
        ok = await verify_off_loop(creds.password.decode("utf-8", "replace"), encoded)
        if ok and name in users:
            for k in keys:
                self.auth_failures.succeeded(k)
            self.session.fb_user = name  # type: ignore[attr-defined]
            return AuthResult(success=True, auth_data=creds)
        for k in keys:
            self.auth_failures.failed(k, window)
        self._auth_failed += 1
        log.warning("AUTH %s failed: peer=%s user=%s (%d of %d in this session; "
                    "next attempt from this address waits %.1f s)", mechanism, peer,
                    printable(name), self._auth_failed, cfg.auth_max_failures,
                    failure_delay(recent + 1, cfg.auth_failure_delay,
                                  cfg.auth_failure_delay_max))
        if self._auth_failed >= cfg.auth_max_failures:
            await self.push(replies.S421_AUTH_FAILURES)
            if self.transport is not None:
                self.transport.close()
            return AuthResult(success=False, handled=True)
        return AuthResult(success=False, handled=False)

    # ------------------------------------------------------------------ DATA
    async def smtp_DATA(self, arg: str) -> None:
        self.health.sessions_in_data += 1
        try:
            await self._data(arg)
        finally:
            self.health.sessions_in_data -= 1

    async def _data(self, arg: str) -> None:
        sink = DataSink(self.data_memory, self.spool_dir)
        try:
            await self._data_into(arg, sink)
        finally:
            self._data_deadline = None
            sink.close()

    async def _data_into(self, arg: str, sink: DataSink) -> None:
        """DATA, collected into one growing buffer.

        aiosmtpd keeps each received line as its own bytearray until the end (about
        1.75 × the message in object overhead, then the joined copy on top): with
        ten 10 MB mails arriving at once that alone was 240 MB. Same replies and
        limits; RFC 5321 §4.5.2 dot-unstuffing, §4.5.3.1.6 line length, SIZE
        (RFC 1870) checked as the data arrives and answered after the final dot.

        Bare <LF> or <CR> (not part of CRLF) anywhere in the data refuses the mail
        with a reply naming that, whatever the mail's size. Refusing rather than
        normalising, as Postfix's smtpd_forbid_bare_newline does: a sender that
        ends lines with bare LF cannot be told apart from one smuggling a second
        message through a different idea of where a line (or the data: "\n.\n")
        ends, and RFC 5321 section 2.3.8 forbids it. Only CRLF "." CRLF ends the
        data.

        The body goes into `sink`: memory, or a temporary file once all unfinished
        DATA phases together hold smtp.data_memory_limit bytes."""
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push(replies.S503_NEED_RCPT)
            return
        if arg:
            await self.push(replies.S501_DATA_ARG)
            return
        tx = getattr(self.session, "fb_tx", None)
        if tx is not None and tx.state.probe and isinstance(self.event_handler, FaxHandler):
            # mail from <> or a verification probe: its recipients were checked, its
            # content is never faxed, so it is refused before it is sent at all
            tx.record.reply = replies.S550_NULL_SENDER
            self.event_handler.flush(self.session)
            await self.push(replies.S550_NULL_SENDER)
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        data_timeout = self.fb_config.current.smtp.data_timeout
        self._last_progress = self.loop.time()
        self._data_deadline = self._last_progress + data_timeout
        self._reset_timeout(min(self._timeout_duration, data_timeout))
        try:
            # The first byte decides how the data is read. A mail starting with "."
            # (perhaps the final dot itself) or CR is read line by line; any other in
            # blocks, which needs the CRLF *before* each line to be still unread.
            first = await self._reader.readexactly(1)
        except asyncio.CancelledError:  # the client went away during DATA
            self._writer.close()
            raise
        self._last_progress = self.loop.time()
        if first in (b".", b"\r"):
            error = await self._read_lines(sink, first)
        else:
            error = await self._read_blocks(sink, first)
        self._data_deadline = None  # the data is complete: back to the idle timeout
        self._reset_timeout()
        if error is not None:
            # into the SMTP log with its reason (the handler never saw this message)
            if isinstance(self.event_handler, FaxHandler) and self.session is not None:
                self.event_handler.flush(self.session, error)
            await self.push(error)
            self._set_post_data_state()
            return
        # The buffer itself is the message (the handler only reads it): a bytes()
        # copy would double the peak for a large mail.
        buf = await sink.content()
        sink.close()
        self.envelope.content = buf
        self.envelope.original_content = buf
        status = await self._call_handler_hook("DATA")
        self._set_post_data_state()
        # Free the message before answering: the woken submitter reads the job's
        # documents next, and both at once set the peak for a large mail.
        del buf
        await self.push("250 OK" if status is MISSING else status)

    async def _read_lines(self, sink: DataSink, prefix: bytes) -> str | None:
        """The data, one line at a time (from `prefix`, the bytes of the first line
        read already); the refusal reply, or None."""
        limit = self.data_size_limit
        received = 0
        error: str | None = None
        in_long_line = False  # inside a line longer than the stream reader's limit
        while self.transport is not None:
            try:
                # A prefix ending in CR (the data's first byte, read by smtp_DATA) may
                # be the first half of its line's CRLF: readuntil alone would look
                # past it and join this line with the next (an empty first line and
                # the final dot then never end the data).
                while prefix.endswith(b"\r"):
                    nxt = await self._reader.readexactly(1)
                    prefix += nxt
                    if nxt == b"\n":
                        break
                if prefix.endswith(b"\r\n"):
                    line = prefix
                else:
                    line = prefix + await self._reader.readuntil(b"\r\n")
                prefix = b""
                # progress: the idle timeout counts from here (see _timeout_cb)
                self._last_progress = self.loop.time()
            except asyncio.CancelledError:  # the client went away during DATA
                self._writer.close()
                raise
            except asyncio.LimitOverrunError as exc:
                # a line beyond the reader's buffer limit: keep reading, refuse at the end
                chunk = prefix + await self._reader.read(exc.consumed)
                prefix = b""
                self._last_progress = self.loop.time()
                received += len(chunk)
                if b"\n" in chunk or b"\r" in chunk:  # (a CR ending the chunk is
                    error = _bare(error)              # left unread by readuntil)
                error = error or replies.S500_LINE_TOO_LONG
                in_long_line = True
                sink.clear()
                continue
            if _has_bare(line):
                error = _bare(error)
            if in_long_line:  # the tail of an over-long line (it is not the final dot)
                in_long_line = False
                received += len(line)
                continue
            if line == b".\r\n":
                break
            received += len(line)
            if error is None and limit and received > limit:
                error = replies.S552_TOO_BIG.format(limit=limit)
            elif error is None and len(line) > self.line_length_limit:
                error = replies.S500_LINE_TOO_LONG
            if error is not None:
                sink.clear()  # drop what came, keep reading to the final dot
                continue
            try:
                sink.write(line[1:] if line.startswith(b".") else line)
            except OSError as exc:  # the spool is full or unwritable
                log.error("cannot spool DATA to %s: %s", sink.spool_dir, exc)
                error = replies.S452_SPOOL
                sink.clear()
        return error

    async def _read_blocks(self, sink: DataSink, prefix: bytes) -> str | None:
        """The data in blocks, up to CRLF "." CRLF, with the same checks as
        `_read_lines` done on whole blocks by bytes methods (a Python step per line
        cost more than the rest of the DATA phase for a 200 KB attachment).

        The stream reader never hands out the terminator's first bytes without the
        rest (readuntil keeps the last len(END) - 1 bytes when it has to give up a
        part of a long buffer), so a block never ends inside it; a line cut at the
        block's end is kept in `carry` until its CRLF arrives."""
        # `prefix` is the start of a line whose CRLF has not arrived yet: such bytes
        # count as received (unfinished DATA) while they wait outside the sink
        self._carry_held = len(prefix)
        sink.memory.received += self._carry_held
        try:
            return await self._blocks(sink, prefix)
        finally:
            sink.memory.received -= self._carry_held
            self._carry_held = 0

    _carry_held = 0  # bytes of an incomplete line that _blocks holds outside the sink

    async def _blocks(self, sink: DataSink, carry: bytes) -> str | None:
        limit, longest = self.data_size_limit, self.line_length_limit
        received = 0
        error: str | None = None
        while self.transport is not None:
            final = False
            try:
                block = await self._reader.readuntil(DATA_END)
                final = True
            except asyncio.CancelledError:  # the client went away during DATA
                self._writer.close()
                raise
            except asyncio.LimitOverrunError as exc:
                # no terminator in the buffer yet: take what can be taken safely
                block = await self._reader.read(exc.consumed)
            self._last_progress = self.loop.time()
            data = carry + block if carry else block
            if final:
                body, carry = data[:-3], b""  # without ".\r\n"; the CRLF is the mail's
            else:
                cut = data.rfind(b"\r\n") + 2
                cut = cut if cut >= 2 else 0
                body, carry = data[:cut], data[cut:]
                if len(carry) > longest:
                    # a line beyond the limit, still going: refuse at the end, and keep
                    # only a trailing CR (it may be the first half of the line's CRLF)
                    dropped, carry = ((carry[:-1], carry[-1:]) if carry.endswith(b"\r")
                                      else (carry, b""))
                    received += len(dropped)
                    if b"\r" in dropped or b"\n" in dropped:
                        error = _bare(error)
                    error = error or replies.S500_LINE_TOO_LONG
                    sink.clear()
            sink.memory.received += len(carry) - self._carry_held
            self._carry_held = len(carry)
            if not body:
                if final:
                    break
                continue
            received += len(body)
            crlf = body.count(b"\r\n")
            if body.count(b"\r") != crlf or body.count(b"\n") != crlf:
                error = _bare(error)
            if error is None and limit and received > limit:
                error = replies.S552_TOO_BIG.format(limit=limit)
            elif error is None and len(body) > longest - 2 and \
                    max(map(len, body.split(b"\r\n"))) + 2 > longest:
                error = replies.S500_LINE_TOO_LONG
            if error is not None:
                sink.clear()  # drop what came, keep reading to the final dot
            else:
                # RFC 5321 section 4.5.2: a line's leading dot was added by the client
                if body.startswith(b"."):
                    body = body[1:]
                try:
                    sink.write(body.replace(b"\r\n.", b"\r\n"))
                except OSError as exc:  # the spool is full or unwritable
                    log.error("cannot spool DATA to %s: %s", sink.spool_dir, exc)
                    error = replies.S452_SPOOL
                    sink.clear()
            if final:
                break
        return error

    def connection_lost(self, exc: Exception | None) -> None:
        if self._refused:
            return
        self.sessions.release(self._peer)
        self.health.metrics.sessions.dec()
        handler = self.event_handler
        if isinstance(handler, FaxHandler) and self.session is not None:
            handler.flush(self.session, "(connection lost)")
        super().connection_lost(exc)


_XFORWARD_ATTRS = ("NAME", "ADDR", "PORT", "PROTO", "HELO", "IDENT", "SOURCE")
_XFORWARD_EHLO = "XFORWARD " + " ".join(_XFORWARD_ATTRS)


# CRLF "." CRLF: the end of the data (RFC 5321 section 4.1.1.4)
DATA_END = b"\r\n.\r\n"


def _xtext(value: str) -> str:
    """RFC 3461 section 4 xtext: '+XX' is the byte XX in hex."""
    return re.sub(r"\+([0-9A-Fa-f]{2})", lambda m: chr(int(m.group(1), 16)), value)


def _has_bare(line: bytes) -> bool:
    """A CR or LF before the line's closing CRLF."""
    end = len(line) - 2
    return line.find(b"\n", 0, end) >= 0 or line.find(b"\r", 0, end) >= 0


def _bare(error: str | None) -> str:
    # Bare newlines are what is wrong with the mail, and they make every such
    # mail one long "line": their reply takes the place of "line too long" (the
    # size limit, a different problem, keeps its 552).
    if error is None or error == replies.S500_LINE_TOO_LONG:
        return replies.S554_BARE_NEWLINE
    return error


async def start_smtp(handler: FaxHandler, config: ConfigProvider, health: Health,
                     tls: Callable[[], ssl.SSLContext | None],
                     listen: str | None = None) -> tuple[asyncio.base_events.Server, str]:
    """Bind `listen` (default: the current smtp.listen) and serve SMTP on it.

    The STARTTLS context is not fixed here: each new session takes `tls()` as it
    is when the client connects. The app builds and validates that context in
    its preflight, so a reload can switch certificates without closing the port,
    and a certificate that does not load never replaces the one in use."""

    failures = FailureLog()
    sessions = Sessions()
    # The cap is the one configured when the listener starts (a reload that
    # changes it takes effect with the next listener).
    memory = DataMemory(config.current.smtp.data_memory_limit)
    health.metrics.data_unfinished.set_function(lambda: memory.received)
    health.metrics.data_memory.set_function(lambda: memory.held)
    health.metrics.data_spooled.set_function(lambda: memory.spooled)
    spool = config.current.storage.data_dir / "spool"
    spool.mkdir(parents=True, exist_ok=True)

    def authenticator(server: Any, session: Any, envelope: Any, mechanism: str,
                      auth_data: Any) -> AuthResult:
        # never called: FaxSMTP checks credentials itself (asynchronously); passing
        # it tells aiosmtpd that AUTH is in use
        return AuthResult(success=False, handled=False)

    def factory() -> FaxSMTP:
        current = config.current.smtp
        smtp = FaxSMTP(
            handler,
            data_size_limit=current.max_message_size,
            hostname=current.hostname,
            ident=current.banner,
            tls_context=tls(),
            require_starttls=False,
            timeout=current.timeout,  # the idle timeout (see FaxSMTP._timeout_cb)
            authenticator=authenticator if current.users else None,
            auth_require_tls=current.auth_require_tls,
            auth_required=False,
            decode_data=False,
            enable_SMTPUTF8=True,
            loop=asyncio.get_running_loop(),
        )
        smtp.health = health
        smtp.fb_config = config
        smtp.auth_failures = failures
        smtp.sessions = sessions
        smtp.data_memory = memory
        smtp.spool_dir = spool
        return smtp

    sock = bind(listen or config.current.smtp.listen, "smtp.listen")
    server = await asyncio.get_running_loop().create_server(factory, sock=sock)
    return server, address(sock)
