"""From a batch of Kafka records to one committed PostgreSQL transaction.

For each batch the consumer hands over:
1. every record is decoded; a poison record (not JSON, not a CloudEvent, unknown
   type for its topic) is dead-lettered with its original bytes;
2. the customers the batch touches are locked in a fixed order (transaction-scoped
   advisory locks), so two processes or two topics can never interleave changes
   for one customer, and can never deadlock on each other;
3. what the batch will read is loaded in bulk, the handlers run in order against that
   in-memory state, and all their writes (state, inbox rows, outgoing records) are
   flushed with one statement per table and committed together;
4. only then does the caller commit the Kafka offsets.

Handlers raise the expected errors (PoisonRecord, DomainError) before they change
anything, so such a record is dead-lettered and the batch goes on. Any other error
means one record cannot be applied: the batch is rolled back and replayed one record
per transaction, which isolates that record (dead-lettered as PROCESSING_ERROR) and
applies all the others. A database outage is waited out with exponential backoff and
the same batch is retried: nothing is skipped and nothing spins.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from services.common.backoff import Backoff
from services.common.db import is_transient_db_error
from services.common.envelope import CloudEvent, PoisonRecord, decode_cloudevent
from services.common.records import SourceRecord
from services.groups.domain.errors import DomainError
from services.groups.service_layer.unit_of_work import UnitOfWork

log = logging.getLogger(__name__)

Handler = Callable[[CloudEvent, SourceRecord, UnitOfWork], Awaitable[None]]


@dataclass(frozen=True)
class Route:
    handler: Handler
    # Personnummer text the record concerns, for the per-customer lock (may be invalid).
    subject_of: Callable[[Any], str | None]


Routes = Mapping[str, Mapping[str, Route]]  # topic -> CloudEvent type -> route


@dataclass
class BatchOutcome:
    processed: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    attempts: int = 0

    def add(self, other: BatchOutcome) -> None:
        self.processed += other.processed
        self.duplicates += other.duplicates
        self.dead_lettered += other.dead_lettered
        self.attempts += other.attempts


class _RecordFailed(Exception):
    """A record raised an unexpected, non-transient error; the batch must be isolated."""


def _string(data: Any, *path: str) -> str | None:
    """A key to preload, or None. Text PostgreSQL cannot take (NUL, a lone surrogate) is
    left out: such input fails its schema later, and must not fail the whole batch here."""
    for name in path:
        if not isinstance(data, dict):
            return None
        data = data.get(name)
    if not isinstance(data, str) or len(data) > 128 or "\x00" in data:
        return None
    try:
        data.encode()
    except UnicodeEncodeError:
        return None
    return data


def _is_uuid(value: str) -> bool:
    try:
        return str(uuid.UUID(value)) == value
    except ValueError:
        return False


class InboundProcessor:
    def __init__(
        self,
        uow_factory: Callable[[], UnitOfWork],
        routes: Routes,
        *,
        max_event_bytes: int,
        after_commit: Callable[[BatchOutcome], None] = lambda _o: None,
        on_retry: Callable[[BaseException, float], None] = lambda _e, _d: None,
    ) -> None:
        self._uow_factory = uow_factory
        self._routes = routes
        self._max_event_bytes = max_event_bytes
        self._after_commit = after_commit
        self._on_retry = on_retry

    async def process(self, records: Sequence[SourceRecord]) -> BatchOutcome:
        """Apply the batch exactly once; returns only after everything is committed."""
        try:
            outcome = await self._with_backoff(records)
        except _RecordFailed:
            log.warning("a record of a batch of %d failed; applying them one by one", len(records))
            outcome = BatchOutcome()
            for record in records:
                try:
                    single = await self._with_backoff([record])
                except _RecordFailed as failure:
                    single = await self._with_backoff([record], failed=failure)
                outcome.add(single)
        self._after_commit(outcome)
        return outcome

    async def _with_backoff(
        self, records: Sequence[SourceRecord], failed: _RecordFailed | None = None
    ) -> BatchOutcome:
        backoff = Backoff(cap=10.0)
        attempts = 0
        while True:
            attempts += 1
            try:
                if failed is not None:
                    outcome = await self._dead_letter_failed(records, failed)
                else:
                    outcome = await self._process_once(records)
                outcome.attempts = attempts
                return outcome
            except (asyncio.CancelledError, _RecordFailed):
                raise
            except Exception as error:
                # Transient (outage, deadlock) or not, never skip the batch: skipping
                # would commit offsets past unapplied records.
                delay = backoff.next_delay()
                if is_transient_db_error(error):
                    log.warning(
                        "database unavailable (%s); retrying batch in %.1fs",
                        type(error).__name__,
                        delay,
                    )
                else:
                    log.exception("batch failed; retrying in %.1fs", delay)
                self._on_retry(error, delay)
                await asyncio.sleep(delay)

    def _decode(self, record: SourceRecord) -> tuple[CloudEvent, Route]:
        event = decode_cloudevent(record.value, max_bytes=self._max_event_bytes)
        route = self._routes.get(record.topic, {}).get(event.type)
        if route is None:
            raise PoisonRecord(
                "UNKNOWN_TYPE", f"type {event.type[:100]!r} is not accepted on {record.topic}"
            )
        return event, route

    async def _dead_letter_failed(
        self, records: Sequence[SourceRecord], failed: _RecordFailed
    ) -> BatchOutcome:
        cause = failed.__cause__ or failed
        async with self._uow_factory() as uow:
            for record in records:
                await uow.outbox.dead_letter(
                    record, "PROCESSING_ERROR", f"{type(cause).__name__} while processing"
                )
            await uow.commit()
        return BatchOutcome(dead_lettered=len(records))

    async def _process_once(self, records: Sequence[SourceRecord]) -> BatchOutcome:
        outcome = BatchOutcome()
        decoded: list[tuple[SourceRecord, CloudEvent | PoisonRecord, Route | None]] = []
        for record in records:
            try:
                event, route = self._decode(record)
            except PoisonRecord as poison:
                decoded.append((record, poison, None))
                continue
            decoded.append((record, event, route))
        events = [(r, e) for r, e, _ in decoded if isinstance(e, CloudEvent)]
        subjects = sorted(
            {
                s
                for _, e, route in decoded
                if route is not None
                and isinstance(e, CloudEvent)
                and (s := route.subject_of(e.data))
            }
        )

        async with self._uow_factory() as uow:
            try:
                await uow.lock_subjects(subjects)
                await uow.preload(
                    [(r.topic, e.id) for r, e in events],
                    personnummer=[
                        p
                        for _, e in events
                        if (
                            p := _string(e.data, "personnummer")
                            or _string(e.data, "customer", "personnummer")
                        )
                        and len(p) == 12
                        and p.isdigit()
                    ],
                    booking_ids=[b for _, e in events if (b := _string(e.data, "booking_id"))],
                    vaccination_ids=[
                        v for _, e in events if (v := _string(e.data, "vaccination_id"))
                    ],
                    prompt_ids=[
                        p
                        for _, e in events
                        if (p := _string(e.data, "prompt_id")) is not None and _is_uuid(p)
                    ],
                )
                for record, item, item_route in decoded:
                    if isinstance(item, PoisonRecord):
                        await uow.outbox.dead_letter(record, item.error_code, item.message)
                        outcome.dead_lettered += 1
                        continue
                    assert item_route is not None
                    if uow.is_processed(record.topic, item.id):
                        outcome.duplicates += 1
                        continue
                    try:
                        await item_route.handler(item, record, uow)
                    except PoisonRecord as poison:
                        await uow.outbox.dead_letter(record, poison.error_code, poison.message)
                        outcome.dead_lettered += 1
                        continue
                    except DomainError as error:
                        # A non-command event that breaks a rule (e.g. a booking with an
                        # invalid personnummer): nobody to answer, so it is a dead letter.
                        await uow.outbox.dead_letter(record, error.reason_code, str(error))
                        outcome.dead_lettered += 1
                        continue
                    uow.mark_processed(record.topic, item.id)
                    outcome.processed += 1
                await uow.commit()
            except (asyncio.CancelledError, _RecordFailed):
                raise
            except Exception as error:
                if is_transient_db_error(error):
                    raise
                log.exception(
                    "batch of %d failed",
                    len(records),
                    extra={"ctx_topic": records[0].topic if records else None},
                )
                raise _RecordFailed from error
        return outcome
