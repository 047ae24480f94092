"""Health and metrics of the export process."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from services.common.asgi import ASGIApp, Request, Response, livez, readiness, route
from services.common.metrics import observe_consumer_lag
from services.common.serving import running_consumers
from services.export.bootstrap import ExportService


def build_routes(service: ExportService) -> list[tuple[str, ASGIApp]]:
    async def healthz(_request: Request) -> Response:
        checks = {"broker": "ok" if await service.broker.ping(timeout=2.0) else "down"}
        failure = service.failure
        checks["inbound"] = "ok" if failure is None else f"stopped: {type(failure).__name__}"
        healthy = all(v == "ok" for v in checks.values())
        status = {"status": "ok" if healthy else "degraded", "checks": checks}
        return Response.json(200 if healthy else 503, status)

    async def readyz(_request: Request) -> Response:
        # `started`: the topics exist.
        return readiness(
            {
                "started": service.ready,
                "consumer": bool(running_consumers(service.broker)),
                "inbound": service.failure is None,
            }
        )

    async def metrics(_request: Request) -> Response:
        m = service.metrics
        await observe_consumer_lag(m.consumer_lag, running_consumers(service.broker))
        return Response(200, generate_latest(m.registry), CONTENT_TYPE_LATEST)

    return [
        ("/livez", route(livez)),
        ("/healthz", route(healthz)),
        ("/readyz", route(readyz)),
        ("/metrics", route(metrics)),
    ]
