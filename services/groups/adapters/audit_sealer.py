"""The audit sealer: appends committed, not yet sealed audit rows to the hash chain, in
id order, shortly after they commit.

Writers never touch the chain (no global lock, no extra statement in a batch): one
sealer per database, the process holding the sealer's leadership lock, links rows after
the fact. A row whose transaction took its id early but committed late is sealed at the
next free position, after rows with higher ids: positions follow sealing order, ids
only mostly. Every round runs in one REPEATABLE READ transaction, so what it reads and
the snapshot it reasons about agree.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import func, literal, select, text, true
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.common.background import BackgroundTask
from services.common.backoff import Backoff, retry_forever
from services.groups.adapters.audit_rows import entry_of
from services.groups.adapters.leadership import leadership
from services.groups.adapters.orm import audit_chain, audit_log
from services.groups.domain.audit_chain import Link, seal

log = logging.getLogger(__name__)

_SEALER_LOCK_ID = 7_331_003

_SNAPSHOT = text(
    "SELECT CAST(CAST(pg_snapshot_xmin(pg_current_snapshot()) AS text) AS bigint) AS xmin,"
    " CAST(CAST(pg_snapshot_xmax(pg_current_snapshot()) AS text) AS bigint) AS xmax"
)
# Probed by key per row from the floor on: as NOT EXISTS, with statistics stale after a
# burst, the planner hashed the whole chain for every round.
_SEALED = (
    select(literal(1).label("sealed"))
    .where(audit_chain.c.audit_id == audit_log.c.id)
    .limit(1)
    .lateral("chained")
)
_APPEND = text(
    "INSERT INTO audit_chain (audit_id, position, prev_hash, hash)"
    " SELECT * FROM unnest(CAST(:ids AS bigint[]), CAST(:positions AS bigint[]),"
    " CAST(:prev AS bytea[]), CAST(:hashes AS bytea[]))"
)


@dataclass
class _Mark:
    at: float  # when every visible id <= through was sealed (monotonic clock)
    through: int
    barrier: int | None = None  # a snapshot's xmax taken `settle` seconds after `at`


class SealHorizon:
    """Where a round may start reading: `floor`, below which every id is sealed or will
    never commit, so a round scans only the recent ids, not the whole log.

    An id at or below a mark's `through` that was invisible then belongs to a
    transaction that had its transaction id within `settle` seconds (the id and the
    transaction id are taken in the same statement); once a later snapshot's xmin passes
    the xmax of a snapshot taken after that, every such transaction has ended, and the
    round that sees it has sealed what they committed."""

    def __init__(self, settle_seconds: float = 1.0) -> None:
        self.floor = 0
        self._settle = settle_seconds
        self._marks: deque[_Mark] = deque()

    def observe(self, *, now: float, xmin: int, xmax: int, sealed_through: int) -> None:
        """After a round whose snapshot was (xmin, xmax) and which sealed every id up to
        `sealed_through` that it saw (and scanned from the current floor)."""
        while self._marks:
            mark = self._marks[0]
            if mark.barrier is None or mark.barrier > xmin or mark.through > sealed_through:
                break
            self.floor = max(self.floor, mark.through)
            self._marks.popleft()
        for mark in self._marks:
            if mark.barrier is None and now - mark.at >= self._settle:
                mark.barrier = xmax
        if sealed_through > (self._marks[-1].through if self._marks else self.floor):
            self._marks.append(_Mark(now, sealed_through))


async def seal_round(connection: AsyncConnection, horizon: SealHorizon, limit: int) -> int:
    """Seal up to `limit` rows in one REPEATABLE READ transaction; returns how many.

    The connection must be set to REPEATABLE READ and hold the sealer's lock (the
    chain's unique position and audit id refuse a second writer anyway)."""
    try:
        snapshot = (await connection.execute(_SNAPSHOT)).one()
        head_row = (
            await connection.execute(
                select(audit_chain.c.position, audit_chain.c.audit_id, audit_chain.c.hash)
                .order_by(audit_chain.c.position.desc())
                .limit(1)
            )
        ).first()
        unsealed = (
            await connection.execute(
                select(audit_log)
                .select_from(audit_log.outerjoin(_SEALED, true()))
                .where(audit_log.c.id > horizon.floor, _SEALED.c.sealed.is_(None))
                .order_by(audit_log.c.id)
                .limit(limit)
            )
        ).all()
        if len(unsealed) < limit:
            newest = await connection.scalar(select(func.max(audit_log.c.id)))
            through = max(newest or 0, horizon.floor)
        else:
            through = unsealed[-1].id
        head = Link(head_row.position, head_row.audit_id, b"", head_row.hash) if head_row else None
        links = seal(head, [entry_of(row._mapping) for row in unsealed])
        if links:
            await connection.execute(
                _APPEND,
                {
                    "ids": [link.audit_id for link in links],
                    "positions": [link.position for link in links],
                    "prev": [link.prev_hash for link in links],
                    "hashes": [link.hash for link in links],
                },
            )
        await connection.commit()
    except BaseException:
        await connection.rollback()
        raise
    horizon.observe(
        now=time.monotonic(), xmin=snapshot.xmin, xmax=snapshot.xmax, sealed_through=through
    )
    return len(links)


class AuditSealer:
    """Runs `seal_round` while this process leads; stands by otherwise."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        batch_size: int = 1000,
        idle_poll_seconds: float = 0.5,
        on_sealed: Callable[[int], None] | None = None,
    ) -> None:
        self._engine = engine
        self._batch_size = batch_size
        self._idle_poll = idle_poll_seconds
        self._on_sealed = on_sealed or (lambda _n: None)
        self._background = BackgroundTask(self.run, "audit-sealer")
        self.is_leader = False

    def start(self) -> None:
        self._background.start()

    async def stop(self) -> None:
        await self._background.stop()

    async def run(self) -> None:
        backoff = Backoff(cap=5.0)

        def paused(error: Exception, delay: float) -> None:  # a database outage: wait it out
            log.warning("audit sealer paused: %s; retrying in %.1fs", type(error).__name__, delay)

        # A term of leadership ends only by an error; each round sealed resets the backoff.
        await retry_forever(lambda: self._term(backoff), backoff=backoff, on_retry=paused)

    async def _term(self, backoff: Backoff) -> None:
        try:
            async with leadership(self._engine, _SEALER_LOCK_ID) as connection:
                self.is_leader = True
                log.info("audit sealer is sealing")
                connection = await connection.execution_options(isolation_level="REPEATABLE READ")
                horizon = SealHorizon()
                while True:
                    sealed = await seal_round(connection, horizon, self._batch_size)
                    backoff.reset()
                    if sealed:
                        self._on_sealed(sealed)
                    if sealed < self._batch_size:
                        await asyncio.sleep(self._idle_poll)
        finally:
            self.is_leader = False
