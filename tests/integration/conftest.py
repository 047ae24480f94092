"""The groups service running in this test process, on its own topics and database."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from devinfra.provider import Infrastructure
from services.common.settings import (
    AppSettings,
    DatabaseSettings,
    GroupsSettings,
    KafkaSettings,
    TopicSettings,
)
from services.groups.bootstrap import GroupsService, GroupsSettingsBundle
from services.groups.entrypoints.consumer import register_consumer
from tests.kafka_tools import KafkaTestClient


def unique_topics(suffix: str) -> TopicSettings:
    defaults = TopicSettings()
    return TopicSettings(
        **{name: f"{getattr(defaults, name)}.{suffix}" for name in TopicSettings.model_fields}
    )


@pytest.fixture
def groups_settings(infra: Infrastructure, database_url: str) -> GroupsSettingsBundle:
    suffix = uuid.uuid4().hex[:8]
    return GroupsSettingsBundle(
        app=AppSettings(app_env="test"),
        kafka=KafkaSettings(bootstrap_servers=infra.kafka_bootstrap, inbound_partitions=3),
        topics=unique_topics(suffix),
        database=DatabaseSettings(database_url=database_url),
        groups=GroupsSettings(consumer_group=f"groups-{suffix}"),
    )


@pytest.fixture
async def groups_service(groups_settings: GroupsSettingsBundle) -> AsyncIterator[GroupsService]:
    service = GroupsService(groups_settings)
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
async def kafka(infra: Infrastructure) -> AsyncIterator[KafkaTestClient]:
    async with KafkaTestClient(infra.kafka_bootstrap) as client:
        yield client
