"""Builds a minimal Outlook winmail.dat (MS-OXTNEF) for tests: the TNEF layout is
signature, key, then attributes of (level, id, type, length, data, checksum)."""

from __future__ import annotations

import struct

SIGNATURE = 0x223E9F78
LVL_MESSAGE, LVL_ATTACHMENT = 0x01, 0x02
ATP_STRING, ATP_BYTE, ATP_DWORD = 0x0001, 0x0006, 0x0008


def _attr(level: int, attr_id: int, atp: int, data: bytes) -> bytes:
    return (struct.pack("<BHHI", level, attr_id, atp, len(data)) + data
            + struct.pack("<H", sum(data) & 0xFFFF))


def winmail_dat(files: list[tuple[str, bytes]]) -> bytes:
    out = struct.pack("<IH", SIGNATURE, 0x0001)
    out += _attr(LVL_MESSAGE, 0x9006, ATP_DWORD, struct.pack("<I", 0x00010000))  # attTnefVersion
    for name, data in files:
        out += _attr(LVL_ATTACHMENT, 0x9002, ATP_BYTE, b"\x01\x00\xff\xff\xff\xff" + bytes(8))
        out += _attr(LVL_ATTACHMENT, 0x8010, ATP_STRING, name.encode("latin-1") + b"\x00")
        out += _attr(LVL_ATTACHMENT, 0x800F, ATP_BYTE, data)
    return out
