"""The broker decides who may write where: a real Kafka broker with SASL/SCRAM-SHA-512 and
the StandardAuthorizer, holding exactly the ACLs of `devinfra.acls`.

The groups and export services run as their own principals with only those ACLs, so a
flow that works here proves the ACL set sufficient; the refusals prove it narrow.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    ClusterAuthorizationFailedError,
    KafkaConnectionError,
    TopicAuthorizationFailedError,
)
from pydantic import SecretStr
from sqlalchemy import func, insert, select

from devinfra.acls import ACL_COMMAND_CLASS, Acl, apply_acls
from services.common.db import create_engine
from services.common.kafka import (
    TopicsMissing,
    build_producer,
    ensure_topics,
    groups_topic_names,
    wait_for_topics,
)
from services.common.settings import (
    AppSettings,
    DatabaseSettings,
    ExportSettings,
    GroupsSettings,
)
from services.export.bootstrap import ExportSettingsBundle
from services.groups.adapters import migrate
from services.groups.adapters.metrics import GroupsMetrics
from services.groups.adapters.orm import outbox, outbox_parked
from services.groups.adapters.outbox_relay import OutboxRelay
from services.groups.bootstrap import GroupsSettingsBundle
from tests.acl_broker import PRINCIPALS, AclBroker, producer_as, read_all
from tests.integration.conftest import ACTOR, running_groups_service, unique_topics
from tests.integration.export.conftest import running_export_service
from tests.kafka_tools import cloudevent

pytestmark = pytest.mark.integration

PNR = "191212121212"
TOPIC_AUTHORIZATION_FAILED = 29


async def send_event(producer: AIOKafkaProducer, topic: str, event: dict[str, Any]) -> None:
    await producer.send_and_wait(topic, json.dumps(event).encode(), key=PNR.encode())


class Collector:
    """A consumer in a group of its own, collecting decoded CloudEvents in the background."""

    def __init__(self, client: dict[str, Any], group_id: str, *topics: str) -> None:
        self._consumer = AIOKafkaConsumer(
            *topics,
            **client,
            group_id=group_id,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
        )
        self.events: list[dict[str, Any]] = []
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Collector:
        await self._consumer.start()
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        await self._consumer.stop()

    async def _run(self) -> None:
        while True:
            batch = await self._consumer.getmany(timeout_ms=200)
            for records in batch.values():
                self.events += [json.loads(r.value) for r in records]

    async def wait_for(
        self, match: Callable[[dict[str, Any]], bool], timeout: float = 60.0
    ) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            while True:
                found = [e for e in self.events if match(e)]
                if found:
                    return found[0]
                await asyncio.sleep(0.05)


async def test_a_wrong_password_is_refused(acl_broker: AclBroker) -> None:
    client = {**acl_broker.client(PRINCIPALS.groups), "sasl_plain_password": "not-the-password"}
    producer = AIOKafkaProducer(**client)
    with pytest.raises(KafkaConnectionError):
        await producer.start()
    await producer.stop()


async def test_the_booking_system_may_write_bookings_only(acl_broker: AclBroker) -> None:
    topics = acl_broker.topics
    booking = cloudevent("booking.cancelled", {"booking_id": "b-acl", "unit_id": "unit-1"})
    async with producer_as(acl_broker, PRINCIPALS.booking_system) as producer:
        await send_event(producer, topics.bookings, booking)
        for topic in (topics.commands, topics.started, topics.prompts):
            with pytest.raises(TopicAuthorizationFailedError):
                await send_event(producer, topic, booking)


async def test_an_idempotent_producer_needs_write_on_some_topic(acl_broker: AclBroker) -> None:
    # WRITE on a topic implies the cluster's IDEMPOTENT_WRITE (KIP-679), so no ACL grants
    # it; the migrate principal writes nowhere, and its producer id is refused.
    with pytest.raises(ClusterAuthorizationFailedError):
        async with producer_as(acl_broker, PRINCIPALS.migrate):
            pass


async def test_a_service_principal_cannot_create_topics_and_waits_for_migrate(
    acl_broker: AclBroker, caplog: pytest.LogCaptureFixture
) -> None:
    late = unique_topics(uuid.uuid4().hex[:8])
    names = groups_topic_names(late)
    # The groups service may use these topics once they exist, but not create them.
    rule = Acl(PRINCIPALS.groups, ("WRITE",), "topic", names, "test: topics made late")
    await asyncio.to_thread(apply_acls, acl_broker.kafka.java_tool_cmd(ACL_COMMAND_CLASS), [rule])
    groups = acl_broker.settings(PRINCIPALS.groups)

    admin = AIOKafkaAdminClient(**acl_broker.client(PRINCIPALS.groups))
    await admin.start()
    try:
        response = await admin.create_topics([NewTopic(late.prompts, 3, 1)])
        assert [(t[0], t[1]) for t in response.topic_errors] == [
            (late.prompts, TOPIC_AUTHORIZATION_FAILED)
        ]
    finally:
        await admin.close()
    with pytest.raises(TopicsMissing) as missing:
        await ensure_topics(late, groups, needed=names)
    assert missing.value.names == sorted(names)
    assert set(missing.value.errors.values()) == {"TopicAuthorizationFailedError"}

    # Started before the migrate step: it waits, and says what is missing and what to do.
    caplog.set_level(logging.WARNING, logger="services.common.kafka")
    waiting = asyncio.create_task(wait_for_topics(late, groups, needed=names))
    await asyncio.sleep(2.0)
    assert not waiting.done()
    warnings = [r.getMessage() for r in caplog.records if r.name == "services.common.kafka"]
    assert warnings and late.commands in warnings[0] and "migrate" in warnings[0]
    assert "TopicAuthorizationFailedError" in warnings[0]
    assert len(warnings) < 10, "backs off rather than retrying in a hot loop"

    assert acl_broker.kafka.sasl is not None
    await ensure_topics(late, acl_broker.settings(acl_broker.kafka.sasl.admin))  # migrate
    async with asyncio.timeout(30):
        await waiting


async def test_services_with_only_their_acls_serve_and_a_refused_writer_reaches_nothing(
    acl_broker: AclBroker, database_url: str
) -> None:
    topics = acl_broker.topics
    groups_settings = GroupsSettingsBundle(
        app=AppSettings(app_env="test"),
        kafka=acl_broker.settings(PRINCIPALS.groups),
        topics=topics,
        database=DatabaseSettings(database_url=database_url),
        groups=GroupsSettings(consumer_group=acl_broker.groups_group),
    )
    export_settings = ExportSettingsBundle(
        app=AppSettings(app_env="test"),
        kafka=acl_broker.settings(PRINCIPALS.export),
        topics=topics,
        export=ExportSettings(
            consumer_group=acl_broker.export_group,
            pseudonym_key=SecretStr("acl-tests-pseudonym-key-0123456789"),
        ),
        database=DatabaseSettings(database_url=database_url),
    )
    # A principal without WRITE on the commands topic (it may write bookings).
    refused = cloudevent(
        "customer_group.add",
        {"personnummer": PNR, "actor": ACTOR, "group_code": "COVID_19"},
    )
    async with (
        running_groups_service(groups_settings),
        running_export_service(export_settings),
        Collector(
            acl_broker.client(PRINCIPALS.vaccination_client),
            acl_broker.client_group,
            topics.prompts,
            topics.events,
        ) as client_view,
        producer_as(acl_broker, PRINCIPALS.booking_system) as intruder,
        producer_as(acl_broker, PRINCIPALS.vaccination_client) as nurse,
    ):
        with pytest.raises(TopicAuthorizationFailedError):
            await send_event(intruder, topics.commands, refused)

        # The vaccination client's start is answered with the prompt ...
        start = cloudevent(
            "vaccination.started",
            {"vaccination_id": "v-acl", "personnummer": PNR, **ACTOR},
        )
        await send_event(nurse, topics.started, start)
        prompt = await client_view.wait_for(lambda e: e["type"] == "customer_group.prompt")
        prompt_id = prompt["data"]["prompt_id"]
        # ... and its commands change the customer's groups.
        add = cloudevent(
            "customer_group.add",
            {
                "personnummer": PNR,
                "actor": ACTOR,
                "group_code": "INFLUENSA",
                "subgroup_code": "ALDER_65_PLUS",
                "prompt_id": prompt_id,
            },
        )
        await send_event(nurse, topics.commands, add)
        added = await client_view.wait_for(lambda e: e["data"].get("command_id") == add["id"])
        assert added["type"] == "customer_group.added"
        close = cloudevent(
            "customer_group.prompt_close",
            {
                "personnummer": PNR,
                "actor": ACTOR,
                "prompt_id": prompt_id,
                "vaccination_id": "v-acl",
            },
        )
        await send_event(nurse, topics.commands, close)
        confirmed = await client_view.wait_for(
            lambda e: e["type"] == "customer_group.vaccination_groups_confirmed"
        )
        assert confirmed["data"]["vaccination_id"] == "v-acl"

        # The export, as its own principal, turned the events into export records.
        async with asyncio.timeout(60):
            while len(exported := await read_all(acl_broker, topics.export)) < 2:  # noqa: ASYNC110
                await asyncio.sleep(0.2)
        assert {e["type"] for e in exported} == {
            "customer_group.membership_record",
            "customer_group.vaccination_record",
        }

    # The refused record is nowhere: not on the topic, not answered, not dead-lettered.
    assert refused["id"] not in {e["id"] for e in await read_all(acl_broker, topics.commands)}
    events = await read_all(acl_broker, topics.events)
    answered = {e["data"].get("command_id") for e in events}
    assert add["id"] in answered and refused["id"] not in answered
    assert not any(e["type"] == "customer_group.command_rejected" for e in events)
    assert await read_all(acl_broker, topics.dlq) == []


async def test_the_relay_parks_nothing_for_a_topic_it_may_not_write_and_alerts(
    acl_broker: AclBroker, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    topics = acl_broker.topics
    settings = GroupsSettings(consumer_group=acl_broker.groups_group)
    kafka = acl_broker.settings(PRINCIPALS.groups)
    engine = create_engine(DatabaseSettings(database_url=database_url))
    await migrate.upgrade(engine)
    metrics = GroupsMetrics()
    relay = OutboxRelay(
        engine,
        lambda: build_producer(
            kafka, client_id="relay-acl-test", transactional_id=settings.transactional_id
        ),
        metrics=metrics,
    )
    caplog.set_level(logging.ERROR, logger="services.groups.adapters.outbox_relay")
    # The groups service may not write the export topic (the export service's).
    refused = {"topic": topics.export, "key": PNR.encode(), "value": b"{}", "headers": []}
    marker = {"relay-acl-test": uuid.uuid4().hex}
    later = {
        "topic": topics.events,
        "key": PNR.encode(),
        "value": json.dumps(marker).encode(),
        "headers": [],
    }
    try:
        async with engine.begin() as connection:
            await connection.execute(insert(outbox), [refused, later])
        relay.start()
        await asyncio.sleep(4.0)
        async with engine.connect() as connection:
            waiting = await connection.scalar(select(func.count()).select_from(outbox))
            parked = await connection.scalar(select(func.count()).select_from(outbox_parked))
    finally:
        await relay.stop()
        await engine.dispose()

    assert (waiting, parked) == (2, 0), "a refused topic parks nothing and loses nothing"
    assert relay.alert is not None and topics.export in relay.alert
    refusals = metrics.registry.get_sample_value(
        "groups_outbox_topic_refusals_total",
        {"topic": topics.export, "error": "TopicAuthorizationFailedError"},
    )
    assert refusals is not None and 2 <= refusals <= 8, refusals
    assert any(topics.export in r.getMessage() for r in caplog.records)
    assert marker not in await read_all(acl_broker, topics.events), "rows after it wait"
