"""Publishes the backfill's records to the export topic a chunk at a time, as whole
per-partition batches (`services.common.kafka.publish_in_batches`).

A record must land on the partition the live export's `producer.send` picks for its key
(aiokafka's default partitioner: Kafka's murmur2 of the key over all partitions), or the
compacted topic would keep one last value per key and partition: `publish_in_batches`
partitions keys with `default_partition`, tested against aiokafka's own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaProducer

from services.common.kafka import publish_in_batches


class BatchPublisher:
    """Sends chunks of (key, value) to one topic on an idempotent producer."""

    def __init__(self, producer: AIOKafkaProducer, topic: str) -> None:
        self._producer = producer
        self._topic = topic

    async def publish(self, messages: Sequence[tuple[bytes, bytes]]) -> asyncio.Future[Any]:
        """Hands `messages` to the producer; the returned future completes once the
        broker acknowledged every one of them (and raises if it refused any)."""
        return await publish_in_batches(
            self._producer, [(self._topic, key, value, ()) for key, value in messages]
        )
