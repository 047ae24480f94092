"""Both services as real processes (`python -m services.groups` / `services.export`)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from devinfra.provider import Infrastructure
from devinfra.services import ServiceProcess, free_port
from devinfra.tokens import TokenIssuer
from services.common.settings import TopicSettings
from tests.kafka_tools import KafkaTestClient


@dataclass
class Stack:
    groups: ServiceProcess
    export: ServiceProcess
    topics: TopicSettings
    env: dict[str, str]
    issuer: TokenIssuer  # the identity provider the groups service trusts


def stack_env(infra: Infrastructure, database_url: str, suffix: str) -> dict[str, str]:
    defaults = TopicSettings()
    env = {
        "APP_ENV": "test",
        "KAFKA_BOOTSTRAP_SERVERS": infra.kafka_bootstrap,
        "KAFKA_INBOUND_PARTITIONS": "3",
        "DATABASE_URL": database_url,
        "GROUPS_CONSUMER_GROUP": f"groups-{suffix}",
        "EXPORT_CONSUMER_GROUP": f"export-{suffix}",
        "EXPORT_PSEUDONYM_KEY": "e2e-test-pseudonym-key-0123456789",
        "LOG_LEVEL": "INFO",
    }
    for name in TopicSettings.model_fields:
        env[f"TOPIC_{name.upper()}"] = f"{getattr(defaults, name)}.{suffix}"
    return env


@pytest.fixture
def stack(infra: Infrastructure, database_url: str, tmp_path: Path) -> Iterator[Stack]:
    suffix = uuid.uuid4().hex[:8]
    env = stack_env(infra, database_url, suffix)
    issuer = TokenIssuer()
    groups_env = {
        **issuer.env(issuer.write_jwks(tmp_path / "jwks.json")),
        "GROUPS_ALLOWED_UNITS": "unit-1",
        "GROUPS_HTTP_PORT": str(groups_port := free_port()),
    }
    export_port = free_port()
    groups = ServiceProcess(
        "services.groups",
        {**env, **groups_env},
        port=groups_port,
        log_path=tmp_path / "groups.log",
    )
    export = ServiceProcess(
        "services.export",
        {**env, "EXPORT_HTTP_PORT": str(export_port)},
        port=export_port,
        log_path=tmp_path / "export.log",
    )
    groups.start()
    try:
        export.start()
        try:
            topics = TopicSettings(
                **{name: env[f"TOPIC_{name.upper()}"] for name in TopicSettings.model_fields}
            )
            yield Stack(groups, export, topics, env, issuer)
        finally:
            export.stop()
    finally:
        groups.stop()


@pytest.fixture
async def kafka(infra: Infrastructure) -> AsyncIterator[KafkaTestClient]:
    async with KafkaTestClient(infra.kafka_bootstrap) as client:
        yield client
