"""The export's one publisher: the live pipeline and the backfill both hand it their
(key, value) messages, and it sends them as whole per-partition batches
(`services.common.kafka.publish_in_batches`).

A record must land on the partition aiokafka's default partitioner picks for its key
(Kafka's murmur2 of the key over all partitions), as the records already on the topic did,
or the compacted topic would keep one last value per key and partition:
`publish_in_batches` partitions keys with `default_partition`, tested against aiokafka's own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaProducer

from services.common.envelope import CLOUDEVENT_HEADERS
from services.common.kafka import OutgoingRecord, publish_in_batches


class ExportPublisher:
    """Sends (key, value) messages to the export topic on an idempotent producer."""

    def __init__(self, producer: AIOKafkaProducer, topic: str) -> None:
        self._producer = producer
        self._topic = topic

    async def publish(
        self,
        messages: Sequence[tuple[bytes, bytes]],
        *,
        dead_letters: Sequence[OutgoingRecord] = (),
    ) -> asyncio.Future[Any]:
        """Hands `messages` (and any `dead_letters`, each with its own topic and headers)
        to the producer; the returned future completes once the broker acknowledged every
        one of them (and raises if it refused any). Every export record is a CloudEvent in
        structured mode, so it carries the CloudEvents `content-type` header."""
        records: list[OutgoingRecord] = [
            (self._topic, key, value, CLOUDEVENT_HEADERS) for key, value in messages
        ]
        return await publish_in_batches(self._producer, [*records, *dead_letters])
