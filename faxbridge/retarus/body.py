"""A send-a-fax request body whose document data is base64-encoded as it is sent."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

# base64 turns 3 bytes into 4 characters: chunks of a multiple of 3 bytes encode
# independently and concatenate to the encoding of the whole (RFC 4648 §4).
CHUNK = 3 * 64 * 1024


@dataclass(frozen=True)
class Body:
    """A Fax4A request body: JSON text around each document's base64 data, which
    is encoded chunk by chunk as the body is sent. A 25 MB document would otherwise
    exist as bytes, a base64 str, a JSON str and the encoded bytes all at once.
    Iterable again for each attempt (failover posts the same body twice)."""

    pieces: tuple[bytes, ...]  # len(documents) + 1 slices of JSON
    documents: tuple[bytes, ...]

    def __len__(self) -> int:
        return (sum(map(len, self.pieces))
                + sum(2 + 4 * ((len(d) + 2) // 3) for d in self.documents))

    def chunks(self) -> Iterator[bytes]:
        for piece, doc in zip(self.pieces, self.documents, strict=False):
            yield piece + b'"'
            for i in range(0, len(doc), CHUNK):
                yield base64.b64encode(doc[i:i + CHUNK])
            yield b'"'
        yield self.pieces[-1]

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks():
            yield chunk

    def __bytes__(self) -> bytes:
        return b"".join(self.chunks())
