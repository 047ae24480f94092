"""One leader among the service's processes.

Two ways, for two kinds of work:
- `leadership`: a session advisory lock held on its own connection (the audit sealer).
  It passes on only when the holder's connection dies, so a frozen process keeps it.
- `Lease`: a row in `leases`, held until a time the holder keeps pushing forward while it
  makes progress (the outbox relay). A frozen or stuck process stops renewing and a
  standby takes over when the lease expires; what the old holder might still do must be
  fenced by other means (the relay's transactional producer).
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
import uuid
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


class LeaseLost(RuntimeError):
    """Another process holds the lease now: this term of leadership is over."""


# Expiry is database time, so the processes' clocks need not agree. A holder may take
# its own lease again at once (a new term after an error); anyone may take an expired
# one, or one whose holder's database session is gone (a crashed process: no need to
# wait for the expiry; a frozen one keeps its session, and so its lease until expiry).
_ACQUIRE = text(
    """
INSERT INTO leases AS l (name, holder, term, expires_at, backend_pid)
VALUES (
  :name, :holder, 1, now() + CAST(:seconds AS double precision) * interval '1 second',
  pg_backend_pid()
)
ON CONFLICT (name) DO UPDATE
SET holder = EXCLUDED.holder, term = l.term + 1, expires_at = EXCLUDED.expires_at,
    backend_pid = EXCLUDED.backend_pid
WHERE l.expires_at < now() OR l.holder = EXCLUDED.holder
   OR NOT EXISTS (SELECT FROM pg_stat_activity a WHERE a.pid = l.backend_pid)
RETURNING term
"""
)
_RENEW = text(
    """
UPDATE leases SET expires_at = now() + CAST(:seconds AS double precision) * interval '1 second'
WHERE name = :name AND holder = :holder AND term = :term
RETURNING term
"""
)
_RELEASE = text(
    """
UPDATE leases SET expires_at = '-infinity'
WHERE name = :name AND holder = :holder AND term = :term
"""
)


class Lease:
    """The lease on `name` for this process. Statements run on the caller's connection
    (autocommit; one session for the whole term, its backend pid stored with the lease,
    so no transaction-mode connection pooler in between), and a database outage
    surfaces in the caller's backoff."""

    def __init__(self, name: str, *, seconds: float, poll_seconds: float | None = None) -> None:
        self.name = name
        self.seconds = seconds
        # A standby looks often enough that a takeover costs little beyond the expiry.
        self.poll_seconds = poll_seconds if poll_seconds is not None else min(1.0, seconds / 5)
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.term: int | None = None
        self._renewed_at = 0.0

    async def acquire(self, connection: AsyncConnection) -> int:
        """Wait (standing by) until this process holds the lease; returns the new term."""
        while True:
            term = await connection.scalar(_ACQUIRE, self._params())
            if term is not None:
                self.term = int(term)
                self._renewed_at = time.monotonic()
                return self.term
            await asyncio.sleep(self.poll_seconds)

    async def renew_if_due(self, connection: AsyncConnection) -> None:
        """Push the expiry forward (at most every fifth of the lease); raises `LeaseLost`
        when another process took it over. Call it only after progress."""
        if time.monotonic() - self._renewed_at < self.seconds / 5:
            return
        renewed_at = time.monotonic()
        if await connection.scalar(_RENEW, {**self._params(), "term": self.term}) is None:
            raise LeaseLost(self.name)
        self._renewed_at = renewed_at

    async def release(self, connection: AsyncConnection) -> None:
        """Let a standby take over at once (a clean stop)."""
        if self.term is not None:
            await connection.execute(_RELEASE, {**self._params(), "term": self.term})
            self.term = None

    def _params(self) -> dict[str, object]:
        return {"name": self.name, "holder": self.holder, "seconds": self.seconds}
