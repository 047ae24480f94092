"""Reads the service's output topics in the background and counts what arrived, when."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Self

from aiokafka import AIOKafkaConsumer

from bench.infra import partitions_of

OnRecord = Callable[[str, bytes, int, float], None]  # topic, value, timestamp ms, arrival


class OutputCollector:
    """Counts records per topic from the moment it starts (earlier records are skipped).

    `arrivals(topic)` gives, for the n-th record of a topic, when it was read; `wait`
    returns once every topic has at least the wanted count.
    """

    def __init__(
        self, bootstrap: str, topics: Sequence[str], *, on_record: OnRecord | None = None
    ) -> None:
        self.bootstrap = bootstrap
        self.topics = list(topics)
        self.on_record = on_record
        self.counts: dict[str, int] = dict.fromkeys(self.topics, 0)
        self.rejected = 0
        self.last_arrival = 0.0
        self._arrival_marks: dict[str, list[tuple[int, float]]] = {t: [] for t in self.topics}
        self._total_marks: list[tuple[int, float]] = []  # records of every topic together
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()

    async def __aenter__(self) -> Self:
        partitions = await partitions_of(self.bootstrap, self.topics)
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            enable_auto_commit=False,
            # As the services' consumers (see manual_batch_subscriber): a long fetch wait
            # delays records of partitions outside the fetch in flight.
            fetch_max_wait_ms=20,
            max_partition_fetch_bytes=4 * 1024 * 1024,
            isolation_level="read_committed",  # the relay publishes in transactions
        )
        await self._consumer.start()
        self._consumer.assign(partitions)
        await self._consumer.seek_to_end(*partitions)
        for partition in partitions:  # resolve the positions now, not at the first fetch
            await self._consumer.position(partition)
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._task is not None and self._consumer is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        await self._consumer.stop()

    async def _run(self) -> None:
        assert self._consumer is not None
        while True:
            batch = await self._consumer.getmany(timeout_ms=200, max_records=5000)
            if not batch:
                continue
            now = time.perf_counter()
            for partition, records in batch.items():
                topic = partition.topic
                for record in records:
                    value = record.value or b""
                    if b"command_rejected" in value:
                        self.rejected += 1
                    if self.on_record is not None:
                        self.on_record(topic, value, record.timestamp, now)
                self.counts[topic] += len(records)
                self._arrival_marks[topic].append((self.counts[topic], now))
            self._total_marks.append((sum(self.counts.values()), now))
            self.last_arrival = now
            self._changed.set()

    def reached_at(self, topic: str | None, count: int) -> float | None:
        """When the `count`-th record of `topic` (None: of all topics together) had
        arrived (None: not yet)."""
        marks = self._total_marks if topic is None else self._arrival_marks[topic]
        for total, at in marks:
            if total >= count:
                return at
        return None

    async def wait(self, wanted: dict[str, int], *, limit_s: float) -> bool:
        """True once every topic reached its count; False after `limit_s` seconds."""
        deadline = time.perf_counter() + limit_s
        while any(self.counts[t] < n for t, n in wanted.items()):
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                return False
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout=min(remaining, 0.5))
        return True
