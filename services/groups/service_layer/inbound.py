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
import collections
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from services.common.backoff import Backoff
from services.common.db import is_transient_db_error, postgres_can_store
from services.common.envelope import CloudEvent, PoisonRecord, decode_cloudevent
from services.common.records import SourceRecord
from services.groups.domain.errors import DomainError
from services.groups.domain.ids import is_canonical_uuid
from services.groups.service_layer.unit_of_work import UnitOfWork

log = logging.getLogger(__name__)

Handler = Callable[[CloudEvent, SourceRecord, UnitOfWork], Awaitable[None]]


@dataclass(frozen=True)
class Route:
    handler: Handler
    # What the record's data concerns (personnummer text, which may be invalid; a booking
    # id): records that share a subject are applied one after another, in order.
    subjects_of: Callable[[Any], tuple[str, ...]]


Routes = Mapping[str, Mapping[str, Route]]  # topic -> CloudEvent type -> route


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


# A record with what decoding made of it: the event and its route, or why it is poison.
_Decoded = tuple[SourceRecord, CloudEvent | PoisonRecord, Route | None]


def _item_subjects(item: _Decoded) -> tuple[str, ...]:
    record, event, route = item
    if route is None or not isinstance(event, CloudEvent):
        return ()
    subjects = tuple(s for s in route.subjects_of(event.data) if postgres_can_store(s))
    if subjects:
        return subjects
    # Nobody's record (e.g. a command without a personnummer): still never applied twice
    # at once, in two parts that would both find it missing from the inbox.
    event_subject = f"event:{record.topic}:{event.id}"
    return (event_subject,) if postgres_can_store(event_subject) else ()


@dataclass(frozen=True)
class DecodedBatch:
    items: list[_Decoded]
    item_subjects: list[tuple[str, ...]]  # each item's, named once per record

    @classmethod
    def of(cls, items: list[_Decoded]) -> DecodedBatch:
        return cls(items, [_item_subjects(item) for item in items])

    @functools.cached_property
    def subjects(self) -> frozenset[str]:
        return frozenset(subject for subjects in self.item_subjects for subject in subjects)

    def __len__(self) -> int:
        return len(self.items)

    def one_by_one(self) -> list[DecodedBatch]:
        return [
            DecodedBatch([item], [subjects])
            for item, subjects in zip(self.items, self.item_subjects, strict=True)
        ]

    def split(
        self, lanes: int, held: Callable[[str], bool] = lambda _subject: False
    ) -> list[DecodedBatch]:
        """Parts whose subjects are disjoint, records in their batch order; records that
        share a subject (directly or through others) stay in one part. The records linked
        to a `held` subject form one part of their own; the others are spread over up to
        `lanes` parts."""
        parent: dict[str, str] = {}

        def root(subject: str) -> str:
            while parent.setdefault(subject, subject) != subject:
                parent[subject] = parent[parent[subject]]
                subject = parent[subject]
            return subject

        per_item = self.item_subjects
        for subjects in per_item:
            for other in subjects[1:]:
                parent[root(other)] = root(subjects[0])
        sizes: collections.Counter[str] = collections.Counter(
            root(subjects[0]) for subjects in per_item if subjects
        )
        held_lane = lanes  # one more part, after the lanes
        lane_of = {component: held_lane for component in {root(s) for s in parent if held(s)}}
        load = [0] * lanes
        for component, size in sizes.most_common():  # largest first, onto the lightest lane
            if component not in lane_of:
                lane = load.index(min(load))
                lane_of[component] = lane
                load[lane] += size
        parts = [DecodedBatch([], []) for _ in range(lanes + 1)]
        for index, (item, subjects) in enumerate(zip(self.items, per_item, strict=True)):
            part = parts[lane_of[root(subjects[0])] if subjects else index % lanes]
            part.items.append(item)
            part.item_subjects.append(subjects)
        return [part for part in parts if part.items]


