"""The groups service running in this test process, on its own topics and database."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import pytest
from aiokafka.structs import TopicPartition
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from devinfra.provider import Infrastructure
from services.common.db import create_engine
from services.common.kafka import default_partition
from services.common.settings import (
    AppSettings,
    DatabaseSettings,
    GroupsSettings,
    KafkaSettings,
    TopicSettings,
)
from services.groups.adapters import migrate
from services.groups.adapters.orm import bookings
from services.groups.bootstrap import GroupsService, GroupsSettingsBundle
from services.groups.catalog import example_catalog_path
from services.groups.domain.personnummer import luhn_check_digit
from services.groups.entrypoints.consumer import register_consumer
from services.groups.service_layer.context import Clock
from tests.conftest import IN_CI
from tests.kafka_tools import KafkaTestClient, TopicCollector, cloudevent
from tests.schema_validation import validate_event

if TYPE_CHECKING:
    from tests.acl_broker import AclBroker

ACTOR = {"user_id": "nurse-1", "unit_id": "unit-1"}


def unique_topics(suffix: str) -> TopicSettings:
    defaults = TopicSettings()
    return TopicSettings(
        **{name: f"{getattr(defaults, name)}.{suffix}" for name in TopicSettings.model_fields}
    )


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    """The migration role's (superuser's) engine on a fresh database migrated to head."""
    engine = create_engine(DatabaseSettings(database_url=database_url))
    await migrate.upgrade(engine)
    yield engine
    await engine.dispose()


@pytest.fixture
def groups_settings(
    infra: Infrastructure, database_url: str, request: pytest.FixtureRequest
) -> GroupsSettingsBundle:
    """The shipped catalog (the guide's), or with `@pytest.mark.example_catalog` the
    example one (more subgroups, suggestion rules)."""
    suffix = uuid.uuid4().hex[:8]
    example = request.node.get_closest_marker("example_catalog") is not None
    return GroupsSettingsBundle(
        app=AppSettings(app_env="test"),
        kafka=KafkaSettings(bootstrap_servers=infra.kafka_bootstrap, inbound_partitions=3),
        topics=unique_topics(suffix),
        database=DatabaseSettings(database_url=database_url),
        groups=GroupsSettings(
            consumer_group=f"groups-{suffix}",
            catalog_file=str(example_catalog_path()) if example else None,
        ),
    )


@contextlib.asynccontextmanager
async def running_groups_service(
    settings: GroupsSettingsBundle,
    service: GroupsService | None = None,
    *,
    clock: Clock | None = None,
) -> AsyncIterator[GroupsService]:
    """The groups service in this process (or `service`): consumer, outbox relay, no
    HTTP server."""
    service = service or GroupsService(settings, clock=clock)
    register_consumer(service.broker, service)
    await service.prepare()
    await service.broker.start()
    await service.start_background()
    try:
        yield service
    finally:
        await service.broker.stop()
        await service.stop()


@pytest.fixture
async def groups_service(groups_settings: GroupsSettingsBundle) -> AsyncIterator[GroupsService]:
    async with running_groups_service(groups_settings) as service:
        yield service


@pytest.fixture(scope="module")
async def acl_broker() -> AsyncIterator[AclBroker]:
    """A broker with SASL/SCRAM and ACLs of its own (tests/acl_broker.py), per module."""
    from tests.acl_broker import running_acl_broker  # it imports this module's helpers

    if shutil.which("java") is None:
        if IN_CI:
            pytest.fail("java is needed for the local Kafka broker")
        pytest.skip("java not installed")
    async with running_acl_broker() as broker:
        yield broker


@pytest.fixture
async def kafka(infra: Infrastructure) -> AsyncIterator[KafkaTestClient]:
    async with KafkaTestClient(infra.kafka_bootstrap) as client:
        yield client


def topic_env(topics: TopicSettings) -> dict[str, str]:
    """The `TOPIC_*` variables naming a test's own topics, for a CLI run."""
    return {f"TOPIC_{name.upper()}": getattr(topics, name) for name in TopicSettings.model_fields}


async def groups_cli(
    database_url: str, *args: str, stdin: str = "", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`python -m services.groups <args>` as an operator runs it, against this database."""
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "services.groups", *args],
        input=stdin,
        env={**os.environ, "DATABASE_URL": database_url, "APP_ENV": "test", **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def wait_until_booked(service: GroupsService, booking_id: str) -> None:
    """Kafka orders records within a partition, not across topics: a start sent right
    after its booking may overtake it, so tests that need the booking wait for it."""
    for _ in range(300):
        async with service.engine.connect() as connection:
            found = await connection.scalar(
                select(bookings.c.booking_id).where(bookings.c.booking_id == booking_id)
            )
        if found is not None:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"booking {booking_id} was not stored")


class NurseClient:
    """What a vaccination client does: send starts and commands, read prompts and events."""

    def __init__(
        self,
        kafka: KafkaTestClient,
        topics: TopicSettings,
        events: TopicCollector,
        prompts: TopicCollector,
    ) -> None:
        self.kafka = kafka
        self.topics = topics
        self.events = events
        self.prompts = prompts

    async def command(
        self,
        type_: str,
        personnummer: str,
        actor: dict[str, str] | None = None,
        *,
        command_id: str | None = None,
        **fields: Any,
    ) -> dict[str, Any]:
        """Send a command and return the event that answers it (by command_id)."""
        event = cloudevent(
            f"customer_group.{type_}",
            {"personnummer": personnummer, "actor": actor or ACTOR, **fields},
            event_id=command_id,
        )
        await self.kafka.send_event(self.topics.commands, event, key=personnummer)
        found = await self.events.wait_for(lambda e: e["data"].get("command_id") == event["id"])
        return found[0]

    async def start(
        self, vaccination_id: str, personnummer: str, *, event_id: str | None = None, **fields: Any
    ) -> dict[str, Any]:
        event = cloudevent(
            "vaccination.started",
            {
                "vaccination_id": vaccination_id,
                "unit_id": ACTOR["unit_id"],
                "user_id": ACTOR["user_id"],
                "personnummer": personnummer,
                **fields,
            },
            event_id=event_id,
        )
        await self.kafka.send_event(self.topics.started, event, key=personnummer)
        found = await self.prompts.wait_for(lambda e: e["data"]["vaccination_id"] == vaccination_id)
        return found[-1]

    async def register(
        self,
        vaccination_id: str,
        personnummer: str,
        *,
        event_id: str | None = None,
        **fields: Any,
    ) -> dict[str, Any]:
        """Send a `vaccination.registered` (a dose given now, unless `fields` say otherwise)
        and return the CloudEvent sent; its answer, if any, names its id as command_id."""
        data = {
            "vaccination_id": vaccination_id,
            "unit_id": ACTOR["unit_id"],
            "user_id": ACTOR["user_id"],
            "personnummer": personnummer,
            "administered_at": datetime.now(UTC).isoformat(),
            "vaccine": {"code": "J07BN01", "name": "Comirnaty", "dose_number": 1},
            **fields,
        }
        event = cloudevent("vaccination.registered", data, event_id=event_id)
        await self.kafka.send_event(self.topics.registered, event, key=personnummer)
        return event

    async def answer(self, sent: dict[str, Any]) -> dict[str, Any]:
        """The event answering `sent` (a command or registration), by its id."""
        found = await self.events.wait_for(lambda e: e["data"].get("command_id") == sent["id"])
        return found[0]

    async def book(
        self,
        booking_id: str,
        personnummer: str,
        *,
        type_: str = "booking.created",
        event_id: str | None = None,
        **fields: Any,
    ) -> dict[str, Any]:
        data = {
            "booking_id": booking_id,
            "unit_id": ACTOR["unit_id"],
            "start_time": "2026-11-26T14:20:00+01:00",
            "customer": {
                "personnummer": personnummer,
                "first_name": "Test",
                "last_name": "Testsson",
            },
            **fields,
        }
        event = cloudevent(type_, data, event_id=event_id)
        await self.kafka.send_event(self.topics.bookings, event, key=personnummer)
        return event


@contextlib.asynccontextmanager
async def nurse_client(
    service: GroupsService, kafka: KafkaTestClient, infra: Infrastructure
) -> AsyncIterator[NurseClient]:
    """A nurse's client of `service`, reading its events and prompts."""
    topics = service.settings.topics
    async with (
        TopicCollector(infra.kafka_bootstrap, topics.events) as events,
        TopicCollector(infra.kafka_bootstrap, topics.prompts) as prompts,
    ):
        yield NurseClient(kafka, topics, events, prompts)
        # Every message the service emitted meanwhile matches the published schemas.
        for event in events.events + prompts.events:
            validate_event(event)


@pytest.fixture
async def nurse(
    groups_service: GroupsService, kafka: KafkaTestClient, infra: Infrastructure
) -> AsyncIterator[NurseClient]:
    async with nurse_client(groups_service, kafka, infra) as client:
        yield client


def customers_on_every_partition(partitions: int, per_partition: int) -> dict[str, int]:
    """Personnummer -> the partition their records take (the key is the personnummer),
    `per_partition` on each of `partitions`."""
    found: dict[str, int] = {}
    serial = 100
    while len(found) < partitions * per_partition:
        serial += 1
        body = f"19700101{serial:03d}"
        pnr = body + luhn_check_digit(body[2:])
        partition = default_partition(pnr.encode(), list(range(partitions)))
        if sum(1 for p in found.values() if p == partition) < per_partition:
            found[pnr] = partition
    return found


def subscriber_consumer(broker: Any) -> Any:
    """The aiokafka consumer of a service's one FastStream subscriber (None until started)."""
    [subscriber] = broker.subscribers
    return subscriber.consumer


async def wait_for_assignment(
    broker: Any, count: int | None = None, *, timeout: float = 90.0
) -> set[TopicPartition]:
    """The partitions of the service's consumer once it has some (or exactly `count`)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        consumer = subscriber_consumer(broker)
        got = set(consumer.assignment()) if consumer is not None else set()
        if got and (count is None or len(got) == count):
            return got
        await asyncio.sleep(0.05)
    raise AssertionError(f"no assignment after {timeout:.0f} s")
