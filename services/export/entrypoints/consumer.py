"""The export's Kafka entrypoint: the groups service's events, in batches.

Offsets are committed (in the background, by `OffsetCommits`) only after every record
of the batch was acknowledged by the broker (see `manual_batch_subscriber` for the
FastStream defaults replaced). Before a rebalance takes partitions away, the batch in
flight is published in full or stopped (`ExportPipeline.settle`), so the partitions'
next owner never publishes before it. A batch that fails for another reason than the
broker (retried) ends the process (`ExportService.stop_serving`).
"""

from __future__ import annotations

from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage

from services.common.kafka import manual_batch_subscriber
from services.common.records import batch_records
from services.export.bootstrap import ExportService
from services.export.service_layer.pipeline import BatchDiscarded


def register_consumer(broker: KafkaBroker, service: ExportService) -> None:
    settings = service.settings
    commits = service.offset_commits

    @manual_batch_subscriber(
        broker,
        settings.topics.events,
        group_id=settings.export.consumer_group,
        max_records=1000,
        fetch_min_bytes=settings.kafka.fetch_min_bytes,
        listener=commits,
        title="export-events",
        description="customer-groups.events.v1 -> customer-groups.export.v1",
    )
    async def consume_events(msg: KafkaMessage) -> None:
        service.check_serving()
        generation = commits.generation
        if generation is None:
            return  # its partitions are being given up: read again from the committed offset
        raw, consumer = msg.raw_message, msg.consumer

        def published() -> None:
            commits.applied(consumer, raw, generation=generation)

        with service.metrics.batches.time():
            try:
                await service.pipeline.process(batch_records(raw), published)
            except BatchDiscarded:
                return
            except Exception as error:
                # FastStream would log it and go on with the next batch, whose offsets
                # would then pass this one's records.
                service.stop_serving(error)
                raise
