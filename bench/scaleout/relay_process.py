"""One outbox relay alone, in a process of its own (started by `bench.scaleout.relay`).

    python -m bench.scaleout.relay_process [--batch-size N]

It reads a groups service's settings from the environment, as a service process does,
and runs the relay the service wires (`GroupsService.relay`); with `--batch-size`, one
built with the same arguments but that round size. Only the relay's public interface is
used: `start`, `wake`, `stop`, `state`.

Protocol: prints `ready` once built (imports and wiring are not measured), then obeys
the lines it reads: `start` starts the relay, `wake` wakes it. Once started it prints
`published N` whenever the count of rows published and deleted (the service's own
`groups_outbox_published_total`) changes, checked every 20 ms, so that the benchmark
needs no query of its own to follow it. At the end of its input it stops the relay,
prints `{"state": ...}` and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from services.groups.adapters.outbox_relay import OutboxRelay
from services.groups.bootstrap import GroupsService


def build(service: GroupsService, batch_size: int | None) -> OutboxRelay:
    if batch_size is None:
        return service.relay
    settings = service.settings
    # The arguments bootstrap passes, and the round size under test.
    return OutboxRelay(
        service.engine,
        service._new_relay_producer,
        lease_seconds=settings.groups.relay_lease_seconds,
        metrics=service.metrics,
        prompts_topic=settings.topics.prompts,
        batch_size=batch_size,
    )


def published(service: GroupsService) -> int:
    return int(
        sum(
            sample.value
            for family in service.metrics.published.collect()
            for sample in family.samples
            if sample.name.endswith("_total")
        )
    )


async def report(service: GroupsService) -> None:
    last = -1
    while True:
        count = published(service)
        if count != last:
            print(f"published {count}", flush=True)
            last = count
        await asyncio.sleep(0.02)


async def serve(batch_size: int | None) -> None:
    service = GroupsService()
    relay = build(service, batch_size)
    loop = asyncio.get_running_loop()
    print("ready", flush=True)
    reporter: asyncio.Task[None] | None = None
    try:
        while line := await loop.run_in_executor(None, sys.stdin.readline):
            command = line.strip()
            if command == "start" and reporter is None:
                relay.start()
                reporter = asyncio.create_task(report(service))
            elif command == "wake":
                relay.wake()
        print(json.dumps({"state": relay.state()}), flush=True)
    finally:
        if reporter is not None:
            reporter.cancel()
            await relay.stop()
        await service.engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.scaleout.relay_process")
    parser.add_argument("--batch-size", type=int, default=None)
    asyncio.run(serve(parser.parse_args().batch_size))


if __name__ == "__main__":
    main()
