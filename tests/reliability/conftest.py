"""Fixtures of the reliability suite: its scale, its figures, and a stack per test.

`RELIABILITY_SCALE=full` runs the larger suite; the default (`ci`) is sized for the
normal test command. The figures go to `.run/reliability/results.json` when the session
ends; `python -m tests.reliability.report` renders them into RELIABILITY.md.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import date
from typing import Any

import pytest

from devinfra.provider import Infrastructure
from services.groups.bootstrap import read_catalog_file
from services.groups.catalog import default_catalog_path
from services.groups.domain.catalog import Catalog
from services.groups.service_layer.context import Clock
from tests.conftest import IN_CI
from tests.reliability.harness import LOG_DIR, Stack, open_stack
from tests.reliability.report import Results, render


@dataclass(frozen=True)
class Scale:
    name: str
    crash_customers: int
    crash_inputs: int
    crash_waves: int
    crash_kills: int
    broker_customers: int
    broker_inputs: int
    broker_restarts: int
    broker_down_seconds: float
    outage_customers: int
    outage_inputs: int
    outage_seconds: float
    export_customers: int
    export_inputs: int
    export_kills: int
    bad_per_topic: int
    bad_valid_customers: int
    hypothesis_examples: int
    # The long run: rounds of a simulated week each (a stream of this size with this
    # much bad input per inbound topic).
    long_run_weeks: int
    long_run_customers: int
    long_run_inputs: int
    long_run_bad_per_topic: int


SCALES = {
    "ci": Scale(
        name="ci",
        crash_customers=250,
        crash_inputs=5000,
        crash_waves=3,
        crash_kills=3,
        broker_customers=60,
        broker_inputs=1500,
        broker_restarts=1,
        broker_down_seconds=30.0,
        outage_customers=60,
        outage_inputs=1500,
        outage_seconds=12.0,
        export_customers=80,
        export_inputs=1500,
        export_kills=3,
        bad_per_topic=1000,
        bad_valid_customers=40,
        hypothesis_examples=150,
        long_run_weeks=9,
        long_run_customers=30,
        long_run_inputs=200,
        long_run_bad_per_topic=20,
    ),
    # A quick look while developing the suite; too small to prove anything.
    "smoke": Scale(
        name="smoke",
        crash_customers=40,
        crash_inputs=800,
        crash_waves=3,
        crash_kills=3,
        broker_customers=20,
        broker_inputs=400,
        broker_restarts=1,
        broker_down_seconds=10.0,
        outage_customers=20,
        outage_inputs=400,
        outage_seconds=10.0,
        export_customers=20,
        export_inputs=400,
        export_kills=3,
        bad_per_topic=100,
        bad_valid_customers=10,
        hypothesis_examples=30,
        long_run_weeks=5,
        long_run_customers=10,
        long_run_inputs=60,
        long_run_bad_per_topic=5,
    ),
    "full": Scale(
        name="full",
        crash_customers=1000,
        crash_inputs=25_000,
        crash_waves=4,
        crash_kills=8,
        broker_customers=300,
        broker_inputs=6000,
        broker_restarts=2,
        broker_down_seconds=30.0,
        outage_customers=300,
        outage_inputs=6000,
        outage_seconds=20.0,
        export_customers=300,
        export_inputs=6000,
        export_kills=6,
        bad_per_topic=3000,
        bad_valid_customers=150,
        hypothesis_examples=1000,
        long_run_weeks=26,
        long_run_customers=150,
        long_run_inputs=1500,
        long_run_bad_per_topic=150,
    ),
}

_RESULTS: Results | None = None


def scale_name() -> str:
    name = os.environ.get("RELIABILITY_SCALE", "ci").strip().lower() or "ci"
    if name not in SCALES:
        raise pytest.UsageError(f"RELIABILITY_SCALE must be one of {sorted(SCALES)}")
    return name


@pytest.fixture(scope="session")
def scale() -> Scale:
    return SCALES[scale_name()]


@pytest.fixture(scope="session")
def results(infra: Infrastructure) -> Iterator[Results]:
    """The session's figures; saved to .run/reliability/results.json at its end."""
    global _RESULTS
    shutil.rmtree(LOG_DIR, ignore_errors=True)
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    recorder = Results(scale_name())
    recorder.infrastructure = (
        f"Apache Kafka {infra.kafka_version} ({infra.kafka_origin}), "
        f"PostgreSQL {infra.postgres_version} ({infra.postgres_origin})"
    )
    _RESULTS = recorder
    yield recorder
    recorder.save()


@dataclass
class Check:
    """Where one test records its figures."""

    results: Results
    nodeid: str

    def record(
        self,
        check: str,
        title: str,
        *,
        summary: dict[str, int],
        counted: bool = True,
        **details: Any,
    ) -> None:
        checks = _CHECKS_OF_NODE.setdefault(self.nodeid, [])
        if check not in checks:
            checks.append(check)
        self.results.record(check, title, summary=summary, counted=counted, **details)


_CHECKS_OF_NODE: dict[str, list[str]] = {}
_STARTED: dict[str, float] = {}


@pytest.fixture
def check(request: pytest.FixtureRequest, results: Results) -> Check:
    return Check(results, request.node.nodeid)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if _RESULTS is not None and report.when == "setup":
        _STARTED[item.nodeid] = time.monotonic()
    if _RESULTS is not None and (report.when == "call" or report.failed):
        seconds = time.monotonic() - _STARTED.get(item.nodeid, time.monotonic())
        for check_name in _CHECKS_OF_NODE.get(item.nodeid, []):
            previous = _RESULTS.checks.get(check_name, {}).get("outcome")
            outcome = "failed" if previous == "failed" else report.outcome
            _RESULTS.outcome(check_name, outcome, seconds)
    return report


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _RESULTS is None or not _RESULTS.checks:
        return
    terminalreporter.section("reliability figures")
    for line in render(_RESULTS.to_json()).splitlines():
        terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def catalog() -> Catalog:
    return read_catalog_file(default_catalog_path())


@pytest.fixture
def today() -> date:
    return Clock("Europe/Stockholm").today()


@pytest.fixture
async def stack(
    request: pytest.FixtureRequest, infra: Infrastructure, database_url: str
) -> AsyncIterator[Stack]:
    async with open_stack(request.node.name, infra.kafka_bootstrap, database_url, infra) as s:
        yield s


def require_local(handle: object, what: str) -> None:
    """Fault tests that stop the broker or database need them as local processes."""
    if handle is None:
        message = (
            f"{what} is not a local process here (it came from the environment or a container)"
        )
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
