"""Session infrastructure for every test that needs the real broker and database.

Where it comes from is decided by `devinfra.provide_infrastructure` (environment,
testcontainers, or the local Apache Kafka + embedded PostgreSQL). With CI=true a
missing piece fails the run; elsewhere those tests are skipped with the reason.
"""

from __future__ import annotations

import contextlib
import logging
import os
import uuid
from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest

from devinfra.provider import Infrastructure, provide_infrastructure

log = logging.getLogger("tests")
# Settings default to production (refusing to start without its settings); the tests,
# and every service process they start, run in test mode unless a test says otherwise.
os.environ.setdefault("APP_ENV", "test")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture(scope="session")
def infra(pytestconfig: pytest.Config) -> Iterator[Infrastructure]:
    with contextlib.ExitStack() as stack:
        try:
            infrastructure = stack.enter_context(provide_infrastructure())
        except Exception as error:
            if IN_CI:
                raise
            pytest.skip(f"no Kafka/PostgreSQL available: {error}")
        banner = (
            f"Apache Kafka {infrastructure.kafka_version} ({infrastructure.kafka_origin}) at "
            f"{infrastructure.kafka_bootstrap}; PostgreSQL {infrastructure.postgres_version} "
            f"({infrastructure.postgres_origin})"
        )
        reporter = pytestconfig.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(f"\n[infrastructure] {banner}")
        log.warning("infrastructure: %s", banner)
        yield infrastructure


def _asyncpg_dsn(sqlalchemy_url: str) -> str:
    return sqlalchemy_url.replace("postgresql+asyncpg://", "postgresql://", 1)


@pytest.fixture
async def database_url(infra: Infrastructure) -> AsyncIterator[str]:
    """A fresh, empty database per test, dropped afterwards."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    base = infra.database_url
    admin = await asyncpg.connect(_asyncpg_dsn(base))
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    prefix, _, _old = base.rpartition("/")
    query = ""
    if "?" in _old:
        query = "?" + _old.split("?", 1)[1]
    yield f"{prefix}/{name}{query}"
    admin = await asyncpg.connect(_asyncpg_dsn(base))
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()
