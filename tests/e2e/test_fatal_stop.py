"""A fatal pipeline error in a real service process: it logs why and exits with a
non-zero status (an orchestrator restarts it), and the restarted process applies what
the failed batch held (its offsets were never committed)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable
from pathlib import Path

from devinfra.provider import Infrastructure
from devinfra.services import ServiceProcess, free_port
from services.common.serving import EXIT_FATAL
from services.common.settings import TopicSettings
from tests.e2e.conftest import stack_env
from tests.e2e.faulty_service import TRIGGER
from tests.kafka_tools import KafkaTestClient, TopicCollector, cloudevent

PNR = "191212121212"


def faulty(module_env: dict[str, str], service: str, tmp_path: Path) -> ServiceProcess:
    port_var = "GROUPS_HTTP_PORT" if service == "groups" else "EXPORT_HTTP_PORT"
    port = free_port()
    return ServiceProcess(
        "tests.e2e.faulty_service",
        {**module_env, "FAULTY_SERVICE": service, port_var: str(port)},
        port=port,
        log_path=tmp_path / f"faulty-{service}.log",
    )


def stack(infra: Infrastructure, database_url: str) -> tuple[dict[str, str], TopicSettings]:
    """The environment of one test's own topics and consumer groups, and those topics."""
    env = stack_env(infra, database_url, uuid.uuid4().hex[:8])
    names = {n: env[f"TOPIC_{n.upper()}"] for n in TopicSettings.model_fields}
    return env, TopicSettings(**names)


async def fatal_log(process: ServiceProcess, trigger: Awaitable[None]) -> str:
    """Start `process`, send the trigger; it must end by itself with `EXIT_FATAL` after
    logging so. Returns its log."""
    await asyncio.to_thread(process.start)
    try:
        await trigger
        status = await asyncio.to_thread(process.wait, 90.0)
    finally:
        process.stop()
    assert status == EXIT_FATAL
    log = process.log_path.read_text()
    assert f"exits with status {EXIT_FATAL}" in log
    return log


async def test_a_fatal_error_ends_the_groups_process_and_loses_nothing(
    infra: Infrastructure, database_url: str, kafka: KafkaTestClient, tmp_path: Path
) -> None:
    env, topics = stack(infra, database_url)
    vaccination_id = f"vacc-{TRIGGER.decode()}"
    start = cloudevent(
        "vaccination.started",
        {
            "vaccination_id": vaccination_id,
            "unit_id": "unit-1",
            "user_id": "nurse-1",
            "personnummer": PNR,
        },
    )
    log = await fatal_log(
        faulty(env, "groups", tmp_path), kafka.send_event(topics.started, start, key=PNR)
    )
    assert "an inbound batch ended without being applied (LookupError)" in log

    # Restarted (without the bug): the start is delivered again and answered.
    port = free_port()
    restarted = ServiceProcess(
        "services.groups",
        {**env, "GROUPS_HTTP_PORT": str(port)},
        port=port,
        log_path=tmp_path / "groups.log",
    )
    async with TopicCollector(infra.kafka_bootstrap, topics.prompts) as prompts:
        await asyncio.to_thread(restarted.start)
        try:
            found = await prompts.wait_for(
                lambda e: e["data"]["vaccination_id"] == vaccination_id, timeout=90
            )
        finally:
            restarted.stop()
    assert len(found) == 1


async def test_a_fatal_error_ends_the_export_process(
    infra: Infrastructure, database_url: str, kafka: KafkaTestClient, tmp_path: Path
) -> None:
    env, topics = stack(infra, database_url)
    log = await fatal_log(
        faulty(env, "export", tmp_path), kafka.send_raw(topics.events, TRIGGER, key=b"k")
    )
    assert "an export batch ended without being exported (LookupError)" in log
