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
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    ClusterAuthorizationFailedError,
    KafkaConnectionError,
    TopicAuthorizationFailedError,
)
from aiokafka.structs import TopicPartition
from pydantic import SecretStr

from devinfra.acls import ACL_COMMAND_CLASS, Acl, Principals, acl_set, apply_acls
from devinfra.kafka import LocalKafka, ScramUsers
from services.common.kafka import (
    TopicsMissing,
    ensure_topics,
    groups_topic_names,
    wait_for_topics,
)
from services.common.settings import (
    AppSettings,
    DatabaseSettings,
    ExportSettings,
    GroupsSettings,
    KafkaSettings,
    TopicSettings,
)
from services.export.bootstrap import ExportSettingsBundle
from services.groups.bootstrap import GroupsSettingsBundle
from tests.integration.conftest import ACTOR, running_groups_service, unique_topics
from tests.integration.export.conftest import running_export_service
from tests.kafka_tools import cloudevent

pytestmark = pytest.mark.integration

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
PRINCIPALS = Principals()
PNR = "191212121212"
TOPIC_AUTHORIZATION_FAILED = 29


@dataclass
class AclBroker:
    kafka: LocalKafka
    topics: TopicSettings
    groups_group: str
    export_group: str
    client_group: str  # a vaccination client's group, under its ACL prefix

    def settings(self, user: str) -> KafkaSettings:
        assert self.kafka.sasl is not None
        return KafkaSettings(
            bootstrap_servers=self.kafka.bootstrap_servers,
            security_protocol="SASL_PLAINTEXT",
            sasl_mechanism="SCRAM-SHA-512",
            sasl_username=user,
            sasl_password=SecretStr(self.kafka.sasl.password(user)),
            inbound_partitions=3,
        )

    def client(self, user: str | None = None) -> dict[str, Any]:
        return self.kafka.client_config(user)


@pytest.fixture(scope="module")
async def acl_broker() -> AsyncIterator[AclBroker]:
    if shutil.which("java") is None:
        if IN_CI:
            pytest.fail("java is needed for the local Kafka broker")
        pytest.skip("java not installed")
    users = ScramUsers.generate(
        PRINCIPALS.groups,
        PRINCIPALS.export,
        PRINCIPALS.migrate,
        PRINCIPALS.booking_system,
        PRINCIPALS.vaccination_client,
    )
    suffix = uuid.uuid4().hex[:8]
    kafka = LocalKafka(sasl=users)
    await kafka.astart()
    try:
        broker = AclBroker(
            kafka,
            unique_topics(suffix),
            groups_group=f"customer-groups-{suffix}",
            export_group=f"customer-groups-export-{suffix}",
            client_group=f"{PRINCIPALS.vaccination_client_group_prefix}-{suffix}",
        )
        rules = acl_set(
            broker.topics,
            groups_consumer_group=broker.groups_group,
            export_consumer_group=broker.export_group,
        )
        await asyncio.to_thread(apply_acls, kafka.java_tool_cmd(ACL_COMMAND_CLASS), rules)
        # The migrate step's principal creates the topics: its ACLs are enough for that.
        await ensure_topics(broker.topics, broker.settings(PRINCIPALS.migrate))
        yield broker
    finally:
        await asyncio.to_thread(kafka.close)


@contextlib.asynccontextmanager
async def producer_as(broker: AclBroker, user: str) -> AsyncIterator[AIOKafkaProducer]:
    # Idempotent, as the services' and any careful client's producers are.
    producer = AIOKafkaProducer(**broker.client(user), enable_idempotence=True, acks="all")
    try:
        await producer.start()
        yield producer
    finally:
        await producer.stop()


async def send_event(producer: AIOKafkaProducer, topic: str, event: dict[str, Any]) -> None:
    await producer.send_and_wait(topic, json.dumps(event).encode(), key=PNR.encode())


class Collector:
    """A consumer in a group of its own, collecting decoded CloudEvents in the background."""

    def __init__(self, client: dict[str, Any], group_id: str, *topics: str) -> None:
        self._consumer = AIOKafkaConsumer(
            *topics, **client, group_id=group_id, auto_offset_reset="earliest"
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


async def read_all(broker: AclBroker, topic: str) -> list[dict[str, Any]]:
    """Everything on `topic`, read as the admin (no group: assign and seek)."""
    admin = AIOKafkaAdminClient(**broker.client())
    await admin.start()
    try:
        (described,) = await admin.describe_topics([topic])
    finally:
        await admin.close()
    partitions = sorted(p["partition"] for p in described["partitions"])
    assert partitions, topic
    consumer = AIOKafkaConsumer(**broker.client(), enable_auto_commit=False)
    await consumer.start()
    try:
        assigned = [TopicPartition(topic, p) for p in partitions]
        consumer.assign(assigned)
        await consumer.seek_to_beginning(*assigned)
        ends = await consumer.end_offsets(assigned)
        values: list[dict[str, Any]] = []
        behind = [tp for tp in assigned if ends[tp] > 0]
        while behind:
            batch = await consumer.getmany(timeout_ms=500)
            for records in batch.values():
                values += [json.loads(r.value) for r in records]
            behind = [tp for tp in behind if await consumer.position(tp) < ends[tp]]
        return values
    finally:
        await consumer.stop()


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
