"""Both services' inbound subscribers get the consumer options `manual_batch_subscriber`
documents, with `KAFKA_FETCH_MIN_BYTES` from the settings (nothing connects here)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from pydantic import ValidationError

from services.common.settings import KafkaSettings
from services.export.bootstrap import ExportService, ExportSettingsBundle
from services.export.entrypoints.consumer import register_consumer as register_export
from services.groups.bootstrap import GroupsService, GroupsSettingsBundle
from services.groups.entrypoints.consumer import register_consumer as register_groups


def _consumer_options(service: Any) -> dict[str, Any]:
    [subscriber] = service.broker.subscribers
    # FastStream keeps the aiokafka consumer's kwargs here until it builds the consumer.
    return dict(subscriber._connection_args)


@pytest.mark.parametrize("service_name", ["groups", "export"])
def test_inbound_consumer_takes_fetch_min_bytes_from_settings(service_name: str) -> None:
    kafka = KafkaSettings(fetch_min_bytes=5000)
    if service_name == "groups":
        service: Any = GroupsService(GroupsSettingsBundle(kafka=kafka))
        register_groups(service.broker, service)
    else:
        service = ExportService(ExportSettingsBundle(kafka=kafka))
        register_export(service.broker, service)

    options = _consumer_options(service)

    assert options["fetch_min_bytes"] == 5000
    assert options["fetch_max_wait_ms"] == 20  # bounds what a lone record waits
    assert options["enable_auto_commit"] is False
    # Rebalances wait for the service's batches in flight (OffsetCommits is the listener).
    [subscriber] = service.broker.subscribers
    assert subscriber._listener is service.offset_commits
    assert options["rebalance_timeout_ms"] == 120_000


def test_fetch_min_bytes_defaults_to_answering_a_lone_record_and_must_be_positive() -> None:
    assert KafkaSettings().fetch_min_bytes == 1
    with pytest.raises(ValidationError):
        KafkaSettings(fetch_min_bytes=0)


class _Consumer:
    """aiokafka's `getmany`, as the poll uses it: waits up to `timeout_ms` for records."""

    def __init__(self, batches: list[dict[str, list[str]]]) -> None:
        self.batches = batches
        self.calls: list[tuple[int, int | None]] = []

    async def getmany(self, *, timeout_ms: int, max_records: int | None) -> dict[str, list[str]]:
        self.calls.append((timeout_ms, max_records))
        return self.batches.pop(0) if self.batches else {}


async def test_the_poll_returns_what_arrived_at_once_and_never_sleeps_after_an_empty_one() -> None:
    service = GroupsService(GroupsSettingsBundle())
    register_groups(service.broker, service)
    [subscriber] = service.broker.subscribers
    consumer = _Consumer([{}, {"p0": ["a", "b"], "p1": ["c"]}])

    loop = asyncio.get_running_loop()
    began = loop.time()
    empty = await subscriber.get_msg(consumer)  # type: ignore[arg-type]
    records = await subscriber.get_msg(consumer)  # type: ignore[arg-type]
    took = loop.time() - began

    assert empty == ()
    assert records == ("a", "b", "c")
    # The wait is getmany's own (it returns as soon as a record is there), with the
    # batch limit; FastStream's poll slept batch_timeout_ms after the empty one.
    assert consumer.calls == [(500, 500), (500, 500)]
    assert took < 0.1
