"""The backfill's bookkeeping, against in-memory tables and sink: every row once per
pass, the checkpoint written only after the broker acknowledged, resumption without gaps
or repeats, and a catch-up pass over what changed since the start."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from services.export.adapters.checkpoint import MemoryCheckpointStore
from services.export.adapters.groups_db import Row, SourceTable
from services.export.domain.checkpoint import Checkpoint, Phase
from services.export.domain.records import ExportRecord, Pseudonymizer, RecordBuilder
from services.export.service_layer.backfill import CheckpointMismatch, backfill

START = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)
BUILDER = RecordBuilder(Pseudonymizer(b"unit-test-pseudonym-key-0123456789"), ZoneInfo("UTC"))


def membership_row(n: int, updated_at: datetime) -> dict[str, Any]:
    return {
        "key": f"m-{n:03d}",
        "membership_id": f"m-{n:03d}",
        "personnummer": "191212121212",
        "group_code": "INFLUENSA",
        "subgroup_code": None,
        "reference_code": None,
        "valid_from": date(2026, 1, 1),
        "valid_to": None,
        "version": 1,
        "updated_at": updated_at,
        "catalog_group_name": "Influensa",
        "catalog_subgroup_name": None,
    }


def confirmation_row(n: int, confirmed_at: datetime) -> dict[str, Any]:
    return {
        "key": f"v-{n:03d}",
        "vaccination_id": f"v-{n:03d}",
        "personnummer": "191212121212",
        "unit_id": "unit-1",
        "memberships": [],
        "confirmed_at": confirmed_at,
        "version": 1,
    }


class FakeTables:
    def __init__(self, rows: dict[SourceTable, list[dict[str, Any]]]) -> None:
        self.rows = rows

    def _select(self, table: SourceTable, after: str | None, since: datetime | None) -> list[Row]:
        changed = "updated_at" if table is SourceTable.MEMBERSHIPS else "confirmed_at"
        return sorted(
            (
                r
                for r in self.rows[table]
                if (after is None or r["key"] > after) and (since is None or r[changed] >= since)
            ),
            key=lambda r: str(r["key"]),
        )

    async def now(self) -> datetime:
        return START

    async def count(
        self, table: SourceTable, *, after: str | None = None, since: datetime | None = None
    ) -> int:
        return len(self._select(table, after, since))

    async def chunks(
        self, table: SourceTable, *, size: int, after: str | None = None, since: Any = None
    ) -> AsyncGenerator[Sequence[Row], None]:
        rows = self._select(table, after, since)
        for i in range(0, len(rows), size):
            yield rows[i : i + size]


class FakeSink:
    """Records what was published; `unacked` is what the broker has not confirmed yet."""

    def __init__(self) -> None:
        self.published: list[str] = []
        self.unacked = 0

    async def send(self, record: ExportRecord) -> None:
        self.published.append(record.key)
        self.unacked += 1

    async def flush(self) -> None:
        self.unacked = 0


class GuardedStore(MemoryCheckpointStore):
    """Fails the test if a checkpoint is written while records are unacknowledged."""

    def __init__(self, sink: FakeSink) -> None:
        super().__init__()
        self.sink = sink
        self.saves = 0

    def save(self, checkpoint: Checkpoint) -> None:
        assert self.sink.unacked == 0, "checkpoint written before the broker acknowledged"
        self.saves += 1
        super().save(checkpoint)


def world(memberships: int = 7, confirmations: int = 3) -> FakeTables:
    old = START - timedelta(days=1)
    return FakeTables(
        {
            SourceTable.MEMBERSHIPS: [membership_row(n, old) for n in range(memberships)],
            SourceTable.VACCINATION_CONFIRMATIONS: [
                confirmation_row(n, old) for n in range(confirmations)
            ],
        }
    )


async def run(tables: FakeTables, sink: FakeSink, store: Any, **kwargs: Any) -> Any:
    @contextlib.asynccontextmanager
    async def opener() -> AsyncIterator[Any]:
        yield tables

    return await backfill(opener, sink, BUILDER, store, topic="export", **kwargs)


async def test_every_row_once_then_a_catch_up_of_rows_changed_since_the_start() -> None:
    tables, sink = world(), FakeSink()
    store = GuardedStore(sink)
    # Changed while the run is on (the catch-up pass must publish these again).
    tables.rows[SourceTable.MEMBERSHIPS][4]["updated_at"] = START + timedelta(seconds=1)
    tables.rows[SourceTable.VACCINATION_CONFIRMATIONS][0]["confirmed_at"] = START
    report = await run(tables, sink, store, batch_size=3, catch_up_margin=timedelta(0))
    main = [f"m-{n:03d}" for n in range(7)] + [f"v-{n:03d}" for n in range(3)]
    assert sink.published == [*main, "m-004", "v-000"]
    assert report.complete and report.published == 12
    assert store.checkpoint is not None and store.checkpoint.phase is Phase.COMPLETE
    assert store.saves >= 4  # per chunk, not only at the end


async def test_the_margin_widens_the_catch_up_for_clock_skew() -> None:
    tables, sink = world(memberships=2, confirmations=0), FakeSink()
    tables.rows[SourceTable.MEMBERSHIPS][1]["updated_at"] = START - timedelta(seconds=30)
    await run(tables, sink, MemoryCheckpointStore(), catch_up_margin=timedelta(minutes=1))
    assert sink.published == ["m-000", "m-001", "m-001"]


@pytest.mark.parametrize("limit", [1, 3, 4, 9, 10])
async def test_runs_stopped_by_a_limit_resume_without_gaps_or_repeats(limit: int) -> None:
    tables, sink = world(), FakeSink()
    store = GuardedStore(sink)
    reports = []
    for _ in range(20):
        reports.append(await run(tables, sink, store, batch_size=3, limit=limit))
        if reports[-1].complete:
            break
    main = [f"m-{n:03d}" for n in range(7)] + [f"v-{n:03d}" for n in range(3)]
    assert sink.published == main  # nothing changed since the start: an empty catch-up
    assert all(r.published <= limit for r in reports)
    assert [r.complete for r in reports] == [False] * (len(reports) - 1) + [True]


async def test_a_complete_checkpoint_publishes_nothing() -> None:
    tables, sink = world(), FakeSink()
    store = MemoryCheckpointStore()
    await run(tables, sink, store)
    sent = len(sink.published)
    report = await run(tables, sink, store)
    assert report.complete and report.published == 0 and len(sink.published) == sent


async def test_a_checkpoint_of_another_topic_is_refused() -> None:
    store = MemoryCheckpointStore()
    store.save(Checkpoint(topic="another", started_at=START))
    with pytest.raises(CheckpointMismatch):
        await run(world(), FakeSink(), store)


async def test_batch_size_must_be_positive() -> None:
    with pytest.raises(ValueError):
        await run(world(), FakeSink(), MemoryCheckpointStore(), batch_size=0)
