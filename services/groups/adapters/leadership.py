"""One leader among the service's processes: a session advisory lock held on its own
connection, for the outbox relay and the audit sealer."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine


@asynccontextmanager
async def leadership(
    engine: AsyncEngine, lock_id: int, *, poll_seconds: float = 1.0
) -> AsyncIterator[AsyncConnection]:
    """Wait until this process holds `lock_id`, then yield the connection holding it.

    Leadership lasts while the connection lives: when it dies, the lock is released and
    another process takes over. Database errors propagate to the caller's backoff."""
    async with engine.connect() as connection:
        try:
            while True:
                got = await connection.scalar(text(f"SELECT pg_try_advisory_lock({lock_id})"))
                await connection.commit()
                if got:
                    break
                await asyncio.sleep(poll_seconds)  # another process leads; stand by
            yield connection
        finally:
            # A session lock outlives the pool's reset: never hand a connection that may
            # hold it back to the pool, or no process could lead again.
            await connection.invalidate()
