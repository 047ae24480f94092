"""Export backfill in the benchmark run: rows/s and peak RSS at each size.

Seeds as `bench/export_backfill.py` (the standalone export benchmark) does, with the same
helper: COPY of two memberships per customer, one active and one historical, `updated_at`
in the past so the catch-up pass has nothing to redo. Then runs `python -m services.export
backfill` as its own process into a fresh compacted topic. Rate = the CLI's own figure
(rows / seconds of the backfill, interpreter start-up excluded).

Peak RSS = the kernel's high-water mark of the backfill process (`VmHWM` in
/proc/PID/status, sampled every 20 ms; it only grows, and starts afresh at exec). Not the
CLI's own `ru_maxrss`: Linux carries that over from the parent at fork, so a backfill
started from a large parent (this benchmark holds its pre-generated mix) reports the
parent's size. `cli_peak_rss_mib` keeps that figure for comparison.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import os
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.infra import Databases, service_env, topic_names
from devinfra.provider import Infrastructure
from tests.integration.export.seed import prepare_schema, seed_memberships


@dataclass
class ExportResult:
    rows: int
    published: int
    complete: bool
    rows_per_second: float
    seconds: float
    wall_seconds: float
    peak_rss_mib: float
    cli_peak_rss_mib: float
    seed_seconds: float

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _high_water_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return 0.0


async def run_backfill(env: dict[str, str], limit_s: float) -> tuple[dict[str, Any], float, float]:
    """`python -m services.export backfill`: its JSON summary, wall seconds, peak RSS MiB."""
    began = time.monotonic()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.export", "backfill", "--no-progress",
        env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    peak = 0.0
    output = asyncio.ensure_future(process.communicate())
    try:
        while not output.done():
            if time.monotonic() - began > limit_s:
                raise TimeoutError(f"export backfill not done after {limit_s:.0f} s")
            peak = max(peak, _high_water_mib(process.pid))
            await asyncio.wait([output], timeout=0.02)
    finally:
        if process.returncode is None and not output.done():
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await output
    stdout, stderr = output.result()
    if process.returncode != 0:
        raise RuntimeError(f"backfill exited {process.returncode}: {stderr.decode()[-1500:]}")
    summary: dict[str, Any] = json.loads(stdout.decode().strip().splitlines()[-1])
    return summary, time.monotonic() - began, peak


async def export_backfill(
    infra: Infrastructure, databases: Databases, rows: int, *, limit_seconds: float
) -> ExportResult:
    if importlib.util.find_spec("services.export.entrypoints.cli") is None:
        raise RuntimeError("this services/ tree has no export backfill command")
    url = await databases.create("bench_export")
    began = time.monotonic()
    await prepare_schema(url)
    await seed_memberships(url, rows)
    seeded = time.monotonic() - began
    env = service_env(infra, url, topic_names(uuid.uuid4().hex[:8]), partitions=6)
    summary, wall, peak = await run_backfill(env, limit_seconds)
    return ExportResult(
        rows=rows,
        published=int(summary["published"]),
        complete=bool(summary["complete"]),
        rows_per_second=float(summary["rows_per_second"]),
        seconds=float(summary["seconds"]),
        wall_seconds=round(wall, 2),
        peak_rss_mib=round(peak, 1),
        cli_peak_rss_mib=float(summary.get("peak_rss_mib", 0.0)),
        seed_seconds=round(seeded, 2),
    )
