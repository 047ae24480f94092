"""The Kafka entrypoint: one batch subscriber over the three inbound topics.

FastStream's defaults are replaced on purpose:
- `AckPolicy.MANUAL`: the default (ack first) would commit before processing.
  Offsets are committed by `msg.ack()` only after the batch's transaction committed.
  `ack()` commits every consumed position, which is safe here because the batch is
  everything consumed and nothing else is in flight (one batch at a time).
- No NACK: a failed batch is retried inside `InboundProcessor.process` with backoff;
  FastStream's NACK would re-read at once in a hot loop.
- The raw record bytes are handed over untouched (no FastStream decoding), so a
  poison record reaches the dead-letter topic exactly as it arrived.
"""

from __future__ import annotations

from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from faststream import AckPolicy
from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage

from services.common.records import batch_records, keep_raw_bytes
from services.groups.bootstrap import GroupsService


def register_consumer(broker: KafkaBroker, service: GroupsService) -> None:
    settings = service.settings

    @broker.subscriber(
        *settings.topics.inbound,
        group_id=settings.groups.consumer_group,
        batch=True,
        max_records=500,
        # FastStream sleeps batch_timeout_ms again after an empty poll, so this bounds
        # the extra wait of a record that arrives while idle (100 ms cost ~50 ms p50).
        batch_timeout_ms=10,
        auto_offset_reset="earliest",
        ack_policy=AckPolicy.MANUAL,
        decoder=keep_raw_bytes,
        # A database outage blocks a batch while it waits; stay in the group meanwhile.
        max_poll_interval_ms=30 * 60 * 1000,
        # Range: partition N of every inbound topic goes to the same process, so one
        # customer's bookings, starts and commands meet in one process (no lock waits).
        partition_assignment_strategy=(RangePartitionAssignor,),
        title="groups-inbound",
        description="Bookings, vaccination starts and group commands (CONTRACT.md).",
    )
    async def consume_inbound(msg: KafkaMessage) -> None:
        records = batch_records(msg.raw_message)
        with service.metrics.batches.time():
            await service.processor.process(records)
        await msg.ack()
