"""The PDL audit log's hash chain: link hashes, sealing, and the walk that finds the
first break. No I/O: the sealer and `audit-verify` feed it rows in canonical form.

A link's hash is SHA-256 over the previous link's hash and the row's canonical bytes,
so changing, removing or re-ordering any sealed row changes every later hash. A plain
chain only shows tampering by someone who cannot recompute it: a superuser could, which
is why the head hash is exported and anchored outside the database.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

GENESIS = bytes(32)  # the "previous hash" of position 1


@dataclass(frozen=True)
class AuditEntry:
    """One audit_log row as the chain sees it: its id and its canonical bytes (every
    column; `adapters.audit_rows` makes them)."""

    id: int
    content: bytes


def link_hash(prev_hash: bytes, entry: AuditEntry) -> bytes:
    return hashlib.sha256(prev_hash + entry.content).digest()


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
