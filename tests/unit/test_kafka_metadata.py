"""Paced metadata refreshes: aiokafka's clients cannot spin on a broker that is down
(issue 15), and see a returning broker within about a second."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
from aiokafka.client import AIOKafkaClient

import services.common.kafka  # noqa: F401 (installs the pacing, as in the services)
from services.common import kafka_metadata
from services.common.kafka_metadata import (
    MAX_REFRESH_BACKOFF_SECONDS,
    RefreshPacing,
    pace_metadata_refreshes,
)

FAILED = "Unable to update metadata"


def test_failed_refreshes_back_off_exponentially_to_the_cap_and_success_resets() -> None:
    pacing = RefreshPacing(min_interval=0.1)
    assert pacing.wait(0.0) == 0.0, "the first refresh starts at once"
    waits = []
    for _ in range(8):
        pacing.finished(100.0, updated=False)
        waits.append(pacing.wait(100.0))
    for wait, nominal in zip(waits, (0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0, 1.0), strict=True):
        assert nominal * 0.8 <= wait <= nominal * 1.2
    assert max(waits) <= MAX_REFRESH_BACKOFF_SECONDS * 1.2
    pacing.finished(200.0, updated=True)
    assert pacing.wait(200.0) == pytest.approx(0.1), "after a success: the minimum interval"
    assert pacing.wait(200.5) == 0.0
    pacing.finished(300.0, updated=False)
    assert pacing.wait(300.0) <= 0.12, "the backoff starts over after a success"


def test_the_pacing_is_installed_once_on_every_client() -> None:
    paced = AIOKafkaClient._metadata_update
    assert getattr(paced, "_services_paced", False)
    pace_metadata_refreshes()
    assert AIOKafkaClient._metadata_update is paced, "installing twice wraps once"


async def test_a_client_waits_before_each_refresh_after_failures(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    sleeps: list[float] = []

    async def no_sleep(delay: float) -> None:
        sleeps.append(delay)

    client = AIOKafkaClient(bootstrap_servers="127.0.0.1:9", retry_backoff_ms=100)
    monkeypatch.setattr(kafka_metadata.asyncio, "sleep", no_sleep)
    with caplog.at_level(logging.ERROR, logger="aiokafka"):
        results = [await client._metadata_update(client.cluster, set()) for _ in range(6)]
    assert results == [False] * 6, "no broker known: each refresh fails"
    assert sum(FAILED in r.getMessage() for r in caplog.records) == 6, "each one was tried"
    assert len(sleeps) == 5, "every refresh after the first waited"
    for wait, nominal in zip(sleeps, (0.1, 0.2, 0.4, 0.8, 1.0), strict=True):
        assert nominal * 0.8 - 0.01 <= wait <= nominal * 1.2


async def test_a_fetcher_style_loop_on_a_dead_broker_does_not_spin(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """aiokafka's fetcher, with no leader known for a partition, forces a refresh and
    waits for it, in a loop (`Fetcher._fetch_requests_routine`). Unpaced, with every
    refresh failing at once, that loop ran thousands of refreshes a second."""
    client = AIOKafkaClient(bootstrap_servers="127.0.0.1:9", retry_backoff_ms=100)
    synchronizer = asyncio.create_task(client._md_synchronizer())
    turns = 0
    try:
        with caplog.at_level(logging.ERROR, logger="aiokafka"):
            deadline = time.monotonic() + 2.0
            while time.monotonic() < deadline:
                turns += 1
                await asyncio.wait([client.force_metadata_update()], timeout=0.2)
    finally:
        synchronizer.cancel()
        await asyncio.gather(synchronizer, return_exceptions=True)
    refreshes = sum(FAILED in r.getMessage() for r in caplog.records)
    # 2 s of 0.1, 0.2, 0.4, 0.8 and then 1.0 s apart (±20 %): five or six refreshes.
    assert 3 <= refreshes <= 7, refreshes
    assert turns <= 2.0 / 0.2 + refreshes + 2, "the loop itself only wakes on its timeout"
