"""Migration 0004 against the real database: the schema it leaves is the one `orm`
describes, and rows written under revision 1 get their status and provenance."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from services.common.db import create_engine
from services.common.settings import DatabaseSettings
from services.groups.adapters import migrate
from services.groups.adapters.orm import metadata

PNR = "191212121212"
AT = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(DatabaseSettings(database_url=database_url))
    yield engine
    await engine.dispose()


async def test_the_migrated_schema_is_the_orm_schema(engine: AsyncEngine) -> None:
    await migrate.upgrade(engine)
    async with engine.connect() as connection:
        differences = await connection.run_sync(
            lambda sync: compare_metadata(
                MigrationContext.configure(sync, opts={"compare_type": True}), metadata
            )
        )
        # What autogenerate does not compare: the partial index's predicate, the checks.
        index = await connection.scalar(
            text(
                "SELECT indexdef FROM pg_indexes"
                " WHERE indexname = 'ux_memberships_one_active_per_group'"
            )
        )
        checks = (
            await connection.execute(
                text(
                    "SELECT conname FROM pg_constraint"
                    " WHERE conrelid = 'memberships'::regclass AND contype = 'c' ORDER BY 1"
                )
            )
        ).scalars()
        checks = list(checks)
    assert differences == []
    assert "UNIQUE" in index and "WHERE ((status)::text = 'active'::text)" in index
    assert checks == ["ck_memberships_status", "ck_memberships_status_period"]


def _old_membership(n: int, version: int, valid_to: date | None, user: str) -> dict[str, Any]:
    return {
        "membership_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"m-{n}")),
        "group_code": "INFLUENSA",
        "valid_from": date(2026, 1, n),
        "valid_to": valid_to,
        "version": version,
        "user": user,
    }


async def test_rows_of_revision_1_get_status_and_provenance(engine: AsyncEngine) -> None:
    await migrate.upgrade(engine, "0003")
    added_by_audit = _old_membership(1, 2, date(2026, 2, 1), "changer")  # changed since
    never_changed = _old_membership(2, 1, None, "adder-2")
    unknown_adder = _old_membership(3, 3, date(2026, 3, 3), "changer")  # no audit row
    async with engine.begin() as connection:
        await connection.execute(
            text("INSERT INTO customers (personnummer) VALUES (:p)"), {"p": PNR}
        )
        for m in (added_by_audit, never_changed, unknown_adder):
            await connection.execute(
                text(
                    "INSERT INTO memberships (membership_id, personnummer, group_code,"
                    " valid_from, valid_to, version, created_at, updated_at, updated_by_user,"
                    " updated_by_unit) VALUES (:membership_id, :p, :group_code, :valid_from,"
                    " :valid_to, :version, :at, :at, :user, 'unit-9')"
                ),
                {**m, "p": PNR, "at": AT},
            )
        for m, user in ((added_by_audit, "adder-1"), (never_changed, "adder-2")):
            await connection.execute(
                text(
                    "INSERT INTO audit_log (action, user_id, unit_id, personnummer,"
                    " membership_id) VALUES ('customer_group.add', :user, 'unit-1', :p, :m)"
                ),
                {"user": user, "p": PNR, "m": m["membership_id"]},
            )

    await migrate.upgrade(engine)

    async with engine.connect() as connection:
        rows = {
            row.membership_id: row
            for row in await connection.execute(
                text(
                    "SELECT membership_id::text, status, created_by_user, created_by_unit,"
                    " updated_by_user, updated_by_unit FROM memberships"
                )
            )
        }
    assert tuple(rows[added_by_audit["membership_id"]])[1:] == (
        "historical",
        "adder-1",
        "unit-1",
        "changer",
        "unit-9",
    )
    assert tuple(rows[never_changed["membership_id"]])[1:] == (
        "active",
        "adder-2",
        "unit-1",
        None,  # null until the first change
        None,
    )
    assert tuple(rows[unknown_adder["membership_id"]])[1:] == (
        "historical",
        None,  # no audit row and changed since: unknown
        None,
        "changer",
        "unit-9",
    )


async def test_the_database_backs_the_status_rules(engine: AsyncEngine) -> None:
    await migrate.upgrade(engine)
    insert = text(
        "INSERT INTO memberships (membership_id, personnummer, group_code, valid_from,"
        " valid_to, version, status, created_at, updated_at)"
        " VALUES (:id, :p, 'INFLUENSA', '2026-01-01', :valid_to, 1, :status, :at, :at)"
    )

    async def add(status: str, valid_to: date | None = None) -> None:
        async with engine.begin() as connection:
            values = {"id": str(uuid.uuid4()), "p": PNR, "at": AT}
            await connection.execute(insert, {**values, "status": status, "valid_to": valid_to})

    async with engine.begin() as connection:
        await connection.execute(
            text("INSERT INTO customers (personnummer) VALUES (:p)"), {"p": PNR}
        )
    await add("active")
    await add("entered_in_error")  # entered in error with or without an end
    await add("entered_in_error", date(2026, 2, 1))
    await add("historical", date(2026, 2, 1))
    for status, valid_to in (
        ("active", None),  # a second active row in the group
        ("active", date(2026, 2, 1)),
        ("historical", None),
        ("deleted", None),
    ):
        with pytest.raises(IntegrityError):
            await add(status, valid_to)


async def test_a_downgrade_keeps_entered_in_error_rows_as_ended(engine: AsyncEngine) -> None:
    await migrate.upgrade(engine)
    async with engine.begin() as connection:
        await connection.execute(
            text("INSERT INTO customers (personnummer) VALUES (:p)"), {"p": PNR}
        )
        await connection.execute(
            text(
                "INSERT INTO memberships (membership_id, personnummer, group_code, valid_from,"
                " version, status, created_at, updated_at, created_by_user, created_by_unit)"
                " VALUES (:id, :p, 'INFLUENSA', '2026-01-05', 2, 'entered_in_error', :at, :at,"
                " 'nurse-1', 'unit-1')"
            ),
            {"id": str(uuid.uuid4()), "p": PNR, "at": AT},
        )
    await migrate.downgrade(engine, "0003")
    async with engine.connect() as connection:
        row = (
            await connection.execute(
                text("SELECT valid_to, updated_by_user, updated_by_unit FROM memberships")
            )
        ).one()
    assert tuple(row) == (date(2026, 1, 5), "nurse-1", "unit-1")
    await migrate.upgrade(engine)
