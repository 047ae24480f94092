"""The export service in this test process (or as a real process), beside the groups
service of `tests/integration/conftest.py`, plus what the export tests compare.

Live and backfilled records of the same state are byte-identical: the groups service
dates each event with the instant it wrote as the row's updated_at.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from aiokafka import ConsumerRecord
from pydantic import SecretStr

from services.common.db import create_engine
from services.common.settings import AppSettings, ExportSettings, TopicSettings
from services.export.adapters.groups_db import SourceTable, open_tables
from services.export.bootstrap import ExportService, ExportSettingsBundle, record_builder_from
from services.export.entrypoints.consumer import register_consumer
from services.export.service_layer.backfill import build_record
from services.export.service_layer.pipeline import record_value
from services.groups.bootstrap import GroupsSettingsBundle
from services.groups.domain.personnummer import luhn_check_digit
from tests.integration.conftest import NurseClient
from tests.kafka_tools import KafkaTestClient
from tests.pii import personnummer_forms

PSEUDONYM_KEY = "export-tests-pseudonym-key-0123456789"
REPO_ROOT = Path(__file__).resolve().parents[3]


def _pnr(birth: str, serial: str) -> str:
    return f"{birth}{serial}" + luhn_check_digit(f"{birth[2:]}{serial}")


# The customers of the mixed scenario: the public test identity, two more, and a
# samordningsnummer (day + 60).
PNR_A = "191212121212"
PNR_B = _pnr("19850302", "123")
PNR_C = _pnr("19470915", "274")
PNR_D = _pnr("20010371", "058")
SCENARIO_PNRS = (PNR_A, PNR_B, PNR_C, PNR_D)


def leaks(blob: bytes, numbers: Iterable[str]) -> list[str]:
    return [form.decode() for form in personnummer_forms(numbers) if form in blob]


def record_bytes(record: ConsumerRecord[Any, Any]) -> bytes:
    """Every byte of a record: key, value and headers (names and values)."""
    parts = [record.key or b"", record.value or b""]
    for name, value in record.headers or ():
        parts += [name.encode(), value or b""]
    return b"\x00".join(parts)


def export_settings(
    groups: GroupsSettingsBundle,
    *,
    export_topic: str | None = None,
    include_personnummer: bool = False,
) -> ExportSettingsBundle:
    """The export beside `groups`: same broker, database and topics (or another export topic)."""
    topics = groups.topics
    if export_topic is not None:
        topics = TopicSettings(**{**topics.model_dump(), "export": export_topic})
    return ExportSettingsBundle(
        app=AppSettings(app_env="test"),
        kafka=groups.kafka,
        topics=topics,
        export=ExportSettings(
            consumer_group=f"export-{uuid.uuid4().hex[:8]}",
            pseudonym_key=SecretStr(PSEUDONYM_KEY),
            include_personnummer=include_personnummer,
        ),
        database=groups.database,
        timezone=groups.groups.timezone,
    )


def fresh_topic(settings: ExportSettingsBundle) -> str:
    return f"{settings.topics.export}.{uuid.uuid4().hex[:6]}"


def export_env(settings: ExportSettingsBundle, **extra: str) -> dict[str, str]:
    """The environment that gives a real process the same settings."""
    env = {
        "APP_ENV": settings.app.app_env,
        "LOG_LEVEL": "WARNING",
        "KAFKA_BOOTSTRAP_SERVERS": settings.kafka.bootstrap_servers,
        "KAFKA_INBOUND_PARTITIONS": str(settings.kafka.inbound_partitions),
        "DATABASE_URL": settings.database.database_url,
        "EXPORT_CONSUMER_GROUP": settings.export.consumer_group,
        "EXPORT_PSEUDONYM_KEY": PSEUDONYM_KEY,
        "EXPORT_INCLUDE_PERSONNUMMER": str(settings.export.include_personnummer).lower(),
        "GROUPS_TIMEZONE": settings.timezone,
    }
    for name, value in settings.topics.model_dump().items():
        env[f"TOPIC_{name.upper()}"] = value
    return {**env, **extra}


@contextlib.asynccontextmanager
async def running_export_service(
    settings: ExportSettingsBundle, service: ExportService | None = None
) -> AsyncIterator[ExportService]:
    """The export service in this process (or `service`): its consumer, no HTTP server.
    It stops as the process does: the batch in flight settles before the consumer
    leaves its group."""
    service = service or ExportService(settings)
    register_consumer(service.broker, service)
    await service.prepare()
    await service.broker.start()
    await service.mark_ready()
    try:
        yield service
    finally:
        await service.offset_commits.stop()
        await service.broker.stop()
        await service.stop()


@dataclass
class CliResult:
    returncode: int
    summary: dict[str, Any] | None
    stderr: str


async def run_cli(env: Mapping[str, str], *args: str, timeout: float = 60.0) -> CliResult:
    """`python -m services.export <args>` as a real process."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.export",
        *args,
        env={**os.environ, **env},
        cwd=REPO_ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout)
    lines = out.decode().strip().splitlines()
    summary = json.loads(lines[-1]) if lines else None
    assert process.returncode is not None
    return CliResult(process.returncode, summary, err.decode())


