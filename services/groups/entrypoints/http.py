"""HTTP routes of the groups process: health, metrics and the nurse's read views.

The personnummer travels in a POST body, never in a URL, so it cannot end up in
access logs. Every read names the user and unit (PDL audit).
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from services.common.asgi import ASGIApp, Request, Response, route
from services.groups.bootstrap import GroupsService
from services.groups.domain.errors import DomainError
from services.groups.domain.personnummer import Personnummer
from services.groups.service_layer import views


def _actor(payload: dict[str, object]) -> tuple[str, str] | None:
    user_id, unit_id = payload.get("user_id"), payload.get("unit_id")
    if isinstance(user_id, str) and user_id and isinstance(unit_id, str) and unit_id:
        return user_id[:128], unit_id[:128]
    return None


def build_routes(service: GroupsService) -> list[tuple[str, ASGIApp]]:
    async def healthz(_request: Request) -> Response:
        checks: dict[str, str] = {}
        try:
            async with service.engine.connect() as connection:
                await connection.execute(text("SELECT 1"))
            checks["database"] = "ok"
        except Exception as error:
            checks["database"] = f"down: {type(error).__name__}"
        checks["broker"] = "ok" if await service.broker.ping(timeout=2.0) else "down"
        failure = service.pipeline.failure
        checks["inbound"] = "ok" if failure is None else f"stopped: {type(failure).__name__}"
        healthy = all(v == "ok" for v in checks.values())
        return Response.json(
            200 if healthy else 503, {"status": "ok" if healthy else "degraded", "checks": checks}
        )

    async def readyz(_request: Request) -> Response:
        return Response.json(200 if service.ready else 503, {"ready": service.ready})

    async def metrics(_request: Request) -> Response:
        service.metrics.relay_leader.set(1 if service.relay.is_leader else 0)
        return Response(200, generate_latest(service.metrics.registry), CONTENT_TYPE_LATEST)

    async def customer_card(request: Request) -> Response:
        try:
            payload = request.json()
        except ValueError:
            return Response.json(400, {"error": "body must be JSON"})
        if not isinstance(payload, dict) or (actor := _actor(payload)) is None:
            return Response.json(400, {"error": "personnummer, user_id and unit_id are required"})
        try:
            personnummer = Personnummer.parse(str(payload.get("personnummer", "")))
        except DomainError as error:
            return Response.json(422, {"reason_code": error.reason_code, "message": str(error)})
        async with service.new_uow() as uow:
            card = await views.customer_card(
                uow, service.catalog.current, personnummer, user_id=actor[0], unit_id=actor[1]
            )
            await uow.commit()
        return Response.json(200, card)

    async def booking(request: Request) -> Response:
        actor = _actor(dict(request.query))
        booking_id = request.query.get("booking_id")
        if not booking_id or actor is None:
            return Response.json(400, {"error": "booking_id, user_id and unit_id are required"})
        async with service.new_uow() as uow:
            card = await views.booking_card(
                uow, service.catalog.current, booking_id[:128], user_id=actor[0], unit_id=actor[1]
            )
            await uow.commit()
        if card is None:
            return Response.json(404, {"error": "booking not found"})
        return Response.json(200, card)

    return [
        ("/healthz", route(healthz)),
        ("/readyz", route(readyz)),
        ("/metrics", route(metrics)),
        ("/customer-card", route(customer_card, methods=("POST",))),
        ("/booking", route(booking)),
    ]
