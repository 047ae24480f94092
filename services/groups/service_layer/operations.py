"""Operator tasks: catalog import (and its dry run), the PDL log extract, dead-letter
listing and replay."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import select, update

from services.common.records import Header
from services.groups.adapters import audit_store
from services.groups.adapters.orm import dead_letters
from services.groups.adapters.outbox import decode_headers
from services.groups.domain.audit_chain import ChainBreak, ChainWalk
from services.groups.domain.catalog import Catalog, version_key
from services.groups.domain.personnummer import Personnummer
from services.groups.service_layer.outgoing import publish_catalog
from services.groups.service_layer.unit_of_work import UnitOfWork

DLQ_HEADER_PREFIX = "dlq-"
AUDIT_EXTRACT = "audit_extract"


async def import_catalog(
    uow: UnitOfWork, catalog: Catalog, *, today: date, now: datetime, catalog_topic: str
) -> Catalog:
    """Load `catalog` into the tables and publish the catalog then in force, in one
    transaction; returns it. Nothing is deleted: a code the tables hold and `catalog`
    no longer lists stays, ended on `today` (if open or ending later). Memberships are
    not touched here: the retirement sweep ends those whose group has ended."""
    in_force = catalog.keeping_codes_of(await uow.catalog.load_catalog(), today)
    await uow.catalog.import_catalog(in_force)
    await publish_catalog(uow.outbox, in_force, topic=catalog_topic, now=now)
    await uow.commit()
    return in_force


async def catalog_on_start(
    uow: UnitOfWork, shipped: Catalog, *, today: date, now: datetime, catalog_topic: str
) -> None:
    """A starting service imports its catalog file unless the database holds a newer
    catalog (an operator's import is never rolled back), and publishes the catalog in
    force either way, so the topic is whole even if an earlier publication was lost."""
    in_database = await uow.catalog.load_catalog()
    if in_database is None or version_key(shipped.version) >= version_key(in_database.version):
        await import_catalog(uow, shipped, today=today, now=now, catalog_topic=catalog_topic)
        return
    await publish_catalog(uow.outbox, in_database, topic=catalog_topic, now=now)
    await uow.commit()


@dataclass(frozen=True)
class EndedByCatalog:
    """An active membership a catalog gives an end: `valid_to` is the day it would end
    (its group's or subgroup's last day, never before its own `valid_from`)."""

    membership_id: str
    group_code: str
    subgroup_code: str | None
    valid_from: date
    valid_to: date


async def catalog_dry_run(
    uow: UnitOfWork, catalog: Catalog, *, today: date
) -> AsyncGenerator[EndedByCatalog, None]:
    """The active memberships that importing `catalog` on `today` would end, changing
    nothing (the unit of work is never committed). Names no customer."""
    in_force = catalog.keeping_codes_of(await uow.catalog.load_catalog(), today)
    ending = {
        g.code
        for g in in_force.groups
        if g.valid_to is not None or any(s.valid_to is not None for s in g.subgroups)
    }
    if not ending:
        return
    async with aclosing(uow.catalog.active_memberships_in(ending)) as rows:
        async for row in rows:
            last = in_force.last_day(row["group_code"], row["subgroup_code"])
            if last is not None:
                yield EndedByCatalog(
                    membership_id=str(row["membership_id"]),
                    group_code=row["group_code"],
                    subgroup_code=row["subgroup_code"],
                    valid_from=row["valid_from"],
                    valid_to=max(last, row["valid_from"]),
                )


@dataclass(frozen=True)
class Operator:
    """Who runs an operator task: written to the audit log with what they extracted."""

    user_id: str
    unit_id: str


async def audit_extract(
    uow: UnitOfWork,
    operator: Operator,
    *,
    personnummer: Personnummer | None = None,
    by_user: str | None = None,
    by_unit: str | None = None,
    since: datetime | None = None,
) -> list[dict[str, Any]]:
    """A PDL log extract, oldest first: one patient's log, or what one user or unit did
    (with whose records, including refused attempts, which name no patient).

    The extract itself is logged (action `audit_extract`, the filter in `detail`, the
    patient when there is one) and committed before anything is returned."""
    if (personnummer is None) == (by_user is None and by_unit is None):
        raise ValueError("extract by patient, or by user and/or unit")
    rows = await audit_store.extract(
        uow.connection,
        personnummer=personnummer.value if personnummer else None,
        user_id=by_user,
        unit_id=by_unit,
        since=since,
    )
    what: dict[str, Any] = {"by": "patient"} if personnummer else {}
    if by_user is not None:
        what["by_user"] = by_user
    if by_unit is not None:
        what["by_unit"] = by_unit
    if since is not None:
        what["since"] = since.isoformat()
    await uow.repo.audit(
        action=AUDIT_EXTRACT,
        user_id=operator.user_id,
        unit_id=operator.unit_id,
        personnummer=personnummer,
        detail={"filter": what, "rows": len(rows)},
    )
    await uow.commit()
    return [
        {
            "id": row.id,
            "at": row.at.isoformat(),
            "action": row.action,
            "user_id": row.user_id,
            "unit_id": row.unit_id,
            # A PDL officer's review must see whose records a user opened (stdout only).
            "personnummer": row.personnummer,
            "membership_id": row.membership_id,
            "detail": row.detail,
        }
        for row in rows
    ]


@dataclass(frozen=True)
class ChainReport:
    """What `audit-verify` found: `broken` is None when the chain holds."""

    rows_verified: int
    head_position: int
    head_hash: str
    unsealed: int
    broken: ChainBreak | None

    def summary(self) -> dict[str, Any]:
        return {
            "ok": self.broken is None,
            "rows_verified": self.rows_verified,
            "head_position": self.head_position,
            "head_hash": self.head_hash,
            "unsealed": self.unsealed,
            "break": None
            if self.broken is None
            else {
                "kind": self.broken.kind,
                "position": self.broken.position,
                "audit_id": self.broken.audit_id,
                "what": self.broken.describe(),
            },
        }


async def audit_verify(uow: UnitOfWork, *, now: datetime, grace: timedelta) -> ChainReport:
    """Walk the chain in one snapshot; the first break wins, then rows older than
    `grace` that were never sealed (the sealer seals within a second or so)."""
    await audit_store.repeatable_read(uow.connection)
    walk = ChainWalk(sealed_twice=await audit_store.sealed_twice(uow.connection))
    async with aclosing(audit_store.stored_links(uow.connection)) as links:
        async for stored in links:
            if walk.add(stored) is not None:
                break
    oldest, count = await audit_store.unsealed(uow.connection, before=now - grace)
    broken = walk.broken
    if broken is None and oldest is not None:
        broken = ChainBreak("unsealed", None, oldest)
    return ChainReport(walk.verified, walk.head_position, walk.head_hash.hex(), count, broken)


@dataclass(frozen=True)
class DeadLetter:
    id: int
    source_topic: str
    source_partition: int
    source_offset: int
    error_code: str
    error_message: str
    created_at: datetime
    replayed_at: datetime | None
    size: int


async def list_dead_letters(
    uow: UnitOfWork, *, include_replayed: bool = False, limit: int = 100
) -> list[DeadLetter]:
    query = select(dead_letters).order_by(dead_letters.c.id).limit(limit)
    if not include_replayed:
        query = query.where(dead_letters.c.replayed_at.is_(None))
    rows = (await uow.connection.execute(query)).all()
    return [
        DeadLetter(
            id=r.id,
            source_topic=r.source_topic,
            source_partition=r.source_partition,
            source_offset=r.source_offset,
            error_code=r.error_code,
            error_message=r.error_message,
            created_at=r.created_at,
            replayed_at=r.replayed_at,
            size=len(r.value or b""),
        )
        for r in rows
    ]


def original_headers(stored: list[list[str]]) -> list[Header]:
    """The record's own headers, without the ones the dead-lettering added."""
    return [(k, v) for k, v in decode_headers(stored) if not k.startswith(DLQ_HEADER_PREFIX)]


class UnknownIds(LookupError):
    """Ids that name nothing to act on; nothing was done."""


async def replay_dead_letters(uow: UnitOfWork, ids: list[int] | None, *, now: datetime) -> int:
    """Send dead letters back to their source topic, unchanged, through the outbox.

    For use after a fix (e.g. a catalog or code change that makes them valid). A record
    that fails again is dead-lettered again, as a new dead letter. Raises `UnknownIds`,
    replaying none, when an id is no dead letter waiting for replay.
    """
    query = select(dead_letters).where(dead_letters.c.replayed_at.is_(None))
    if ids is not None:
        query = query.where(dead_letters.c.id.in_(ids))
    rows = (await uow.connection.execute(query.order_by(dead_letters.c.id))).all()
    if ids is not None and (missing := sorted(set(ids) - {row.id for row in rows})):
        raise UnknownIds(
            f"no dead letter waiting for replay with id {', '.join(map(str, missing))} "
            "(see `dead-letters list --all`); nothing was replayed"
        )
    for row in rows:
        await uow.outbox.add(row.source_topic, row.key, row.value, original_headers(row.headers))
    if rows:
        await uow.connection.execute(
            update(dead_letters)
            .where(dead_letters.c.id.in_([r.id for r in rows]))
            .values(replayed_at=now)
        )
    await uow.commit()
    return len(rows)
