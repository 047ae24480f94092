"""`python -m tests.reliability.slow_export`: the export service as `python -m
services.export` runs it, but with a slow producer on demand, for
`test_export_rebalance.py`.

On SIGUSR1 it arms: the next send to the broker, and every send for
`SLOW_EXPORT_HOLD_SECONDS` after it, waits until that time is up, and it logs
"holding sends" (stdout, so the service log). The process stays alive and in its
consumer group meanwhile, as a producer slowed by a struggling broker would.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from typing import Any

from aiokafka import AIOKafkaProducer

from services.common.logs import configure_logging
from services.export.bootstrap import ExportService, ExportSettingsBundle

HOLD_SECONDS = float(os.environ.get("SLOW_EXPORT_HOLD_SECONDS", "8"))
HOLDING = "holding sends"


class SlowedExport(ExportService):
    def __init__(self, settings: ExportSettingsBundle) -> None:
        super().__init__(settings)
        self._armed = False
        self._until = 0.0

    def _arm(self) -> None:
        self._armed = True

    async def prepare(self) -> None:
        await super().prepare()
        asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, self._arm)

    async def _new_producer(self) -> AIOKafkaProducer:
        producer = await super()._new_producer()
        send_batch = producer.send_batch

        async def held(batch: Any, topic: str, *, partition: int) -> Any:
            loop = asyncio.get_running_loop()
            if self._armed:
                self._armed = False
                self._until = loop.time() + HOLD_SECONDS
                print(f"{HOLDING} for {HOLD_SECONDS:.0f} s", flush=True)
            if loop.time() < self._until:
                await asyncio.sleep(self._until - loop.time())
            return await send_batch(batch, topic, partition=partition)

        producer.send_batch = held  # type: ignore[method-assign]
        return producer


def main() -> int:
    import uvicorn

    from services.export.entrypoints.app import build_app

    settings = ExportSettingsBundle()
    configure_logging(settings.app.log_level)
    uvicorn.run(
        build_app(SlowedExport(settings)),
        host=settings.export.http_host,
        port=settings.export.http_port,
        log_config=None,
        access_log=False,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
