"""Retention over the real database and broker: the pruner deletes what is older than its
table's retention, in batches, from several processes at once, and nothing younger; the
inbox still recognises a redelivery inside the window; the topics holding personnummer
carry their retention from creation, and the service refuses inbound topics whose
records could outlive its inbox. The pruner's clock is shifted instead of sleeping."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from devinfra.provider import Infrastructure
from services.common.db import create_engine
from services.common.kafka import describe_topic_configs, ensure_topics
from services.common.settings import (
    DatabaseSettings,
    GroupsSettings,
    KafkaSettings,
    UnsafeSettings,
)
from services.groups.adapters.orm import (
    audit_log,
    dead_letters,
    inbox,
    memberships,
    outbox_parked,
)
from services.groups.adapters.retention import (
    RetentionPruner,
    inbound_retention_problems,
    prune_targets,
)
from services.groups.bootstrap import GroupsService, GroupsSettingsBundle
from services.groups.service_layer.context import Clock
from tests.integration.conftest import (
    ACTOR,
    groups_cli,
    nurse_client,
    running_groups_service,
    unique_topics,
)
from tests.kafka_tools import KafkaTestClient, cloudevent

PNR = "191212121212"
DAY = timedelta(days=1)
DAY_MS = 24 * 3600 * 1000


async def count(engine: AsyncEngine, table: Any) -> int:
    async with engine.connect() as connection:
        return int(await connection.scalar(select(func.count()).select_from(table)) or 0)


async def seed(engine: AsyncEngine, now: datetime, *, old: int, young: int) -> None:
    """`old` rows past each table's default retention, `young` ones just inside it; the
    audit log gets rows far older than any retention."""
    settings = GroupsSettings()
    ages = {
        "inbox": settings.inbox_retention,
        "dead_letters": timedelta(days=settings.dead_letter_retention_days),
        "outbox_parked": timedelta(days=settings.parked_retention_days),
    }

    def at(table: str, index: int) -> datetime:
        if index < old:  # past the retention by minutes
            return now - ages[table] - timedelta(minutes=1 + index)
        return now - ages[table] + timedelta(hours=1, minutes=index - old)  # inside it

    rows = range(old + young)
    async with engine.begin() as connection:
        await connection.execute(
            insert(inbox),
            [{"topic": "t", "event_id": f"e{i}", "processed_at": at("inbox", i)} for i in rows],
        )
        await connection.execute(
            insert(dead_letters),
            [
                {
                    "source_topic": "t",
                    "source_partition": 0,
                    "source_offset": i,
                    "key": PNR.encode(),
                    "value": b"{",
                    "headers": [],
                    "error_code": "INVALID_JSON",
                    "error_message": "not JSON",
                    "created_at": at("dead_letters", i),
                    # Replayed or not, a dead letter goes at its age.
                    "replayed_at": at("dead_letters", i) if i % 2 else None,
                }
                for i in rows
            ],
        )
        await connection.execute(
            insert(outbox_parked),
            [
                {
                    "id": i + 1,
                    "topic": "t",
                    "key": PNR.encode(),
                    "value": b"x",
                    "created_at": at("outbox_parked", i),
                    "error": "MessageSizeTooLargeError",
                    "parked_at": at("outbox_parked", i),
                }
                for i in rows
            ],
        )
        await connection.execute(
            insert(audit_log),
            [
                {
                    "at": now - timedelta(days=3650),
                    "action": "read",
                    "user_id": "u",
                    "unit_id": "unit-1",
                    "personnummer": PNR,
                }
                for _ in range(3)
            ],
        )


async def test_rows_past_their_retention_are_pruned_in_batches_and_younger_ones_kept(
    engine: AsyncEngine,
) -> None:
    now = datetime.now(UTC)
    await seed(engine, now, old=23, young=4)
    batches: list[tuple[str, int]] = []
    pruner = RetentionPruner(
        engine,
        prune_targets(GroupsSettings()),
        batch_size=10,
        pause_seconds=0,
        clock=lambda: now,
        on_pruned=lambda table, n: batches.append((table, n)),
    )
    assert await pruner.prune() == {"inbox": 23, "dead_letters": 23, "outbox_parked": 23}
    for table in ("inbox", "dead_letters", "outbox_parked"):
        assert [n for t, n in batches if t == table] == [10, 10, 3]
    # Exactly the young ones are left, and the PDL log is untouched.
    async with engine.connect() as connection:
        inbox_left = set(await connection.scalars(select(inbox.c.event_id)))
        parked_left = set(await connection.scalars(select(outbox_parked.c.id)))
        letters_left = set(await connection.scalars(select(dead_letters.c.source_offset)))
    assert inbox_left == {f"e{i}" for i in range(23, 27)}
    assert parked_left == set(range(24, 28))
    assert letters_left == set(range(23, 27))
    assert await count(engine, audit_log) == 3
    # A second pass finds nothing; a day later the young ones go too.
    assert await pruner.prune() == {"inbox": 0, "dead_letters": 0, "outbox_parked": 0}
    later = RetentionPruner(
        engine, prune_targets(GroupsSettings()), pause_seconds=0, clock=lambda: now + DAY
    )
    assert await later.prune() == {"inbox": 4, "dead_letters": 4, "outbox_parked": 4}
    assert await count(engine, audit_log) == 3


async def test_several_processes_prune_at_once_without_waiting_for_each_other(
    engine: AsyncEngine, database_url: str
) -> None:
    now = datetime.now(UTC)
    await seed(engine, now, old=300, young=5)
    engines = [create_engine(DatabaseSettings(database_url=database_url)) for _ in range(3)]
    try:
        pruners = [
            RetentionPruner(
                e, prune_targets(GroupsSettings()), batch_size=7, pause_seconds=0, clock=lambda: now
            )
            for e in engines
        ]
        passes = await asyncio.wait_for(asyncio.gather(*(p.prune() for p in pruners)), 60)
    finally:
        for e in engines:
            await e.dispose()
    for table in ("inbox", "dead_letters", "outbox_parked"):
        assert sum(done[table] for done in passes) == 300, passes
    assert await count(engine, inbox) == await count(engine, outbox_parked) == 5
    assert await count(engine, dead_letters) == 5


class ShiftedClock(Clock):
    """The service's clock, moved forward on demand (the pruner's "now")."""

    def __init__(self, timezone: str) -> None:
        super().__init__(timezone)
        self.shift = timedelta(0)

    def now(self) -> datetime:
        return super().now() + self.shift


def duplicates(service: GroupsService) -> float:
    value = service.metrics.registry.get_sample_value(
        "groups_records_total", {"outcome": "duplicate"}
    )
    return value or 0.0


async def test_a_redelivered_command_inside_the_window_is_still_recognised(
    groups_settings: GroupsSettingsBundle, kafka: KafkaTestClient, infra: Infrastructure
) -> None:
    """At the shortest window the service accepts (the contract's 7 days, with inbound
    topics short enough for it), an id is recognised up to the last minute of it."""
    settings = GroupsSettingsBundle(
        app=groups_settings.app,
        kafka=groups_settings.kafka.model_copy(update={"inbound_retention_days": 5}),
        topics=groups_settings.topics,
        database=groups_settings.database,
        groups=groups_settings.groups.model_copy(update={"inbox_retention_days": 7}),
    )
    clock = ShiftedClock(settings.groups.timezone)
    async with running_groups_service(settings, clock=clock) as service:
        async with nurse_client(service, kafka, infra) as nurse:
            command = cloudevent(
                "customer_group.add",
                {
                    "personnummer": PNR,
                    "actor": ACTOR,
                    "group_code": "OVRIGT",
                    "subgroup_code": "RESEVACCINATIONER",
                },
            )
            await kafka.send_event(settings.topics.commands, command, key=PNR)
            await nurse.answer(command)

            clock.shift = timedelta(days=7) - timedelta(minutes=1)
            pruned = await service.pruner.prune()
            clock.shift = timedelta(0)
            assert pruned["inbox"] == 0

            before = duplicates(service)
            await kafka.send_event(settings.topics.commands, command, key=PNR)
            for _ in range(300):
                if duplicates(service) > before:
                    break
                await asyncio.sleep(0.1)
            assert duplicates(service) == before + 1, "the redelivery was not recognised"
            await asyncio.sleep(1.0)  # time for a second answer, had there been one
            answers = [
                e for e in nurse.events.events if e["data"].get("command_id") == command["id"]
            ]
            assert len(answers) == 1
            assert await count(service.engine, memberships) == 1

            # Past the window the id is forgotten, and the metric says so per table.
            clock.shift = timedelta(days=7) + timedelta(minutes=1)
            pruned = await service.pruner.prune()
            clock.shift = timedelta(0)
            assert pruned["inbox"] >= 1
            sample = service.metrics.registry.get_sample_value(
                "groups_retention_pruned_rows_total", {"table": "inbox"}
            )
            assert sample == pruned["inbox"]


async def test_topics_holding_personnummer_are_created_with_their_retention(
    infra: Infrastructure,
) -> None:
    topics = unique_topics(uuid.uuid4().hex[:8])
    kafka = KafkaSettings(bootstrap_servers=infra.kafka_bootstrap, inbound_partitions=3)
    await ensure_topics(topics, kafka)
    created = (*topics.inbound, topics.prompts, topics.events, topics.dlq)
    configs, refused = await describe_topic_configs(
        kafka, (*created, topics.export, topics.catalog)
    )
    assert refused == {}
    for topic, days in (
        *((name, 7) for name in topics.inbound),
        (topics.prompts, 7),
        (topics.events, 14),
        (topics.dlq, 30),
    ):
        assert configs[topic]["cleanup.policy"] == "delete", topic
        assert configs[topic]["retention.ms"] == str(days * DAY_MS), topic
        assert configs[topic]["segment.ms"] == str(DAY_MS), topic
    for topic in topics.inbound:
        assert configs[topic]["message.timestamp.type"] == "LogAppendTime"
    # Keyed by pseudonym (the export) or group code (the catalog): stay compacted.
    for topic in (topics.export, topics.catalog):
        assert configs[topic]["cleanup.policy"] == "compact", topic
    # The inbox, at its default, outlives every record of the inbound topics as created.
    assert (
        await inbound_retention_problems(kafka, topics.inbound, GroupsSettings().inbox_retention)
        == []
    )
    # And would not at a window shorter than what they keep (7 days + a segment).
    short = await inbound_retention_problems(kafka, topics.inbound, timedelta(days=8))
    assert len(short) == len(topics.inbound)


@pytest.mark.parametrize(
    "config",
    [{"retention.ms": str(30 * DAY_MS)}, {"retention.ms": "-1"}, {"cleanup.policy": "compact"}],
)
async def test_the_service_refuses_an_inbound_topic_that_outlives_its_inbox(
    groups_settings: GroupsSettingsBundle, config: dict[str, str]
) -> None:
    """A topic made before (or beside) the service, keeping records longer than the inbox
    keeps ids: a consumer group reading it again from the start would apply them twice."""
    topics = groups_settings.topics
    admin = AIOKafkaAdminClient(bootstrap_servers=groups_settings.kafka.bootstrap_servers)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topics.bookings, 3, 1, topic_configs=config)])
    finally:
        await admin.close()
    service = GroupsService(groups_settings)
    try:
        with pytest.raises(UnsafeSettings, match=topics.bookings):
            await asyncio.wait_for(service.prepare(), 120)
    finally:
        await service.stop()


async def test_migrate_refuses_to_create_inbound_topics_that_outlive_the_inbox() -> None:
    done = await groups_cli(
        # Nothing listens at either: the check comes before any connection.
        "postgresql+asyncpg://nobody@127.0.0.1:1/none",
        "migrate",
        env={
            "GROUPS_INBOX_RETENTION_DAYS": "15",
            "KAFKA_INBOUND_RETENTION_DAYS": "20",
            "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1",
        },
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert "GROUPS_INBOX_RETENTION_DAYS is 15" in done.stderr
    assert "Traceback" not in done.stderr
