"""A unit of work in memory (cosmicpython's FakeUnitOfWork): the handlers, the message
bus and the batch applier run against it in milliseconds, without PostgreSQL."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime
from types import TracebackType
from typing import Any, Self

from services.common.records import SourceRecord
from services.groups.adapters.repository import BookingRow, PromptRow
from services.groups.domain.doses import Dose
from services.groups.domain.membership import Customer, Membership
from services.groups.domain.personnummer import Personnummer
from services.groups.service_layer.context import Clock


class FixedClock(Clock):
    def __init__(self, now: datetime) -> None:
        super().__init__()
        self._now = now

    def now(self) -> datetime:
        return self._now


class FakeRepository:
    """The repository's contract (`GroupsStore`) over dicts; the state is committed as
    soon as it is changed (the fake unit of work only counts commits)."""

    def __init__(self) -> None:
        self.customers: dict[str, Customer] = {}
        self.names: dict[str, tuple[str | None, str | None]] = {}
        # membership id -> (personnummer, the entity as last written, updated_at)
        self.memberships: dict[str, tuple[str, Membership, datetime]] = {}
        self.bookings: dict[str, BookingRow] = {}
        self.prompts: dict[str, PromptRow] = {}
        self.doses: dict[str, Dose] = {}
        self.audit_rows: list[dict[str, Any]] = []

    async def ensure_customer(
        self,
        personnummer: Personnummer,
        *,
        first_name: str | None = None,
        last_name: str | None = None,
        now: datetime,
    ) -> None:
        self.customers.setdefault(personnummer.value, Customer(personnummer))
        if first_name is not None or last_name is not None:
            self.names[personnummer.value] = (first_name, last_name)

    async def get_customer(self, personnummer: Personnummer) -> Customer:
        return self.customers.setdefault(personnummer.value, Customer(personnummer))

    async def customers_in_ended_groups(
        self,
        groups: Sequence[str],
        subgroups: Sequence[tuple[str, str]],
        *,
        after: str,
        limit: int,
    ) -> list[str]:
        found = {
            owner
            for owner, m, _ in self.memberships.values()
            if m.status == "active"
            and owner > after
            and (m.group_code in groups or (m.group_code, m.subgroup_code) in subgroups)
        }
        return sorted(found)[:limit]

    async def insert_membership(
        self, personnummer: Personnummer, membership: Membership, *, now: datetime
    ) -> None:
        self.memberships[membership.membership_id] = (personnummer.value, replace(membership), now)

    async def save_membership(self, membership: Membership, *, now: datetime) -> None:
        owner = self.memberships[membership.membership_id][0]
        self.memberships[membership.membership_id] = (owner, replace(membership), now)

    async def get_booking(self, booking_id: str) -> BookingRow | None:
        return self.bookings.get(booking_id)

    async def upsert_booking(self, values: dict[str, Any]) -> None:
        current = self.bookings.get(values["booking_id"])
        incoming = values["source_event_time"]
        if current is not None and current.source_event_time and incoming:
            if incoming < current.source_event_time:
                return
        self.bookings[values["booking_id"]] = BookingRow(**values)

    async def cancel_booking(
        self, booking_id: str, *, event_time: datetime | None, now: datetime
    ) -> bool:
        current = self.bookings.get(booking_id)
        if current is None:
            return False
        self.bookings[booking_id] = replace(
            current, status="cancelled", source_event_time=event_time, updated_at=now
        )
        return True

    async def get_prompt_by_vaccination(self, vaccination_id: str) -> PromptRow | None:
        return next((p for p in self.prompts.values() if p.vaccination_id == vaccination_id), None)

    async def get_prompt(self, prompt_id: str) -> PromptRow | None:
        return self.prompts.get(prompt_id)

    async def insert_prompt(self, values: dict[str, Any]) -> None:
        self.prompts[values["prompt_id"]] = PromptRow(**values)

    async def close_prompt(self, prompt_id: str, *, now: datetime) -> None:
        self.prompts[prompt_id].closed_at = now

    async def get_dose(self, vaccination_id: str) -> Dose | None:
        return self.doses.get(vaccination_id)

    async def doses_of(self, personnummer: Personnummer) -> list[Dose]:
        found = [d for d in self.doses.values() if d.personnummer == personnummer.value]
        return sorted(found, key=lambda d: d.vaccination_id)

    async def save_dose(self, dose: Dose) -> None:
        self.doses[dose.vaccination_id] = dose

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
        self.audit_rows.append(
            {
                "action": action,
                "user_id": user_id,
                "unit_id": unit_id,
                "personnummer": personnummer.value if personnummer else None,
                "membership_id": membership_id,
                "detail": detail or {},
            }
        )


class FakeOutbox:
    def __init__(self) -> None:
        self.records: list[tuple[str, bytes | None, bytes | None]] = []
        self.dead_letters: list[tuple[SourceRecord, str, str]] = []
        self.received_at: datetime | None = None

    async def add_event(self, topic: str, key: bytes | None, value: bytes) -> None:
        self.records.append((topic, key, value))

    async def dead_letter(self, record: SourceRecord, error_code: str, message: str) -> None:
        self.dead_letters.append((record, error_code, message))


class FakeUnitOfWork:
    """One fake shared by every transaction of a test, so its state outlives them."""

    def __init__(self) -> None:
        self.repo = FakeRepository()
        self.outbox = FakeOutbox()
        self.processed: set[tuple[str, str]] = set()
        self.locked: list[list[str]] = []
        self.commits = 0

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    async def commit(self) -> None:
        self.commits += 1

    async def lock_subjects(self, subjects: list[str]) -> None:
        self.locked.append(list(subjects))

    async def preload(self, events: Any, **_keys: Any) -> None:
        return None

    def is_processed(self, topic: str, event_id: str) -> bool:
        return (topic, event_id) in self.processed

    def mark_processed(self, topic: str, event_id: str) -> None:
        self.processed.add((topic, event_id))
