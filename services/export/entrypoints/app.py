"""The export process: FastStream consumer + HTTP routes in one ASGI app."""

from __future__ import annotations

from faststream.asgi import AsgiFastStream

from services.common.asgi import service_app
from services.common.gc_tuning import settle_after_start
from services.export.bootstrap import ExportService
from services.export.entrypoints.consumer import register_consumer
from services.export.entrypoints.http import build_routes


def build_app(service: ExportService | None = None) -> AsgiFastStream:
    service = service or ExportService()
    register_consumer(service.broker, service)
    return service_app(
        service.broker,
        build_routes(service),
        settings=service.settings,
        on_startup=[service.prepare],
        after_startup=[service.mark_ready, settle_after_start],
        # Before the broker closes its consumer (and leaves the group): the batch in
        # flight settles and the last applied offsets still commit.
        on_shutdown=[service.offset_commits.stop],
        after_shutdown=[service.stop],
    )
