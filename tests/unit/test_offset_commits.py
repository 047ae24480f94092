"""OffsetCommits: after the batch, in order, only for partitions still assigned, and a
refused commit is retried with the next batch, not in a loop of its own."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from aiokafka.errors import KafkaConnectionError
from aiokafka.structs import TopicPartition

from services.common.kafka import OffsetCommits

A0, A1 = TopicPartition("a", 0), TopicPartition("a", 1)


@dataclass
class Record:
    topic: str
    partition: int
    offset: int


class FakeConsumer:
    def __init__(self, assigned: set[TopicPartition]) -> None:
        self.assigned = assigned
        self.commits: list[dict[TopicPartition, int]] = []
        self.refuse = 0

    def assignment(self) -> set[TopicPartition]:
        return self.assigned

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        await asyncio.sleep(0)
        if self.refuse:
            self.refuse -= 1
            raise KafkaConnectionError("coordinator away")
        self.commits.append(dict(offsets))


async def test_the_next_offset_of_each_partition_is_committed() -> None:
    consumer, commits = FakeConsumer({A0, A1}), OffsetCommits()
    consumer_: Any = consumer
    commits.applied(consumer_, [Record("a", 0, 5), Record("a", 0, 6), Record("a", 1, 2)])
    await commits.drain()
    assert consumer.commits == [{A0: 7, A1: 3}]


async def test_a_partition_no_longer_assigned_is_left_to_its_new_owner() -> None:
    consumer, commits = FakeConsumer({A1}), OffsetCommits()
    consumer_: Any = consumer
    commits.applied(consumer_, [Record("a", 0, 5), Record("a", 1, 2)])
    await commits.drain()
    assert consumer.commits == [{A1: 3}]


async def test_a_refused_commit_goes_with_the_next_batch() -> None:
    consumer, commits = FakeConsumer({A0, A1}), OffsetCommits()
    consumer_: Any = consumer
    consumer.refuse = 1
    commits.applied(consumer_, [Record("a", 0, 5)])
    await commits.drain()
    assert consumer.commits == [], "no retry loop of its own"
    commits.applied(consumer_, [Record("a", 1, 0)])
    await commits.drain()
    assert consumer.commits == [{A0: 6, A1: 1}]


async def test_commits_are_spaced_and_the_latest_offsets_win() -> None:
    consumer, commits = FakeConsumer({A0}), OffsetCommits(min_interval_seconds=0.2)
    consumer_: Any = consumer
    for offset in range(20):  # 20 small batches within ~0.1 s
        commits.applied(consumer_, [Record("a", 0, offset)])
        await asyncio.sleep(0.005)
    assert consumer.commits == [{A0: 1}], "the first goes at once, the rest wait"
    await commits.drain()  # at shutdown nothing waits for the interval
    assert consumer.commits == [{A0: 1}, {A0: 20}]
