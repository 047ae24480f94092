"""Reads and writes of the groups service's rows, mapped to and from the domain.

One repository serves one unit of work (one transaction) and works like an identity
map with deferred writes: what a batch reads is loaded once (in bulk where the batch
says up front what it will need), every change is kept in memory, and `flush()` writes
all of it with one multi-row statement per table. A batch of hundreds of records thus
costs a handful of round trips instead of several per record.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from sqlalchemy import ARRAY, ColumnElement, Text, any_, bindparam, func, select, update
from sqlalchemy.dialects.postgresql import UUID
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
from services.groups.domain.errors import DomainError
from services.groups.domain.membership import Customer, Membership
from services.groups.domain.personnummer import Personnummer


@dataclass
class BookingRow:
    booking_id: str
    unit_id: str
    personnummer: str
    start_time: datetime
    vaccine_code: str | None
    vaccine_name: str | None
    dose: int | None
    requested_group_code: str | None
    requested_subgroup_code: str | None
    status: str
    source_event_time: datetime | None
    updated_at: datetime

    def as_values(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class PromptRow:
    prompt_id: str
    vaccination_id: str
    personnummer: str
    unit_id: str
    user_id: str
    booking_id: str | None
    vaccine_code: str | None
    event: bytes
    created_at: datetime
    closed_at: datetime | None = None


@dataclass
class _MembershipWrite:
    personnummer: str
    membership: Membership
    user_id: str
    unit_id: str
    created_at: datetime | None  # set for a membership created in this unit of work
    updated_at: datetime


@dataclass
class _Changes:
    customers: dict[str, dict[str, Any]] = field(default_factory=dict)
    bookings: dict[str, BookingRow] = field(default_factory=dict)
    memberships: dict[str, _MembershipWrite] = field(default_factory=dict)
    new_prompts: dict[str, PromptRow] = field(default_factory=dict)
    closed_prompts: dict[str, datetime] = field(default_factory=dict)
    confirmations: dict[str, dict[str, Any]] = field(default_factory=dict)
    audit: list[dict[str, Any]] = field(default_factory=list)


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


def _booking(row: Row[Any]) -> BookingRow:
    return BookingRow(**{name: getattr(row, name) for name in BookingRow.__dataclass_fields__})


def _prompt(row: Row[Any]) -> PromptRow:
    return PromptRow(**{name: getattr(row, name) for name in PromptRow.__dataclass_fields__})


def _any(values: list[str], item_type: Any = None) -> Any:
    """`= ANY(:array)`: one statement text whatever the list's length, so PostgreSQL and
    asyncpg reuse its prepared plan (an IN list is new SQL for every length)."""
    return any_(bindparam(None, values, type_=ARRAY(item_type if item_type is not None else Text)))


def _valid(personnummer: str) -> bool:
    try:
        Personnummer.parse(personnummer)
    except DomainError:
        return False
    return True


def _newer_or_same(current: datetime | None, incoming: datetime | None) -> bool:
    """Event-time order of booking events; unknown times never block a change."""
    return current is None or incoming is None or current <= incoming


class GroupsRepository:
    def __init__(self, connection: AsyncConnection) -> None:
        self._c = connection
        self._customers: dict[str, Customer] = {}
        self._bookings: dict[str, BookingRow | None] = {}
        self._prompts_by_vaccination: dict[str, PromptRow | None] = {}
        self._prompts_by_id: dict[str, PromptRow | None] = {}
        self._confirmation_versions: dict[str, int] = {}
        self._changes = _Changes()

    # -- bulk loading ----------------------------------------------------------

    async def preload(
        self,
        *,
        personnummer: Iterable[str] = (),
        booking_ids: Iterable[str] = (),
        vaccination_ids: Iterable[str] = (),
        prompt_ids: Iterable[str] = (),
    ) -> None:
        """Load what a batch will read, a query per table; anything missed loads lazily."""
        pnrs = sorted({p for p in personnummer if p not in self._customers and _valid(p)})
        if pnrs:
            rows = (
                await self._c.execute(
                    select(memberships)
                    .where(memberships.c.personnummer == _any(pnrs))
                    .order_by(memberships.c.valid_from, memberships.c.created_at)
                )
            ).all()
            by_pnr: dict[str, list[Membership]] = {p: [] for p in pnrs}
            for row in rows:
                by_pnr[row.personnummer].append(_membership(row))
            for pnr, items in by_pnr.items():
                self._customers[pnr] = Customer(Personnummer(pnr), items)
        ids = sorted({b for b in booking_ids if b not in self._bookings})
        if ids:
            found = await self._c.execute(
                select(bookings).where(bookings.c.booking_id == _any(ids))
            )
            loaded = {row.booking_id: _booking(row) for row in found}
            for booking_id in ids:
                self._bookings[booking_id] = loaded.get(booking_id)
        vids = sorted({v for v in vaccination_ids if v not in self._prompts_by_vaccination})
        pids = sorted({p for p in prompt_ids if p not in self._prompts_by_id})
        if vids or pids:
            condition: ColumnElement[bool] = prompts.c.vaccination_id == _any(vids)
            if pids:
                condition = condition | (prompts.c.prompt_id == _any(pids, UUID(as_uuid=False)))
            for row in await self._c.execute(select(prompts).where(condition)):
                self._remember_prompt(_prompt(row))
            for vid in vids:
                self._prompts_by_vaccination.setdefault(vid, None)
            for pid in pids:
                self._prompts_by_id.setdefault(pid, None)
        if vids:
            found = await self._c.execute(
                select(
                    vaccination_confirmations.c.vaccination_id, vaccination_confirmations.c.version
                ).where(vaccination_confirmations.c.vaccination_id == _any(vids))
            )
            for row in found:
                self._confirmation_versions[row.vaccination_id] = row.version

    def _remember_prompt(self, prompt: PromptRow) -> None:
        self._prompts_by_vaccination[prompt.vaccination_id] = prompt
        self._prompts_by_id[prompt.prompt_id] = prompt

    # -- customers and memberships ----------------------------------------------

    async def ensure_customer(
        self,
        personnummer: Personnummer,
        *,
        first_name: str | None = None,
        last_name: str | None = None,
        now: datetime,
    ) -> None:
        pending = self._changes.customers.setdefault(
            personnummer.value,
            {"personnummer": personnummer.value, "first_name": None, "last_name": None},
        )
        pending["updated_at"] = now
        if first_name is not None:
            pending["first_name"] = first_name
        if last_name is not None:
            pending["last_name"] = last_name

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
        """The customer with every membership, the same object for the whole unit of work."""
        if personnummer.value not in self._customers:
            await self.preload(personnummer=[personnummer.value])
        return self._customers[personnummer.value]

    async def insert_membership(
        self,
        personnummer: Personnummer,
        membership: Membership,
        *,
        user_id: str,
        unit_id: str,
        now: datetime,
    ) -> None:
        self._changes.memberships[membership.membership_id] = _MembershipWrite(
            personnummer.value, membership, user_id, unit_id, created_at=now, updated_at=now
        )

    async def save_membership(
        self, membership: Membership, *, user_id: str, unit_id: str, now: datetime
    ) -> None:
        known = self._changes.memberships.get(membership.membership_id)
        if known is not None:
            known.user_id, known.unit_id, known.updated_at = user_id, unit_id, now
            return
        self._changes.memberships[membership.membership_id] = _MembershipWrite(
            "", membership, user_id, unit_id, created_at=None, updated_at=now
        )

    # -- bookings ------------------------------------------------------------------

    async def get_booking(self, booking_id: str) -> BookingRow | None:
        if booking_id not in self._bookings:
            await self.preload(booking_ids=[booking_id])
        return self._bookings[booking_id]

    async def upsert_booking(self, values: dict[str, Any]) -> None:
        current = await self.get_booking(values["booking_id"])
        # An older event never overwrites a newer one (events of one booking may arrive
        # out of order across partitions after a re-key or a replay).
        if current is not None and not _newer_or_same(
            current.source_event_time, values["source_event_time"]
        ):
            return
        row = BookingRow(**values)
        self._bookings[row.booking_id] = row
        self._changes.bookings[row.booking_id] = row

    async def cancel_booking(
        self, booking_id: str, *, event_time: datetime | None, now: datetime
    ) -> bool:
        """Cancel unless a newer event already changed the booking; records the event time
        so an older created/updated arriving later cannot revive it."""
        current = await self.get_booking(booking_id)
        if current is None or not _newer_or_same(current.source_event_time, event_time):
            return False
        row = replace(current, status="cancelled", source_event_time=event_time, updated_at=now)
        self._bookings[booking_id] = row
        self._changes.bookings[booking_id] = row
        return True

    # -- prompts and confirmations ------------------------------------------------

    async def get_prompt_by_vaccination(self, vaccination_id: str) -> PromptRow | None:
        if vaccination_id not in self._prompts_by_vaccination:
            await self.preload(vaccination_ids=[vaccination_id])
        return self._prompts_by_vaccination[vaccination_id]

    async def get_prompt(self, prompt_id: str) -> PromptRow | None:
        if prompt_id not in self._prompts_by_id:
            await self.preload(prompt_ids=[prompt_id])
        return self._prompts_by_id[prompt_id]

    async def insert_prompt(self, values: dict[str, Any]) -> None:
        prompt = PromptRow(**values)
        self._remember_prompt(prompt)
        self._changes.new_prompts[prompt.prompt_id] = prompt

    async def close_prompt(self, prompt_id: str, *, now: datetime) -> None:
        prompt = self._prompts_by_id.get(prompt_id)
        if prompt is not None:
            prompt.closed_at = now
        if prompt_id not in self._changes.new_prompts:
            self._changes.closed_prompts[prompt_id] = now

    async def upsert_confirmation(self, values: dict[str, Any]) -> int:
        """Insert or replace the dose's confirmation; returns its version."""
        vaccination_id = values["vaccination_id"]
        if vaccination_id not in self._confirmation_versions:
            await self.preload(vaccination_ids=[vaccination_id])
        version = self._confirmation_versions.get(vaccination_id, 0) + 1
        self._confirmation_versions[vaccination_id] = version
        self._changes.confirmations[vaccination_id] = {**values, "version": version}
        return version

    # -- audit (PDL) -----------------------------------------------------------------

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
        self._changes.audit.append(
            {
                "action": action,
                "user_id": user_id,
                "unit_id": unit_id,
                "personnummer": personnummer.value,
                "membership_id": membership_id,
                "detail": detail or {},
            }
        )

    # -- writing -----------------------------------------------------------------------

    async def flush(self) -> None:
        """Write every pending change, parents before children, one statement per table."""
        changes, self._changes = self._changes, _Changes()
        if changes.customers:
            statement = pg_insert(customers)
            await self._c.execute(
                statement.on_conflict_do_update(
                    index_elements=[customers.c.personnummer],
                    set_={
                        "first_name": func.coalesce(
                            statement.excluded.first_name, customers.c.first_name
                        ),
                        "last_name": func.coalesce(
                            statement.excluded.last_name, customers.c.last_name
                        ),
                        "updated_at": statement.excluded.updated_at,
                    },
                ),
                list(changes.customers.values()),
            )
        if changes.bookings:
            statement = pg_insert(bookings)
            names = [c.name for c in bookings.columns if c.name != "booking_id"]
            guard: ColumnElement[bool] = (
                bookings.c.source_event_time.is_(None)
                | statement.excluded.source_event_time.is_(None)
                | (bookings.c.source_event_time <= statement.excluded.source_event_time)
            )
            await self._c.execute(
                statement.on_conflict_do_update(
                    index_elements=[bookings.c.booking_id],
                    set_={name: statement.excluded[name] for name in names},
                    where=guard,
                ),
                [row.as_values() for row in changes.bookings.values()],
            )
        new = [w for w in changes.memberships.values() if w.created_at is not None]
        changed = [w for w in changes.memberships.values() if w.created_at is None]
        if changed:
            # Updates before inserts: a group removed and added again in one batch must
            # end the old row before the new one exists (one active row per group).
            # The customers are locked for this transaction, so no one else can have
            # changed these rows since they were read.
            await self._c.execute(
                update(memberships)
                .where(memberships.c.membership_id == bindparam("b_id"))
                .values(
                    subgroup_code=bindparam("b_subgroup"),
                    reference_code=bindparam("b_reference"),
                    valid_to=bindparam("b_valid_to"),
                    version=bindparam("b_version"),
                    updated_at=bindparam("b_updated_at"),
                    updated_by_user=bindparam("b_user"),
                    updated_by_unit=bindparam("b_unit"),
                ),
                [
                    {
                        "b_id": w.membership.membership_id,
                        "b_subgroup": w.membership.subgroup_code,
                        "b_reference": w.membership.reference_code,
                        "b_valid_to": w.membership.valid_to,
                        "b_version": w.membership.version,
                        "b_updated_at": w.updated_at,
                        "b_user": w.user_id,
                        "b_unit": w.unit_id,
                    }
                    for w in changed
                ],
            )
        if new:
            await self._c.execute(
                memberships.insert(),
                [
                    {
                        "membership_id": w.membership.membership_id,
                        "personnummer": w.personnummer,
                        "group_code": w.membership.group_code,
                        "subgroup_code": w.membership.subgroup_code,
                        "reference_code": w.membership.reference_code,
                        "valid_from": w.membership.valid_from,
                        "valid_to": w.membership.valid_to,
                        "version": w.membership.version,
                        "created_at": w.created_at,
                        "updated_at": w.updated_at,
                        "updated_by_user": w.user_id,
                        "updated_by_unit": w.unit_id,
                    }
                    for w in new
                ],
            )
        if changes.new_prompts:
            await self._c.execute(
                prompts.insert(), [dict(p.__dict__) for p in changes.new_prompts.values()]
            )
        if changes.closed_prompts:
            await self._c.execute(
                update(prompts)
                .where(prompts.c.prompt_id == bindparam("b_id"))
                .values(closed_at=bindparam("b_closed_at")),
                [{"b_id": k, "b_closed_at": v} for k, v in changes.closed_prompts.items()],
            )
        if changes.confirmations:
            statement = pg_insert(vaccination_confirmations)
            names = [
                c.name for c in vaccination_confirmations.columns if c.name != "vaccination_id"
            ]
            await self._c.execute(
                statement.on_conflict_do_update(
                    index_elements=[vaccination_confirmations.c.vaccination_id],
                    set_={name: statement.excluded[name] for name in names},
                ),
                list(changes.confirmations.values()),
            )
        if changes.audit:
            await self._c.execute(audit_log.insert(), changes.audit)


class CatalogRepository:
    """The catalog tables, read and written directly (rare, operator-driven)."""

    def __init__(self, connection: AsyncConnection) -> None:
        self._c = connection

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
