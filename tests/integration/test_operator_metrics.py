"""What an operator's Prometheus scrapes from the real services: process and GC metrics,
build info, the outbox backlog and its age, dead letters, consumer lag per partition
(read_committed, so transaction markers are no lag) and the prompt latency measured
from the start's receipt."""

from __future__ import annotations

import asyncio
import platform
import time
from collections.abc import Awaitable, Callable

from prometheus_client.parser import text_string_to_metric_families

from devinfra.provider import Infrastructure
from services.common.metrics import package_version
from services.export.entrypoints.http import build_routes as export_routes
from services.groups.bootstrap import GroupsService, GroupsSettingsBundle
from services.groups.entrypoints.http import build_routes
from tests.http_tools import call
from tests.integration.conftest import NurseClient, nurse_client, running_groups_service
from tests.integration.export.conftest import export_settings, running_export_service
from tests.kafka_tools import KafkaTestClient
from tests.reliability.harness import wait_until

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(routes: dict[str, object]) -> Samples:
    status, headers, body = await call(routes["/metrics"])  # type: ignore[arg-type]
    assert status == 200
    assert headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def named(samples: Samples, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {labels: v for (n, labels), v in samples.items() if n == name}


async def eventually(check: Callable[[], Awaitable[bool]], what: str) -> None:
    await wait_until(check, timeout=60, what=what, interval=0.2)


async def test_groups_metrics_after_a_start(
    groups_service: GroupsService, nurse: NurseClient, kafka: KafkaTestClient
) -> None:
    routes = dict(build_routes(groups_service))
    topics = groups_service.settings.topics
    await nurse.start("vacc-metrics-1", "191212121212")
    # A record that is no CloudEvent: dead-lettered, and pending until replayed.
    await kafka.send_raw(topics.started, b"not json", key=b"k")

    async def settled() -> bool:
        samples = await scrape(routes)
        lags = named(samples, "groups_consumer_lag_records")
        return (
            value(samples, "groups_dead_letters_pending_rows") == 1
            and value(samples, "groups_outbox_backlog_rows") == 0
            and bool(lags)
            and all(lag == 0 for lag in lags.values())
        )

    await eventually(settled, "the dead letter published and no lag")
    samples = await scrape(routes)
    assert value(samples, "groups_outbox_oldest_age_seconds") == 0
    assert value(samples, "groups_outbox_parked_rows") == 0
    assert value(samples, "groups_outbox_relay_leader") == 1
    # One series per assigned partition of every inbound topic (3 partitions each).
    lag_topics = {dict(labels)["topic"] for labels in named(samples, "groups_consumer_lag_records")}
    assert lag_topics == set(topics.inbound)
    assert len(named(samples, "groups_consumer_lag_records")) == 3 * len(topics.inbound)
    # The prompt was observed once, and the start's receipt is not later than its commit.
    assert value(samples, "groups_prompt_latency_seconds_count") == 1
    assert 0 < value(samples, "groups_prompt_latency_seconds_sum") < 30
    assert value(samples, "process_cpu_seconds_total") > 0
    assert value(samples, "process_resident_memory_bytes") > 0
    assert named(samples, "python_gc_collections_total")
    build = {"version": package_version(), "python": platform.python_version()}
    assert value(samples, "groups_build_info", **build) == 1


async def test_backlog_and_prompt_latency_count_from_the_starts_receipt(
    groups_settings: GroupsSettingsBundle, kafka: KafkaTestClient, infra: Infrastructure
) -> None:
    async with (
        running_groups_service(groups_settings) as service,
        nurse_client(service, kafka, infra) as nurse,
    ):
        routes = dict(build_routes(service))
        await service.relay.stop()  # nothing is published meanwhile
        stalled = time.monotonic()
        event = {"vaccination_id": "vacc-stalled", "personnummer": "191212121212"}
        sent = asyncio.create_task(nurse.start(**event))

        async def backlog() -> bool:
            samples = await scrape(routes)
            return value(samples, "groups_outbox_backlog_rows") >= 1

        await eventually(backlog, "the prompt waiting in the outbox")
        await asyncio.sleep(1.5)
        samples = await scrape(routes)
        assert value(samples, "groups_outbox_backlog_rows") == 1
        assert value(samples, "groups_outbox_oldest_age_seconds") >= 1.5
        waited = time.monotonic() - stalled
        service.relay.start()
        await asyncio.wait_for(sent, 60)
        samples = await scrape(routes)
        # Counted from the start's receipt, so the time the relay was away is in it.
        assert value(samples, "groups_prompt_latency_seconds_count") == 1
        assert value(samples, "groups_prompt_latency_seconds_sum") >= waited - 0.5
        assert value(samples, "groups_prompt_latency_seconds_bucket", le="1.0") == 0


async def test_export_lag_is_zero_once_it_has_read_the_transactional_events(
    nurse: NurseClient, groups_settings: GroupsSettingsBundle
) -> None:
    settings = export_settings(groups_settings)
    async with running_export_service(settings) as export:
        routes = dict(export_routes(export))
        await nurse.command(
            "add", "191212121212", group_code="COVID_19", subgroup_code="REKOMMENDERAD"
        )

        async def caught_up() -> bool:
            samples = await scrape(routes)
            lags = named(samples, "export_consumer_lag_records")
            series = ("export_records_total", (("type", "customer_group.membership_record"),))
            consumed = samples.get(series, 0)
            return consumed >= 1 and bool(lags) and all(lag == 0 for lag in lags.values())

        await eventually(caught_up, "the export caught up with no lag left")
        samples = await scrape(routes)
        assert {
            dict(labels)["topic"] for labels in named(samples, "export_consumer_lag_records")
        } == {settings.topics.events}
        assert value(samples, "process_open_fds") > 0
        status, _, body = await call(routes["/readyz"])  # type: ignore[arg-type]
        assert (status, body["checks"]) == (
            200,
            {"started": True, "consumer": True, "inbound": True},
        )
