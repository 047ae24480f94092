"""Probes and /metrics without infrastructure: /livez answers whatever else is down,
/readyz names what is missing, a database that never answers does not hold up a scrape,
and a fatal stop asks the server to exit."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator
from types import SimpleNamespace

import pytest
from prometheus_client.parser import text_string_to_metric_families

from services.common.serving import EXIT_FATAL, FatalStop
from services.common.settings import AppSettings, DatabaseSettings, GroupsSettings
from services.export.bootstrap import ExportService, ExportSettingsBundle
from services.export.entrypoints.http import build_routes as export_routes
from services.groups.bootstrap import GroupsService, GroupsSettingsBundle
from services.groups.entrypoints.http import build_routes
from tests.http_tools import call


@pytest.fixture
async def silent_database() -> AsyncIterator[str]:
    """A database URL whose server accepts connections and never says a word."""
    held: list[asyncio.StreamWriter] = []

    async def hold(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"postgresql+asyncpg://nobody@127.0.0.1:{port}/nothing"
    finally:
        for writer in held:
            writer.close()
        server.close()


def groups_service(database_url: str) -> GroupsService:
    return GroupsService(
        GroupsSettingsBundle(
            app=AppSettings(app_env="test"),
            database=DatabaseSettings(database_url=database_url),
            groups=GroupsSettings(allowed_units="unit-1"),
        )
    )


async def test_a_silent_database_does_not_hold_up_metrics(silent_database: str) -> None:
    service = groups_service(silent_database)
    routes = dict(build_routes(service))
    try:
        started = time.monotonic()
        status, _, body = await call(routes["/metrics"])
        elapsed = time.monotonic() - started
    finally:
        await service.engine.dispose()
    assert status == 200
    assert elapsed < 3.0
    values = {
        sample.name: sample.value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
    }
    for name in (
        "groups_outbox_backlog_rows",
        "groups_outbox_oldest_age_seconds",
        "groups_outbox_parked_rows",
        "groups_dead_letters_pending_rows",
    ):
        assert math.isnan(values[name]), name
    assert values["process_cpu_seconds_total"] > 0
    assert values["groups_build_info"] == 1


async def test_livez_answers_while_readyz_names_what_is_missing(silent_database: str) -> None:
    service = groups_service(silent_database)
    routes = dict(build_routes(service))
    try:
        assert (await call(routes["/livez"]))[::2] == (200, {"live": True})
        status, _, body = await call(routes["/readyz"])
    finally:
        await service.engine.dispose()
    assert status == 503
    assert body == {
        "ready": False,
        "checks": {"started": False, "consumer": False, "inbound": True},
    }


async def test_export_probes_and_a_failed_batch() -> None:
    service = ExportService(ExportSettingsBundle(app=AppSettings(app_env="test")))
    routes = dict(export_routes(service))
    assert (await call(routes["/livez"]))[::2] == (200, {"live": True})
    service.ready = True
    service.stop_serving(ValueError("a bug"))
    status, _, body = await call(routes["/readyz"])
    assert (status, body["checks"]["inbound"], body["checks"]["started"]) == (503, False, False)
    assert service.fatal.reason == "an export batch ended without being exported (ValueError)"
    # Nothing after the failed batch is exported (or has its offsets committed).
    with pytest.raises(RuntimeError):
        service.check_serving()


def test_a_fatal_stop_asks_the_server_to_exit_once() -> None:
    server = SimpleNamespace(should_exit=False)
    fatal = FatalStop("test-service", exit_after_seconds=600)
    fatal.attach(server)
    fatal("the pipeline stopped", KeyError("x"))
    fatal("a second reason")
    fatal.shut_down()  # the backstop would otherwise end this test process
    assert server.should_exit is True
    assert fatal.reason == "the pipeline stopped (KeyError)"
    assert EXIT_FATAL != 0


def test_without_a_server_a_fatal_stop_only_records_why() -> None:
    fatal = FatalStop("test-service")
    fatal("the pipeline stopped")
    assert fatal.reason == "the pipeline stopped"
