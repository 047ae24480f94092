"""Deterministic ids: version-5 UUIDs (RFC 4122) as text.

`Uuid5Namespace(ns)(name)` equals `str(uuid.uuid5(ns, name))`, computed from a copy of
the namespace's SHA-1 state without UUID objects, which cost more than the hash itself
on the services' hot paths (every event, prompt and export record has such an id).
"""

from __future__ import annotations

import hashlib
import uuid


class Uuid5Namespace:
    def __init__(self, namespace: uuid.UUID) -> None:
        self._sha1 = hashlib.sha1(namespace.bytes, usedforsecurity=False)

    def __call__(self, name: str) -> str:
        digest = self._sha1.copy()
        digest.update(name.encode())
        raw = bytearray(digest.digest()[:16])
        raw[6] = (raw[6] & 0x0F) | 0x50  # version 5
        raw[8] = (raw[8] & 0x3F) | 0x80  # RFC 4122 variant
        text = raw.hex()
        return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"
