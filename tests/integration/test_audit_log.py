"""The PDL audit log against the real database: the service role may only insert and
read it, a trigger refuses changes even for the owner, the sealer chains committed
rows, `audit-verify` finds what was changed or removed, and extracts log themselves."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, insert, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from devinfra.provider import Infrastructure
from devinfra.tokens import TokenIssuer
from services.common.db import create_engine
from services.common.settings import AppSettings, AuthSettings, DatabaseSettings, GroupsSettings
from services.groups.adapters import migrate
from services.groups.adapters.audit_sealer import SealHorizon, seal_round
from services.groups.adapters.orm import audit_chain, audit_log
from services.groups.bootstrap import GroupsService, GroupsSettingsBundle
from tests.integration.conftest import NurseClient, groups_cli, running_groups_service
from tests.kafka_tools import KafkaTestClient, TopicCollector

PNR = "191212121212"
OTHER_PNR = "200001012384"


def _row(n: int = 0, **overrides: Any) -> dict[str, Any]:
    return {
        "action": "customer_card.read",
        "user_id": f"nurse-{n}",
        "unit_id": "unit-1",
        "personnummer": PNR,
        "detail": {"n": n},
        **overrides,
    }


@pytest.fixture
async def service_url(engine: AsyncEngine, database_url: str) -> AsyncIterator[str]:
    """DATABASE_URL for a fresh service role that `migrate` granted."""
    role = f"svc_{uuid.uuid4().hex[:10]}"
    await migrate.grant_service_role(engine, role)
    yield make_url(database_url).set(username=role).render_as_string(hide_password=False)
    async with engine.begin() as connection:
        await connection.execute(text(f"DROP OWNED BY {role}"))
        await connection.execute(text(f"DROP ROLE {role}"))


async def _refused(engine: AsyncEngine, statement: str) -> str:
    with pytest.raises(DBAPIError) as caught:
        async with engine.begin() as connection:
            await connection.execute(text(statement))
    return str(caught.value.orig)


async def _seal_all(engine: AsyncEngine) -> int:
    async with engine.connect() as connection:
        connection = await connection.execution_options(isolation_level="REPEATABLE READ")
        return await seal_round(connection, SealHorizon(), 10_000)


async def test_the_service_role_only_inserts_and_reads_the_audit_tables(
    engine: AsyncEngine, service_url: str
) -> None:
    service = create_engine(DatabaseSettings(database_url=service_url))
    try:
        async with service.begin() as connection:
            await connection.execute(insert(audit_log), [_row(1)])
            assert await connection.scalar(select(func.count()).select_from(audit_log)) == 1
        assert await _seal_all(service) == 1, "the service role seals (INSERT on audit_chain)"
        for table in ("audit_log", "audit_chain"):
            for statement in (
                f"UPDATE {table} SET sealed_at = now()"
                if table == "audit_chain"
                else f"UPDATE {table} SET user_id = 'x'",
                f"DELETE FROM {table}",
                f"TRUNCATE {table} CASCADE",
            ):
                assert "permission denied" in await _refused(service, statement), statement
        # The working tables keep their DML.
        async with service.begin() as connection:
            await connection.execute(text("DELETE FROM outbox"))
        assert "permission denied" in await _refused(service, "CREATE TABLE t (x int)")
    finally:
        await service.dispose()


async def test_the_trigger_refuses_changes_even_for_the_owner(engine: AsyncEngine) -> None:
    async with engine.begin() as connection:
        await connection.execute(insert(audit_log), [_row(1)])
    await _seal_all(engine)
    for table in ("audit_log", "audit_chain"):
        for statement in (
            f"UPDATE {table} SET {'hash' if table == 'audit_chain' else 'detail'} = NULL",
            f"DELETE FROM {table}",
            f"TRUNCATE {table} CASCADE",
        ):
            message = await _refused(engine, statement)
            assert "insert-only" in message, (statement, message)


async def test_a_downgrade_keeps_the_audit_log_and_its_protection(engine: AsyncEngine) -> None:
    async with engine.begin() as connection:
        await connection.execute(insert(audit_log), [_row(1)])
    await migrate.downgrade(engine, "base")
    async with engine.connect() as connection:
        assert await connection.scalar(select(func.count()).select_from(audit_log)) == 1
    assert "insert-only" in await _refused(engine, "DELETE FROM audit_log")
    await migrate.upgrade(engine)
    assert await _seal_all(engine) == 1


async def test_rows_committed_out_of_id_order_are_all_sealed(engine: AsyncEngine) -> None:
    late = await engine.connect()
    try:
        transaction = await late.begin()
        await late.execute(insert(audit_log), [_row(1)])  # the lowest id, committed last
        async with engine.begin() as connection:
            await connection.execute(insert(audit_log), [_row(2), _row(3)])
        async with engine.connect() as connection:
            sealer = await connection.execution_options(isolation_level="REPEATABLE READ")
            horizon = SealHorizon(settle_seconds=0.2)
            assert await seal_round(sealer, horizon, 100) == 2
            await asyncio.sleep(0.3)
            assert await seal_round(sealer, horizon, 100) == 0  # the barrier is taken now
            assert await seal_round(sealer, horizon, 100) == 0
            await transaction.commit()
            assert await seal_round(sealer, horizon, 100) == 1
            assert horizon.floor >= 3
    finally:
        await late.close()
    async with engine.connect() as connection:
        links = (
            await connection.execute(
                select(audit_chain.c.position, audit_chain.c.audit_id).order_by("position")
            )
        ).all()
    ids = sorted(link.audit_id for link in links)
    assert [link.position for link in links] == [1, 2, 3]
    assert [link.audit_id for link in links] == [ids[1], ids[2], ids[0]]


async def test_verify_names_a_changed_row_and_a_removed_row(
    engine: AsyncEngine, database_url: str
) -> None:
    async with engine.begin() as connection:
        await connection.execute(insert(audit_log), [_row(n) for n in range(5)])
    assert await _seal_all(engine) == 5
    ok = await groups_cli(database_url, "audit-verify")
    assert ok.returncode == 0, ok.stderr
    summary = json.loads(ok.stdout)
    assert summary["ok"] and summary["rows_verified"] == 5 and summary["head_position"] == 5
    assert len(summary["head_hash"]) == 64

    async with engine.connect() as connection:
        third = (await connection.scalars(select(audit_log.c.id).order_by("id"))).all()[2]
    async with engine.begin() as connection:
        # What a superuser can do: switch the triggers off and change a row.
        await connection.execute(text("SET LOCAL session_replication_role = replica"))
        await connection.execute(
            text("UPDATE audit_log SET detail = '{\"n\": 99}' WHERE id = :id"), {"id": third}
        )
    changed = await groups_cli(database_url, "audit-verify")
    assert changed.returncode == 1
    found = json.loads(changed.stdout)
    assert found["break"]["kind"] == "changed" and found["break"]["audit_id"] == third
    assert found["rows_verified"] == 2 and str(third) in changed.stderr

    async with engine.begin() as connection:
        await connection.execute(text("ALTER TABLE audit_log DISABLE TRIGGER USER"))
        await connection.execute(text("SET LOCAL session_replication_role = replica"))
        await connection.execute(
            text("UPDATE audit_log SET detail = '{\"n\": 2}' WHERE id = :id"), {"id": third}
        )
        await connection.execute(text("DELETE FROM audit_log WHERE id = :id"), {"id": third + 1})
        await connection.execute(text("ALTER TABLE audit_log ENABLE TRIGGER USER"))
    removed = await groups_cli(database_url, "audit-verify")
    assert removed.returncode == 1
    found = json.loads(removed.stdout)
    assert found["break"] == {
        "kind": "removed",
        "position": 4,
        "audit_id": third + 1,
        "what": f"audit row {third + 1} at position 4 was removed (its link remains)",
    }


async def test_verify_reports_a_row_left_unsealed_past_the_grace(
    engine: AsyncEngine, database_url: str
) -> None:
    async with engine.begin() as connection:
        await connection.execute(
            insert(audit_log), [_row(1, at=datetime.now(UTC) - timedelta(hours=1))]
        )
    result = await groups_cli(database_url, "audit-verify", "--grace-seconds", "60")
    assert result.returncode == 1
    assert json.loads(result.stdout)["break"]["kind"] == "unsealed"
    assert (
        await groups_cli(database_url, "audit-verify", "--grace-seconds", "7200")
    ).returncode == 0


async def test_extracts_by_patient_user_and_unit_are_logged_themselves(
    engine: AsyncEngine, database_url: str
) -> None:
    async with engine.begin() as connection:
        await connection.execute(
            insert(audit_log),
            [
                _row(1, user_id="nurse-a", unit_id="unit-1"),
                _row(2, user_id="nurse-a", unit_id="unit-2", personnummer=OTHER_PNR),
                _row(3, user_id="nurse-b", unit_id="unit-1"),
                # A refused caller whose identity is known names no patient.
                _row(
                    4,
                    user_id="nurse-a",
                    unit_id="unit-9",
                    personnummer=None,
                    action="access_refused",
                ),
            ],
        )
    officer = ("--user", "officer-1", "--unit", "pdl-office")

    by_user = await groups_cli(database_url, "audit-extract", *officer, "--by-user", "nurse-a")
    assert by_user.returncode == 0, by_user.stderr
    rows = [json.loads(line) for line in by_user.stdout.splitlines()]
    assert [(r["personnummer"], r["unit_id"], r["action"]) for r in rows] == [
        (PNR, "unit-1", "customer_card.read"),
        (OTHER_PNR, "unit-2", "customer_card.read"),
        (None, "unit-9", "access_refused"),
    ]
    assert PNR not in by_user.stderr

    by_unit = await groups_cli(database_url, "audit-extract", *officer, "--by-unit", "unit-1")
    assert [json.loads(line)["user_id"] for line in by_unit.stdout.splitlines()] == [
        "nurse-a",
        "nurse-b",
    ]
    both = await groups_cli(
        database_url, "audit-extract", *officer, "--by-user", "nurse-a", "--by-unit", "unit-2"
    )
    assert [json.loads(line)["personnummer"] for line in both.stdout.splitlines()] == [OTHER_PNR]

    by_patient = await groups_cli(database_url, "audit-extract", *officer, stdin=f"{OTHER_PNR}\n")
    assert by_patient.returncode == 0, by_patient.stderr
    assert [json.loads(line)["user_id"] for line in by_patient.stdout.splitlines()] == ["nurse-a"]
    assert OTHER_PNR not in by_patient.stderr

    missing_operator = await groups_cli(database_url, "audit-extract", "--by-user", "nurse-a")
    assert missing_operator.returncode == 2

    async with engine.connect() as connection:
        logged = (
            await connection.execute(
                select(audit_log)
                .where(audit_log.c.action == "audit_extract")
                .order_by(audit_log.c.id)
            )
        ).all()
    assert [(r.user_id, r.unit_id, r.personnummer) for r in logged] == [
        ("officer-1", "pdl-office", None),
        ("officer-1", "pdl-office", None),
        ("officer-1", "pdl-office", None),
        ("officer-1", "pdl-office", OTHER_PNR),
    ]
    assert [r.detail["filter"] for r in logged] == [
        {"by_user": "nurse-a"},
        {"by_unit": "unit-1"},
        {"by_user": "nurse-a", "by_unit": "unit-2"},
        {"by": "patient"},
    ]
    assert [r.detail["rows"] for r in logged] == [3, 2, 1, 1]


@contextlib.asynccontextmanager
async def _nurse_for(service: GroupsService, infra: Infrastructure) -> AsyncIterator[NurseClient]:
    topics = service.settings.topics
    async with (
        KafkaTestClient(infra.kafka_bootstrap) as kafka,
        TopicCollector(infra.kafka_bootstrap, topics.events) as events,
        TopicCollector(infra.kafka_bootstrap, topics.prompts) as prompts,
    ):
        yield NurseClient(kafka, topics, events, prompts)


def _production_auth(tmp_path: Path) -> AuthSettings:
    """What production mode requires to start: an identity provider's settings."""
    issuer = TokenIssuer()
    return AuthSettings(
        issuer=issuer.issuer,
        audience=issuer.audience,
        jwks_file=str(issuer.write_jwks(tmp_path / "jwks.json")),
    )


