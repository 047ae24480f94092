"""OffsetCommits: after the batch, in order, only for partitions still assigned, and a
refused commit is retried with the next batch, not in a loop of its own. Through a
rebalance: batches in flight settle first, what they applied is committed by the owner,
and nothing of a revoked generation is committed afterwards (A -> B -> A)."""

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
    commits.applied(
        consumer_, [Record("a", 0, 5), Record("a", 0, 6), Record("a", 1, 2)], generation=0
    )
    await commits.drain()
    assert consumer.commits == [{A0: 7, A1: 3}]


async def test_a_partition_no_longer_assigned_is_left_to_its_new_owner() -> None:
    consumer, commits = FakeConsumer({A1}), OffsetCommits()
    consumer_: Any = consumer
    commits.applied(consumer_, [Record("a", 0, 5), Record("a", 1, 2)], generation=0)
    await commits.drain()
    assert consumer.commits == [{A1: 3}]


async def test_a_refused_commit_goes_with_the_next_batch() -> None:
    consumer, commits = FakeConsumer({A0, A1}), OffsetCommits()
    consumer_: Any = consumer
    consumer.refuse = 1
    commits.applied(consumer_, [Record("a", 0, 5)], generation=0)
    await commits.drain()
    assert consumer.commits == [], "no retry loop of its own"
    commits.applied(consumer_, [Record("a", 1, 0)], generation=0)
    await commits.drain()
    assert consumer.commits == [{A0: 6, A1: 1}]


async def test_commits_are_spaced_and_the_latest_offsets_win() -> None:
    consumer, commits = FakeConsumer({A0}), OffsetCommits(min_interval_seconds=0.2)
    consumer_: Any = consumer
    for offset in range(20):  # 20 small batches within ~0.1 s
        commits.applied(consumer_, [Record("a", 0, offset)], generation=0)
        await asyncio.sleep(0.005)
    assert consumer.commits == [{A0: 1}], "the first goes at once, the rest wait"
    await commits.drain()  # at shutdown nothing waits for the interval
    assert consumer.commits == [{A0: 1}, {A0: 20}]


async def test_a_revocation_settles_batches_commits_what_they_applied_then_drops_the_rest() -> None:
    consumer = FakeConsumer({A0, A1})
    consumer_: Any = consumer
    order: list[str] = []

    async def settle() -> None:
        order.append("settle")
        assert commits.generation is None, "no batch starts while partitions are given up"
        await asyncio.sleep(0.01)
        # The batch in flight ends within the wait and marks its offsets.
        commits.applied(consumer_, [Record("a", 1, 9)], generation=0)

    commits = OffsetCommits(min_interval_seconds=60.0, settle=settle)
    commits.applied(consumer_, [Record("a", 0, 5)], generation=0)  # committed at once
    await asyncio.sleep(0.01)
    commits.applied(consumer_, [Record("a", 0, 6)], generation=0)  # waits for the interval
    await asyncio.sleep(0.01)
    assert consumer.commits == [{A0: 6}]
    await commits.on_partitions_revoked({A0, A1})
    assert order == ["settle"]
    assert consumer.commits == [{A0: 6}, {A0: 7, A1: 10}], "committed by the owner, at once"
    await commits.on_partitions_assigned({A0, A1})
    assert commits.generation == 1


async def test_no_stale_offset_is_committed_after_a_move_a_b_a() -> None:
    consumer = FakeConsumer({A0})
    consumer_: Any = consumer
    commits = OffsetCommits()
    generation = commits.generation
    assert generation == 0
    consumer.refuse = 1  # the last commit as owner does not get through
    commits.applied(consumer_, [Record("a", 0, 5)], generation=generation)
    await commits.on_partitions_revoked({A0})  # A0 goes to B, which commits up to 50
    await commits.on_partitions_assigned(set())
    # A batch of A's that ends only now, after the revocation.
    commits.applied(consumer_, [Record("a", 0, 7)], generation=generation)
    await commits.on_partitions_revoked(set())
    await commits.on_partitions_assigned({A0})  # ... and A0 comes back to A
    commits.applied(consumer_, [Record("a", 0, 8)], generation=generation)
    await commits.drain()
    assert consumer.commits == [], "neither the refused nor the late offsets of A"
    new = commits.generation
    assert new == 2
    commits.applied(consumer_, [Record("a", 0, 50)], generation=new)
    await commits.drain()
    assert consumer.commits == [{A0: 51}]


async def test_a_commit_stuck_through_a_revocation_is_abandoned_not_retried_later() -> None:
    consumer = FakeConsumer({A0})
    consumer_: Any = consumer
    commits = OffsetCommits(commit_limit_seconds=0.05)
    stuck = asyncio.Event()

    async def commit(offsets: dict[TopicPartition, int]) -> None:
        await stuck.wait()  # the coordinator does not answer
        raise KafkaConnectionError("coordinator away")

    consumer.commit = commit  # type: ignore[method-assign]
    commits.applied(consumer_, [Record("a", 0, 5)], generation=0)
    await asyncio.sleep(0.01)
    await commits.on_partitions_revoked({A0})
    await commits.on_partitions_assigned({A0})
    stuck.set()
    consumer.commit = FakeConsumer.commit.__get__(consumer)  # type: ignore[method-assign]
    commits.applied(consumer_, [Record("a", 0, 60)], generation=1)
    await commits.drain()
    assert consumer.commits == [{A0: 61}], "offset 6 of the revoked generation is gone"


async def test_after_stop_no_batch_is_applied() -> None:
    settled: list[bool] = []

    async def settle() -> None:
        settled.append(True)

    commits = OffsetCommits(settle=settle)
    await commits.stop()
    assert settled == [True]
    assert commits.generation is None
