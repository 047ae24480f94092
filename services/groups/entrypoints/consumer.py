"""The Kafka entrypoint: one batch subscriber over the inbound topics (bookings, starts,
registrations, commands).

Offsets are committed (in the background, by `OffsetCommits`) only after the batch's
transaction committed (see `manual_batch_subscriber` for the FastStream defaults
replaced), and never for a batch of partitions a rebalance took away meanwhile (the
inbox makes applying it twice harmless, but its offset could pass the new owner's).
There is no NACK: a failed batch is retried inside `BatchApplier.apply`
with backoff, where FastStream's NACK would re-read at once in a hot loop.
"""

from __future__ import annotations

from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage

from services.common.kafka import manual_batch_subscriber
from services.common.records import batch_records
from services.groups.bootstrap import GroupsService


def register_consumer(broker: KafkaBroker, service: GroupsService) -> None:
    settings = service.settings
    commits = service.offset_commits

    @manual_batch_subscriber(
        broker,
        *settings.topics.inbound,
        group_id=settings.groups.consumer_group,
        max_records=500,
        fetch_min_bytes=settings.kafka.fetch_min_bytes,
        listener=commits,
        # Range: partition N of every inbound topic goes to the same process, so one
        # customer's bookings, starts, registrations and commands meet in one process
        # (no lock waits).
        partition_assignment_strategy=(RangePartitionAssignor,),
        title="groups-inbound",
        description=(
            "Bookings, vaccination starts, vaccination registrations and group commands "
            "(CONTRACT.md)."
        ),
    )
    async def consume_inbound(msg: KafkaMessage) -> None:
        generation = commits.generation
        if generation is None:
            return  # its partitions are being given up: read again from the committed offset
        raw, consumer = msg.raw_message, msg.consumer
        await service.pipeline.submit(
            batch_records(raw), lambda: commits.applied(consumer, raw, generation=generation)
        )
