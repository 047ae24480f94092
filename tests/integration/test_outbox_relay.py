"""The outbox relay against the real broker and database: which rows it reads, that it
deletes what it published, what it does with a row or a topic the broker refuses, the
operator's commands for parked rows, and the lease that decides who publishes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.common.db import create_engine
from services.common.kafka import build_producer, ensure_topics
from services.groups.adapters import migrate
from services.groups.adapters.leadership import Lease, LeaseLost
from services.groups.adapters.metrics import GroupsMetrics
from services.groups.adapters.orm import outbox, outbox_parked
from services.groups.adapters.outbox_relay import OutboxRelay
from services.groups.bootstrap import GroupsSettingsBundle
from services.groups.service_layer.unit_of_work import UnitOfWork
from tests.integration.conftest import groups_cli
from tests.kafka_tools import KafkaTestClient

# A record a little larger than a topic's default max.message.bytes (1 MiB), which the
# relay's producer (which allows dead letters of that size plus headroom) still sends.
TOO_LARGE = 1_048_576 + 16 * 1024


@contextlib.asynccontextmanager
async def relay_on(
    settings: GroupsSettingsBundle, **options: Any
) -> AsyncIterator[tuple[OutboxRelay, AsyncEngine, GroupsMetrics]]:
    """Topics, schema, and a running relay as the service wires it."""
    await ensure_topics(settings.topics, settings.kafka)
    engine = create_engine(settings.database)
    await migrate.upgrade(engine)
    metrics = GroupsMetrics()
    relay = OutboxRelay(
        engine,
        lambda: build_producer(
            settings.kafka,
            client_id="relay-test",
            max_request_size=2 * 1024 * 1024,
            transactional_id=settings.groups.transactional_id,
        ),
        metrics=metrics,
        **options,
    )
    relay.start()
    try:
        yield relay, engine, metrics
    finally:
        await relay.stop()
        await engine.dispose()


def row(topic: str, key: str, value: bytes) -> dict[str, object]:
    return {"topic": topic, "key": key.encode(), "value": value, "headers": []}


async def insert_rows(engine: AsyncEngine, rows: Sequence[dict[str, object]]) -> list[int]:
    async with engine.begin() as connection:
        result = await connection.execute(insert(outbox).returning(outbox.c.id), list(rows))
        return [r.id for r in result]


async def count(engine: AsyncEngine, table: Any) -> int:
    async with engine.connect() as connection:
        return int(await connection.scalar(select(func.count()).select_from(table)) or 0)


async def wait_for(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s: {what}")
        await asyncio.sleep(0.05)


async def test_a_row_committed_after_later_ids_is_published_and_every_row_deleted(
    groups_settings: GroupsSettingsBundle, kafka: KafkaTestClient
) -> None:
    topic = groups_settings.topics.events
    async with relay_on(groups_settings, batch_size=2) as (relay, engine, _):
        late = await engine.connect()
        try:
            # This transaction takes the smallest id but commits only after later rows
            # went out.
            late_transaction = await late.begin()
            await late.execute(insert(outbox), [row(topic, "customer-1", b"late")])
            rows = [row(topic, "customer-1", f"r{n}".encode()) for n in range(5)]
            await insert_rows(engine, rows)
            relay.wake()
            first = await kafka.read_until(topic, lambda records: len(records) >= 5)
            await late_transaction.commit()
            relay.wake()
            published = await kafka.read_until(topic, lambda records: len(records) >= 6)
            await wait_for(lambda: _empty(engine), 10, "every published row deleted")
        finally:
            await late.close()

    assert [r.value for r in first] == [b"r0", b"r1", b"r2", b"r3", b"r4"]
    assert sorted(r.value for r in published) == sorted([b"late", *(r.value for r in first)])


async def _empty(engine: AsyncEngine) -> bool:
    return await count(engine, outbox) == 0


async def test_a_commit_in_another_process_wakes_the_leader_at_once(
    groups_settings: GroupsSettingsBundle, kafka: KafkaTestClient
) -> None:
    """The relay of another process is told by PostgreSQL (NOTIFY at commit), not by
    `wake()`: with an idle poll of a minute, only that notification can publish the row
    within seconds, and a row written without it waits."""
    topic = groups_settings.topics.events
    async with relay_on(groups_settings, idle_poll_seconds=60.0) as (relay, engine, _):
        await wait_for(_leading(relay), 30, "the relay leads")
        await asyncio.sleep(0.5)  # past its first round
        # A plain INSERT notifies nothing: it stays until something wakes the relay.
        await insert_rows(engine, [row(topic, "customer-1", b"unannounced")])
        await asyncio.sleep(1.5)
        assert await count(engine, outbox) == 1
        # The unit of work's write, as any process's batch commits it, notifies.
        uow = UnitOfWork(engine, dlq_topic=groups_settings.topics.dlq, service="test")
        async with uow:
            await uow.outbox.add_event(topic, b"customer-2", b"announced")
            began = time.monotonic()
            await uow.commit()
        published = await kafka.read_until(topic, lambda records: len(records) >= 2)
        waited = time.monotonic() - began
        await wait_for(lambda: _empty(engine), 10, "both rows deleted")

    assert sorted(r.value for r in published) == [b"announced", b"unannounced"]
    assert waited < 10.0  # the idle poll alone would take 60 s


def _leading(relay: OutboxRelay) -> Any:
    async def leading() -> bool:
        return relay.is_leader

    return leading


async def test_a_row_the_topic_refuses_for_good_is_parked_and_the_others_flow(
    groups_settings: GroupsSettingsBundle, kafka: KafkaTestClient
) -> None:
    topic = groups_settings.topics.prompts
    before = [row(topic, f"customer-{n % 4}", f"before-{n}".encode()) for n in range(40)]
    after = [row(topic, f"customer-{n % 4}", f"after-{n}".encode()) for n in range(40)]
    # Larger than the topic's max.message.bytes: alone in its batch (over the producer's
    # batch size), refused for good.
    large = row(topic, "customer-0", b"x" * TOO_LARGE)
    async with relay_on(groups_settings) as (relay, engine, metrics):
        await insert_rows(engine, [row(topic, "warm-up", b"warm-up")])
        relay.wake()
        await kafka.read_until(topic, lambda records: len(records) >= 1)
        # As a yardstick: how long the same rows take when none is refused.
        yardstick = [row(topic, f"customer-{n % 4}", f"yardstick-{n}".encode()) for n in range(80)]
        baseline = await _published_within(engine, relay, yardstick)
        started = time.monotonic()
        ids = await insert_rows(engine, [*before, large, *after])
        relay.wake()
        await wait_for(lambda: _empty(engine), 30, "the other rows published")
        delay = time.monotonic() - started
        others = {*(r["value"] for r in before), *(r["value"] for r in after)}
        published = await kafka.read_until(
            topic, lambda records: len(records) >= 1 + len(yardstick) + len(others), timeout=30
        )
        published = [r for r in published if r.value in others or r.value == large["value"]]
        raw = await kafka.read_all(topic, isolation_level="read_uncommitted", timeout=5)
        async with engine.connect() as connection:
            parked = (await connection.execute(select(outbox_parked))).all()

    large_id = ids[len(before)]
    assert [(p.id, p.topic, p.value, p.error) for p in parked] == [
        (large_id, topic, large["value"], "MessageSizeTooLargeError")
    ]
    assert metrics.registry.get_sample_value("groups_outbox_parked_total") == 1
    committed = Counter(r.value for r in published)
    assert all(committed[value] == 1 for value in others), "each published once"
    assert large["value"] not in committed
    copies = Counter(r.value for r in raw)  # aborted attempts included
    # What the broker took of the refused round was committed, not sent again.
    assert max(copies[value] for value in others) == 1, copies.most_common(3)
    # Order per key is kept for the rows that flowed.
    for key in {r["key"] for r in before}:
        values = [r.value for r in published if r.key == key]
        expected = [r["value"] for r in [*before, *after] if r["key"] == key]
        assert values == expected
    assert delay < baseline + 1.0, f"the other rows waited {delay:.2f}s ({baseline:.2f}s)"


async def _published_within(
    engine: AsyncEngine, relay: OutboxRelay, rows: Sequence[dict[str, object]]
) -> float:
    """Seconds from the commit of `rows` until the relay has published (deleted) them."""
    started = time.monotonic()
    await insert_rows(engine, rows)
    relay.wake()
    await wait_for(lambda: _empty(engine), 30, "rows published")
    return time.monotonic() - started


async def test_parked_rows_are_listed_without_their_values_and_retried_after_a_fix(
    groups_settings: GroupsSettingsBundle, kafka: KafkaTestClient, database_url: str
) -> None:
    topic = groups_settings.topics.events
    secret = b"191212121212"  # stands for the personnummer a record holds
    # A batch of several rows is refused as a whole (together over the topic's limit):
    # they go again one per batch, so only the one too large alone is parked.
    small = [row(topic, "customer-1", secret + f"-small-{n}".encode()) for n in range(3)]
    large = row(topic, "customer-1", secret + b"-" + b"y" * 30_000)
    async with relay_on(groups_settings) as (relay, engine, _):
        await _set_max_message_bytes(groups_settings, topic, 20_000)
        ids = await insert_rows(engine, [small[0], large, *small[1:]])
        relay.wake()
        published = await kafka.read_until(topic, lambda records: len(records) >= 3, timeout=60)
        await wait_for(lambda: _empty(engine), 20, "the outbox emptied")

        listed = await groups_cli(database_url, "outbox", "parked")
        assert listed.returncode == 0, listed.stderr
        lines = [json.loads(line) for line in listed.stdout.splitlines()]
        assert [(x["id"], x["topic"], x["error"]) for x in lines] == [
            (ids[1], topic, "MessageSizeTooLargeError")
        ]
        assert lines[0]["size"] == len(b"customer-1") + len(large["value"])
        assert set(lines[0]) == {"id", "topic", "size", "error", "created_at", "parked_at"}
        assert secret.decode() not in listed.stdout + listed.stderr

        # The fix: the topic takes larger records. Then retry: same id, same content.
        await _set_max_message_bytes(groups_settings, topic, 1_048_588)
        retried = await groups_cli(database_url, "outbox", "retry", "--id", str(ids[1]))
        assert retried.returncode == 0, retried.stderr
        assert json.loads(retried.stdout) == {"command": "outbox retry", "retried": 1}
        relay.wake()
        again = await kafka.read_until(topic, lambda records: len(records) >= 4, timeout=30)
        await wait_for(lambda: _empty(engine), 20, "the retried row published")
        assert await count(engine, outbox_parked) == 0
        none_left = await groups_cli(database_url, "outbox", "retry", "--all")
        assert json.loads(none_left.stdout)["retried"] == 0
        # An id that is no parked row (any more): one line, a non-zero status.
        unknown = await groups_cli(database_url, "outbox", "retry", "--id", str(ids[1]))
        assert unknown.returncode == 1 and unknown.stdout == ""
        last = unknown.stderr.strip().splitlines()[-1]
        assert last.startswith("customer-groups: error: not every id")
        assert "Traceback" not in unknown.stderr

    assert [r.value for r in published] == [small[0]["value"], *(r["value"] for r in small[1:])]
    assert again[-1].value == large["value"] and again[-1].key == b"customer-1"


async def _set_max_message_bytes(settings: GroupsSettingsBundle, topic: str, size: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka.bootstrap_servers)
    await admin.start()
    try:
        await admin.alter_configs(
            [ConfigResource(ConfigResourceType.TOPIC, topic, {"max.message.bytes": str(size)})]
        )
    finally:
        await admin.close()
    await asyncio.sleep(1.0)  # the topic's configuration reaches the partition leader


async def test_a_topic_the_broker_does_not_know_is_retried_with_backoff_not_parked(
    groups_settings: GroupsSettingsBundle,
    kafka: KafkaTestClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    missing = f"customer-groups.missing.{uuid.uuid4().hex[:8]}"
    topic = groups_settings.topics.events
    caplog.set_level(logging.INFO, logger="services.groups.adapters.outbox_relay")
    async with relay_on(groups_settings, metadata_wait_seconds=0.5) as (relay, engine, metrics):
        await insert_rows(engine, [row(topic, "k", b"first"), row(missing, "k", b"lost?")])
        relay.wake()
        await asyncio.sleep(6.0)
        attempts = metrics.registry.get_sample_value(
            "groups_outbox_topic_refusals_total",
            {"topic": missing, "error": "UnknownTopicOrPartitionError"},
        )
        alert = relay.alert
        assert await count(engine, outbox) == 2, "nothing published, nothing lost"
        assert await count(engine, outbox_parked) == 0, "a topic refusal parks nothing"

        # Once the topic exists, the waiting rows go, in order, with the next attempt.
        admin = AIOKafkaAdminClient(bootstrap_servers=groups_settings.kafka.bootstrap_servers)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(missing, 1, 1)])
        finally:
            await admin.close()
        await wait_for(lambda: _empty(engine), 30, "published once the topic exists")
        assert relay.alert is None

    # The old relay retried every 0.1 s: 60 attempts in 6 s. Now the waits double.
    assert 2 <= attempts <= 8, attempts
    assert alert is not None and missing in alert
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert errors and all(missing in r.getMessage() for r in errors)
    assert [r.value for r in await kafka.read_all(topic)] == [b"first"]
    assert [r.value for r in await kafka.read_all(missing)] == [b"lost?"]


async def test_a_lease_passes_on_when_its_holder_stops_renewing_or_its_session_ends(
    groups_settings: GroupsSettingsBundle,
) -> None:
    engine = create_engine(groups_settings.database)
    await migrate.upgrade(engine)
    first, second = Lease("test", seconds=1.0), Lease("test", seconds=1.0)
    try:
        async with two_sessions(engine) as (a, b):
            assert await first.acquire(a) == 1
            waiting = asyncio.create_task(second.acquire(b))
            await asyncio.sleep(0.5)
            assert not waiting.done(), "held, and its holder's session lives"
            # The holder makes no progress (frozen): the lease expires, the standby takes it.
            assert await asyncio.wait_for(waiting, 5.0) == 2
            await asyncio.sleep(0.3)
            with pytest.raises(LeaseLost):
                await first.renew_if_due(a)
            await second.renew_if_due(b)  # the holder renews
        # The holder's session ends (a crash): the next one need not wait for expiry.
        third, fourth = Lease("test", seconds=60.0), Lease("test", seconds=60.0)
        async with two_sessions(engine) as (c, d):
            assert await third.acquire(c) == 3
            blocked = asyncio.create_task(fourth.acquire(d))
            await asyncio.sleep(0.5)
            assert not blocked.done()
            await c.invalidate()  # its database session is gone
            assert await asyncio.wait_for(blocked, 5.0) == 4
    finally:
        await engine.dispose()


@contextlib.asynccontextmanager
async def two_sessions(
    engine: AsyncEngine,
) -> AsyncIterator[tuple[AsyncConnection, AsyncConnection]]:
    """Two database sessions, as two processes' relays hold theirs (autocommit)."""
    async with engine.connect() as a, engine.connect() as b:
        yield (
            await a.execution_options(isolation_level="AUTOCOMMIT"),
            await b.execution_options(isolation_level="AUTOCOMMIT"),
        )
