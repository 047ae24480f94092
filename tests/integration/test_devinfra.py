"""The local infrastructure launchers themselves: real PostgreSQL and a real Kafka broker,
started, used, restarted (and crashed) with their data intact."""

from __future__ import annotations

import shutil
import time

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from devinfra.kafka import LocalKafka, resolve_jars
from devinfra.postgres import LocalPostgres
from devinfra.provider import provide_infrastructure
from tests.conftest import IN_CI

pytestmark = pytest.mark.integration


def _require(tool: str) -> None:
    if shutil.which(tool) is None:
        if IN_CI:
            pytest.fail(f"{tool} is needed for the local Kafka broker")
        pytest.skip(f"{tool} not installed")


async def _fetch_names(dsn: str) -> list[str]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT name FROM devinfra_probe ORDER BY id")
        return [row["name"] for row in rows]
    finally:
        await conn.close()


async def test_local_postgres_serves_tcp_and_keeps_data_across_restart_and_kill() -> None:
    with LocalPostgres() as pg:
        assert pg.url == f"postgresql+asyncpg://postgres@127.0.0.1:{pg.port}/customer_groups"
        assert pg.version.startswith("18")
        conn = await asyncpg.connect(pg.dsn)
        try:
            assert "PostgreSQL 18" in await conn.fetchval("SELECT version()")
            await conn.execute("CREATE TABLE devinfra_probe (id int PRIMARY KEY, name text)")
            await conn.execute("INSERT INTO devinfra_probe VALUES (1, 'Åsa')")
        finally:
            await conn.close()

        port = pg.port
        await pg.arestart()
        assert pg.port == port
        assert await _fetch_names(pg.dsn) == ["Åsa"]

        # A crash: a commit acknowledged just before the kill must survive it.
        conn = await asyncpg.connect(pg.dsn)
        try:
            await conn.execute("INSERT INTO devinfra_probe VALUES (2, 'Örjan')")
        finally:
            await conn.close()
        pg.kill()
        assert not pg.running
        pg.start()
        assert await _fetch_names(pg.dsn) == ["Åsa", "Örjan"]
        workdir = pg.workdir
    assert not workdir.exists()


async def _consume_all(bootstrap: str, topic: str, expected: int) -> list[tuple[bytes, bytes]]:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        records: list[tuple[bytes, bytes]] = []
        deadline = time.monotonic() + 20
        while len(records) < expected and time.monotonic() < deadline:
            batch = await consumer.getmany(tp, timeout_ms=500)
            records += [(r.key, r.value) for r in batch.get(tp, [])]
        return records
    finally:
        await consumer.stop()


async def test_local_kafka_roundtrip_survives_restart_and_kill(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _require("java")
    resolve_jars()
    with monkeypatch.context() as patched:
        # Cached: a second resolve must not need Maven at all.
        patched.setenv("PATH", "")
        resolve_jars()

    topic = "devinfra.probe"
    with LocalKafka() as kafka:
        assert kafka.bootstrap_servers == f"127.0.0.1:{kafka.port}"
        assert kafka.version.startswith("4.")
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap_servers)
        await admin.start()
        try:
            await admin.create_topics(
                [
                    NewTopic(topic, num_partitions=1, replication_factor=1),
                    NewTopic(
                        "devinfra.compacted",
                        num_partitions=1,
                        replication_factor=1,
                        topic_configs={"cleanup.policy": "compact"},
                    ),
                ]
            )
        finally:
            await admin.close()

        producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap_servers, acks="all")
        await producer.start()
        try:
            await producer.send_and_wait(topic, b"Kundgrupp", key=b"k1")
        finally:
            await producer.stop()
        assert await _consume_all(kafka.bootstrap_servers, topic, 1) == [(b"k1", b"Kundgrupp")]

        ports = (kafka.port, kafka.controller_port)
        await kafka.arestart()
        assert (kafka.port, kafka.controller_port) == ports
        assert await _consume_all(kafka.bootstrap_servers, topic, 1) == [(b"k1", b"Kundgrupp")]

        # A crash (SIGKILL) keeps acknowledged records too; the broker comes back on its own.
        kafka.kill()
        assert not kafka.running
        kafka.start()
        assert await _consume_all(kafka.bootstrap_servers, topic, 1) == [(b"k1", b"Kundgrupp")]


def test_provider_uses_environment_as_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "broker.example:9092")
    monkeypatch.setenv("DATABASE_URL", "postgresql+asyncpg://u@db.example:5432/customer_groups")
    with provide_infrastructure() as infra:
        assert infra.kafka_bootstrap == "broker.example:9092"
        assert infra.database_url == "postgresql+asyncpg://u@db.example:5432/customer_groups"
        assert infra.origin == "env"
        assert infra.kafka is None
        assert infra.postgres is None
