"""Health and metrics of the export process."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from services.common.asgi import ASGIApp, Request, Response, route
from services.export.bootstrap import ExportService


def build_routes(service: ExportService) -> list[tuple[str, ASGIApp]]:
    async def healthz(_request: Request) -> Response:
        broker_ok = await service.broker.ping(timeout=2.0)
        status = {
            "status": "ok" if broker_ok else "degraded",
            "checks": {"broker": "ok" if broker_ok else "down"},
        }
        return Response.json(200 if broker_ok else 503, status)

    async def readyz(_request: Request) -> Response:
        return Response.json(200 if service.ready else 503, {"ready": service.ready})

    async def metrics(_request: Request) -> Response:
        return Response(200, generate_latest(service.metrics.registry), CONTENT_TYPE_LATEST)

    return [("/healthz", route(healthz)), ("/readyz", route(readyz)), ("/metrics", route(metrics))]
