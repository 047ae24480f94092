"""Wires the groups service once: settings -> engine, catalog, handlers, relay, broker."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from faststream.kafka import KafkaBroker
from sqlalchemy.ext.asyncio import AsyncEngine

from services.common.backoff import Backoff, retry_forever
from services.common.db import create_engine, is_transient_db_error
from services.common.kafka import (
    OffsetCommits,
    build_broker,
    build_producer,
    dead_letter_request_size,
    groups_topic_names,
    wait_for_topics,
)
from services.common.serving import FatalStop
from services.common.settings import (
    AuthSettings,
    GroupsSettings,
    ServiceSettings,
    inbox_problems,
    refuse_unsafe,
)
from services.groups.adapters import migrate
from services.groups.adapters.access_tokens import AccessTokenVerifier
from services.groups.adapters.audit_sealer import AuditSealer
from services.groups.adapters.metrics import GroupsMetrics
from services.groups.adapters.outbox_relay import OutboxRelay
from services.groups.adapters.repository import CatalogRepository
from services.groups.adapters.retention import (
    RetentionPruner,
    inbound_retention_problems,
    prune_targets,
)
from services.groups.catalog import default_catalog_path
from services.groups.domain.authorization import Authorization
from services.groups.domain.catalog import Catalog
from services.groups.service_layer import messagebus, operations
from services.groups.service_layer.applier import BatchApplier, BatchOutcome
from services.groups.service_layer.context import CatalogHolder, Clock, Dependencies
from services.groups.service_layer.messagebus import MessageBus
from services.groups.service_layer.retirement import retire_ended_memberships
from services.groups.service_layer.scheduling import BatchPipeline
from services.groups.service_layer.unit_of_work import UnitOfWork

log = logging.getLogger(__name__)
SERVICE_NAME = "groups-service"
CATALOG_RELOAD_SECONDS = 30.0


def read_catalog_file(path: Path) -> Catalog:
    return Catalog.from_dict(json.loads(path.read_text(encoding="utf-8")))


def catalog_path_of(settings: GroupsSettings) -> Path:
    """GROUPS_CATALOG_FILE, or the catalog shipped with the service."""
    return Path(settings.catalog_file or default_catalog_path())


@dataclass
class GroupsSettingsBundle(ServiceSettings):
    groups: GroupsSettings = field(default_factory=GroupsSettings)
    auth: AuthSettings = field(default_factory=AuthSettings)


def unsafe_settings(settings: GroupsSettingsBundle, catalog: Catalog | None = None) -> list[str]:
    """What a production process may not run with (dev conveniences need APP_ENV=dev)."""
    if settings.app.dev_mode:
        return []
    problems = []
    if catalog is not None and catalog.example:
        problems.append(
            f"GROUPS_CATALOG_FILE is an example catalog ({catalog_path_of(settings.groups).name}): "
            "set it to the region's catalog"
        )
    if not settings.groups.allowed_unit_set:
        problems.append(
            "GROUPS_ALLOWED_UNITS is empty: list the units allowed to act ('*' opens it on purpose)"
        )
    if missing := settings.auth.missing():
        problems.append(
            f"{', '.join(missing)} not set: the patient-data routes need the identity "
            "provider's issuer, audience and keys"
        )
    return problems


def authorization_from(settings: GroupsSettingsBundle) -> Authorization:
    units = settings.groups.allowed_unit_set
    if not units or units == frozenset({"*"}):
        return Authorization(None)  # open: on purpose, or dev mode (see unsafe_settings)
    return Authorization(units)


def access_tokens_from(settings: GroupsSettingsBundle) -> AccessTokenVerifier | None:
    """The verifier for patient-data reads; None (those routes refuse everyone) when the
    `AUTH_*` settings are incomplete, which only dev mode allows."""
    if missing := settings.auth.missing():  # dev mode only: see unsafe_settings
        log.warning("%s not set: patient-data routes refuse every request", ", ".join(missing))
        return None
    return AccessTokenVerifier.from_settings(settings.auth)


class GroupsService:
    """Everything the groups process runs, built from settings."""

    def __init__(
        self, settings: GroupsSettingsBundle | None = None, clock: Clock | None = None
    ) -> None:
        self.settings = settings or GroupsSettingsBundle()
        s = self.settings
        self.catalog_file = catalog_path_of(s.groups)
        shipped = read_catalog_file(self.catalog_file)
        # The idempotency window holds in dev mode too.
        refuse_unsafe(
            SERVICE_NAME, [*inbox_problems(s.groups, s.kafka), *unsafe_settings(s, shipped)]
        )
        self.metrics = GroupsMetrics()
        self.engine: AsyncEngine = create_engine(s.database)
        self.clock = clock or Clock(s.groups.timezone)
        self.catalog = CatalogHolder(shipped)
        # One allowlist for commands and HTTP reads.
        self.authorization = authorization_from(s)
        self.access_tokens = access_tokens_from(s)
        self.deps = Dependencies(
            clock=self.clock,
            catalog=self.catalog,
            authorization=self.authorization,
            prompts_topic=s.topics.prompts,
            events_topic=s.topics.events,
        )
        self.bus = MessageBus(
            messagebus.message_types(s.topics),
            messagebus.HANDLERS,
            self.deps,
            max_event_bytes=s.kafka.max_message_bytes,
        )
        self.relay = OutboxRelay(
            self.engine,
            self._new_relay_producer,
            lease_seconds=s.groups.relay_lease_seconds,
            metrics=self.metrics,
            prompts_topic=s.topics.prompts,
        )
        self.sealer = AuditSealer(self.engine)
        self.pruner = RetentionPruner(
            self.engine,
            prune_targets(s.groups),
            batch_size=s.groups.prune_batch_size,
            pause_seconds=s.groups.prune_pause_seconds,
            interval_seconds=s.groups.prune_interval_seconds,
            clock=self.clock.now,
            on_pruned=lambda table, count: self.metrics.pruned.labels(table).inc(count),
            on_retry=lambda error, _delay: self.metrics.prune_retries.labels(
                type(error).__name__
            ).inc(),
        )
        self.processor = BatchApplier(
            self.new_uow,
            self.bus,
            after_commit=self._after_commit,
            on_retry=self._on_retry,
        )
        self.pipeline = BatchPipeline(
            self.processor, depth=s.groups.batches_in_flight, on_failure=self._stop_serving
        )
        self.broker: KafkaBroker = build_broker(s, client_id=SERVICE_NAME)
        # A rebalance or a stop first lets the batches in flight finish (a bounded wait).
        self.offset_commits = OffsetCommits(settle=self.pipeline.drain)
        self.ready = False
        self.fatal = FatalStop(SERVICE_NAME)
        self._catalog_task: asyncio.Task[None] | None = None

    def new_uow(self) -> UnitOfWork:
        return UnitOfWork(
            self.engine,
            dlq_topic=self.settings.topics.dlq,
            service=SERVICE_NAME,
            timezone=self.settings.groups.timezone,
        )

    def _new_relay_producer(self) -> AIOKafkaProducer:
        # The outbox also holds dead letters, which may be larger than the inbound limit.
        return build_producer(
            self.settings.kafka,
            client_id=f"{SERVICE_NAME}-outbox",
            max_request_size=dead_letter_request_size(self.settings.kafka),
            transactional_id=self.settings.groups.transactional_id,
        )

    def _after_commit(self, outcome: BatchOutcome) -> None:
        self.metrics.batches.observe(outcome.seconds)
        m = self.metrics.records
        m.labels("processed").inc(outcome.processed)
        m.labels("duplicate").inc(outcome.duplicates)
        m.labels("dead_lettered").inc(outcome.dead_lettered)
        self.relay.wake()

    def _stop_serving(self, error: BaseException) -> None:
        # Nothing after the failed batch may be applied or committed: the process ends
        # (a restart re-delivers from the last committed offset).
        self.ready = False
        self.fatal("an inbound batch ended without being applied", error)

    def _on_retry(self, error: BaseException, _delay: float) -> None:
        self.metrics.batch_retries.labels(type(error).__name__).inc()

    async def prepare(self) -> None:
        """Before consuming: topics, schema, catalog. An unreachable broker or database
        is waited out with backoff (they may start after us), anything else fails."""

        def waiting(error: Exception, delay: float) -> None:
            log.warning("start-up waiting for %s; retrying in %.1fs", type(error).__name__, delay)

        await retry_forever(
            self._prepare_once,
            backoff=Backoff(cap=10.0),
            retry_if=lambda error: isinstance(error, KafkaError) or is_transient_db_error(error),
            on_retry=waiting,
        )

    async def _prepare_once(self) -> None:
        topics = self.settings.topics
        await wait_for_topics(topics, self.settings.kafka, needed=groups_topic_names(topics))
        await self._check_inbound_retention()
        if self.settings.app.dev_mode:
            await migrate.upgrade(self.engine)
        else:  # the service's role runs no DDL: the deployment runs `migrate`
            await migrate.wait_for_head(self.engine)
        async with self.new_uow() as uow:
            await operations.catalog_on_start(
                uow,
                self.catalog.current,
                today=self.clock.today(),
                now=self.clock.now(),
                catalog_topic=topics.catalog,
            )
        await self.reload_catalog()
        log.info("catalog %s loaded", self.catalog.current.version)

    async def _check_inbound_retention(self) -> None:
        """Topics may predate the service or be altered: refuse to consume from one whose
        records can outlive the inbox (a re-read would apply them twice)."""
        problems = await inbound_retention_problems(
            self.settings.kafka, self.settings.topics.inbound, self.settings.groups.inbox_retention
        )
        for problem in problems:  # an exception's message is kept out of the logs
            log.error("refusing to start: %s", problem)
        refuse_unsafe(SERVICE_NAME, problems)

    async def reload_catalog(self) -> None:
        """The catalog tables are the truth (`import-catalog` may change them at any time)."""
        async with self.engine.connect() as connection:
            loaded = await CatalogRepository(connection).load_catalog()
        if loaded is not None and loaded != self.catalog.current:
            self.catalog.current = loaded

    async def _reload_catalog_periodically(self) -> None:
        """Follow the catalog tables, and run the retirement sweep on start, on a new
        catalog, on a new day and every `GROUPS_RETIREMENT_SWEEP_SECONDS`."""
        swept: tuple[str, object] | None = None  # (catalog version, day) of the last sweep
        last_sweep = 0.0
        while True:
            try:
                await self.reload_catalog()
            except Exception as error:  # keep the catalog in force; try again later
                log.warning("catalog reload failed: %s", type(error).__name__)
            due = (self.catalog.current.version, self.clock.today())
            interval = self.settings.groups.retirement_sweep_seconds
            if due != swept or time.monotonic() - last_sweep >= interval:
                try:
                    ended = await retire_ended_memberships(self.new_uow, self.deps)
                    self.metrics.retired.inc(ended)
                    swept, last_sweep = due, time.monotonic()
                except Exception as error:  # nothing changed; the next round tries again
                    log.warning("retirement sweep failed: %s", type(error).__name__)
            await asyncio.sleep(CATALOG_RELOAD_SECONDS)

    async def start_background(self) -> None:
        self.relay.start()
        self.sealer.start()
        self.pruner.start()
        self._catalog_task = asyncio.create_task(self._reload_catalog_periodically())
        self.ready = True

    async def stop(self) -> None:
        self.ready = False
        if self._catalog_task is not None:
            self._catalog_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._catalog_task
        await self.relay.stop()
        await self.sealer.stop()
        await self.pruner.stop()
        await self.engine.dispose()
