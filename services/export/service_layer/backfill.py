"""Backfill: republish every membership (active and historical) and every vaccination
confirmation from the groups database to the export topic.

Records are built by the live path's own `RecordBuilder` and serialised by the same
`record_value`, so a backfilled record and a live one of the same state are the same
bytes (same key, same value, same CloudEvent id). Republishing is therefore idempotent:
the compacted topic's last value per key does not change when nothing else did.

Rows are read in primary-key order in chunks; each chunk is acknowledged by the broker
before the checkpoint names its last key, so an interrupted run (crash, Ctrl+C, `limit`)
resumes after the last acknowledged chunk and never skips a row. While the broker
acknowledges one chunk the next ones are read, built and sent (at most
`CHUNKS_IN_FLIGHT` unacknowledged); the checkpoint still moves in chunk order, only past
chunks whose every record was acknowledged.

Race with live updates: the newest version wins. The backfill publishes a row's state as
it read it, and the row may change meanwhile: the live export then publishes the newer
version, and the backfill's older record could land after it and be the key's last value
(what compaction keeps). So once the broker acknowledged a chunk, the backfill reads the
current version of each of its keys again (another connection, READ COMMITTED) and
publishes the current state of every key whose version moved, until none moved. The
backfill's last record of a key is therefore of a version the database still held after
that record was on the topic: any newer version was committed later, and the live export
publishes it later still (it publishes every version, in order, after the groups service
committed it), so it lands after. Once the live export has caught up, the last record of
every key is its newest version, and no older one follows it. The catch-up pass then
re-reads every row changed since the run started (`updated_at` >= start -
`catch_up_margin`; the margin covers clock skew between the groups service, which writes
those columns, and the database, whose clock dates the start), so the backfill alone
leaves the topic complete as of its end even when no live export writes to it (a backfill
into a fresh topic). Consumers must still apply records by `version` (a record a
consumer missed, or the order across keys, is not the backfill's to fix).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from services.export.adapters.groups_db import GroupsTables, Row, SourceTable
from services.export.domain.checkpoint import Checkpoint, Phase
from services.export.domain.records import ExportRecord, RecordBuilder
from services.export.service_layer.pipeline import record_message

log = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 5000
DEFAULT_CATCH_UP_MARGIN = timedelta(minutes=5)
# Chunks sent but not yet acknowledged: enough to read and build the next chunk while the
# broker writes the last one, few enough that memory stays a few chunks' worth.
CHUNKS_IN_FLIGHT = 2


class RecordSink(Protocol):
    """Publishes (key, value) messages to the export topic."""

    async def publish(self, messages: Sequence[tuple[bytes, bytes]]) -> asyncio.Future[Any]:
        """Hands the messages over; the returned future completes once the broker
        acknowledged every one of them."""
        ...


class CheckpointStore(Protocol):
    def load(self) -> Checkpoint | None: ...

    def save(self, checkpoint: Checkpoint) -> None: ...


class Progress(Protocol):
    def update(self, rows: int) -> None: ...

    def close(self) -> None: ...


# Connections that see what is committed when each statement starts (READ COMMITTED): the
# re-read after a chunk must see the versions committed since.
TablesOpener = Callable[[], AbstractAsyncContextManager[GroupsTables]]
ProgressFactory = Callable[[str, int], Progress]


class _NoProgress:
    def update(self, rows: int) -> None:
        pass

    def close(self) -> None:
        pass


def no_progress(_description: str, _total: int) -> Progress:
    return _NoProgress()


class CheckpointMismatch(Exception):
    """The checkpoint belongs to a backfill into another topic."""


def build_record(builder: RecordBuilder, table: SourceTable, row: Row) -> ExportRecord:
    if table is SourceTable.MEMBERSHIPS:
        return builder.membership_from_row(row)
    return builder.vaccination_from_row(row)


@dataclass(frozen=True)
class BackfillReport:
    published: int  # by this run
    complete: bool
    seconds: float
    checkpoint: Checkpoint
    republished: int = 0  # records of keys whose version moved while they were published

    @property
    def rows_per_second(self) -> float:
        return self.published / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "published": self.published,
            "published_total": self.checkpoint.published,
            "republished": self.republished,
            "complete": self.complete,
            "phase": self.checkpoint.phase.value,
            "seconds": round(self.seconds, 3),
            "rows_per_second": round(self.rows_per_second, 1),
        }


class _Budget:
    """`limit` rows at most, across tables and passes (None: no limit)."""

    def __init__(self, limit: int | None) -> None:
        self.left = limit

    def take(self, rows: Sequence[Row]) -> Sequence[Row]:
        return rows if self.left is None else rows[: self.left]

    def spend(self, count: int) -> None:
        if self.left is not None:
            self.left -= count

    @property
    def exhausted(self) -> bool:
        return self.left is not None and self.left <= 0


async def backfill(
    open_tables: TablesOpener,
    sink: RecordSink,
    builder: RecordBuilder,
    store: CheckpointStore,
    *,
    topic: str,
    batch_size: int = DEFAULT_BATCH_SIZE,
    limit: int | None = None,
    catch_up_margin: timedelta = DEFAULT_CATCH_UP_MARGIN,
    progress: ProgressFactory = no_progress,
) -> BackfillReport:
    """Run (or resume) the backfill; returns when complete or after `limit` rows."""
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    began = time.monotonic()
    checkpoint = store.load()
    if checkpoint is None:
        async with open_tables() as tables:
            checkpoint = Checkpoint(topic=topic, started_at=await tables.now())
        store.save(checkpoint)
    elif checkpoint.topic != topic:
        raise CheckpointMismatch(
            f"the checkpoint is of a backfill into {checkpoint.topic!r}, not {topic!r}"
        )
    budget, published, republished = _Budget(limit), 0, 0
    while checkpoint.phase is not Phase.COMPLETE and not budget.exhausted:
        since = checkpoint.started_at - catch_up_margin
        checkpoint, count, again = await _pass(
            open_tables,
            sink,
            builder,
            store,
            checkpoint,
            since=since if checkpoint.phase is Phase.CATCH_UP else None,
            batch_size=batch_size,
            budget=budget,
            progress=progress,
        )
        published += count
        republished += again
        if not budget.exhausted:
            checkpoint = checkpoint.next_phase()
            store.save(checkpoint)
    report = BackfillReport(
        published,
        checkpoint.phase is Phase.COMPLETE,
        time.monotonic() - began,
        checkpoint,
        republished,
    )
    log.info("backfill %s", "complete" if report.complete else "stopped", extra=_ctx(report))
    return report


@dataclass(frozen=True)
class _SentChunk:
    acknowledged: asyncio.Future[Any]
    table: SourceTable
    versions: dict[str, int]  # key -> the version published
    last_key: str
    rows: int


async def _pass(
    open_tables: TablesOpener,
    sink: RecordSink,
    builder: RecordBuilder,
    store: CheckpointStore,
    checkpoint: Checkpoint,
    *,
    since: datetime | None,
    batch_size: int,
    budget: _Budget,
    progress: ProgressFactory,
) -> tuple[Checkpoint, int, int]:
    """One pass over every table, from where the checkpoint left it; returns the
    checkpoint, the rows published and the records published again (versions moved)."""
    published = republished = 0
    in_flight: deque[_SentChunk] = deque()

    async def settle(chunk: _SentChunk) -> None:
        nonlocal checkpoint, published, republished
        await chunk.acknowledged  # acknowledged before the checkpoint says so
        republished += await _publish_until_current(
            current, sink, builder, chunk.table, chunk.versions
        )
        checkpoint = checkpoint.after_chunk(chunk.table, chunk.last_key, chunk.rows)
        store.save(checkpoint)
        published += chunk.rows
        bar.update(chunk.rows)

    async with open_tables() as tables, open_tables() as current:
        total = 0
        for table in SourceTable:
            total += await tables.count(table, after=checkpoint.done.get(table), since=since)
        log.info("backfill %s pass: %d rows", checkpoint.phase.value, total)
        bar = progress("catch-up" if since is not None else "backfill", total)
        try:
            for table in SourceTable:
                chunks = tables.chunks(
                    table, size=batch_size, after=checkpoint.done.get(table), since=since
                )
                async with contextlib.aclosing(chunks):
                    async for chunk in chunks:
                        rows = budget.take(chunk)
                        messages = [record_message(build_record(builder, table, r)) for r in rows]
                        acknowledged = await sink.publish(messages)
                        versions = {str(r["key"]): int(r["version"]) for r in rows}
                        in_flight.append(
                            _SentChunk(
                                acknowledged, table, versions, str(rows[-1]["key"]), len(rows)
                            )
                        )
                        budget.spend(len(rows))
                        while in_flight and (
                            len(in_flight) > CHUNKS_IN_FLIGHT or in_flight[0].acknowledged.done()
                        ):
                            await settle(in_flight.popleft())
                        if budget.exhausted:
                            break
                if budget.exhausted:
                    break
            while in_flight:
                await settle(in_flight.popleft())
        finally:
            # Failed or cancelled: what is still in flight is not checkpointed (it may reach
            # the broker anyway; a rerun sends it again). Stop waiting for it, quietly.
            for unsettled in in_flight:
                _stop_waiting(unsettled.acknowledged)
            bar.close()
    return checkpoint, published, republished


async def _publish_until_current(
    current: GroupsTables,
    sink: RecordSink,
    builder: RecordBuilder,
    table: SourceTable,
    published: dict[str, int],
) -> int:
    """The broker acknowledged `published` (key -> version): publish the current state of
    every key whose version has moved since, until none moved (see the module). Returns
    the records published again."""
    again = 0
    while published:
        now = await current.versions(table, list(published))
        moved = [key for key, version in published.items() if now.get(key, version) != version]
        if not moved:
            break
        rows = await current.rows_of(table, moved)
        await (await sink.publish([record_message(build_record(builder, table, r)) for r in rows]))
        published = {str(r["key"]): int(r["version"]) for r in rows}
        again += len(rows)
    return again


def _stop_waiting(acknowledged: asyncio.Future[Any]) -> None:
    if acknowledged.cancel() or acknowledged.cancelled():
        return
    acknowledged.exception()  # retrieved, so asyncio does not log it as never retrieved


def _ctx(report: BackfillReport) -> dict[str, Any]:
    return {f"ctx_{k}": v for k, v in report.summary().items()}