async def test_the_service_runs_as_the_service_role_after_migrate(
    engine: AsyncEngine,
    service_url: str,
    database_url: str,
    groups_settings: GroupsSettingsBundle,
    infra: Infrastructure,
    tmp_path: Path,
) -> None:
    settings = GroupsSettingsBundle(
        app=AppSettings(app_env="prod"),  # no migration on start: `migrate` ran above
        kafka=groups_settings.kafka,
        topics=groups_settings.topics,
        database=DatabaseSettings(database_url=service_url),
        groups=GroupsSettings(
            consumer_group=groups_settings.groups.consumer_group, allowed_units="unit-1"
        ),
        auth=_production_auth(tmp_path),
    )
    async with running_groups_service(settings) as service, _nurse_for(service, infra) as nurse:
        added = await nurse.command("add", PNR, group_code="COVID_19")
        assert added["type"] == "customer_group.added"
        await nurse.start("v-role", PNR)
        sealed = 0
        for _ in range(100):
            async with engine.connect() as connection:
                sealed = await connection.scalar(select(func.count()).select_from(audit_chain)) or 0
            if sealed >= 2:
                break
            await asyncio.sleep(0.1)
        assert sealed >= 2, "the service's sealer chains its rows"
    verified = await groups_cli(service_url, "audit-verify")
    assert verified.returncode == 0, verified.stderr
    assert json.loads(verified.stdout)["rows_verified"] >= 2


