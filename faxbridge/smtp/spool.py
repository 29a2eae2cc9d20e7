"""Where the bytes of an unfinished DATA phase are kept: in memory while all
unfinished DATA phases together hold less than smtp.data_memory_limit, in an
unnamed temporary file beyond that.

Without a shared cap, memory grows with what clients *send*, not with what the
bridge accepts: a few hundred sessions that each send 20 MB and never the final
dot would get the process killed. Spooling the excess (instead of refusing it
with 452) lets a legitimate big mail through whatever else is going on."""

from __future__ import annotations

import asyncio
import os
import tempfile
from pathlib import Path
from typing import BinaryIO

# The write buffer of a spooled session: small, because it is in memory for each
# spooled session and is not counted against the cap.
SPOOL_BUFFER = 16 * 1024


class DataMemory:
    """The bytes held in memory by the unfinished DATA phases of one listener."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0
        self.spooled = 0   # DATA phases writing to a temporary file now
        self.received = 0  # bytes of all unfinished DATA phases, in memory or not

    def has_room(self, n: int) -> bool:
        return self.held + n <= self.limit


class DataSink:
    """The body of one DATA phase. The accounting is released by close()."""

    def __init__(self, memory: DataMemory, spool_dir: Path) -> None:
        self.memory, self.spool_dir = memory, spool_dir
        self.buf = bytearray()
        self.file: BinaryIO | None = None
        self.size = 0

    @property
    def spooled(self) -> bool:
        return self.file is not None

    def write(self, data: bytes) -> None:
        """Append; OSError when the spool cannot be written (disk full)."""
        self.size += len(data)
        self.memory.received += len(data)
        if self.file is None:
            if self.memory.has_room(len(data)):
                self.buf += data
                self.memory.held += len(data)
                return
            self._spill()
        assert self.file is not None
        # A write into the page cache (no fsync): microseconds, fine on the event
        # loop, and buffered so that it happens once per SPOOL_BUFFER bytes.
        self.file.write(data)

    def _spill(self) -> None:
        # O_TMPFILE where the filesystem has it: the file has no name, so nothing
        # is left behind when the process dies.
        # (closed by close(), which the DATA phase always calls)
        self.file = tempfile.TemporaryFile(  # noqa: SIM115
            dir=self.spool_dir, buffering=SPOOL_BUFFER)
        self.memory.spooled += 1
        self.file.write(self.buf)
        self._release()

    def clear(self) -> None:
        """Drop what came so far (the mail will be refused; keep reading to the dot)."""
        self._release()
        self.memory.received -= self.size
        self.size = 0
        if self.file is not None:
            self.file.seek(0)
            self.file.truncate()

    def _release(self) -> None:
        self.memory.held -= len(self.buf)
        self.buf = bytearray()

    async def content(self) -> bytearray:
        """The whole body, in memory (the accept path parses it)."""
        if self.file is None:
            return self.buf
        return await asyncio.to_thread(self._read_back, self.file)

    @staticmethod
    def _read_back(fh: BinaryIO) -> bytearray:
        fh.flush()
        size = os.fstat(fh.fileno()).st_size
        out = bytearray(size)
        fh.seek(0)
        view = memoryview(out)
        got = 0
        while got < size:
            n = fh.readinto(view[got:])  # type: ignore[attr-defined]
            if not n:
                break
            got += n
        del view
        if got < size:
            del out[got:]
        return out

    def close(self) -> None:
        self._release()
        self.memory.received -= self.size
        self.size = 0
        if self.file is not None:
            self.memory.spooled -= 1
            self.file.close()
            self.file = None
