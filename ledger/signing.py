"""Canonical bytes of what fedproof hashes (and, with the signing issue, signs): built here and nowhere else.

A payload digest covers the exact bytes a client sends, chunk by chunk, each prefixed by its length as a
big-endian u64, so that no two different chunkings of the same bytes hash alike.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable

PAYLOAD_DOMAIN = b"fedproof/payload/v1\x00"


def payload_digest(chunks: Iterable[bytes]) -> bytes:
    """SHA-256 over the domain tag and every chunk, each length-prefixed."""
    h = hashlib.sha256(PAYLOAD_DOMAIN)
    for chunk in chunks:
        h.update(struct.pack(">Q", len(chunk)))
        h.update(chunk)
    return h.digest()
