"""The export's Kafka entrypoint: the groups service's events, in batches.

Manual acknowledgement: offsets are committed only after every record of the batch was
acknowledged by the broker (see services/groups/entrypoints/consumer.py for why the
FastStream defaults are replaced).
"""

from __future__ import annotations

from faststream import AckPolicy
from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage

from services.common.records import batch_records, keep_raw_bytes
from services.export.bootstrap import ExportService


def register_consumer(broker: KafkaBroker, service: ExportService) -> None:
    settings = service.settings

    @broker.subscriber(
        settings.topics.events,
        group_id=settings.export.consumer_group,
        batch=True,
        max_records=1000,
        # FastStream sleeps batch_timeout_ms again after an empty poll, so this bounds
        # the extra wait of a record that arrives while idle (100 ms cost ~50 ms p50).
        batch_timeout_ms=10,
        auto_offset_reset="earliest",
        ack_policy=AckPolicy.MANUAL,
        decoder=keep_raw_bytes,
        max_poll_interval_ms=30 * 60 * 1000,
        title="export-events",
        description="customer-groups.events.v1 -> customer-groups.export.v1",
    )
    async def consume_events(msg: KafkaMessage) -> None:
        with service.metrics.batches.time():
            await service.pipeline.process(batch_records(msg.raw_message))
        await msg.ack()
