"""The groups process: FastStream consumer + outbox relay + HTTP routes in one ASGI app."""

from __future__ import annotations

from faststream.asgi import AsgiFastStream

from services.common.asgi import service_app
from services.common.gc_tuning import settle_after_start
from services.groups.bootstrap import GroupsService
from services.groups.entrypoints.consumer import register_consumer
from services.groups.entrypoints.http import build_routes


def build_app(service: GroupsService | None = None) -> AsgiFastStream:
    service = service or GroupsService()
    register_consumer(service.broker, service)
    return service_app(
        service.broker,
        build_routes(service),
        settings=service.settings,
        on_startup=[service.prepare],
        after_startup=[service.start_background, settle_after_start],
        # Before the broker closes its consumer: batches in flight finish and their
        # offsets still commit.
        on_shutdown=[service.offset_commits.stop],
        after_shutdown=[service.stop],
    )
