"""The export's Kafka entrypoint: the groups service's events, in batches.

Offsets are committed (in the background, by `OffsetCommits`) only after every record
of the batch was acknowledged by the broker (see `manual_batch_subscriber` for the
FastStream defaults replaced). A batch that fails for another reason than the broker
(retried) ends the process (`ExportService.stop_serving`).
"""

from __future__ import annotations

from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage

from services.common.kafka import manual_batch_subscriber
from services.common.records import batch_records
from services.export.bootstrap import ExportService


def register_consumer(broker: KafkaBroker, service: ExportService) -> None:
    settings = service.settings

    @manual_batch_subscriber(
        broker,
        settings.topics.events,
        group_id=settings.export.consumer_group,
        max_records=1000,
        fetch_min_bytes=settings.kafka.fetch_min_bytes,
        title="export-events",
        description="customer-groups.events.v1 -> customer-groups.export.v1",
    )
    async def consume_events(msg: KafkaMessage) -> None:
        service.check_serving()
        try:
            with service.metrics.batches.time():
                await service.pipeline.process(batch_records(msg.raw_message))
        except Exception as error:
            # FastStream would log it and go on with the next batch, whose offsets would
            # then pass this one's records.
            service.stop_serving(error)
            raise
        service.offset_commits.applied(msg.consumer, msg.raw_message)
