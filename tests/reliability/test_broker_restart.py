"""Fault 2: the Kafka broker is stopped and started again mid-stream.

Both services keep running as they are (no restart of their own); afterwards nothing is
lost: the database equals the model, the events are exactly the expected set, both
consumer groups caught up, and the export topic's last value per key equals the records
built from the database. While the broker is down neither service may busy-loop (CPU
time of its own process, and log lines, over the outage), and both are back within
seconds of its return (issue 15).
"""

from __future__ import annotations

import asyncio
import time
from datetime import date
from typing import Any

from devinfra.provider import Infrastructure
from services.groups.domain.catalog import Catalog
from tests.reliability.checks import reconcile, zero_problem_figures
from tests.reliability.conftest import Check, Scale, require_local
from tests.reliability.exportcheck import compare_export
from tests.reliability.harness import (
    ServiceHandle,
    Stack,
    busy,
    caught_up,
    gate,
    send_inputs,
    settle,
)
from tests.reliability.model import ALLOWED_UNITS, StreamGenerator, StreamSpec, inputs_by_role

CPU_SHARE_LIMIT = 0.05  # of one core, per service, over the outage
LOG_LINES_PER_SECOND_LIMIT = 1.0  # per service, over the outage
RECOVERY_LIMIT_SECONDS = 10.0  # broker ready -> all applied, published and exported


def log_lines(service: ServiceHandle) -> int:
    return service.log_path.read_bytes().count(b"\n")


async def test_broker_restart_mid_stream(
    stack: Stack,
    infra: Infrastructure,
    scale: Scale,
    catalog: Catalog,
    today: date,
    check: Check,
) -> None:
    require_local(infra.kafka, "Kafka")
    kafka = infra.kafka
    assert kafka is not None
    spec = StreamSpec(
        seed=5002,
        customers=scale.broker_customers,
        inputs=scale.broker_inputs,
        waves=scale.broker_restarts + 2,
    )
    stream = StreamGenerator(spec, catalog, today).generate()
    total = len(stream.model.inbox)
    groups = await stack.start_groups({"GROUPS_ALLOWED_UNITS": ",".join(ALLOWED_UNITS)})
    export = await stack.start_export()
    pids = (groups.pid, export.pid)
    started = time.monotonic()

    outages: list[dict[str, Any]] = []
    for number, (wave, expected) in enumerate(
        zip(stream.waves, stream.inbox_after_wave, strict=True)
    ):
        await send_inputs(stack, wave)
        if 1 <= number <= scale.broker_restarts:
            await busy(stack)
            applied = await stack.inbox_count()
            stop_began = time.monotonic()
            await kafka.astop()
            stopped = time.monotonic()
            services = (groups, export)
            cpu = [s.cpu_seconds() for s in services]
            lines = [log_lines(s) for s in services]
            await asyncio.sleep(scale.broker_down_seconds)
            window = time.monotonic() - stopped
            cpu_share = [(s.cpu_seconds() - c) / window for s, c in zip(services, cpu, strict=True)]
            lines_per_second = [
                (log_lines(s) - n) / window for s, n in zip(services, lines, strict=True)
            ]
            await kafka.astart()
            back = time.monotonic()
            await gate(stack, expected)
            await settle(stack, expected)
            groups_back = time.monotonic() - back
            await caught_up(stack, stack.export_group, [stack.topics.events])
            export_back = time.monotonic() - back
            outages.append(
                {
                    "applied_when_stopped": applied,
                    "stop_s": round(stopped - stop_began, 1),
                    "down_s": round(back - stopped, 1),
                    "recovered_s": [round(groups_back, 1), round(export_back, 1)],
                    "cpu_share": [round(c, 3) for c in cpu_share],
                    "log_lines_per_second": [round(n, 2) for n in lines_per_second],
                }
            )
        else:
            await gate(stack, expected)

    await settle(stack, total)
    groups_lag = await caught_up(stack, stack.groups_group, stack.topics.inbound)
    export_lag = await caught_up(stack, stack.export_group, [stack.topics.events])
    elapsed = time.monotonic() - started
    reconciliation = await reconcile(stack, stream.model)
    exported = await compare_export(stack, stream.personnummer)
    zero = zero_problem_figures(reconciliation)
    figures = reconciliation.figures
    check.record(
        "broker_restart",
        "2. Kafka broker stopped and started mid-stream",
        summary=exported.summary(
            inputs=len(stream.inputs),
            faults=len(outages),
            zero=zero,
            lag=[*groups_lag.values(), *export_lag.values()],
        ),
        inputs_by_topic=inputs_by_role(stream.inputs),
        broker_outages=[
            f"stopped at {o['applied_when_stopped']}/{total} applied, "
            f"down {o['down_s']} s, all applied and published {o['recovered_s'][0]} s and "
            f"all exported {o['recovered_s'][1]} s after start"
            for o in outages
        ],
        cpu_share_of_one_core_while_down_groups_export=[o["cpu_share"] for o in outages],
        log_lines_per_second_while_down_groups_export=[o["log_lines_per_second"] for o in outages],
        service_restarts=groups.starts + export.starts - 2,
        events_resent_copies=figures["events_resent_copies"],
        export_keys_compared=exported.keys_expected,
        export_keys_stale=len(exported.different),
        wall_seconds=round(elapsed, 1),
    )

    assert reconciliation.problems == [], "\n".join(reconciliation.problems)
    assert not any(zero.values()), zero
    exported.assert_equivalent()
    assert exported.personnummer_found == 0
    assert len(outages) == scale.broker_restarts >= 1
    for outage in outages:
        assert max(outage["cpu_share"]) < CPU_SHARE_LIMIT, ("busy while down", outage)
        assert max(outage["log_lines_per_second"]) < LOG_LINES_PER_SECOND_LIMIT, (
            "a log line per attempt while down",
            outage,
        )
        assert max(outage["recovered_s"]) <= RECOVERY_LIMIT_SECONDS, ("slow to recover", outage)
    assert groups.running() and export.running(), "the services are still up"
    assert (groups.pid, export.pid) == pids and groups.starts == export.starts == 1