async def test_outside_dev_mode_the_service_waits_for_migrate(
    database_url: str,
    groups_settings: GroupsSettingsBundle,
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
) -> None:
    settings = GroupsSettingsBundle(
        app=AppSettings(app_env="prod"),
        kafka=groups_settings.kafka,
        topics=groups_settings.topics,
        database=groups_settings.database,
        groups=GroupsSettings(allowed_units="unit-1"),
        auth=_production_auth(tmp_path),
    )
    service = GroupsService(settings)
    try:
        with caplog.at_level(logging.WARNING, logger="services.groups.adapters.migrate"):
            preparing = asyncio.create_task(service.prepare())
            for _ in range(100):
                if "waiting for `migrate`" in caplog.text:
                    break
                await asyncio.sleep(0.1)
            assert "waiting for `migrate`" in caplog.text
            assert not preparing.done()
            migrator = create_engine(DatabaseSettings(database_url=database_url))
            await migrate.upgrade(migrator)
            await migrator.dispose()
            await asyncio.wait_for(preparing, timeout=60)
    finally:
        await service.stop()


async def test_migrate_runs_as_the_migration_role_and_creates_the_service_role(
    database_url: str, groups_settings: GroupsSettingsBundle, infra: Infrastructure
) -> None:
    role = f"svc_{uuid.uuid4().hex[:10]}"
    as_service = make_url(database_url).set(username=role).render_as_string(hide_password=False)
    env = {
        **os.environ,
        "APP_ENV": "test",
        "KAFKA_BOOTSTRAP_SERVERS": infra.kafka_bootstrap,
        "KAFKA_INBOUND_PARTITIONS": "3",
        "DATABASE_URL": as_service,
        "DATABASE_MIGRATION_URL": database_url,
        "DATABASE_SERVICE_ROLE": role,
        **{
            f"TOPIC_{name.upper()}": getattr(groups_settings.topics, name)
            for name in type(groups_settings.topics).model_fields
        },
    }
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "services.groups", "migrate"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    service = create_engine(DatabaseSettings(database_url=as_service))
    admin = create_engine(DatabaseSettings(database_url=database_url))
    try:
        async with service.begin() as connection:
            await connection.execute(insert(audit_log), [_row(1)])
        assert "permission denied" in await _refused(service, "DELETE FROM audit_log")
        assert (
            await groups_cli(as_service, "audit-verify", "--grace-seconds", "3600")
        ).returncode == 0
    finally:
        await service.dispose()
        async with admin.begin() as connection:
            await connection.execute(text(f"DROP OWNED BY {role}"))
            await connection.execute(text(f"DROP ROLE {role}"))
        await admin.dispose()
