"""Retention: tables that hold personal data for a while only are pruned by age, and the
inbox is checked to outlive the inbound topics.

Pruned (README, "Retention"), each by the column that dates its rows:
- `inbox` (`processed_at`): the idempotency window, `GROUPS_INBOX_RETENTION_DAYS`;
- `dead_letters` (`created_at`, replayed or not): raw records, personnummer included;
- `outbox_parked` (`parked_at`): records the broker refused for good.
Never `audit_log` or `audit_chain`: the PDL log is insert-only and kept by its own rules.

Every process prunes, with no leader: a batch deletes the oldest rows past their age
that no other transaction holds (`SKIP LOCKED`), so processes share the work rather
than wait for each other, and each batch is one short transaction.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Column, ColumnClause, Table, any_, delete, func, literal_column, select
from sqlalchemy.ext.asyncio import AsyncEngine

from services.common.background import BackgroundTask
from services.common.backoff import Backoff, retry_forever
from services.common.kafka import describe_topic_configs
from services.common.settings import GroupsSettings, KafkaSettings, record_lifetime
from services.groups.adapters.orm import dead_letters, inbox, outbox_parked

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PruneTarget:
    table: Table
    dated_by: Column[datetime]
    retention: timedelta

    @property
    def name(self) -> str:
        return self.table.name


def prune_targets(groups: GroupsSettings) -> list[PruneTarget]:
    """What the pruner deletes, and after how long."""
    return [
        PruneTarget(inbox, inbox.c.processed_at, groups.inbox_retention),
        PruneTarget(
            dead_letters,
            dead_letters.c.created_at,
            timedelta(days=groups.dead_letter_retention_days),
        ),
        PruneTarget(
            outbox_parked, outbox_parked.c.parked_at, timedelta(days=groups.parked_retention_days)
        ),
    ]


def _utc_now() -> datetime:
    return datetime.now(UTC)


_CTID: ColumnClause[Any] = literal_column("ctid")


class RetentionPruner:
    """Deletes rows older than their table's retention, `batch_size` rows per transaction,
    pausing `pause_seconds` between batches; a pass every `interval_seconds` (jittered, so
    processes drift apart), database errors waited out with backoff.

    `clock` dates "now", so a test can prune as if days had passed."""

    def __init__(
        self,
        engine: AsyncEngine,
        targets: Collection[PruneTarget],
        *,
        batch_size: int = 1000,
        pause_seconds: float = 0.2,
        interval_seconds: float = 3600.0,
        clock: Callable[[], datetime] = _utc_now,
        on_pruned: Callable[[str, int], None] | None = None,
        on_retry: Callable[[Exception, float], None] | None = None,
    ) -> None:
        self._engine = engine
        self._targets = list(targets)
        self._batch_size = batch_size
        self._pause = pause_seconds
        self._interval = interval_seconds
        self._clock = clock
        self._on_pruned = on_pruned or (lambda _table, _count: None)
        self._on_retry = on_retry or (lambda _error, _delay: None)
        self._background = BackgroundTask(self.run, "retention-pruner")

    def start(self) -> None:
        self._background.start()

    async def stop(self) -> None:
        await self._background.stop()

    async def prune(self) -> dict[str, int]:
        """One pass: each table down to its retention; returns the rows deleted per table."""
        now = self._clock()
        pruned = {}
        for target in self._targets:
            pruned[target.name] = await self._prune_table(target, now - target.retention)
        if any(pruned.values()):
            log.info("retention: pruned %s", ", ".join(f"{t} {n}" for t, n in pruned.items()))
        return pruned

    async def _prune_table(self, target: PruneTarget, cutoff: datetime) -> int:
        column = target.dated_by
        oldest = (
            select(_CTID)
            .select_from(target.table)
            .where(column < cutoff)
            .order_by(column)
            .limit(self._batch_size)
            .with_for_update(skip_locked=True)
        )
        # `ctid = ANY(ARRAY(...))` is a TID scan of exactly the rows chosen (an `IN` would
        # join against the whole table).
        statement = delete(target.table).where(_CTID == any_(func.array(oldest.scalar_subquery())))
        total = 0
        while True:
            async with self._engine.begin() as connection:
                deleted = (await connection.execute(statement)).rowcount
            if deleted:
                total += deleted
                self._on_pruned(target.name, deleted)
            if deleted < self._batch_size:
                return total
            await asyncio.sleep(self._pause)

    async def run(self) -> None:
        backoff = Backoff(base=1.0, cap=300.0)

        def paused(error: Exception, delay: float) -> None:
            log.warning(
                "retention pruning paused: %s; retrying in %.1fs", type(error).__name__, delay
            )
            self._on_retry(error, delay)

        while True:
            await retry_forever(self.prune, backoff=backoff, on_retry=paused)
            backoff.reset()
            await asyncio.sleep(self._interval * random.uniform(0.9, 1.1))  # noqa: S311 (spreading processes)


async def inbound_retention_problems(
    kafka: KafkaSettings, inbound_topics: Collection[str], inbox_retention: timedelta
) -> list[str]:
    """The inbound topics, as they exist on the broker, whose records can outlive the
    inbox: a consumer group re-reading one of them from the start would apply a record
    whose id the inbox has forgotten. A topic the broker will not describe is logged."""
    configs, refused = await describe_topic_configs(kafka, inbound_topics)
    for topic, error in sorted(refused.items()):
        log.warning(
            "cannot check the retention of %s against the inbox (%s): grant the service "
            "DESCRIBE_CONFIGS on it",
            topic,
            error,
        )
    problems = []
    for topic, config in sorted(configs.items()):
        retention_ms = int(config.get("retention.ms", "-1"))
        if "delete" not in config.get("cleanup.policy", "delete") or retention_ms < 0:
            problems.append(
                f"topic {topic} keeps its records for ever (cleanup.policy "
                f"{config.get('cleanup.policy')}, retention.ms {retention_ms}): give it a "
                "retention shorter than GROUPS_INBOX_RETENTION_DAYS"
            )
            continue
        lifetime = record_lifetime(
            timedelta(milliseconds=retention_ms),
            timedelta(milliseconds=int(config.get("segment.ms", "604800000"))),
        )
        if lifetime > inbox_retention:
            problems.append(
                f"topic {topic} may keep a record for {lifetime} (retention.ms "
                f"{retention_ms}, segment.ms {config.get('segment.ms')}), longer than the "
                f"inbox keeps its id ({inbox_retention}): lower the topic's retention.ms or "
                "segment.ms, or raise GROUPS_INBOX_RETENTION_DAYS"
            )
    return problems
