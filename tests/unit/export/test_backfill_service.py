"""The backfill's bookkeeping, against in-memory tables and sink: every row once per
pass, the checkpoint written only after the broker acknowledged, resumption without gaps
or repeats, a catch-up pass over what changed since the start, and a key whose version
moved while it was published is published again until the last record is current."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from aiokafka.errors import KafkaError

from services.export.adapters.checkpoint import MemoryCheckpointStore
from services.export.adapters.groups_db import Row, SourceTable
from services.export.domain.checkpoint import Checkpoint, Phase
from services.export.domain.records import Pseudonymizer, RecordBuilder
from services.export.service_layer.backfill import (
    CHUNKS_IN_FLIGHT,
    CheckpointMismatch,
    backfill,
)

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
        "status": "active",
        "created_at": updated_at,
        "created_by_user": "nurse-1",
        "created_by_unit": "unit-1",
        "updated_by_user": None,
        "updated_by_unit": None,
        "updated_at": updated_at,
        "catalog_group_name": "Influensa",
        "catalog_subgroup_name": None,
    }


def dose_row(n: int, updated_at: datetime) -> dict[str, Any]:
    return {
        "key": f"v-{n:03d}",
        "vaccination_id": f"v-{n:03d}",
        "personnummer": "191212121212",
        "unit_id": "unit-1",
        "administered_at": None,
        "vaccine": None,
        "confirmed_at": updated_at,
        "basis": "popup",
        "memberships": [],
        "missing_group": True,
        "status": "completed",
        "version": 1,
        "updated_at": updated_at,
    }


class FakeTables:
    def __init__(self, rows: dict[SourceTable, list[dict[str, Any]]]) -> None:
        self.rows = rows

    def _select(self, table: SourceTable, after: str | None, since: datetime | None) -> list[Row]:
        changed = "updated_at"
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
            yield [dict(r) for r in rows[i : i + size]]  # as read: later changes not seen

    async def versions(self, table: SourceTable, keys: Sequence[str]) -> dict[str, int]:
        return {r["key"]: r["version"] for r in self.rows[table] if r["key"] in keys}

    async def rows_of(self, table: SourceTable, keys: Sequence[str]) -> Sequence[Row]:
        return [dict(r) for r in self._select(table, None, None) if r["key"] in keys]


class FakeSink:
    """Records what was published; the broker acknowledges each chunk a moment later, in
    order. `acknowledged` counts the published records acknowledged so far."""

    def __init__(self) -> None:
        self.published: list[str] = []
        self.acknowledged = 0

    async def publish(self, messages: Sequence[tuple[bytes, bytes]]) -> asyncio.Future[Any]:
        self.published.extend(key.decode() for key, _ in messages)
        loop = asyncio.get_running_loop()
        ack: asyncio.Future[Any] = loop.create_future()
        loop.call_soon(self._acknowledge, ack, len(self.published))
        return ack

    def _acknowledge(self, ack: asyncio.Future[Any], up_to: int) -> None:
        self.acknowledged = max(self.acknowledged, up_to)
        ack.set_result(None)


class HeldSink(FakeSink):
    """A broker that acknowledges nothing until `release`, or refuses chunk `refuse`."""

    def __init__(self, refuse: int | None = None) -> None:
        super().__init__()
        self.held: list[asyncio.Future[Any]] = []
        self.refuse = refuse

    async def publish(self, messages: Sequence[tuple[bytes, bytes]]) -> asyncio.Future[Any]:
        self.published.extend(key.decode() for key, _ in messages)
        ack: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if len(self.held) == self.refuse:
            ack.set_exception(KafkaError("refused"))
        self.held.append(ack)
        return ack

    def release(self) -> None:
        for ack in self.held:
            if not ack.done():
                ack.set_result(None)
        self.acknowledged = len(self.published)


class GuardedStore(MemoryCheckpointStore):
    """Fails the test if a checkpoint names a record the broker has not acknowledged."""

    def __init__(self, sink: FakeSink) -> None:
        super().__init__()
        self.sink = sink
        self.saves = 0

    def save(self, checkpoint: Checkpoint) -> None:
        sent = self.sink.published
        for key in checkpoint.done.values():
            after_last_send = len(sent) - sent[::-1].index(key)
            assert after_last_send <= self.sink.acknowledged, (
                f"checkpoint names {key} before the broker acknowledged it"
            )
        assert checkpoint.published <= self.sink.acknowledged
        self.saves += 1
        super().save(checkpoint)


def world(memberships: int = 7, confirmations: int = 3) -> FakeTables:
    old = START - timedelta(days=1)
    return FakeTables(
        {
            SourceTable.MEMBERSHIPS: [membership_row(n, old) for n in range(memberships)],
            SourceTable.VACCINATION_CONFIRMATIONS: [dose_row(n, old) for n in range(confirmations)],
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
    tables.rows[SourceTable.VACCINATION_CONFIRMATIONS][0]["updated_at"] = START
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


async def test_next_chunks_are_sent_while_the_broker_acknowledges_but_not_checkpointed() -> None:
    sink = HeldSink()
    store = GuardedStore(sink)
    running = asyncio.ensure_future(run(world(), sink, store, batch_size=2))
    for _ in range(100):
        await asyncio.sleep(0)
    assert len(sink.held) == CHUNKS_IN_FLIGHT + 1, "sent ahead, but only so far"
    assert store.saves == 1  # the run's start only
    sink.release()
    for _ in range(100):
        await asyncio.sleep(0)
        sink.release()
        if running.done():
            break
    report = await running
    assert report.complete and report.published == 10
    assert sink.published == [f"m-{n:03d}" for n in range(7)] + [f"v-{n:03d}" for n in range(3)]


async def test_a_refused_chunk_stops_the_run_and_is_not_checkpointed() -> None:
    sink = HeldSink(refuse=1)
    store = GuardedStore(sink)
    running = asyncio.ensure_future(run(world(), sink, store, batch_size=3))
    for _ in range(100):
        await asyncio.sleep(0)
    sink.release()  # chunk 0 acknowledged, chunk 1 refused
    with pytest.raises(KafkaError, match="refused"):
        await running
    assert store.checkpoint is not None
    assert store.checkpoint.done == {"memberships": "m-002"} and store.checkpoint.published == 3


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


class RacingSink(FakeSink):
    """Each `change` runs as a chunk is published, before the broker has it: the live
    path moves a row to its next version meanwhile."""

    def __init__(self, changes: list[Callable[[], None]]) -> None:
        super().__init__()
        self.changes = changes
        self.versions: list[tuple[str, int]] = []

    async def publish(self, messages: Sequence[tuple[bytes, bytes]]) -> asyncio.Future[Any]:
        if self.changes:
            self.changes.pop(0)()
        self.versions += [(k.decode(), json.loads(v)["data"]["version"]) for k, v in messages]
        return await super().publish(messages)


async def test_a_key_whose_version_moved_is_published_again_until_current() -> None:
    tables = world(memberships=3, confirmations=1)
    memberships = tables.rows[SourceTable.MEMBERSHIPS]

    def bump(n: int) -> Callable[[], None]:
        def change() -> None:
            memberships[n]["version"] += 1

        return change

    # While the first chunk is published m-001 moves to 2; while version 2 is published
    # (after the dose chunk), to 3.
    sink = RacingSink([bump(1), lambda: None, bump(1)])
    store = GuardedStore(sink)
    report = await run(tables, sink, store, batch_size=5)
    last: dict[str, int] = {}
    for key, version in sink.versions:
        last[key] = version
    assert last == {"m-000": 1, "m-001": 3, "m-002": 1, "v-000": 1}
    assert [v for k, v in sink.versions if k == "m-001"] == [1, 2, 3]
    assert report.republished == 2 and report.published == 4
