"""Schema migrations (Alembic, serialised by an advisory lock so several processes can
run them at once), the service role's grants, and the wait for `migrate`.

Two roles: `migrate` connects as the migration role (DDL, grants); the service connects
as a role that may change the working tables but only INSERT and SELECT the audit ones.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.common.backoff import Backoff

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
_MIGRATION_LOCK_ID = 7_331_001
# Insert-only for the service role (PDL); a trigger also refuses changes for the owner.
AUDIT_TABLES = ("audit_log", "audit_chain")


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def _upgrade(connection: Connection, revision: str) -> None:
    config = alembic_config()
    config.attributes["connection"] = connection
    command.upgrade(config, revision)


def _downgrade(connection: Connection, revision: str) -> None:
    config = alembic_config()
    config.attributes["connection"] = connection
    command.downgrade(config, revision)


async def upgrade(engine: AsyncEngine, revision: str = "head") -> None:
    async with engine.begin() as connection:
        await connection.execute(text(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK_ID})"))
        await connection.run_sync(_upgrade, revision)


async def downgrade(engine: AsyncEngine, revision: str) -> None:
    async with engine.begin() as connection:
        await connection.execute(text(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK_ID})"))
        await connection.run_sync(_downgrade, revision)


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


async def current_revision(engine: AsyncEngine) -> str | None:
    """The schema's revision; None before the first migration."""
    async with engine.connect() as connection:
        return await connection.run_sync(
            lambda sync: MigrationContext.configure(sync).get_current_revision()
        )


async def wait_for_head(engine: AsyncEngine, *, cap_seconds: float = 30.0) -> None:
    """Return once the schema is at this code's head, for a service that must not run DDL.

    Database errors propagate (the caller waits out outages)."""
    backoff = Backoff(base=1.0, cap=cap_seconds)
    head = head_revision()
    while (current := await current_revision(engine)) != head:
        delay = backoff.next_delay()
        log.warning(
            "schema at %s, this code needs %s: waiting for `migrate`; retrying in %.1fs",
            current,
            head,
            delay,
        )
        await asyncio.sleep(delay)


def _quoted(role: str) -> str:
    return '"' + role.replace('"', '""') + '"'


async def grant_service_role(engine: AsyncEngine, role: str) -> None:
    """Give `role` exactly what the service needs; create it (LOGIN, no password) when it
    is missing and this role may create roles, else fail naming it.

    Idempotent: everything is revoked and granted again, so a table added by a later
    migration is covered by the next `migrate`."""
    async with engine.begin() as connection:
        await connection.execute(text(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK_ID})"))
        if await connection.scalar(text("SELECT current_user")) == role:
            log.warning("the service role is the migration role: no grants applied")
            return
        await _ensure_role(connection, role)
        tables = list(
            await connection.scalars(
                text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
            )
        )
        who = _quoted(role)
        await connection.execute(text(f"GRANT USAGE ON SCHEMA public TO {who}"))
        for table in tables:
            await connection.execute(text(f"REVOKE ALL ON TABLE {_quoted(table)} FROM {who}"))
            if table in AUDIT_TABLES:
                rights = "SELECT, INSERT"
            elif table == "alembic_version":
                rights = "SELECT"  # to see that the schema is at head
            else:
                rights = "SELECT, INSERT, UPDATE, DELETE"
            await connection.execute(text(f"GRANT {rights} ON TABLE {_quoted(table)} TO {who}"))
        # Identity columns draw from sequences.
        await connection.execute(
            text(f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {who}")
        )


async def _ensure_role(connection: AsyncConnection, role: str) -> None:
    exists = await connection.scalar(
        text("SELECT 1 FROM pg_roles WHERE rolname = :role"), {"role": role}
    )
    if exists:
        return
    may_create = await connection.scalar(
        text("SELECT rolsuper OR rolcreaterole FROM pg_roles WHERE rolname = current_user")
    )
    if not may_create:
        raise RuntimeError(
            f"database role {role!r} (DATABASE_SERVICE_ROLE) is missing and the migration "
            "role may not create it: create it with LOGIN, then run `migrate` again"
        )
    # A concurrent `migrate` may create it first; the lock above is per database.
    await connection.execute(
        text(
            "DO $$ BEGIN EXECUTE format('CREATE ROLE %I LOGIN', "
            f"{_literal(role)}); "
            "EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$"
        )
    )
    log.info("created the service role (set its password out of band)")


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"