async def db_records(settings: ExportSettingsBundle) -> dict[str, bytes]:
    """Key -> value of every record the database's state gives (what a backfill publishes)."""
    builder = record_builder_from(settings)
    engine = create_engine(settings.database)
    records: dict[str, bytes] = {}
    try:
        async with open_tables(engine, consistent=True) as tables:
            for table in SourceTable:
                async for chunk in tables.chunks(table, size=1000):
                    for row in chunk:
                        record = build_record(builder, table, row)
                        records[record.key] = record_value(record)
    finally:
        await engine.dispose()
    return records


def last_values(records: Iterable[ConsumerRecord[Any, Any]]) -> dict[str, bytes]:
    """What compaction keeps: the last value per key (records of one key share a partition)."""
    state: dict[str, bytes] = {}
    for record in sorted(records, key=lambda r: (r.partition, r.offset)):
        state[record.key.decode()] = record.value
    return state


def comparable(value: bytes) -> dict[str, Any]:
    """A record value, decoded for readable comparison failures."""
    event: dict[str, Any] = json.loads(value)
    return event


def comparable_state(state: Mapping[str, bytes]) -> dict[str, dict[str, Any]]:
    return {key: comparable(value) for key, value in state.items()}


async def wait_for_state(
    kafka: KafkaTestClient, topic: str, expected: Mapping[str, bytes], *, timeout: float = 30.0
) -> list[ConsumerRecord[Any, Any]]:
    """Read `topic` until its last values equal `expected` (as `comparable`); all records."""
    wanted = comparable_state(expected)

    def converged(records: list[ConsumerRecord[Any, Any]]) -> bool:
        return comparable_state(last_values(records)) == wanted

    try:
        return await kafka.read_until(topic, converged, timeout=timeout)
    except AssertionError:
        records = await kafka.read_all(topic)
        got = comparable_state(last_values(records))
        missing = sorted(set(wanted) - set(got))
        differ = sorted(k for k in wanted if k in got and got[k] != wanted[k])
        extra = sorted(set(got) - set(wanted))
        raise AssertionError(
            f"{topic} did not converge: missing {missing[:5]}, differ {differ[:5]}, "
            f"extra {extra[:5]} ({len(records)} records)"
        ) from None


def stockholm_today(settings: ExportSettingsBundle) -> date:
    return datetime.now(ZoneInfo(settings.timezone)).date()


@dataclass
class Scenario:
    """What the mixed scenario did, for specific assertions."""

    memberships: dict[str, str] = field(default_factory=dict)  # label -> membership_id
    vaccinations: list[str] = field(default_factory=list)
    rejected: int = 0


