"""The relay's rules that need no broker: how records are batched (a suspect row alone),
which refusals park a row, and which part of a refused round may still be committed."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka.errors import (
    CorruptRecordException,
    MessageSizeTooLargeError,
    OutOfOrderSequenceNumber,
    TopicAuthorizationFailedError,
    UnknownError,
    for_code,
)
from aiokafka.producer.message_accumulator import BatchBuilder
from aiokafka.structs import TopicPartition

from services.common.kafka import SentBatch, send_batches
from services.groups.adapters.outbox_relay import (
    ROW_REFUSALS,
    TOPIC_REFUSALS,
    InvalidRecordError,
    _commit_what_was_taken,
)


class FakeProducer:
    """What `send_batches` and the commit use of a producer, recording what it is asked."""

    def __init__(self, partitions: int = 3) -> None:
        self.partitions = set(range(partitions))
        self.batches: list[tuple[str, int, int]] = []  # topic, partition, records
        self.committed = self.aborted = 0

    async def partitions_for(self, _topic: str) -> set[int]:
        return self.partitions

    def create_batch(self) -> BatchBuilder:
        return BatchBuilder(512 * 1024, 0, is_transactional=True)

    async def send_batch(self, batch: BatchBuilder, topic: str, *, partition: int) -> Any:
        self.batches.append((topic, partition, batch.record_count()))
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future

    async def commit_transaction(self) -> None:
        self.committed += 1

    async def abort_transaction(self) -> None:
        self.aborted += 1


def records(n: int, key: bytes = b"k") -> list[tuple[str, bytes, bytes, list[Any]]]:
    return [("t", key, f"v{i}".encode(), []) for i in range(n)]


async def test_a_suspect_record_goes_in_a_batch_of_its_own_and_order_is_kept() -> None:
    producer = FakeProducer()
    sent = await send_batches(producer, records(6), alone={2, 3})
    assert [b.positions for b in sent] == [[0, 1], [2], [3], [4, 5]]
    assert len({b.partition for b in sent}) == 1, "one key, one partition"
    assert [count for _, _, count in producer.batches] == [2, 1, 1, 2]


def _sent(*partitions: int) -> list[SentBatch]:
    loop = asyncio.get_running_loop()
    return [
        SentBatch([i], TopicPartition("t", p), loop.create_future())
        for i, p in enumerate(partitions)
    ]


async def test_of_a_refused_round_the_batches_before_the_refusal_are_committed() -> None:
    producer = FakeProducer()
    sent = _sent(0, 0, 0, 1)
    refused = MessageSizeTooLargeError()
    errors = [None, refused, OutOfOrderSequenceNumber(), None]
    assert await _commit_what_was_taken(producer, sent, errors) == [0, 3]
    assert (producer.committed, producer.aborted) == (1, 0)


async def test_a_batch_taken_after_a_refused_one_of_its_partition_aborts_the_round() -> None:
    producer = FakeProducer()
    sent = _sent(0, 0, 1)
    errors = [MessageSizeTooLargeError(), None, None]
    assert await _commit_what_was_taken(producer, sent, errors) == []
    assert (producer.committed, producer.aborted) == (0, 1)


async def test_nothing_taken_is_aborted_not_committed() -> None:
    producer = FakeProducer()
    errors = [TopicAuthorizationFailedError()]
    assert await _commit_what_was_taken(producer, _sent(0), errors) == []
    assert (producer.committed, producer.aborted) == (0, 1)


@pytest.mark.parametrize(
    ("error", "parks"),
    [
        (MessageSizeTooLargeError(), True),
        (CorruptRecordException(), True),
        (for_code(87)(), True),  # INVALID_RECORD, which aiokafka 0.14 has no class for
        (UnknownError(), False),
        (TopicAuthorizationFailedError(), False),
        (OutOfOrderSequenceNumber(), False),
    ],
)
def test_which_refusals_park_a_row(error: Exception, parks: bool) -> None:
    assert isinstance(error, ROW_REFUSALS) is parks
    assert not (isinstance(error, ROW_REFUSALS) and isinstance(error, TOPIC_REFUSALS))


def test_invalid_record_is_known_by_its_code() -> None:
    assert for_code(87) is InvalidRecordError


def test_a_transaction_started_while_the_last_ones_markers_are_written_asks_again_soon() -> None:
    # aiokafka reads this module constant when AddPartitionsToTxn is answered
    # CONCURRENT_TRANSACTIONS; its own 20 ms was a wait for every round started right
    # after another (an aiokafka that no longer reads it fails here).
    import inspect

    import aiokafka.producer.sender as sender

    from services.groups.adapters import outbox_relay

    handler = inspect.getsource(sender.AddPartitionsToTxnHandler.handle_response)
    assert "BACKOFF_OVERRIDE" in handler
    assert sender.BACKOFF_OVERRIDE == outbox_relay.CONCURRENT_TRANSACTIONS_RETRY_SECONDS
    assert outbox_relay.CONCURRENT_TRANSACTIONS_RETRY_SECONDS < 0.02
