"""`python -m bench.audit_seal [--rows N]`: what sealing the PDL audit log costs.

Against embedded PostgreSQL in a temporary directory (or DATABASE_URL if set, on a
fresh database it creates and drops): rows sealed per second from a backlog, the CPU
that takes in the sealer's process and in its PostgreSQL backend, the delay from a
writer's commit to its row being sealed, writers' commit latency with the sealer idle
and with it sealing a backlog at the same time, and rows verified per second by
`audit-verify`'s walk. Prints one JSON object; about half a minute.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import psutil
from sqlalchemy import func, insert, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from devinfra.postgres import LocalPostgres
from services.common.db import create_engine
from services.common.settings import DatabaseSettings
from services.groups.adapters import migrate
from services.groups.adapters.audit_sealer import AuditSealer, SealHorizon, seal_round
from services.groups.adapters.orm import audit_chain, audit_log
from services.groups.service_layer.operations import audit_verify
from services.groups.service_layer.unit_of_work import UnitOfWork

ROWS_PER_WRITE = 8  # a batch's reads and changes: a few audit rows per commit


def _rows(count: int, start: int) -> list[dict[str, Any]]:
    return [
        {
            "action": "customer_group.add",
            "user_id": f"nurse-{n % 50}",
            "unit_id": f"unit-{n % 7}",
            "personnummer": "191212121212",
            "membership_id": str(uuid.UUID(int=n)),
            "detail": {"group_code": "COVID_19", "command_id": f"cmd-{n}", "version": 1},
        }
        for n in range(start, start + count)
    ]


@contextlib.contextmanager
def _server() -> Iterator[str]:
    if url := os.environ.get("DATABASE_URL"):
        yield url
        return
    with LocalPostgres() as postgres:
        yield postgres.url


async def _fresh_database(server_url: str) -> str:
    name = f"bench_seal_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(server_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    return server_url.rpartition("/")[0] + f"/{name}"


async def _drop(database_url: str) -> None:
    base, _, name = database_url.rpartition("/")
    admin = await asyncpg.connect(
        base.replace("postgresql+asyncpg://", "postgresql://") + "/postgres"
    )
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


async def _fill(engine: AsyncEngine, rows: int) -> None:
    for start in range(0, rows, 5000):
        async with engine.begin() as connection:
            await connection.execute(insert(audit_log), _rows(min(5000, rows - start), start))


async def _writes(engine: AsyncEngine, count: int) -> list[float]:
    """Commit latencies (ms) of `count` transactions of ROWS_PER_WRITE audit rows."""
    latencies = []
    for index in range(count):
        began = time.perf_counter()
        async with engine.begin() as connection:
            await connection.execute(insert(audit_log), _rows(ROWS_PER_WRITE, index))
        latencies.append((time.perf_counter() - began) * 1000)
    return latencies


def _p(values: list[float], q: float) -> float:
    return round(statistics.quantiles(values, n=100)[int(q) - 1], 2)


async def _seal_backlog(engine: AsyncEngine, batch: int) -> dict[str, float]:
    async with engine.connect() as connection:
        sealer = await connection.execution_options(isolation_level="REPEATABLE READ")
        backend = psutil.Process(await sealer.scalar(text("SELECT pg_backend_pid()")))
        await sealer.commit()
        horizon = SealHorizon()
        cpu0, backend0, wall0 = time.process_time(), backend.cpu_times(), time.perf_counter()
        sealed = 0
        while (done := await seal_round(sealer, horizon, batch)) > 0:
            sealed += done
        wall = time.perf_counter() - wall0
        cpu = time.process_time() - cpu0
        backend1 = backend.cpu_times()
    backend_cpu = (backend1.user - backend0.user) + (backend1.system - backend0.system)
    return {
        "rows_sealed": sealed,
        "rows_per_second": round(sealed / wall),
        "sealer_cpu_ms_per_1000_rows": round(cpu / sealed * 1e6, 1),
        "postgres_cpu_ms_per_1000_rows": round(backend_cpu / sealed * 1e6, 1),
    }


async def _seal_delays(engine: AsyncEngine, samples: int) -> list[float]:
    """Commit-to-sealed delay (ms) of single rows, with the sealer as the service runs it."""
    sealer = AuditSealer(engine)
    sealer.start()
    delays = []
    try:
        for index in range(samples):
            async with engine.begin() as connection:
                row_id = (
                    await connection.execute(
                        insert(audit_log).returning(audit_log.c.id), _rows(1, index)
                    )
                ).scalar_one()
            committed = time.perf_counter()
            while True:
                async with engine.connect() as connection:
                    if await connection.scalar(
                        select(audit_chain.c.position).where(audit_chain.c.audit_id == row_id)
                    ):
                        break
                await asyncio.sleep(0.005)
            delays.append((time.perf_counter() - committed) * 1000)
            # Spread the next commit over the sealer's idle poll (0.5 s), which restarted
            # when it sealed this row.
            await asyncio.sleep(0.5 * ((index * 0.37) % 1))
    finally:
        await sealer.stop()
    return delays


async def run(rows: int) -> dict[str, Any]:
    result: dict[str, Any] = {"rows": rows, "rows_per_write": ROWS_PER_WRITE}
    with _server() as server_url:
        url = await _fresh_database(server_url)
        engine = create_engine(DatabaseSettings(database_url=url))
        try:
            await migrate.upgrade(engine)
            await _writes(engine, 50)  # warm-up
            idle = await _writes(engine, 400)
            await _fill(engine, rows)
            result["seal_backlog"] = await _seal_backlog(engine, 1000)

            await _fill(engine, rows)
            sealer = AuditSealer(engine)
            sealer.start()
            try:
                busy = await _writes(engine, 400)
            finally:
                await sealer.stop()
            result["writer_commit_ms"] = {
                "sealer_idle": {"p50": _p(idle, 50), "p99": _p(idle, 99)},
                "sealer_sealing_a_backlog": {"p50": _p(busy, 50), "p99": _p(busy, 99)},
            }
            await _seal_backlog(engine, 1000)
            delays = await _seal_delays(engine, 30)
            result["commit_to_sealed_ms"] = {
                "p50": _p(delays, 50),
                "max": round(max(delays), 1),
            }
            async with engine.connect() as connection:
                chained = await connection.scalar(select(func.count()).select_from(audit_chain))
            began = time.perf_counter()
            async with UnitOfWork(engine, dlq_topic="unused", service="bench") as uow:
                report = await audit_verify(uow, now=datetime.now(UTC), grace=timedelta(minutes=5))
            seconds = time.perf_counter() - began
            assert report.broken is None and report.rows_verified == chained, report
            result["verify"] = {
                "rows": report.rows_verified,
                "rows_per_second": round(report.rows_verified / seconds),
            }
        finally:
            await engine.dispose()
            await _drop(url)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.audit_seal", description=__doc__)
    parser.add_argument("--rows", type=int, default=50_000, help="backlog to seal")
    args = parser.parse_args(argv)
    began = time.perf_counter()
    result = asyncio.run(run(args.rows))
    result["seconds"] = round(time.perf_counter() - began, 1)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
