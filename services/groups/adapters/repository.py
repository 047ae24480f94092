"""Reads and writes of the groups service's rows, mapped to and from the domain."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncConnection

from services.groups.adapters.orm import (
    audit_log,
    bookings,
    catalog_groups,
    catalog_subgroups,
    customers,
    memberships,
    prompts,
    vaccination_confirmations,
)
from services.groups.domain.catalog import Catalog
from services.groups.domain.membership import Customer, Membership
from services.groups.domain.personnummer import Personnummer


def _membership(row: Row[Any]) -> Membership:
    return Membership(
        membership_id=str(row.membership_id),
        group_code=row.group_code,
        subgroup_code=row.subgroup_code,
        reference_code=row.reference_code,
        valid_from=row.valid_from,
        valid_to=row.valid_to,
        version=row.version,
    )


class GroupsRepository:
    def __init__(self, connection: AsyncConnection) -> None:
        self._c = connection

    # -- customers and memberships ----------------------------------------

    async def ensure_customer(
        self,
        personnummer: Personnummer,
        *,
        first_name: str | None = None,
        last_name: str | None = None,
        now: datetime,
    ) -> None:
        values: dict[str, Any] = {"personnummer": personnummer.value, "updated_at": now}
        if first_name is not None:
            values["first_name"] = first_name
        if last_name is not None:
            values["last_name"] = last_name
        statement = pg_insert(customers).values(**values)
        changes = {k: statement.excluded[k] for k in values if k != "personnummer"}
        await self._c.execute(
            statement.on_conflict_do_update(index_elements=[customers.c.personnummer], set_=changes)
        )

    async def customer_names(self, personnummer: Personnummer) -> tuple[str | None, str | None]:
        row = (
            await self._c.execute(
                select(customers.c.first_name, customers.c.last_name).where(
                    customers.c.personnummer == personnummer.value
                )
            )
        ).first()
        return (row.first_name, row.last_name) if row else (None, None)

    async def get_customer(self, personnummer: Personnummer) -> Customer:
        rows = (
            await self._c.execute(
                select(memberships)
                .where(memberships.c.personnummer == personnummer.value)
                .order_by(memberships.c.valid_from, memberships.c.created_at)
            )
        ).all()
        return Customer(personnummer, [_membership(r) for r in rows])

    async def insert_membership(
        self,
        personnummer: Personnummer,
        membership: Membership,
        *,
        user_id: str,
        unit_id: str,
        now: datetime,
    ) -> None:
        await self._c.execute(
            memberships.insert().values(
                membership_id=membership.membership_id,
                personnummer=personnummer.value,
                group_code=membership.group_code,
                subgroup_code=membership.subgroup_code,
                reference_code=membership.reference_code,
                valid_from=membership.valid_from,
                valid_to=membership.valid_to,
                version=membership.version,
                created_at=now,
                updated_at=now,
                updated_by_user=user_id,
                updated_by_unit=unit_id,
            )
        )

    async def save_membership(
        self, membership: Membership, *, user_id: str, unit_id: str, now: datetime
    ) -> None:
        """Write a changed membership; the version check guards against lost updates."""
        result = await self._c.execute(
            update(memberships)
            .where(
                and_(
                    memberships.c.membership_id == membership.membership_id,
                    memberships.c.version == membership.version - 1,
                )
            )
            .values(
                subgroup_code=membership.subgroup_code,
                reference_code=membership.reference_code,
                valid_to=membership.valid_to,
                version=membership.version,
                updated_at=now,
                updated_by_user=user_id,
                updated_by_unit=unit_id,
            )
        )
        if result.rowcount != 1:
            raise RuntimeError("membership changed concurrently (version mismatch)")

    # -- bookings ------------------------------------------------------------

    async def upsert_booking(self, values: dict[str, Any]) -> None:
        statement = pg_insert(bookings).values(**values)
        changes = {k: statement.excluded[k] for k in values if k != "booking_id"}
        # An older event never overwrites a newer one (events may arrive out of order
        # across partitions after a re-key or a replay).
        await self._c.execute(
            statement.on_conflict_do_update(
                index_elements=[bookings.c.booking_id],
                set_=changes,
                where=(
                    bookings.c.source_event_time.is_(None)
                    | statement.excluded.source_event_time.is_(None)
                    | (bookings.c.source_event_time <= statement.excluded.source_event_time)
                ),
            )
        )

    async def cancel_booking(
        self, booking_id: str, *, event_time: datetime | None, now: datetime
    ) -> bool:
        """Cancel unless a newer event already changed the booking; records the event time
        so an older created/updated arriving later cannot revive it."""
        newer_or_unknown: ColumnElement[bool] = bookings.c.source_event_time.is_(None)
        if event_time is not None:
            newer_or_unknown = newer_or_unknown | (bookings.c.source_event_time <= event_time)
        result = await self._c.execute(
            update(bookings)
            .where(bookings.c.booking_id == booking_id, newer_or_unknown)
            .values(status="cancelled", source_event_time=event_time, updated_at=now)
        )
        return bool(result.rowcount)

    async def get_booking(self, booking_id: str) -> Row[Any] | None:
        return (
            await self._c.execute(select(bookings).where(bookings.c.booking_id == booking_id))
        ).first()

    # -- prompts and confirmations ------------------------------------------

    async def get_prompt_by_vaccination(self, vaccination_id: str) -> Row[Any] | None:
        return (
            await self._c.execute(select(prompts).where(prompts.c.vaccination_id == vaccination_id))
        ).first()

    async def get_prompt(self, prompt_id: str) -> Row[Any] | None:
        return (
            await self._c.execute(select(prompts).where(prompts.c.prompt_id == prompt_id))
        ).first()

    async def insert_prompt(self, values: dict[str, Any]) -> None:
        await self._c.execute(prompts.insert().values(**values))

    async def close_prompt(self, prompt_id: str, *, now: datetime) -> None:
        await self._c.execute(
            update(prompts).where(prompts.c.prompt_id == prompt_id).values(closed_at=now)
        )

    async def upsert_confirmation(self, values: dict[str, Any]) -> int:
        """Insert or replace the dose's confirmation; returns its version."""
        statement = pg_insert(vaccination_confirmations).values(**values, version=1)
        changes: dict[str, Any] = {
            k: statement.excluded[k] for k in values if k != "vaccination_id"
        }
        changes["version"] = vaccination_confirmations.c.version + 1
        result = await self._c.execute(
            statement.on_conflict_do_update(
                index_elements=[vaccination_confirmations.c.vaccination_id], set_=changes
            ).returning(vaccination_confirmations.c.version)
        )
        return int(result.scalar_one())

    # -- audit (PDL) -----------------------------------------------------------

    async def audit(
        self,
        *,
        action: str,
        user_id: str,
        unit_id: str,
        personnummer: Personnummer,
        membership_id: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> None:
        await self._c.execute(
            audit_log.insert().values(
                action=action,
                user_id=user_id,
                unit_id=unit_id,
                personnummer=personnummer.value,
                membership_id=membership_id,
                detail=detail or {},
            )
        )

    # -- catalog -------------------------------------------------------------

    async def import_catalog(self, catalog: Catalog) -> None:
        """Upsert every group and subgroup; memberships are not touched, nothing is deleted."""
        for position, group in enumerate(catalog.groups):
            g = pg_insert(catalog_groups).values(
                code=group.code,
                name=group.name,
                valid_from=group.valid_from,
                valid_to=group.valid_to,
                position=position,
                catalog_version=catalog.version,
            )
            await self._c.execute(
                g.on_conflict_do_update(
                    index_elements=[catalog_groups.c.code],
                    set_={
                        k: g.excluded[k]
                        for k in ("name", "valid_from", "valid_to", "position", "catalog_version")
                    },
                )
            )
            for sub_position, sub in enumerate(group.subgroups):
                rule = None
                if sub.rule is not None:
                    rule = {
                        "min_age": sub.rule.min_age,
                        "max_age": sub.rule.max_age,
                        "vaccine_codes": sorted(sub.rule.vaccine_codes),
                    }
                s = pg_insert(catalog_subgroups).values(
                    group_code=group.code,
                    code=sub.code,
                    name=sub.name,
                    valid_from=sub.valid_from,
                    valid_to=sub.valid_to,
                    position=sub_position,
                    rule=rule,
                )
                await self._c.execute(
                    s.on_conflict_do_update(
                        index_elements=[catalog_subgroups.c.group_code, catalog_subgroups.c.code],
                        set_={
                            k: s.excluded[k]
                            for k in ("name", "valid_from", "valid_to", "position", "rule")
                        },
                    )
                )

    async def load_catalog(self) -> Catalog | None:
        group_rows = (
            await self._c.execute(select(catalog_groups).order_by(catalog_groups.c.position))
        ).all()
        if not group_rows:
            return None
        sub_rows = (
            await self._c.execute(
                select(catalog_subgroups).order_by(
                    catalog_subgroups.c.group_code, catalog_subgroups.c.position
                )
            )
        ).all()
        subs: dict[str, list[dict[str, Any]]] = {}
        for s in sub_rows:
            subs.setdefault(s.group_code, []).append(
                {
                    "code": s.code,
                    "name": s.name,
                    "valid_from": s.valid_from.isoformat(),
                    "valid_to": s.valid_to.isoformat() if s.valid_to else None,
                    "rule": s.rule,
                }
            )
        data = {
            "version": max(r.catalog_version for r in group_rows),
            "groups": [
                {
                    "code": g.code,
                    "name": g.name,
                    "valid_from": g.valid_from.isoformat(),
                    "valid_to": g.valid_to.isoformat() if g.valid_to else None,
                    "subgroups": subs.get(g.code, []),
                }
                for g in group_rows
            ],
        }
        return Catalog.from_dict(data)
