"""Wires the export service once from settings."""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo

from aiokafka import AIOKafkaProducer
from faststream.kafka import KafkaBroker

from services.common.kafka import (
    OffsetCommits,
    build_broker,
    export_topic_names,
    start_producer,
    wait_for_topics,
)
from services.common.serving import FatalStop
from services.common.settings import (
    ExportSettings,
    GroupsSettings,
    ServiceSettings,
    refuse_unsafe,
)
from services.export.adapters.metrics import ExportMetrics
from services.export.domain.records import Pseudonymizer, RecordBuilder
from services.export.service_layer.pipeline import SERVICE_NAME, ExportPipeline

log = logging.getLogger(__name__)


@dataclass
class ExportSettingsBundle(ServiceSettings):
    """`database`: only the backfill and the snapshot read the groups database; the
    service does not."""

    export: ExportSettings = field(default_factory=ExportSettings)
    # GROUPS_TIMEZONE: the zone the groups service writes instants in. Records format
    # every instant in it, so a record built from a row equals the one built from the event.
    timezone: str = field(default_factory=lambda: GroupsSettings().timezone)


def unsafe_settings(settings: ExportSettingsBundle) -> list[str]:
    """What a production process may not run with (dev conveniences need APP_ENV=dev)."""
    key = settings.export.pseudonym_key
    if settings.app.dev_mode or (key is not None and key.get_secret_value()):
        return []
    return ["EXPORT_PSEUDONYM_KEY is not set: the export needs its own secret pseudonym key"]


def pseudonymizer_from(settings: ExportSettingsBundle) -> Pseudonymizer:
    refuse_unsafe(SERVICE_NAME, unsafe_settings(settings))
    key = settings.export.pseudonym_key
    key_id = settings.export.pseudonym_key_id
    if key is None or not key.get_secret_value():
        # No key in the source: a dev process pseudonymises with a key of its own.
        log.warning("EXPORT_PSEUDONYM_KEY not set: a random key for this process (dev mode)")
        return Pseudonymizer(secrets.token_bytes(32), key_id=key_id)
    return Pseudonymizer(key.get_secret_value().encode(), key_id=key_id)


def record_builder_from(settings: ExportSettingsBundle) -> RecordBuilder:
    """The one way records are built in this deployment (service, backfill, snapshot)."""
    return RecordBuilder(
        pseudonymizer_from(settings),
        ZoneInfo(settings.timezone),
        include_personnummer=settings.export.include_personnummer,
    )


class ExportService:
    def __init__(self, settings: ExportSettingsBundle | None = None) -> None:
        self.settings = settings or ExportSettingsBundle()
        s = self.settings
        self.metrics = ExportMetrics()
        self.builder = record_builder_from(s)
        self.pipeline = ExportPipeline(
            self._new_producer,
            export_topic=s.topics.export,
            dlq_topic=s.topics.dlq,
            builder=self.builder,
            metrics=self.metrics,
            max_event_bytes=s.kafka.max_message_bytes,
        )
        self.broker: KafkaBroker = build_broker(s, client_id=SERVICE_NAME)
        # A rebalance or a stop first settles the batch in flight (see ExportPipeline).
        self.offset_commits = OffsetCommits(settle=self.pipeline.settle)
        self.ready = False
        self.fatal = FatalStop(SERVICE_NAME)
        self.failure: BaseException | None = None

    async def _new_producer(self) -> AIOKafkaProducer:
        return await start_producer(self.settings.kafka, client_id=SERVICE_NAME)

    async def prepare(self) -> None:
        topics = self.settings.topics
        await wait_for_topics(topics, self.settings.kafka, needed=export_topic_names(topics))
        if self.settings.export.include_personnummer:
            log.warning("EXPORT_INCLUDE_PERSONNUMMER is on: the export carries personnummer")

    async def mark_ready(self) -> None:
        self.ready = True

    def check_serving(self) -> None:
        """Raises once a batch failed: nothing after it may be exported or committed."""
        if self.failure is not None:
            raise RuntimeError("the export stopped after an unexpected error") from self.failure

    def stop_serving(self, error: BaseException) -> None:
        """A batch ended without being exported (the pipeline retries every broker
        error, so this is a bug): the process ends, and a restart re-delivers from the
        last committed offset."""
        if self.failure is None:
            self.failure = error
            self.ready = False
            log.error("an export batch ended without being exported", exc_info=error)
            self.fatal("an export batch ended without being exported", error)

    async def stop(self) -> None:
        self.ready = False
        await self.pipeline.close()
