"""Sampling profiles of a running service process with py-spy (`--profile`).

py-spy attaches to the process by pid (no change to the service) and samples its Python
stacks; idle time (threads waiting in the event loop's selector) is not sampled. The
raw collapsed stacks are kept next to the results; the summary lists self time by
package, the hottest leaf functions and the hottest functions including callees.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import asyncpg

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^():]+)(?::\d+)?\)$")
RATE = 200


def py_spy() -> str | None:
    local = Path(sys.executable).parent / "py-spy"
    if local.exists():
        return str(local)
    return shutil.which("py-spy")


def _package(path: str) -> str:
    """A short name for where a frame's file lives (py-spy shows paths from sys.path)."""
    if path.startswith("<frozen"):
        return "stdlib"
    parts = path.split("/")
    if parts[0] in ("services", "bench", "devinfra") and len(parts) > 2:
        return f"{parts[0]}.{parts[1]}"
    return parts[0].removesuffix(".py")


def _short(frame: str) -> tuple[str, str]:
    """(function with short file, package) of a py-spy frame `func (path:line)`."""
    match = _FRAME.match(frame.strip())
    if match is None:
        return frame.strip(), "?"
    path = match.group("file")
    package = _package(path)
    tail = "/".join(path.split("/")[-2:]) if package != "stdlib" else path
    return f"{match.group('func')} ({tail})", package


class PySpy:
    def __init__(self, pid: int, output: Path) -> None:
        self.pid = pid
        self.output = output
        self._process: subprocess.Popen[bytes] | None = None
        self.error: str | None = None

    def start(self) -> None:
        binary = py_spy()
        if binary is None:
            self.error = "py-spy not installed (.venv/bin/pip install py-spy)"
            return
        self.output.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.output.with_suffix(".log").open("wb")
        self._process = subprocess.Popen(
            [
                binary, "record", "--pid", str(self.pid), "--rate", str(RATE),
                "--format", "raw", "--output", str(self.output), "--nonblocking",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip

    def stop(self) -> None:
        if self._process is None:
            return
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGINT)
            try:
                self._process.wait(30)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._log.close()
        if not self.output.exists():
            self.error = f"py-spy wrote no profile; see {self.output.with_suffix('.log')}"

    def summary(self, top: int = 15) -> dict[str, Any]:
        if self.error is not None:
            return {"error": self.error}
        return summarize(self.output, top=top)


def summarize(path: Path, *, top: int = 15) -> dict[str, Any]:
    """Self time by package, top leaf functions, top inclusive functions (shares of samples)."""
    total = 0
    by_package: Counter[str] = Counter()
    leaf: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    in_services: Counter[str] = Counter()
    with path.open(encoding="utf-8", errors="replace") as lines:
        for line in lines:
            stack, _, count_text = line.rstrip("\n").rpartition(" ")
            with contextlib.suppress(ValueError):
                count = int(count_text)
                frames = [_short(f) for f in stack.split(";") if f]
                if not frames:
                    continue
                total += count
                name, package = frames[-1]
                leaf[name] += count
                by_package[package] += count
                for seen in {n for n, _p in frames}:
                    inclusive[seen] += count
                for seen in {n for n, p in frames if p.startswith("services.")}:
                    in_services[seen] += count

    def shares(counter: Counter[str], limit: int = top) -> list[tuple[str, float]]:
        if not total:
            return []
        return [(k, round(100 * v / total, 1)) for k, v in counter.most_common(limit)]

    return {
        "file": str(path),
        "samples": total,
        "rate_hz": RATE,
        "self_by_package_pct": shares(by_package),
        "self_top_pct": shares(leaf),
        "inclusive_top_pct": shares(inclusive),
        "inclusive_services_pct": shares(in_services, 25),
    }


_STATEMENTS = """
SELECT calls, total_exec_time, rows, regexp_replace(query, '\\s+', ' ', 'g') AS query
FROM pg_stat_statements
WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
ORDER BY calls DESC
"""


async def reset_statements(dsn: str) -> None:
    """Start counting the statements of this database afresh (pg_stat_statements)."""
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        await connection.execute("SELECT pg_stat_statements_reset()")
    finally:
        await connection.close()


async def statement_summary(dsn: str, records: int, *, top: int = 20) -> dict[str, Any]:
    """Statement executions per inbound record (pg_stat_statements counts every row of an
    executemany as one call, so this is an upper bound on round trips), the server's
    execution time per record, and the most frequent statements."""
    connection = await asyncpg.connect(dsn)
    try:
        rows = await connection.fetch(_STATEMENTS)
    finally:
        await connection.close()
    own = [r for r in rows if "pg_stat_statements" not in r["query"]]
    calls = sum(int(r["calls"]) for r in own)
    server_ms = sum(float(r["total_exec_time"]) for r in own)
    return {
        "records": records,
        "statements": calls,
        "executions_per_record": round(calls / max(records, 1), 2),
        "server_exec_ms_per_record": round(server_ms / max(records, 1), 3),
        "top": [
            {
                "calls_per_record": round(int(r["calls"]) / max(records, 1), 3),
                "mean_ms": round(float(r["total_exec_time"]) / max(int(r["calls"]), 1), 3),
                "query": str(r["query"])[:160],
            }
            for r in own[:top]
        ],
    }


async def statement_totals(dsn: str, pattern: str) -> dict[str, int] | None:
    """Executions and rows (returned or affected) of this database's statements whose
    text matches `pattern` (SQL LIKE), since the last reset; None when none matches."""
    connection = await asyncpg.connect(dsn)
    try:
        row = await connection.fetchrow(
            "SELECT sum(calls) AS calls, sum(rows) AS rows FROM pg_stat_statements "
            "WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) "
            "AND query LIKE $1",
            pattern,
        )
    finally:
        await connection.close()
    if row is None or row["calls"] is None:
        return None
    return {"calls": int(row["calls"]), "rows": int(row["rows"])}


async def wal_position(dsn: str) -> int:
    """The server's current WAL position in bytes: the difference of two is the WAL
    written between them, by every database of the server."""
    connection = await asyncpg.connect(dsn)
    try:
        return int(await connection.fetchval("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn"))
    finally:
        await connection.close()
