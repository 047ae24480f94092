"""Inbound batches in flight: several at once, yet records of one subject in order.

`BatchPipeline` hands each batch (decoded once) to the applier in up to `lanes` parts
whose subjects are disjoint (`split`), starts a part at once unless an earlier part
still in flight shares a subject with it, and hands offsets on strictly in submission
order, each once its whole batch is applied.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from services.common.records import SourceRecord
from services.groups.service_layer.applier import BatchOutcome
from services.groups.service_layer.messagebus import DecodedBatch

log = logging.getLogger(__name__)


def split(
    batch: DecodedBatch, lanes: int, held: Callable[[str], bool] = lambda _subject: False
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

    per_item = [item.subjects for item in batch.items]
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
    parts = [DecodedBatch([], batch.received_at) for _ in range(lanes + 1)]
    for index, item in enumerate(batch.items):
        subjects = item.subjects
        part = parts[lane_of[root(subjects[0])] if subjects else index % lanes]
        part.items.append(item)
    return [part for part in parts if part.items]


class Applier(Protocol):
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
        processor: Applier,
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
        received_at = datetime.now(UTC)
        self._check()
        while len(self._in_flight) >= self._depth:
            await asyncio.wait(self._in_flight[0].tasks)
            self._reap()
            self._check()
        try:
            self._start(records, on_applied, received_at)
        except Exception as error:
            self._fail(error)  # never go on past a batch that was not started
            raise

    def _start(
        self,
        records: Sequence[SourceRecord],
        on_applied: Callable[[], None],
        received_at: datetime,
    ) -> None:
        batch = dataclasses.replace(self._processor.decode(records), received_at=received_at)
        lanes = max(1, min(self._lanes, len(batch) // self.MIN_RECORDS_PER_LANE))
        # What no earlier part in flight touches starts at once; the rest waits.
        parts = split(batch, lanes, held=self._in_flight_subject)
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
        """Wait for the batches in flight (at shutdown, or before a rebalance takes the
        partitions away), at most `limit_seconds`: what is not applied by then is
        delivered again (after the restart, or to the partitions' next owner)."""
        deadline = time.monotonic() + limit_seconds
        while self._in_flight and self.failure is None:
            left = deadline - time.monotonic()
            if left <= 0:
                log.warning(
                    "%d inbound batches still in flight after %.0f s; not committed",
                    len(self._in_flight),
                    limit_seconds,
                )
                return
            tasks = [task for item in self._in_flight for task in item.tasks]
            await asyncio.wait(tasks, timeout=left)
            self._reap()
