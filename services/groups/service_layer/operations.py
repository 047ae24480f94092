"""Operator tasks: catalog import, the PDL log extract, dead-letter listing and replay."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select, update

from services.common.records import Header
from services.groups.adapters.orm import audit_log, dead_letters
from services.groups.adapters.outbox import decode_headers
from services.groups.domain.catalog import Catalog
from services.groups.domain.personnummer import Personnummer
from services.groups.service_layer.unit_of_work import UnitOfWork

DLQ_HEADER_PREFIX = "dlq-"


async def import_catalog(uow: UnitOfWork, catalog: Catalog) -> None:
    """Upsert the catalog; memberships are never touched and nothing is deleted."""
    await uow.catalog.import_catalog(catalog)
    await uow.commit()


async def audit_extract(
    uow: UnitOfWork, personnummer: Personnummer, *, since: datetime | None = None
) -> list[dict[str, Any]]:
    """Who did or saw what with this patient's groups, oldest first (PDL log extract)."""
    query = select(audit_log).where(audit_log.c.personnummer == personnummer.value)
    if since is not None:
        query = query.where(audit_log.c.at >= since)
    rows = (await uow.connection.execute(query.order_by(audit_log.c.at, audit_log.c.id))).all()
    return [
        {
            "at": row.at.isoformat(),
            "action": row.action,
            "user_id": row.user_id,
            "unit_id": row.unit_id,
            "membership_id": row.membership_id,
            "detail": row.detail,
        }
        for row in rows
    ]


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


async def replay_dead_letters(uow: UnitOfWork, ids: list[int] | None, *, now: datetime) -> int:
    """Send dead letters back to their source topic, unchanged, through the outbox.

    For use after a fix (e.g. a catalog or code change that makes them valid). A record
    that fails again is dead-lettered again, as a new dead letter.
    """
    query = select(dead_letters).where(dead_letters.c.replayed_at.is_(None))
    if ids is not None:
        query = query.where(dead_letters.c.id.in_(ids))
    rows = (await uow.connection.execute(query.order_by(dead_letters.c.id))).all()
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
