"""A real Kafka broker that authenticates (SASL/SCRAM-SHA-512) and authorizes (ACLs of
`devinfra.acls`): shared by the ACL integration tests and the reliability suite."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import TopicPartition
from pydantic import SecretStr

from devinfra.acls import ACL_COMMAND_CLASS, Principals, acl_set, apply_acls
from devinfra.kafka import LocalKafka, ScramUsers
from services.common.kafka import ensure_topics
from services.common.settings import KafkaSettings, TopicSettings
from tests.integration.conftest import unique_topics

PRINCIPALS = Principals()


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


@contextlib.asynccontextmanager
async def running_acl_broker() -> AsyncIterator[AclBroker]:
    """A SASL/SCRAM broker with the StandardAuthorizer, the product's principals, the ACLs
    of `devinfra.acls` for a fresh set of topics, and those topics (made by migrate's)."""
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
    consumer = AIOKafkaConsumer(
        **broker.client(), enable_auto_commit=False, isolation_level="read_committed"
    )
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
