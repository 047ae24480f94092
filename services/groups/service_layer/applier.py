"""A decoded batch applied in one PostgreSQL transaction, exactly once.

1. the subjects the batch touches (customers, bookings) are locked in a fixed order
   (transaction-scoped advisory locks), so two processes or two topics can never
   interleave changes for one customer, and can never deadlock on each other;
2. what the batch will read is loaded in bulk (the inbox's ids and each message's
   preload keys), the handlers run in order against that in-memory state, and all
   their writes (state, inbox rows, outgoing records) are flushed with one statement
   per table and committed together;
3. only then does the caller commit the Kafka offsets.

A poison record is dead-lettered with its original bytes. Handlers raise the expected
errors (PoisonRecord, DomainError) before they change anything, so such a record is
dead-lettered and the batch goes on. Any other error means one record cannot be
applied: the batch is rolled back and replayed one record per transaction, which
isolates that record (dead-lettered as PROCESSING_ERROR) and applies all the others.
A database outage is waited out with exponential backoff and the same batch is
retried: nothing is skipped and nothing spins.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from services.common.backoff import Backoff, retry_forever
from services.common.db import is_transient_db_error
from services.common.envelope import PoisonRecord
from services.common.records import SourceRecord
from services.groups.domain.errors import DomainError
from services.groups.service_layer.messagebus import DecodedBatch, MessageBus
from services.groups.service_layer.unit_of_work import AbstractUnitOfWork

log = logging.getLogger(__name__)


@dataclass
class BatchOutcome:
    processed: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    attempts: int = 0
    seconds: float = 0.0  # from the start of `apply` to the last commit

    def add(self, other: BatchOutcome) -> None:
        self.processed += other.processed
        self.duplicates += other.duplicates
        self.dead_lettered += other.dead_lettered
        self.attempts += other.attempts


class _RecordFailed(Exception):
    """A record raised an unexpected, non-transient error; the batch must be isolated."""


class BatchApplier:
    def __init__(
        self,
        uow_factory: Callable[[], AbstractUnitOfWork],
        bus: MessageBus,
        *,
        after_commit: Callable[[BatchOutcome], None] = lambda _o: None,
        on_retry: Callable[[BaseException, float], None] = lambda _e, _d: None,
    ) -> None:
        self._uow_factory = uow_factory
        self._bus = bus
        self._after_commit = after_commit
        self._on_retry = on_retry

    async def process(self, records: Sequence[SourceRecord]) -> BatchOutcome:
        """Apply the batch exactly once; returns only after everything is committed."""
        return await self.apply(self.decode(records))

    def decode(self, records: Sequence[SourceRecord]) -> DecodedBatch:
        return self._bus.decode(records)

    async def apply(self, batch: DecodedBatch) -> BatchOutcome:
        """Apply a decoded batch exactly once; returns only after everything is committed."""
        started = time.perf_counter()
        try:
            outcome = await self._with_backoff(batch)
        except _RecordFailed:
            log.warning("a record of a batch of %d failed; applying them one by one", len(batch))
            outcome = BatchOutcome()
            for one in batch.one_by_one():
                try:
                    single = await self._with_backoff(one)
                except _RecordFailed as failure:
                    single = await self._with_backoff(one, failed=failure)
                outcome.add(single)
        outcome.seconds = time.perf_counter() - started
        self._after_commit(outcome)
        return outcome

    async def _with_backoff(
        self, batch: DecodedBatch, failed: _RecordFailed | None = None
    ) -> BatchOutcome:
        attempts = 0

        async def attempt() -> BatchOutcome:
            nonlocal attempts
            attempts += 1
            if failed is not None:
                return await self._dead_letter_failed(batch, failed)
            return await self._process_once(batch)

        def on_retry(error: Exception, delay: float) -> None:
            # Transient (outage, deadlock) or not, never skip the batch: skipping
            # would commit offsets past unapplied records.
            if is_transient_db_error(error):
                log.warning(
                    "database unavailable (%s); retrying batch in %.1fs",
                    type(error).__name__,
                    delay,
                )
            else:
                log.exception("batch failed; retrying in %.1fs", delay)
            self._on_retry(error, delay)

        outcome = await retry_forever(
            attempt,
            backoff=Backoff(cap=10.0),
            retry_if=lambda error: not isinstance(error, _RecordFailed),
            on_retry=on_retry,
        )
        outcome.attempts = attempts
        return outcome

    async def _dead_letter_failed(self, batch: DecodedBatch, failed: _RecordFailed) -> BatchOutcome:
        cause = failed.__cause__ or failed
        async with self._uow_factory() as uow:
            uow.outbox.received_at = batch.received_at
            for item in batch.items:
                await uow.outbox.dead_letter(
                    item.record, "PROCESSING_ERROR", f"{type(cause).__name__} while processing"
                )
            await uow.commit()
        return BatchOutcome(dead_lettered=len(batch))

    async def _process_once(self, batch: DecodedBatch) -> BatchOutcome:
        outcome = BatchOutcome()
        keys = batch.preload_keys()
        async with self._uow_factory() as uow:
            uow.outbox.received_at = batch.received_at
            try:
                await uow.lock_subjects(sorted(batch.subjects))
                await uow.preload(
                    batch.events(),
                    personnummer=keys.personnummer,
                    booking_ids=keys.booking_ids,
                    vaccination_ids=keys.vaccination_ids,
                    prompt_ids=keys.prompt_ids,
                    dose_customers=keys.dose_customers,
                )
                for item in batch.items:
                    record = item.record
                    if isinstance(item.message, PoisonRecord):
                        poison = item.message
                        await uow.outbox.dead_letter(record, poison.error_code, poison.message)
                        outcome.dead_lettered += 1
                        continue
                    assert item.event is not None
                    if uow.is_processed(record.topic, item.event.id):
                        outcome.duplicates += 1
                        continue
                    try:
                        await self._bus.handle(item, uow)
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
                    uow.mark_processed(record.topic, item.event.id)
                    outcome.processed += 1
                await uow.commit()
            except (asyncio.CancelledError, _RecordFailed):
                raise
            except Exception as error:
                if is_transient_db_error(error):
                    raise
                log.exception(
                    "batch of %d failed",
                    len(batch),
                    extra={"ctx_topic": batch.items[0].record.topic if batch.items else None},
                )
                raise _RecordFailed from error
        return outcome
