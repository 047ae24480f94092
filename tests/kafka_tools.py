"""Test-side Kafka helpers: produce CloudEvents and raw bytes, read topics back."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Self

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment
from aiokafka.errors import KafkaError
from aiokafka.structs import TopicPartition


def cloudevent(
    type_: str, data: Any, *, event_id: str | None = None, source: str = "/tests"
) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": event_id or str(uuid.uuid4()),
        "source": source,
        "type": type_,
        "time": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        "datacontenttype": "application/json",
        "data": data,
    }


class KafkaTestClient:
    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self._producer: AIOKafkaProducer | None = None

    async def __aenter__(self) -> KafkaTestClient:
        self._producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all")
        await self._producer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._producer is not None
        await self._producer.stop()

    async def send_raw(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        assert self._producer is not None
        await self._producer.send_and_wait(topic, value=value, key=key, headers=headers)

    async def send_event(self, topic: str, event: dict[str, Any], key: str | None = None) -> None:
        await self.send_raw(topic, json.dumps(event).encode(), key.encode() if key else None)

    async def read_all(
        self, topic: str, *, timeout: float = 3.0, isolation_level: str = "read_committed"
    ) -> list[ConsumerRecord[Any, Any]]:
        """Everything currently on the topic (from the beginning)."""
        return await self.read_until(
            topic,
            lambda _records: False,
            timeout=timeout,
            require=False,
            isolation_level=isolation_level,
        )

    async def read_until(
        self,
        topic: str,
        done: Callable[[list[ConsumerRecord[Any, Any]]], bool],
        *,
        timeout: float = 30.0,
        require: bool = True,
        isolation_level: str = "read_committed",
    ) -> list[ConsumerRecord[Any, Any]]:
        """As the contract tells consumers: `read_committed`; `read_uncommitted` also shows
        what aborted transactions left on the log."""
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level=isolation_level,
        )
        await consumer.start()
        try:
            assert self._producer is not None
            # The producer waits for the topic's metadata; the consumer would not.
            partitions = [
                TopicPartition(topic, p) for p in sorted(await self._producer.partitions_for(topic))
            ]
            consumer.assign(partitions)
            await consumer.seek_to_beginning(*partitions)
            records: list[ConsumerRecord[Any, Any]] = []
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                batch = await consumer.getmany(timeout_ms=200)
                for items in batch.values():
                    records.extend(items)
                if done(records):
                    return records
            if require:
                raise AssertionError(
                    f"timed out after {timeout}s on {topic}: {len(records)} records read"
                )
            return records
        finally:
            await consumer.stop()

    async def events(
        self, topic: str, done: Callable[[list[dict[str, Any]]], bool], *, timeout: float = 30.0
    ) -> list[dict[str, Any]]:
        """Decoded CloudEvents on `topic`, read until `done(events)` holds."""

        def decoded(records: list[ConsumerRecord[Any, Any]]) -> list[dict[str, Any]]:
            return [json.loads(r.value) for r in records]

        records = await self.read_until(topic, lambda rs: done(decoded(rs)), timeout=timeout)
        return decoded(records)


class TopicCollector:
    """Reads a topic from the beginning in the background; tests wait on what arrived."""

    def __init__(self, bootstrap: str, topic: str, *, fetch_max_wait_ms: int = 500) -> None:
        """`fetch_max_wait_ms`: lower it to time arrivals closely."""
        self.bootstrap = bootstrap
        self.topic = topic
        self.fetch_max_wait_ms = fetch_max_wait_ms
        self.records: list[ConsumerRecord[Any, Any]] = []
        self.arrived_at: list[float] = []  # time.monotonic() when each record arrived
        self._task: asyncio.Task[None] | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._arrived = asyncio.Event()

    async def __aenter__(self) -> TopicCollector:
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap)
        await producer.start()
        try:
            partitions = [
                TopicPartition(self.topic, p)
                for p in sorted(await producer.partitions_for(self.topic))
            ]
        finally:
            await producer.stop()
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            enable_auto_commit=False,
            isolation_level="read_committed",  # as the contract tells consumers
            fetch_max_wait_ms=self.fetch_max_wait_ms,
            max_partition_fetch_bytes=4 * 1024 * 1024,
        )
        await self._consumer.start()
        self._consumer.assign(partitions)
        await self._consumer.seek_to_beginning(*partitions)
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None and self._consumer is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        await self._consumer.stop()

    async def _run(self) -> None:
        assert self._consumer is not None
        while True:
            batch = await self._consumer.getmany(timeout_ms=100)
            now = time.monotonic()
            for items in batch.values():
                self.records.extend(items)
                self.arrived_at += [now] * len(items)
            if batch:
                self._arrived.set()

    @property
    def events(self) -> list[dict[str, Any]]:
        return [json.loads(r.value) for r in self.records]

    async def wait_records(
        self, count: int, *, timeout: float = 30.0
    ) -> list[ConsumerRecord[Any, Any]]:
        """The raw records, once at least `count` arrived (values need not be JSON)."""
        deadline = time.monotonic() + timeout
        while len(self.records) < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"{self.topic}: {len(self.records)}/{count} records")
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), timeout=min(remaining, 0.5))
        return list(self.records)

    async def wait_for(
        self,
        predicate: Callable[[dict[str, Any]], bool],
        *,
        count: int = 1,
        timeout: float = 30.0,
    ) -> list[dict[str, Any]]:
        """The events matching `predicate`, once at least `count` of them arrived."""
        deadline = time.monotonic() + timeout
        while True:
            found = [e for e in self.events if predicate(e)]
            if len(found) >= count:
                return found
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(
                    f"{self.topic}: {len(found)}/{count} matching events after {timeout}s "
                    f"({len(self.records)} records read)"
                )
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), timeout=min(remaining, 0.5))


class GroupWatcher:
    """Looks at a consumer group through the admin client every 0.1 s in the
    background, while `watching()`; subclasses say what they keep (`_observe`)."""

    def __init__(self, bootstrap: str, group: str) -> None:
        self.bootstrap, self.group = bootstrap, group

    async def _observe(self, admin: AIOKafkaAdminClient) -> None:
        raise NotImplementedError

    async def _poll(self) -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        await admin.start()
        try:
            while True:
                with contextlib.suppress(KafkaError):  # the group's coordinator is not there yet
                    await self._observe(admin)
                await asyncio.sleep(0.1)
        finally:
            await admin.close()

    @contextlib.asynccontextmanager
    async def watching(self) -> AsyncIterator[Self]:
        task = asyncio.create_task(self._poll())
        try:
            yield self
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


class CommittedOffsets(GroupWatcher):
    """Polls a consumer group's committed offsets in the background and remembers every
    move back (after a rebalance a stale commit shows as one)."""

    def __init__(self, bootstrap: str, group: str) -> None:
        super().__init__(bootstrap, group)
        self.latest: dict[TopicPartition, int] = {}
        self.backwards: list[tuple[TopicPartition, int, int]] = []  # partition, from, to

    async def _observe(self, admin: AIOKafkaAdminClient) -> None:
        committed = await admin.list_consumer_group_offsets(self.group)
        for tp, meta in committed.items():
            if meta.offset < 0:
                continue
            before = self.latest.get(tp, -1)
            if meta.offset < before:
                self.backwards.append((tp, before, meta.offset))
            self.latest[tp] = meta.offset

    async def wait_for(self, wanted: dict[TopicPartition, int], *, timeout: float = 60.0) -> None:
        """Until the group committed at least `wanted` on each of those partitions."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(self.latest.get(tp, -1) >= offset for tp, offset in wanted.items()):
                return
            await asyncio.sleep(0.1)
        raise AssertionError(f"{self.group} committed {self.latest}, not yet {wanted}")


