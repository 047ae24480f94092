"""What both services' Prometheus registries share: the process and GC collectors, the
build info, and the consumer lag read at scrape time."""

from __future__ import annotations

import asyncio
import logging
import platform
from collections.abc import Iterable
from importlib import metadata
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Gauge,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
)

log = logging.getLogger(__name__)


def package_version() -> str:
    """The installed distribution's version (the same for both services)."""
    try:
        return metadata.version("customer-groups")
    except metadata.PackageNotFoundError:  # run from a tree that was never installed
        return "0+unknown"


def service_registry(prefix: str) -> CollectorRegistry:
    """A registry of its own (tests run several services in one process) with
    `process_*` (CPU, memory, file descriptors, start time), `python_gc_*`,
    `python_info` and `<prefix>_build_info`."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    GCCollector(registry=registry)
    PlatformCollector(registry=registry)
    Gauge(
        f"{prefix}_build_info",
        "Always 1: the running version (labels)",
        ["version", "python"],
        registry=registry,
    ).labels(package_version(), platform.python_version()).set(1)
    return registry


def consumer_lag_gauge(prefix: str, registry: CollectorRegistry) -> Gauge:
    return Gauge(
        f"{prefix}_consumer_lag_records",
        "Offsets between this process's consumer position and the end of the partition "
        "it may read (last stable offset, read_committed), per assigned partition; read "
        "when scraped",
        ["topic", "partition"],
        registry=registry,
    )


async def observe_consumer_lag(
    gauge: Gauge, consumers: Iterable[Any], *, position_wait: float = 0.5
) -> None:
    """Set `gauge` to each assigned partition's lag; partitions no longer assigned (a
    rebalance) disappear. A partition whose end the consumer has not fetched yet, or whose
    position is not known within `position_wait`, is left out rather than guessed."""
    lags: dict[tuple[str, str], int] = {}
    for consumer in consumers:
        for tp in consumer.assignment():
            # With read_committed the consumer reads up to the last stable offset; the
            # highwater also counts an open transaction's records and its commit marker.
            end = consumer.last_stable_offset(tp)
            if end is None or end < 0:
                end = consumer.highwater(tp)
            if end is None:
                continue
            try:
                position = await asyncio.wait_for(consumer.position(tp), position_wait)
            except Exception as error:  # unassigned meanwhile, or still resetting
                log.debug("no position for the lag of %s: %s", tp, type(error).__name__)
                continue
            lags[(tp.topic, str(tp.partition))] = max(0, end - position)
    gauge.clear()
    for (topic, partition), lag in lags.items():
        gauge.labels(topic, partition).set(lag)
