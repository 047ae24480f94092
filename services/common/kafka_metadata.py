"""Metadata refreshes of every aiokafka client in the process, paced.

aiokafka (0.14.0) refreshes cluster metadata in one task per client, woken by
`force_metadata_update()`, and starts a refresh at once however the last one went. Its
fetcher, when the last metadata names no leader for an assigned partition (a broker in
controlled shutdown can answer so just before it goes), forces a refresh and waits for it in
a loop; with the broker gone each refresh fails within a refused connect, so the loop
turns as fast as the CPU allows, logging two errors a turn, until the broker is back
(BENCHMARKS.md, issue 15). The producer's sender does the same for a partition without a
leader. No upstream issue covers this path as of 0.14.0; the nearest is
https://github.com/aio-libs/aiokafka/issues/1155 (a fetch loop without backoff after
NotLeaderForPartition).

The fix is at the one place all those loops wait on: a refresh starts no sooner than
`retry_backoff_ms` after the previous one (as the Java client's `retry.backoff.ms` does),
and after refreshes that no broker answered, exponentially later, up to
`MAX_REFRESH_BACKOFF_SECONDS` (the Java client's `retry.backoff.max.ms` default), so a
returning broker is seen within about a second. FastStream builds its aiokafka clients
itself and takes no client class, so the pacing is installed on `AIOKafkaClient`, once,
for every client of the process (`services.common.kafka` does it on import).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field
from typing import Any

from aiokafka.client import AIOKafkaClient

from services.common.backoff import Backoff

MAX_REFRESH_BACKOFF_SECONDS = 1.0
_PACING_ATTRIBUTE = "_services_refresh_pacing"
_PACED_MARK = "_services_paced"


@dataclass
class RefreshPacing:
    """When one client's next metadata refresh may start.

    After a refresh that got metadata: `min_interval` later. After one that no broker
    answered: the next delay of `backoff` (`min_interval`, doubling, capped), until a
    refresh succeeds again.
    """

    min_interval: float
    backoff: Backoff = field(init=False)
    not_before: float = field(default=-math.inf, init=False)

    def __post_init__(self) -> None:
        self.backoff = Backoff(base=self.min_interval, cap=MAX_REFRESH_BACKOFF_SECONDS)

    def wait(self, now: float) -> float:
        """Seconds to wait before a refresh may start at `now`."""
        return max(0.0, self.not_before - now)

    def finished(self, now: float, *, updated: bool) -> None:
        if updated:
            self.backoff.reset()
            self.not_before = now + self.min_interval
        else:
            self.not_before = now + self.backoff.next_delay()


MetadataUpdate = Callable[[AIOKafkaClient, Any, Collection[str]], Awaitable[bool]]


def _paced(upstream: MetadataUpdate) -> MetadataUpdate:
    async def _metadata_update(
        self: AIOKafkaClient, cluster_metadata: Any, topics: Collection[str]
    ) -> bool:
        pacing = self.__dict__.get(_PACING_ATTRIBUTE)
        if pacing is None:
            pacing = RefreshPacing(min_interval=self._retry_backoff)
            setattr(self, _PACING_ATTRIBUTE, pacing)
        loop = asyncio.get_running_loop()
        delay = pacing.wait(loop.time())
        if delay > 0:
            # Callers of force_metadata_update() share the pending refresh meanwhile.
            await asyncio.sleep(delay)
        updated = bool(await upstream(self, cluster_metadata, topics))
        pacing.finished(loop.time(), updated=updated)
        return updated

    setattr(_metadata_update, _PACED_MARK, True)
    return _metadata_update


def pace_metadata_refreshes() -> None:
    """Install the pacing on `AIOKafkaClient` (once; later calls do nothing)."""
    upstream = AIOKafkaClient._metadata_update
    if getattr(upstream, _PACED_MARK, False):
        return
    setattr(AIOKafkaClient, "_metadata_update", _paced(upstream))  # noqa: B010 (mypy: a method)
