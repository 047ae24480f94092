"""From a batch of Kafka records to one committed PostgreSQL transaction.

For each batch the consumer hands over:
1. every record is decoded; a poison record (not JSON, not a CloudEvent, unknown
   type for its topic) is dead-lettered with its original bytes;
2. the customers the batch touches are locked in a fixed order (transaction-scoped
   advisory locks), so two processes or two topics can never interleave changes
   for one customer, and can never deadlock on each other;
3. each record runs in a savepoint: its inbox row (idempotency), its state change
   and its outgoing records commit together or not at all;
4. the transaction commits; only then does the caller commit the Kafka offsets.

A database outage is waited out with exponential backoff and the same batch is
retried: nothing is skipped and nothing spins.
"""

from __future__ import annotations

import asyncio
import logging
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
        """Apply the batch exactly once; returns only after the transaction committed."""
        backoff = Backoff(cap=10.0)
        attempts = 0
        while True:
            attempts += 1
            try:
                outcome = await self._process_once(records)
            except asyncio.CancelledError:
                raise
            except Exception as error:
                # Transient (outage, deadlock) or not, never skip the batch: skipping
                # would commit offsets past unapplied records. Per-record bugs are
                # dead-lettered inside _process_once, so what reaches here is a
                # whole-transaction failure, and waiting is the only safe answer.
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
                continue
            outcome.attempts = attempts
            self._after_commit(outcome)
            return outcome

    def _decode(self, record: SourceRecord) -> tuple[CloudEvent, Route]:
        event = decode_cloudevent(record.value, max_bytes=self._max_event_bytes)
        route = self._routes.get(record.topic, {}).get(event.type)
        if route is None:
            raise PoisonRecord(
                "UNKNOWN_TYPE", f"type {event.type[:100]!r} is not accepted on {record.topic}"
            )
        return event, route

    async def _process_once(self, records: Sequence[SourceRecord]) -> BatchOutcome:
        outcome = BatchOutcome()
        decoded: list[tuple[SourceRecord, CloudEvent | PoisonRecord, Route | None]] = []
        subjects: set[str] = set()
        for record in records:
            try:
                event, route = self._decode(record)
            except PoisonRecord as poison:
                decoded.append((record, poison, None))
                continue
            decoded.append((record, event, route))
            subject = route.subject_of(event.data)
            if subject:
                subjects.add(subject)

        async with self._uow_factory() as uow:
            await uow.lock_subjects(sorted(subjects))
            for record, item, item_route in decoded:
                if isinstance(item, PoisonRecord):
                    await uow.outbox.dead_letter(record, item.error_code, item.message)
                    outcome.dead_lettered += 1
                    continue
                assert item_route is not None
                try:
                    async with uow.savepoint():
                        if not await uow.mark_processed(record.topic, item.id):
                            outcome.duplicates += 1
                            continue
                        await item_route.handler(item, record, uow)
                    outcome.processed += 1
                except PoisonRecord as poison:
                    await uow.outbox.dead_letter(record, poison.error_code, poison.message)
                    outcome.dead_lettered += 1
                except DomainError as error:
                    # A non-command event that breaks a rule (e.g. a booking with an
                    # invalid personnummer): nobody to answer, so it is a dead letter.
                    await uow.outbox.dead_letter(record, error.reason_code, str(error))
                    outcome.dead_lettered += 1
                except Exception as error:
                    if is_transient_db_error(error):
                        raise
                    log.exception(
                        "processing failed; dead-lettering",
                        extra={
                            "ctx_topic": record.topic,
                            "ctx_offset": record.offset,
                            "ctx_event_type": item.type,
                        },
                    )
                    await uow.outbox.dead_letter(
                        record, "PROCESSING_ERROR", f"{type(error).__name__} while processing"
                    )
                    outcome.dead_lettered += 1
            await uow.commit()
        return outcome
