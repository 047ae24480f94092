"""PostgreSQL plumbing: the async engine and the classification of database errors."""

from __future__ import annotations

import asyncio

import asyncpg
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from services.common.settings import DatabaseSettings

# SQLSTATEs that mean "try the same transaction again": serialization failure,
# deadlock, and the connection / shutdown classes (08, 57P0x).
# Serialization failure, deadlock, connection, shutdown, resources, statement timeout
# (57014) and lock timeout (55P03): wait and retry, never a dead letter.
_TRANSIENT_SQLSTATE_PREFIXES = ("40001", "40P01", "08", "57P", "53", "57014", "55P03")


def create_engine(settings: DatabaseSettings) -> AsyncEngine:
    return create_async_engine(
        settings.database_url,
        pool_size=settings.database_pool_size,
        max_overflow=2,
        # No pre-ping (a round trip per checkout): a dead connection fails its statement,
        # which callers retry with backoff, and the pool then drops it.
        pool_pre_ping=False,
        pool_recycle=1800,
        # Bound parameters hold patient data; they never reach an error message or a log.
        hide_parameters=True,
        connect_args={
            # Fail fast on a dead server so the caller's backoff, not a hung connect, decides.
            "timeout": 5,
            "command_timeout": 60,
            # The hot statements are prepared once per connection, and a generic plan
            # chosen while the tables were small stays slow (BENCHMARKS.md, fix 11).
            "server_settings": {"plan_cache_mode": "force_custom_plan"},
        },
    )


def postgres_can_store(text: str) -> bool:
    """PostgreSQL text and JSONB take no NUL and no lone surrogate; input that has them
    must be handled before it reaches a statement, or the statement fails every retry."""
    if "\x00" in text:
        return False
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _sqlstate(error: BaseException) -> str | None:
    code = getattr(error, "sqlstate", None) or getattr(error, "pgcode", None)
    return code if isinstance(code, str) else None


def is_transient_db_error(error: BaseException) -> bool:
    """True for outages and concurrency conflicts: wait and retry, never drop the record."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, sa_exc.DBAPIError) and current.connection_invalidated:
            return True
        if isinstance(
            current,
            (
                OSError,
                ConnectionError,
                TimeoutError,
                asyncio.TimeoutError,
                asyncpg.exceptions.PostgresConnectionError,
                asyncpg.exceptions.InterfaceError,
                asyncpg.exceptions.CannotConnectNowError,
                sa_exc.InterfaceError,
                sa_exc.DisconnectionError,
            ),
        ):
            return True
        if isinstance(current, sa_exc.OperationalError):
            return True
        state = _sqlstate(current)
        if state and state.startswith(_TRANSIENT_SQLSTATE_PREFIXES):
            return True
        orig = getattr(current, "orig", None)
        current = (
            orig if isinstance(orig, BaseException) else (current.__cause__ or current.__context__)
        )
    return False
