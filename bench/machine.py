"""Facts about the machine and the software a run measured, printed with the results."""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return 0.0


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "-"


def _git(*args: str) -> str:
    try:
        return subprocess.run(
            ["git", *args], capture_output=True, text=True, timeout=10, check=False
        ).stdout.strip()
    except OSError:
        return ""


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def machine_facts(kafka_version: str, postgres_version: str) -> dict[str, Any]:
    changed = _git("status", "--porcelain", "--", "services")
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": _cpu_model(),
        "memory_gib": _memory_gib(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "kafka": kafka_version,
        "postgresql": postgres_version,
        "aiokafka": _version("aiokafka"),
        "asyncpg": _version("asyncpg"),
        "sqlalchemy": _version("sqlalchemy"),
        "faststream": _version("faststream"),
        "git_commit": _git("rev-parse", "--short", "HEAD"),
        "services_uncommitted_files": len(changed.splitlines()) if changed else 0,
        "load_average_at_start": load_average(),
    }
