"""Retention rules that need no infrastructure: the inbox outlives every inbound record by
construction, the contract's 7-day window is a floor, topics get their retention at
creation, and pruning backs off when the database is away."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from devinfra.acls import Principals, acl_set
from services.common.db import create_engine
from services.common.kafka import topic_specs
from services.common.settings import (
    IDEMPOTENCY_WINDOW_MIN,
    DatabaseSettings,
    GroupsSettings,
    KafkaSettings,
    TopicSettings,
    UnsafeSettings,
    inbound_record_lifetime,
    inbox_problems,
)
from services.groups.adapters.migrate import AUDIT_TABLES
from services.groups.adapters.retention import RetentionPruner, prune_targets
from services.groups.bootstrap import GroupsService, GroupsSettingsBundle

DAY_MS = 24 * 3600 * 1000


def test_the_defaults_keep_ids_longer_than_any_inbound_record_and_the_contract_asks() -> None:
    groups, kafka = GroupsSettings(), KafkaSettings()
    assert inbox_problems(groups, kafka) == []
    assert groups.inbox_retention >= IDEMPOTENCY_WINDOW_MIN == timedelta(days=7)
    assert groups.inbox_retention >= inbound_record_lifetime(kafka)
    # Also topics made with Kafka's own defaults (7-day retention, 7-day segments).
    assert groups.inbox_retention > timedelta(days=14)


def test_an_inbox_shorter_than_the_contracts_window_is_refused() -> None:
    short = GroupsSettings(inbox_retention_days=6)
    problems = inbox_problems(short, KafkaSettings(inbound_retention_days=1))
    assert len(problems) == 1
    assert "GROUPS_INBOX_RETENTION_DAYS is 6" in problems[0] and "7 days" in problems[0]


def test_an_inbox_shorter_than_the_inbound_topics_keep_records_is_refused() -> None:
    # 14 days of retention plus a one-day segment outlive a 14-day inbox.
    problems = inbox_problems(
        GroupsSettings(inbox_retention_days=14), KafkaSettings(inbound_retention_days=13)
    )
    assert len(problems) == 1 and "KAFKA_INBOUND_RETENTION_DAYS 13" in problems[0]
    assert (
        inbox_problems(
            GroupsSettings(inbox_retention_days=14), KafkaSettings(inbound_retention_days=12)
        )
        == []
    )


@given(inbound_days=st.integers(1, 400), inbox_days=st.integers(1, 400))
def test_settings_the_service_accepts_create_topics_the_inbox_outlives(
    inbound_days: int, inbox_days: int
) -> None:
    """By construction: whatever the settings, if they pass, every inbound topic the service
    creates deletes a record (retention, plus a segment, plus the broker's check) before the
    inbox forgets its id, and the window is at least the contract's."""
    groups = GroupsSettings(inbox_retention_days=inbox_days)
    kafka = KafkaSettings(inbound_retention_days=inbound_days)
    if inbox_problems(groups, kafka):
        return
    assert groups.inbox_retention >= IDEMPOTENCY_WINDOW_MIN
    topics = TopicSettings()
    specs = {spec.name: spec.config for spec in topic_specs(topics, kafka)}
    for topic in topics.inbound:
        config = specs[topic]
        kept_ms = int(config["retention.ms"]) + int(config["segment.ms"]) + 3600 * 1000
        assert timedelta(milliseconds=kept_ms) <= groups.inbox_retention
        # By the broker's clock, so no producer's clock stretches a record's life.
        assert config["message.timestamp.type"] == "LogAppendTime"


def test_the_service_refuses_to_start_with_a_window_below_7_days_in_dev_mode_too() -> None:
    settings = GroupsSettingsBundle(groups=GroupsSettings(inbox_retention_days=6))
    assert settings.app.dev_mode  # APP_ENV=test (tests/conftest.py)
    with pytest.raises(UnsafeSettings, match="GROUPS_INBOX_RETENTION_DAYS is 6"):
        GroupsService(settings)
    too_long_on_topics = GroupsSettingsBundle(
        kafka=KafkaSettings(inbound_retention_days=30), groups=GroupsSettings()
    )
    with pytest.raises(UnsafeSettings, match="KAFKA_INBOUND_RETENTION_DAYS 30"):
        GroupsService(too_long_on_topics)


def test_topics_holding_personnummer_get_their_retention_at_creation() -> None:
    kafka = KafkaSettings(
        inbound_retention_days=5,
        prompts_retention_days=3,
        events_retention_days=21,
        dlq_retention_days=40,
    )
    topics = TopicSettings()
    specs = {spec.name: spec.config for spec in topic_specs(topics, kafka)}
    expected_days = {
        topics.bookings: 5,
        topics.started: 5,
        topics.registered: 5,
        topics.commands: 5,
        topics.prompts: 3,
        topics.events: 21,
        topics.dlq: 40,
    }
    for topic, days in expected_days.items():
        assert specs[topic]["retention.ms"] == str(days * DAY_MS), topic
        assert specs[topic]["segment.ms"] == str(DAY_MS), topic
        assert specs[topic].get("cleanup.policy", "delete") == "delete", topic
    # Keyed by pseudonym or group code, latest value per key: compacted, no time limit.
    for topic in (topics.export, topics.catalog):
        assert specs[topic]["cleanup.policy"] == "compact"
        assert "retention.ms" not in specs[topic]


def test_the_defaults_of_the_topic_retentions() -> None:
    specs = {spec.name: spec.config for spec in topic_specs(TopicSettings(), KafkaSettings())}
    topics = TopicSettings()
    assert specs[topics.bookings]["retention.ms"] == str(7 * DAY_MS)
    assert specs[topics.prompts]["retention.ms"] == str(7 * DAY_MS)
    assert specs[topics.events]["retention.ms"] == str(14 * DAY_MS)
    assert specs[topics.dlq]["retention.ms"] == str(30 * DAY_MS)


def test_the_pruner_never_touches_the_audit_log() -> None:
    targets = prune_targets(GroupsSettings())
    assert {t.name for t in targets} == {"inbox", "dead_letters", "outbox_parked"}
    assert not {t.name for t in targets} & set(AUDIT_TABLES)
    by_name = {t.name: t.retention for t in targets}
    assert by_name == {
        "inbox": timedelta(days=15),
        "dead_letters": timedelta(days=30),
        "outbox_parked": timedelta(days=30),
    }


async def test_pruning_backs_off_while_the_database_is_away() -> None:
    """No busy loop: with nothing listening, a second of waiting costs a couple of tries."""
    engine = create_engine(
        DatabaseSettings(database_url="postgresql+asyncpg://nobody@127.0.0.1:1/none")
    )
    retries: list[str] = []
    pruner = RetentionPruner(
        engine,
        prune_targets(GroupsSettings()),
        pause_seconds=0,
        on_retry=lambda error, _delay: retries.append(type(error).__name__),
    )
    pruner.start()
    try:
        await asyncio.sleep(1.5)
    finally:
        await pruner.stop()
        await engine.dispose()
    assert 1 <= len(retries) <= 3, retries


def test_the_groups_principal_may_read_the_inbound_topics_retention() -> None:
    rules = acl_set(TopicSettings(), groups_consumer_group="g", export_consumer_group="e")
    described = {
        name
        for rule in rules
        if rule.principal == Principals().groups and "DescribeConfigs" in rule.operations
        for name in rule.names
    }
    assert described == set(TopicSettings().inbound)


def test_the_readme_documents_every_retention_setting() -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text(encoding="utf-8")
    names = [
        f"GROUPS_{name.upper()}"
        for name in GroupsSettings.model_fields
        if "retention" in name or name.startswith("prune")
    ] + [f"KAFKA_{name.upper()}" for name in KafkaSettings.model_fields if "retention" in name]
    assert len(names) == 10
    assert [name for name in names if name not in readme] == []
