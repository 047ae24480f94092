"""What waits in the database, read when /metrics is scraped: the outbox's backlog and the
age of its next row, parked rows, dead letters not replayed.

One statement under a statement timeout, and the whole read (a pool checkout included)
under a deadline, so a slow or absent database never holds up a scrape.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Backlog:
    outbox_rows: int
    oldest_age_seconds: float  # of the row the relay publishes next; 0 when empty
    parked_rows: int
    dead_letters_pending: int


# The next row by id is the one the relay publishes next (and reading it is one index
# probe, where min(created_at) would scan the table).
_READ = text(
    """
SELECT
  (SELECT count(*) FROM outbox) AS outbox_rows,
  coalesce(
    (SELECT extract(epoch FROM clock_timestamp() - created_at) FROM outbox ORDER BY id LIMIT 1),
    0
  ) AS oldest_age_seconds,
  (SELECT count(*) FROM outbox_parked) AS parked_rows,
  (SELECT count(*) FROM dead_letters WHERE replayed_at IS NULL) AS dead_letters_pending
"""
)


async def read_backlog(engine: AsyncEngine, *, timeout_seconds: float = 1.0) -> Backlog | None:
    """None when the database does not answer within `timeout_seconds`."""

    async def read() -> Backlog:
        async with engine.connect() as connection:
            # Undone with the implicit transaction when the connection goes back.
            milliseconds = max(1, int(timeout_seconds * 1000))
            await connection.execute(text(f"SET LOCAL statement_timeout = {milliseconds}"))
            row = (await connection.execute(_READ)).one()
        return Backlog(
            outbox_rows=int(row.outbox_rows),
            # The row's time may come from another host's clock: never below zero.
            oldest_age_seconds=max(0.0, float(row.oldest_age_seconds)),
            parked_rows=int(row.parked_rows),
            dead_letters_pending=int(row.dead_letters_pending),
        )

    try:
        return await asyncio.wait_for(read(), timeout_seconds)
    except Exception as error:  # reported as NaN; /healthz says why the database is down
        log.debug("backlog not read for /metrics: %s", type(error).__name__)
        return None