@dataclass(frozen=True)
class GroupSnapshot:
    """A consumer group as the broker described it: its state and each member's
    partitions (empty while a rebalance has not given it any yet)."""

    state: str
    members: dict[str, frozenset[TopicPartition]]  # member id -> partitions

    def settled(self) -> bool:
        """Stable, and every member owns partitions, no partition twice."""
        owned = [tp for partitions in self.members.values() for tp in partitions]
        return (
            self.state == "Stable" and all(self.members.values()) and len(owned) == len(set(owned))
        )


class GroupAssignments(GroupWatcher):
    """Polls a consumer group's description in the background and keeps every distinct
    snapshot: which member owned which partitions, as the group coordinator saw it."""

    def __init__(self, bootstrap: str, group: str) -> None:
        super().__init__(bootstrap, group)
        self.snapshots: list[GroupSnapshot] = []

    async def _observe(self, admin: AIOKafkaAdminClient) -> None:
        [response] = await admin.describe_consumer_groups([self.group])
        [described] = response.groups
        # (error, group, state, protocol type, protocol, members, ...); a member is
        # (member id, ..., assignment): the fields between depend on the version.
        members = {
            member[0]: frozenset(
                ConsumerProtocolMemberAssignment.decode(member[-1]).partitions()
                if member[-1]
                else ()
            )
            for member in described[5]
        }
        snapshot = GroupSnapshot(described[2], members)
        if not self.snapshots or self.snapshots[-1] != snapshot:
            self.snapshots.append(snapshot)

    async def wait_settled(
        self, members: int, *, without: Iterable[str] = (), timeout: float = 120.0
    ) -> GroupSnapshot:
        """The group once settled with `members` members, none of them in `without` (a
        killed member stays in the group until its session times out)."""
        gone = set(without)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.snapshots:
                latest = self.snapshots[-1]
                if (
                    latest.settled()
                    and len(latest.members) == members
                    and not gone & latest.members.keys()
                ):
                    return latest
            await asyncio.sleep(0.1)
        last = self.snapshots[-1] if self.snapshots else None
        raise AssertionError(f"{self.group} not settled with {members} members: {last}")

    def owners(self) -> dict[TopicPartition, set[str]]:
        """Every member that owned each partition in some snapshot."""
        found: dict[TopicPartition, set[str]] = {}
        for snapshot in self.snapshots:
            for member, partitions in snapshot.members.items():
                for tp in partitions:
                    found.setdefault(tp, set()).add(member)
        return found


async def record_ends(client: KafkaTestClient, *topics: str) -> dict[TopicPartition, int]:
    """Per partition, the offset after its last record: what a caught-up group commits
    (a transaction's commit marker after it takes an offset but is no record)."""
    ends: dict[TopicPartition, int] = {}
    for topic in topics:
        for record in await client.read_all(topic, timeout=2.0):
            tp = TopicPartition(topic, record.partition)
            ends[tp] = max(ends.get(tp, 0), record.offset + 1)
    return ends


def keys_behind_newest(records: Iterable[ConsumerRecord[Any, Any]]) -> dict[str, tuple[int, int]]:
    """Keys whose last record (what compaction keeps) is older than their newest one, by
    the CloudEvent data's `version`: key -> (last version, highest version)."""
    last: dict[str, int] = {}
    highest: dict[str, int] = {}
    for record in sorted(records, key=lambda r: (r.partition, r.offset)):
        key, version = record.key.decode(), json.loads(record.value)["data"]["version"]
        last[key] = version
        highest[key] = max(highest.get(key, 0), version)
    return {key: (last[key], highest[key]) for key in last if last[key] != highest[key]}
