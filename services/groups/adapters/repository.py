"""Reads and writes of the groups service's rows, mapped to and from the domain.

One repository serves one unit of work (one transaction) and works like an identity
map with deferred writes: what a batch reads is loaded once, in one statement, where
the batch says up front what it will need; every change is kept in memory, and
`take_writes()` hands all of it to the unit of work as rows keyed by column name, for
the one write statement of `batch_writer`. A batch of hundreds of records thus costs a
handful of round trips instead of several per record.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace
from datetime import datetime, tzinfo
from typing import Any

from sqlalchemy import and_, or_, select, tuple_
from sqlalchemy.ext.asyncio import AsyncConnection

from services.groups.adapters import batch_writer, rows
from services.groups.adapters.catalog_repository import CatalogRepository
from services.groups.adapters.orm import customers, memberships
from services.groups.adapters.rows import BookingRow, Changes, MembershipWrite, PromptRow
from services.groups.domain.doses import Dose
from services.groups.domain.errors import DomainError
from services.groups.domain.membership import Customer, Membership
from services.groups.domain.personnummer import Personnummer

# CatalogRepository stays importable from here, where it used to live.
__all__ = ["BookingRow", "CatalogRepository", "GroupsRepository", "PromptRow"]


def _valid(personnummer: str) -> bool:
    try:
        Personnummer.parse(personnummer)
    except DomainError:
        return False
    return True


def _newer_or_same(current: datetime | None, incoming: datetime | None) -> bool:
    """Event-time order of booking events; unknown times never block a change. Checked
    here only: `current` was read under the booking's subject lock (`booking:<id>`),
    which every writer of the booking holds, and the write then replaces the row."""
    return current is None or incoming is None or current <= incoming


class GroupsRepository:
    def __init__(self, connection: AsyncConnection, *, zone: tzinfo) -> None:
        self._c = connection
        self._zone = zone  # the service's: instants read back are shown in it
        self._customers: dict[str, Customer] = {}
        self._bookings: dict[str, BookingRow | None] = {}
        self._prompts_by_vaccination: dict[str, PromptRow | None] = {}
        self._prompts_by_id: dict[str, PromptRow | None] = {}
        # membership id -> (personnummer, group_code) of each membership read as active
        self._stored_active: dict[str, tuple[str, str]] = {}
        self._doses: dict[str, Dose | None] = {}  # by vaccination_id
        self._dose_customers: set[str] = set()  # personnummer whose doses are all loaded
        self._stored_customers: set[str] = set()  # personnummer with a customers row
        self._changes = Changes()

    # -- bulk loading ----------------------------------------------------------

    async def preload(
        self,
        *,
        personnummer: Iterable[str] = (),
        booking_ids: Iterable[str] = (),
        vaccination_ids: Iterable[str] = (),
        prompt_ids: Iterable[str] = (),
        dose_customers: Iterable[str] = (),
        events: Sequence[tuple[str, str]] = (),
    ) -> set[tuple[str, str]]:
        """Load what a batch will read in one statement (anything missed loads lazily);
        returns which of `events` (topic, event id) the inbox holds, i.e. were applied."""
        pnrs = sorted({p for p in personnummer if p not in self._customers and _valid(p)})
        ids = sorted({b for b in booking_ids if b not in self._bookings})
        vids = sorted({v for v in vaccination_ids if v not in self._prompts_by_vaccination})
        pids = sorted({p for p in prompt_ids if p not in self._prompts_by_id})
        dvids = sorted({v for v in vaccination_ids if v not in self._doses})
        dpnrs = sorted({p for p in dose_customers if p not in self._dose_customers})
        if not (pnrs or ids or vids or pids or dvids or dpnrs or events):
            return set()
        row = await batch_writer.read(
            self._c,
            events=events,
            personnummer=pnrs,
            booking_ids=ids,
            vaccination_ids=vids,
            prompt_ids=pids,
            dose_vaccination_ids=dvids,
            dose_customers=dpnrs,
        )
        self._stored_customers.update(row.customers)
        by_pnr: dict[str, list[Membership]] = {p: [] for p in pnrs}
        for record in row.memberships:
            by_pnr[record["personnummer"]].append(rows.membership(record, self._zone))
        for pnr, items in by_pnr.items():
            self._customers[pnr] = Customer(Personnummer.parse(pnr), items)
            self._stored_active.update(
                (m.membership_id, (pnr, m.group_code)) for m in items if m.is_active
            )
        loaded = {record["booking_id"]: rows.booking(record) for record in row.bookings}
        for booking_id in ids:
            self._bookings[booking_id] = loaded.get(booking_id)
        for record in row.prompts:
            self._remember_prompt(rows.prompt(record))
        for vid in vids:
            self._prompts_by_vaccination.setdefault(vid, None)
        for pid in pids:
            self._prompts_by_id.setdefault(pid, None)
        for record in (*row.doses, *row.customer_doses):
            # Identity map: a dose already read (and maybe changed) here stays as it is.
            self._doses.setdefault(record["vaccination_id"], rows.dose(record))
        for vid in dvids:
            self._doses.setdefault(vid, None)
        self._dose_customers.update(dpnrs)
        return {events[n - 1] for n in row.processed}

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
        """The customer row exists afterwards. A stored customer is only written when
        names come with the call (a booking): a start or a command would otherwise
        rewrite the row for nothing, on ~half of all records."""
        if (
            first_name is None
            and last_name is None
            and personnummer.value in self._stored_customers
        ):
            return
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

    async def customers_in_ended_groups(
        self,
        groups: Sequence[str],
        subgroups: Sequence[tuple[str, str]],
        *,
        after: str,
        limit: int,
    ) -> list[str]:
        """Personnummer (after `after`, in order, at most `limit`) with an active
        membership in one of `groups`, or in one of the (group, subgroup) pairs: the
        retirement sweep's candidates. Read without locks; the sweep re-reads each
        customer under its lock before changing anything."""
        if not groups and not subgroups:
            return []
        m = memberships.c
        # An empty IN list is valid SQLAlchemy (it renders as false).
        in_ended = or_(
            m.group_code.in_(groups), tuple_(m.group_code, m.subgroup_code).in_(subgroups)
        )
        query = (
            select(m.personnummer)
            .where(and_(m.status == "active", m.personnummer > after, in_ended))
            .group_by(m.personnummer)
            .order_by(m.personnummer)
            .limit(limit)
        )
        return list((await self._c.execute(query)).scalars())

    async def insert_membership(
        self, personnummer: Personnummer, membership: Membership, *, now: datetime
    ) -> None:
        """A new membership, written with its provenance; `now` is its updated_at."""
        self._changes.memberships[membership.membership_id] = MembershipWrite(
            personnummer.value, membership, new=True, updated_at=now
        )

    async def save_membership(self, membership: Membership, *, now: datetime) -> None:
        """A changed membership (its entity holds `updated_by`); `now` is its updated_at."""
        known = self._changes.memberships.get(membership.membership_id)
        if known is not None:
            known.updated_at = now
            return
        self._changes.memberships[membership.membership_id] = MembershipWrite(
            "", membership, new=False, updated_at=now
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

    async def get_dose(self, vaccination_id: str) -> Dose | None:
        if vaccination_id not in self._doses:
            await self.preload(vaccination_ids=[vaccination_id])
        return self._doses[vaccination_id]

    async def doses_of(self, personnummer: Personnummer) -> list[Dose]:
        """Every dose record of the customer, by vaccination_id."""
        if personnummer.value not in self._dose_customers:
            await self.preload(dose_customers=[personnummer.value])
        found = [d for d in self._doses.values() if d and d.personnummer == personnummer.value]
        return sorted(found, key=lambda d: d.vaccination_id)

    async def save_dose(self, dose: Dose) -> None:
        """Insert the dose record or replace the stored one (its next version)."""
        self._doses[dose.vaccination_id] = dose
        self._changes.doses[dose.vaccination_id] = dose

    # -- audit (PDL) -----------------------------------------------------------------

    async def audit(
        self,
        *,
        action: str,
        user_id: str,
        unit_id: str,
        personnummer: Personnummer | None,
        membership_id: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> None:
        self._changes.audit.append(
            {
                "action": action,
                "user_id": user_id,
                "unit_id": unit_id,
                "personnummer": personnummer.value if personnummer else None,
                "membership_id": membership_id,
                "detail": detail or {},
            }
        )

    # -- writing -----------------------------------------------------------------------

    def take_writes(self) -> tuple[dict[batch_writer.Columns, batch_writer.Rows], bool]:
        """Every pending change as rows for `batch_writer.write`, and whether the
        membership updates must run first (see `batch_writer.UPDATE_MEMBERSHIPS`); the
        changes are then forgotten."""
        changes, self._changes = self._changes, Changes()
        return changes.rows(), changes.frees_a_slot_taken(self._stored_active)