def _string(data: Any, *path: str) -> str | None:
    """A key to preload, or None. Text PostgreSQL cannot take fails its schema later,
    and must not fail the whole batch's locks or reads here."""
    for name in path:
        if not isinstance(data, dict):
            return None
        data = data.get(name)
    if not isinstance(data, str) or len(data) > 128 or not postgres_can_store(data):
        return None
    return data


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
        return await self.apply(self.decode(records))

    def decode(self, records: Sequence[SourceRecord]) -> DecodedBatch:
        """Decode every record (no I/O) and name the subjects the batch concerns."""
        items: list[_Decoded] = []
        for record in records:
            try:
                event, route = self._decode(record)
            except PoisonRecord as poison:
                items.append((record, poison, None))
                continue
            except Exception as error:  # a decoder bug for this input: never skip the batch
                log.exception("decoding a record failed")
                items.append((record, PoisonRecord("PROCESSING_ERROR", type(error).__name__), None))
                continue
            items.append((record, event, route))
        return DecodedBatch.of(items)

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
        backoff = Backoff(cap=10.0)
        attempts = 0
        while True:
            attempts += 1
            try:
                if failed is not None:
                    outcome = await self._dead_letter_failed(batch, failed)
                else:
                    outcome = await self._process_once(batch)
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

    async def _dead_letter_failed(self, batch: DecodedBatch, failed: _RecordFailed) -> BatchOutcome:
        cause = failed.__cause__ or failed
        async with self._uow_factory() as uow:
            for record, _, _ in batch.items:
                await uow.outbox.dead_letter(
                    record, "PROCESSING_ERROR", f"{type(cause).__name__} while processing"
                )
            await uow.commit()
        return BatchOutcome(dead_lettered=len(batch))

    async def _process_once(self, batch: DecodedBatch) -> BatchOutcome:
        outcome = BatchOutcome()
        decoded = batch.items
        events = [(r, e) for r, e, _ in decoded if isinstance(e, CloudEvent)]
        subjects = sorted(batch.subjects)

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
                        if (p := _string(e.data, "prompt_id")) is not None and is_canonical_uuid(p)
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
                    len(decoded),
                    extra={"ctx_topic": decoded[0][0].topic if decoded else None},
                )
                raise _RecordFailed from error
        return outcome


class BatchApplier(Protocol):
    def decode(self, records: Sequence[SourceRecord]) -> DecodedBatch: ...

    async def apply(self, batch: DecodedBatch) -> BatchOutcome: ...


@dataclass
class _InFlight:
    tasks: list[asyncio.Task[BatchOutcome]]  # the batch's parts
    on_applied: Callable[[], None]

    def done(self) -> bool:
        return all(task.done() for task in self.tasks)

    def failure(self) -> BaseException | None:
        for task in self.tasks:
            if task.cancelled():
                return asyncio.CancelledError()
            if task.exception() is not None:
                return task.exception()
        return None


