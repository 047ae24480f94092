"""Publishes the backfill's records to the export topic a chunk at a time, as whole
per-partition batches (aiokafka's `create_batch` / `send_batch`).

`producer.send` costs a coroutine, a partitioner call in pure Python and a future per
record, which was most of the backfill's CPU. Here each record is only appended to the
batch of its partition, and the broker's acknowledgement is awaited per batch.

A record must land on the partition the live export's `producer.send` picks for its key
(aiokafka's default partitioner: Kafka's murmur2 of the key over all partitions), or the
compacted topic would keep one last value per key and partition: `default_partition`
(services.common.kafka) is that partitioner, tested against aiokafka's own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaProducer

from services.common.kafka import default_partition


class BatchPublisher:
    """Sends chunks of (key, value) to one topic on an idempotent producer."""

    def __init__(self, producer: AIOKafkaProducer, topic: str) -> None:
        self._producer = producer
        self._topic = topic

    async def publish(self, messages: Sequence[tuple[bytes, bytes]]) -> asyncio.Future[Any]:
        """Hands `messages` to the producer; the returned future completes once the
        broker acknowledged every one of them (and raises if it refused any)."""
        partitions = sorted(await self._producer.partitions_for(self._topic))
        by_partition: dict[int, list[tuple[bytes, bytes]]] = {}
        for key, value in messages:
            by_partition.setdefault(default_partition(key, partitions), []).append((key, value))
        acks = []
        for partition, keyed in by_partition.items():
            batch = self._producer.create_batch()
            for key, value in keyed:
                if batch.append(key=key, value=value, timestamp=None) is None:  # full
                    acks.append(await self._send(batch, partition))
                    batch = self._producer.create_batch()
                    batch.append(key=key, value=value, timestamp=None)  # the first always fits
            acks.append(await self._send(batch, partition))
        return asyncio.gather(*acks)

    async def _send(self, batch: Any, partition: int) -> asyncio.Future[Any]:
        batch.close()  # complete: no linger waiting for records that will not come
        ack: asyncio.Future[Any] = await self._producer.send_batch(
            batch, self._topic, partition=partition
        )
        return ack
