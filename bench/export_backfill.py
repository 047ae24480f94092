"""Backfill (and snapshot) rate and peak RSS for N seeded memberships.

    .venv/bin/python bench/export_backfill.py --rows 100000 [--batch-size 5000] [--snapshot]

Starts (or reuses, via KAFKA_BOOTSTRAP_SERVERS / DATABASE_URL) the real broker and
PostgreSQL, seeds a fresh database by COPY (two memberships per customer, one active and
one historical, Luhn-valid generated personnummer, updated_at in the past so the catch-up
pass has nothing to redo), then runs `python -m services.export backfill` as its own
process into a fresh compacted topic. Rate = the CLI's own figure (rows / seconds of the
backfill, interpreter start-up excluded); peak RSS = max of the CLI's ru_maxrss and
psutil samples every 20 ms. Prints one JSON line per command.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from devinfra.provider import provide_infrastructure
from services.common.settings import TopicSettings
from tests.integration.export.seed import prepare_schema, seed_memberships

ROOT = Path(__file__).resolve().parent.parent


def directory_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.iterdir())


async def run_measured(env: dict[str, str], *args: str) -> dict[str, Any]:
    began = time.monotonic()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.export", *args, "--no-progress",
        env={**os.environ, **env}, cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    watched, peak = psutil.Process(process.pid), 0
    output = asyncio.ensure_future(process.communicate())
    while not output.done():
        try:
            peak = max(peak, watched.memory_info().rss)
        except psutil.Error:
            pass
        await asyncio.wait([output], timeout=0.02)
    stdout, stderr = output.result()
    if process.returncode != 0:
        raise RuntimeError(f"{args[0]} exited {process.returncode}: {stderr.decode()[-2000:]}")
    summary: dict[str, Any] = json.loads(stdout.decode().strip().splitlines()[-1])
    summary["wall_seconds"] = round(time.monotonic() - began, 2)
    summary["peak_rss_mib"] = round(max(summary["peak_rss_mib"], peak / 2**20), 1)
    return summary


async def bench(
    rows: int, batch_size: int | None, snapshot: bool, base_url: str, kafka: str
) -> None:
    name = f"bench_export_{uuid.uuid4().hex[:8]}"
    admin_dsn = base_url.replace("postgresql+asyncpg://", "postgresql://", 1)
    admin = await asyncpg.connect(admin_dsn)
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    url = f"{base_url.rsplit('/', 1)[0]}/{name}"
    try:
        began = time.monotonic()
        await prepare_schema(url)
        await seed_memberships(url, rows)
        print(json.dumps({"seeded": rows, "seconds": round(time.monotonic() - began, 2)}))
        suffix = uuid.uuid4().hex[:8]
        env = {
            "APP_ENV": "test",
            "LOG_LEVEL": "WARNING",
            "KAFKA_BOOTSTRAP_SERVERS": kafka,
            "DATABASE_URL": url,
            "EXPORT_PSEUDONYM_KEY": "bench-export-pseudonym-key-0123456789",
        }
        for topic, default in TopicSettings().model_dump().items():
            env[f"TOPIC_{topic.upper()}"] = f"{default}.{suffix}"
        sizing = ("--batch-size", str(batch_size)) if batch_size else ()
        print(json.dumps({"rows": rows, **await run_measured(env, "backfill", *sizing)}))
        if snapshot:
            with tempfile.TemporaryDirectory() as out:
                result = await run_measured(env, "snapshot", "--out", out, *sizing)
                result["bytes"] = await asyncio.to_thread(directory_bytes, Path(out))
                print(json.dumps({"rows": rows, **result}))
    finally:
        admin = await asyncpg.connect(admin_dsn)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rows", type=int, default=100_000, help="memberships to seed")
    parser.add_argument("--batch-size", type=int, help="the CLI's --batch-size (its default)")
    parser.add_argument("--snapshot", action="store_true", help="also measure the snapshot")
    args = parser.parse_args()
    with provide_infrastructure() as infra:
        asyncio.run(
            bench(
                args.rows, args.batch_size, args.snapshot, infra.database_url, infra.kafka_bootstrap
            )
        )


if __name__ == "__main__":
    main()