class BatchPipeline:
    """Applies up to `depth` batches at once, and a large batch in up to `lanes` parts
    at once (each its own transaction), so database waits (reads, writes, commits)
    overlap with other work, PostgreSQL works on several transactions in parallel, and a
    record that arrives while a large batch commits does not wait for it.

    Order is kept where it matters: a part waits, before it takes any lock, until every
    earlier part still in flight that shares a subject with it (a customer, a booking)
    has committed, whatever retries or isolation that part needed; the parts of one
    batch share no subject. Work with disjoint subjects runs side by side; across
    processes the advisory locks order it as before. `on_applied` callbacks (offset
    commits) run strictly in submission order, each once its whole batch is applied, so
    no offset passes a record that is not yet applied.
    """

    # A part costs five round trips of its own; smaller batches are not split.
    MIN_RECORDS_PER_LANE = 50

    def __init__(
        self,
        processor: BatchApplier,
        *,
        depth: int,
        lanes: int = 2,
        on_failure: Callable[[BaseException], None] = lambda _error: None,
    ) -> None:
        self._processor = processor
        self._depth = max(1, depth)
        # One batch at a time means one transaction at a time.
        self._lanes = max(1, lanes) if self._depth > 1 else 1
        self._on_failure = on_failure
        self._in_flight: collections.deque[_InFlight] = collections.deque()
        self._last_by_subject: dict[str, asyncio.Task[BatchOutcome]] = {}
        self.failure: BaseException | None = None

    def _check(self) -> None:
        if self.failure is not None:
            raise RuntimeError("inbound batches stopped after an unexpected error") from (
                self.failure
            )

    def _fail(self, error: BaseException) -> None:
        if self.failure is None:
            self.failure = error
            log.error(
                "an inbound batch ended without being applied; consuming stops",
                exc_info=error if not isinstance(error, asyncio.CancelledError) else None,
            )
            self._on_failure(error)

    async def submit(self, records: Sequence[SourceRecord], on_applied: Callable[[], None]) -> None:
        """Start applying the batch; returns once it runs (not once it is applied).

        Raises once a batch ended without being applied: from then on nothing is applied
        or committed (the process is reported unhealthy, and a restart re-delivers from
        the last committed offset)."""
        self._check()
        while len(self._in_flight) >= self._depth:
            await asyncio.wait(self._in_flight[0].tasks)
            self._reap()
            self._check()
        try:
            self._start(records, on_applied)
        except Exception as error:
            self._fail(error)  # never go on past a batch that was not started
            raise

    def _start(self, records: Sequence[SourceRecord], on_applied: Callable[[], None]) -> None:
        batch = self._processor.decode(records)
        lanes = max(1, min(self._lanes, len(batch) // self.MIN_RECORDS_PER_LANE))
        # What no earlier part in flight touches starts at once; the rest waits.
        parts = batch.split(lanes, held=self._in_flight_subject)
        tasks = []
        for part in parts:
            earlier = {
                self._last_by_subject[subject]
                for subject in part.subjects
                if self._in_flight_subject(subject)
            }
            task = asyncio.create_task(self._apply_after(earlier, part), name="inbound-batch")
            for subject in part.subjects:
                self._last_by_subject[subject] = task
            task.add_done_callback(self._part_done)
            tasks.append(task)
        self._in_flight.append(_InFlight(tasks, on_applied))

    def _part_done(self, task: asyncio.Task[BatchOutcome]) -> None:
        if not task.cancelled():
            task.exception()  # retrieved here; `_reap` decides what a failure means
        self._reap()

    def _in_flight_subject(self, subject: str) -> bool:
        task = self._last_by_subject.get(subject)
        return task is not None and not task.done()

    async def _apply_after(
        self, earlier: set[asyncio.Task[BatchOutcome]], batch: DecodedBatch
    ) -> BatchOutcome:
        if earlier:
            await asyncio.wait(earlier)
            if any(task.cancelled() or task.exception() is not None for task in earlier):
                # Applying now would put these records before earlier ones of theirs.
                raise RuntimeError("an earlier part sharing a subject was not applied")
        return await self._processor.apply(batch)

    def _reap(self) -> None:
        while self._in_flight and self._in_flight[0].done() and self.failure is None:
            failure = self._in_flight[0].failure()
            if failure is not None:
                # `apply` retries every error but cancellation; anything else is a bug.
                # Nothing after this batch may be committed: stop, and let a restart
                # re-deliver from the last committed offset.
                self._fail(failure)
                return
            self._in_flight.popleft().on_applied()
        self._last_by_subject = {
            subject: task for subject, task in self._last_by_subject.items() if not task.done()
        }

    async def drain(self, limit_seconds: float = 15.0) -> None:
        """Wait for the batches in flight (at shutdown), at most `limit_seconds`: what is
        not applied by then is delivered again after the restart."""
        deadline = time.monotonic() + limit_seconds
        while self._in_flight and self.failure is None:
            left = deadline - time.monotonic()
            if left <= 0:
                log.warning("%d inbound batches still in flight at shutdown", len(self._in_flight))
                return
            tasks = [task for item in self._in_flight for task in item.tasks]
            await asyncio.wait(tasks, timeout=left)
            self._reap()