async def mixed_scenario(nurse: NurseClient, today: date) -> Scenario:
    """Adds, corrections, removals (also back-dated), re-adds, rejected commands and doses
    confirmed (one of them twice), over four customers."""
    s = Scenario()

    async def add(label: str, pnr: str, **fields: Any) -> None:
        event = await nurse.command("add", pnr, **fields)
        assert event["type"] == "customer_group.added", event["data"]
        s.memberships[label] = event["data"]["membership"]["membership_id"]

    async def ok(
        type_: str, pnr: str, actor: dict[str, str] | None = None, **fields: Any
    ) -> dict[str, Any]:
        event = await nurse.command(type_, pnr, actor, **fields)
        assert event["type"] != "customer_group.command_rejected", event["data"]
        return event

    prompt_a = (await nurse.start("v-a1", PNR_A))["data"]["prompt_id"]
    await add(
        "a_covid",
        PNR_A,
        group_code="COVID_19",
        subgroup_code="REKOMMENDERAD",
        reference_code="R-1",
        prompt_id=prompt_a,
    )
    await add("a_flu", PNR_A, group_code="INFLUENSA")
    await ok(
        "update",
        PNR_A,
        membership_id=s.memberships["a_flu"],
        subgroup_code="ALDER_65_PLUS",
        reference_code="R-2",
    )
    await ok("remove", PNR_A, membership_id=s.memberships["a_covid"])
    await ok("prompt_close", PNR_A, prompt_id=prompt_a, vaccination_id="v-a1")
    rejected = await nurse.command("add", PNR_A, group_code="INFLUENSA")  # ALREADY_ACTIVE
    assert rejected["type"] == "customer_group.command_rejected"
    s.rejected += 1
    await add("a_covid_again", PNR_A, group_code="COVID_19", subgroup_code="REKOMMENDERAD")
    await ok("prompt_close", PNR_A, prompt_id=prompt_a, vaccination_id="v-a1")  # version 3
    s.vaccinations.append("v-a1")

    await add(
        "b_pneumo",
        PNR_B,
        group_code="PNEUMOKOCK",
        valid_from=(today - timedelta(days=30)).isoformat(),
    )
    await ok(
        "remove",
        PNR_B,
        membership_id=s.memberships["b_pneumo"],
        valid_to=(today - timedelta(days=10)).isoformat(),
    )
    # Added by mistake (contract revision 2): kept, exported as entered_in_error.
    await add("b_mistake", PNR_B, group_code="OVRIGT", subgroup_code="RESEVACCINATIONER")
    await ok("remove", PNR_B, membership_id=s.memberships["b_mistake"], reason="entered_in_error")

    prompt_c = (await nurse.start("v-c1", PNR_C))["data"]["prompt_id"]
    await add(
        "c_travel",
        PNR_C,
        group_code="OVRIGT",
        subgroup_code="RESEVACCINATIONER",
        prompt_id=prompt_c,
    )
    await ok("prompt_close", PNR_C, prompt_id=prompt_c, vaccination_id="v-c1")
    s.vaccinations.append("v-c1")
    prompt_c2 = (await nurse.start("v-c2", PNR_C))["data"]["prompt_id"]
    await ok("prompt_close", PNR_C, prompt_id=prompt_c2, vaccination_id="v-c2")
    s.vaccinations.append("v-c2")
    # The pencil corrects the group itself, by another nurse (revision 2), after the doses.
    await add("c_moved", PNR_C, group_code="PNEUMOKOCK", subgroup_code="ALDER_65_PLUS")
    await ok(
        "update",
        PNR_C,
        {"user_id": "nurse-2", "unit_id": "unit-2"},
        membership_id=s.memberships["c_moved"],
        group_code="INFLUENSA",
        subgroup_code="ALDER_65_PLUS",
    )

    await add("d_flu", PNR_D, group_code="INFLUENSA", reference_code="X-9")
    await ok("update", PNR_D, membership_id=s.memberships["d_flu"], reference_code=None)
    await ok("update", PNR_D, membership_id=s.memberships["d_flu"], subgroup_code="ALDER_65_PLUS")
    unknown = await nurse.command(
        "remove", PNR_D, membership_id=str(uuid.uuid4())
    )  # MEMBERSHIP_NOT_FOUND
    assert unknown["type"] == "customer_group.command_rejected"
    s.rejected += 1
    return s


def assert_live_matches_db(live: Mapping[str, bytes], db: Mapping[str, bytes]) -> None:
    """Same keys, and every record byte-identical to the one built from the database."""
    assert set(live) == set(db)
    assert comparable_state(live) == comparable_state(db)
    for key, value in live.items():
        assert value == db[key], key


async def backfill_in_process(
    settings: ExportSettingsBundle,
    *,
    store: Any = None,
    limit: int | None = None,
    batch_size: int = 2,
    wrap_sink: Callable[[Any], Any] = lambda sink: sink,
) -> Any:
    """The backfill service function with this process's adapters (what the CLI wires);
    `wrap_sink` may stand between it and the export topic."""
    from services.common.kafka import ensure_topics, start_producer
    from services.export.adapters.checkpoint import MemoryCheckpointStore
    from services.export.adapters.export_topic import ExportPublisher
    from services.export.service_layer.backfill import backfill

    await ensure_topics(settings.topics, settings.kafka)
    engine = create_engine(settings.database)
    producer = await start_producer(settings.kafka, client_id="export-backfill-test")
    try:
        return await backfill(
            lambda: open_tables(engine, consistent=False),
            wrap_sink(ExportPublisher(producer, settings.topics.export)),
            record_builder_from(settings),
            store if store is not None else MemoryCheckpointStore(),
            topic=settings.topics.export,
            batch_size=batch_size,
            limit=limit,
        )
    finally:
        await producer.stop()
        await engine.dispose()


def with_export_topic(settings: ExportSettingsBundle, topic: str) -> ExportSettingsBundle:
    return ExportSettingsBundle(
        app=settings.app,
        kafka=settings.kafka,
        topics=TopicSettings(**{**settings.topics.model_dump(), "export": topic}),
        export=settings.export,
        database=settings.database,
        timezone=settings.timezone,
    )
