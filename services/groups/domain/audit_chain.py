"""The PDL audit log's hash chain: canonical form of a row, link hashes, and the walk
that finds the first break. No I/O: the sealer and `audit-verify` feed it rows.

A link's hash is SHA-256 over the previous link's hash and the row's canonical bytes,
so changing, removing or re-ordering any sealed row changes every later hash. A plain
chain only shows tampering by someone who cannot recompute it: a superuser could, which
is why the head hash is exported and anchored outside the database.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

GENESIS = bytes(32)  # the "previous hash" of position 1


@dataclass(frozen=True)
class AuditEntry:
    """One audit_log row, every column."""

    id: int
    at: datetime
    action: str
    user_id: str
    unit_id: str
    personnummer: str | None
    membership_id: str | None
    detail: Any  # a JSON value (the JSONB column as decoded)


def canonical_json(value: Any) -> str:
    """Stable JSON: keys sorted by code point, no whitespace, non-ASCII as itself,
    control characters as \\u00XX, floats by their shortest round-trip form.

    Raises TypeError for a value JSON cannot hold, ValueError for NaN or infinity."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("NaN and infinity have no JSON form")
        return repr(value)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, list | tuple):
        return "[" + ",".join(canonical_json(item) for item in value) + "]"
    if isinstance(value, dict):
        if not all(isinstance(key, str) for key in value):
            raise TypeError("JSON object keys are strings")
        return (
            "{"
            + ",".join(f"{_string(key)}:{canonical_json(value[key])}" for key in sorted(value))
            + "}"
        )
    raise TypeError(f"no canonical JSON for {type(value).__name__}")


def _string(text: str) -> str:
    out = ['"']
    for char in text:
        if char == '"':
            out.append('\\"')
        elif char == "\\":
            out.append("\\\\")
        elif char < " " or char == "\x7f":
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    out.append('"')
    return "".join(out)


def canonical_instant(at: datetime) -> str:
    """UTC with all six fractional digits, whatever the zone it was read in."""
    if at.tzinfo is None:
        raise ValueError("an audit time must carry its zone")
    return at.astimezone(UTC).isoformat(timespec="microseconds")


def canonical_bytes(entry: AuditEntry) -> bytes:
    """What a link's hash covers of its row: every column, as canonical JSON (UTF-8)."""
    return canonical_json(
        {
            "id": entry.id,
            "at": canonical_instant(entry.at),
            "action": entry.action,
            "user_id": entry.user_id,
            "unit_id": entry.unit_id,
            "personnummer": entry.personnummer,
            "membership_id": entry.membership_id,
            "detail": entry.detail,
        }
    ).encode("utf-8")


def link_hash(prev_hash: bytes, entry: AuditEntry) -> bytes:
    return hashlib.sha256(prev_hash + canonical_bytes(entry)).digest()


@dataclass(frozen=True)
class Link:
    """One sealed position of the chain (an audit_chain row)."""

    position: int
    audit_id: int
    prev_hash: bytes
    hash: bytes


def seal(head: Link | None, entries: Sequence[AuditEntry]) -> list[Link]:
    """The links that append `entries`, in the given order, after `head` (None: empty)."""
    position, prev = (head.position, head.hash) if head else (0, GENESIS)
    links = []
    for entry in entries:
        position += 1
        digest = link_hash(prev, entry)
        links.append(Link(position, entry.id, prev, digest))
        prev = digest
    return links


@dataclass(frozen=True)
class ChainBreak:
    """The first place where the stored chain and the stored rows disagree."""

    kind: str  # changed | removed | gap | relinked | sealed_twice | unsealed
    position: int | None
    audit_id: int | None

    def describe(self) -> str:
        where = f"audit row {self.audit_id}" if self.audit_id is not None else "a link"
        at = f" at position {self.position}" if self.position is not None else ""
        return {
            "changed": f"{where}{at} was changed after it was sealed",
            "removed": f"{where}{at} was removed (its link remains)",
            "gap": f"the link{at} is missing (positions skip it)",
            "relinked": f"the link{at} does not follow the one before it (a link was "
            "changed or inserted)",
            "sealed_twice": f"{where} is sealed twice (again{at})",
            "unsealed": f"{where} was never sealed (inserted out of order or the sealer "
            "is not running)",
        }[self.kind]


@dataclass(frozen=True)
class StoredLink:
    """A link as stored, with its audit row (None: the row is gone)."""

    link: Link
    entry: AuditEntry | None


@dataclass
class ChainWalk:
    """Feed the stored links in position order; `add` returns the first break, after
    which the walk stops. `sealed_twice`: the audit ids with more than one link."""

    sealed_twice: Collection[int] = ()
    verified: int = 0
    head_position: int = 0
    head_hash: bytes = GENESIS
    broken: ChainBreak | None = None
    _twice_seen: set[int] = field(default_factory=set)

    def add(self, stored: StoredLink) -> ChainBreak | None:
        if self.broken is not None:
            return self.broken
        self.broken = self._check(stored)
        if self.broken is None:
            self.verified += 1
            self.head_position = stored.link.position
            self.head_hash = stored.link.hash
        return self.broken

    def _check(self, stored: StoredLink) -> ChainBreak | None:
        link, entry = stored.link, stored.entry
        expected = self.head_position + 1
        if link.position != expected:
            return ChainBreak("gap" if link.position > expected else "relinked", expected, None)
        if link.prev_hash != self.head_hash:
            return ChainBreak("relinked", link.position, link.audit_id)
        if link.audit_id in self.sealed_twice:
            if link.audit_id in self._twice_seen:
                return ChainBreak("sealed_twice", link.position, link.audit_id)
            self._twice_seen.add(link.audit_id)
        if entry is None:
            return ChainBreak("removed", link.position, link.audit_id)
        if entry.id != link.audit_id or link_hash(self.head_hash, entry) != link.hash:
            return ChainBreak("changed", link.position, link.audit_id)
        return None
