"""One PostgreSQL transaction: repositories, the outbox, the inbox and locks share it.

Writes are deferred: handlers change the repository's in-memory state and queue
outgoing records; `commit()` writes everything in one statement and commits.

The service layer depends on `AbstractUnitOfWork` (and the handlers only on its
`repo` and `outbox`); `UnitOfWork` is the PostgreSQL one, tests/unit has a fake.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, Protocol, Self
from zoneinfo import ZoneInfo

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncTransaction

from services.common.records import SourceRecord
from services.groups.adapters import batch_writer
from services.groups.adapters.outbox import Outbox
from services.groups.adapters.repository import (
    BookingRow,
    CatalogRepository,
    GroupsRepository,
    PromptRow,
)
from services.groups.domain.doses import Dose
from services.groups.domain.membership import Customer, Membership
from services.groups.domain.personnummer import Personnummer


class GroupsStore(Protocol):
    """The reads and writes handlers make; see `adapters.repository.GroupsRepository`."""

    async def ensure_customer(
        self,
        personnummer: Personnummer,
        *,
        first_name: str | None = None,
        last_name: str | None = None,
        now: datetime,
    ) -> None: ...

    async def get_customer(self, personnummer: Personnummer) -> Customer: ...

    async def customers_in_ended_groups(
        self,
        groups: Sequence[str],
        subgroups: Sequence[tuple[str, str]],
        *,
        after: str,
        limit: int,
    ) -> list[str]: ...

    async def insert_membership(
        self, personnummer: Personnummer, membership: Membership, *, now: datetime
    ) -> None: ...

    async def save_membership(self, membership: Membership, *, now: datetime) -> None: ...

    async def get_booking(self, booking_id: str) -> BookingRow | None: ...

    async def upsert_booking(self, values: dict[str, Any]) -> None: ...

    async def cancel_booking(
        self, booking_id: str, *, event_time: datetime | None, now: datetime
    ) -> bool: ...

    async def get_prompt_by_vaccination(self, vaccination_id: str) -> PromptRow | None: ...

    async def get_prompt(self, prompt_id: str) -> PromptRow | None: ...

    async def insert_prompt(self, values: dict[str, Any]) -> None: ...

    async def close_prompt(self, prompt_id: str, *, now: datetime) -> None: ...

    async def get_dose(self, vaccination_id: str) -> Dose | None: ...

    async def doses_of(self, personnummer: Personnummer) -> list[Dose]: ...

    async def save_dose(self, dose: Dose) -> None: ...

    async def audit(
        self,
        *,
        action: str,
        user_id: str,
        unit_id: str,
        personnummer: Personnummer | None,
        membership_id: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> None: ...


class OutgoingRecords(Protocol):
    """Records to publish, written with the transaction; see `adapters.outbox.Outbox`."""

    # When the inbound batch that causes these records was received (None: not caused by
    # one, e.g. an operator's replay); kept with each row.
    received_at: datetime | None

    async def add_event(self, topic: str, key: bytes | None, value: bytes) -> None: ...

    async def dead_letter(self, record: SourceRecord, error_code: str, message: str) -> None: ...


class AbstractUnitOfWork(Protocol):
    """One transaction: what the handlers and the batch applier need of it."""

    @property
    def repo(self) -> GroupsStore: ...

    @property
    def outbox(self) -> OutgoingRecords: ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    async def commit(self) -> None: ...

    async def lock_subjects(self, subjects: Sequence[str]) -> None: ...

    async def preload(
        self,
        events: Iterable[tuple[str, str]],
        *,
        personnummer: Iterable[str] = (),
        booking_ids: Iterable[str] = (),
        vaccination_ids: Iterable[str] = (),
        prompt_ids: Iterable[str] = (),
        dose_customers: Iterable[str] = (),
    ) -> None: ...

    def is_processed(self, topic: str, event_id: str) -> bool: ...

    def mark_processed(self, topic: str, event_id: str) -> None: ...


class UnitOfWork:
    def __init__(
        self,
        engine: AsyncEngine,
        *,
        dlq_topic: str,
        service: str,
        timezone: str = "Europe/Stockholm",  # GROUPS_TIMEZONE: instants read are shown in it
    ) -> None:
        self._engine = engine
        self._zone = ZoneInfo(timezone)
        self._dlq_topic = dlq_topic
        self._service = service
        self._connection: AsyncConnection | None = None
        self._transaction: AsyncTransaction | None = None
        self._processed: set[tuple[str, str]] = set()
        self._newly_processed: list[tuple[str, str]] = []
        self.committed = False

    async def __aenter__(self) -> Self:
        self._connection = await self._engine.connect()
        self._transaction = await self._connection.begin()
        self.repo = GroupsRepository(self._connection, zone=self._zone)
        self.catalog = CatalogRepository(self._connection)
        self.outbox = Outbox(dlq_topic=self._dlq_topic, service=self._service)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._connection is not None and self._transaction is not None
        try:
            if self._transaction.is_active:
                await self._transaction.rollback()
        finally:
            await self._connection.close()

    @property
    def connection(self) -> AsyncConnection:
        assert self._connection is not None
        return self._connection

    async def flush(self) -> None:
        """Write every pending change in one statement (two when a group ended in this
        batch starts again, see `batch_writer.UPDATE_MEMBERSHIPS`)."""
        rows, memberships_first = self.repo.take_writes()
        rows.update(self.outbox.take_writes())
        inbox_rows, self._newly_processed = self._newly_processed, []
        rows[batch_writer.INBOX] = [{"topic": t, "event_id": e} for t, e in inbox_rows]
        await batch_writer.write(self.connection, rows, memberships_first=memberships_first)

    async def commit(self) -> None:
        assert self._transaction is not None
        await self.flush()
        await self._transaction.commit()
        self.committed = True

    async def lock_subjects(self, subjects: Sequence[str]) -> None:
        """Transaction-scoped advisory locks, taken in one fixed order (by hash)."""
        await batch_writer.lock_subjects(self.connection, subjects)

    async def preload(
        self,
        events: Iterable[tuple[str, str]],
        *,
        personnummer: Iterable[str] = (),
        booking_ids: Iterable[str] = (),
        vaccination_ids: Iterable[str] = (),
        prompt_ids: Iterable[str] = (),
        dose_customers: Iterable[str] = (),
    ) -> None:
        """In one statement: which (topic, event id) pairs were applied before, and the
        state the batch will read."""
        wanted = list(set(events) - self._processed)
        self._processed |= await self.repo.preload(
            personnummer=personnummer,
            booking_ids=booking_ids,
            vaccination_ids=vaccination_ids,
            prompt_ids=prompt_ids,
            dose_customers=dose_customers,
            events=wanted,
        )

    def is_processed(self, topic: str, event_id: str) -> bool:
        """Applied before (call `preload` first) or earlier in this unit of work."""
        return (topic, event_id) in self._processed

    def mark_processed(self, topic: str, event_id: str) -> None:
        """Record the event id with the effects, so a redelivery changes nothing."""
        self._processed.add((topic, event_id))
        self._newly_processed.append((topic, event_id))
