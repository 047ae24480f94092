"""Backfill: republish every membership (active and historical) and every vaccination
confirmation from the groups database to the export topic.

Records are built by the live path's own `RecordBuilder` and serialised by the same
`record_value`, so a backfilled record and a live one of the same state are the same
bytes (same key, same value, same CloudEvent id). Republishing is therefore idempotent:
the compacted topic's last value per key does not change when nothing else did.

Rows are read in primary-key order in chunks; each chunk is acknowledged by the broker
before the checkpoint names its last key, so an interrupted run (crash, Ctrl+C, `limit`)
resumes after the last acknowledged chunk and never skips a row.

Race with live updates, and what is left of it. The main pass reads each table through
one cursor, i.e. as of the moment its query started. A row changed after that is
exported by the live service from the groups' event, but the backfill may publish the
older state it read *after* the live record, leaving the older state as the key's last
value. So a catch-up pass follows: it re-reads every row changed since the run started
(`updated_at` / `confirmed_at` >= start - `catch_up_margin`; the margin covers clock skew
between the groups service, which writes those columns, and the database, whose clock
dates the start) and publishes its current state again. What remains: a change committed
while the catch-up pass runs, after the catch-up's cursor started but published live
before the catch-up publishes that row, can still leave an older last value for that key
until its next change. Consumers that keep the highest `version` per key (as the record
schemas advise) are not affected; rerunning with a fresh checkpoint in a quiet moment
repairs the topic. A live export that lags behind is harmless: it publishes every change
in order, so it ends on the newest state anyway.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from services.export.adapters.groups_db import GroupsTables, Row, SourceTable
from services.export.domain.checkpoint import Checkpoint, Phase
from services.export.domain.records import ExportRecord, RecordBuilder

log = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 5000
DEFAULT_CATCH_UP_MARGIN = timedelta(minutes=5)


class RecordSink(Protocol):
    """Publishes records; `flush` returns once the broker acknowledged all of them."""

    async def send(self, record: ExportRecord) -> None: ...

    async def flush(self) -> None: ...


class CheckpointStore(Protocol):
    def load(self) -> Checkpoint | None: ...

    def save(self, checkpoint: Checkpoint) -> None: ...


class Progress(Protocol):
    def update(self, rows: int) -> None: ...

    def close(self) -> None: ...


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

    @property
    def rows_per_second(self) -> float:
        return self.published / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "published": self.published,
            "published_total": self.checkpoint.published,
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
    budget, published = _Budget(limit), 0
    while checkpoint.phase is not Phase.COMPLETE and not budget.exhausted:
        since = checkpoint.started_at - catch_up_margin
        checkpoint, count = await _pass(
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
        if not budget.exhausted:
            checkpoint = checkpoint.next_phase()
            store.save(checkpoint)
    report = BackfillReport(
        published, checkpoint.phase is Phase.COMPLETE, time.monotonic() - began, checkpoint
    )
    log.info("backfill %s", "complete" if report.complete else "stopped", extra=_ctx(report))
    return report


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
) -> tuple[Checkpoint, int]:
    """One pass over every table, from where the checkpoint left it."""
    published = 0
    async with open_tables() as tables:
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
                        for row in rows:
                            await sink.send(build_record(builder, table, row))
                        await sink.flush()  # acknowledged before the checkpoint says so
                        checkpoint = checkpoint.after_chunk(table, str(rows[-1]["key"]), len(rows))
                        store.save(checkpoint)
                        published += len(rows)
                        budget.spend(len(rows))
                        bar.update(len(rows))
                        if budget.exhausted:
                            return checkpoint, published
        finally:
            bar.close()
    return checkpoint, published


def _ctx(report: BackfillReport) -> dict[str, Any]:
    return {f"ctx_{k}": v for k, v in report.summary().items()}
