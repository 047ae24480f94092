"""HTTP routes of the groups process: health, metrics, the catalog and the nurse's read
views.

Patient-data routes need `Authorization: Bearer <access token>`; the user and unit
come from the token, never from the request, and every answer is written to the PDL
audit log with them. The personnummer travels in a POST body, never in a URL, so it
cannot end up in access logs.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from services.common.asgi import ASGIApp, Request, Response, livez, readiness, route
from services.common.metrics import observe_consumer_lag
from services.common.serving import running_consumers
from services.groups.adapters import outbox_parking
from services.groups.adapters.access_tokens import Identity, InvalidToken
from services.groups.adapters.backlog import read_backlog
from services.groups.bootstrap import GroupsService
from services.groups.domain.errors import DomainError, Unauthorized
from services.groups.domain.personnummer import Personnummer
from services.groups.entrypoints.openapi import openapi_document
from services.groups.service_layer import messages, views

log = logging.getLogger(__name__)

# Routes that answer with a patient's data: token required, allowlist applied, audited.
PATIENT_DATA_ROUTES = ("/customer-card", "/booking", "/prompt")
# A stored prompt is the CloudEvent the topic got, served in the CloudEvents HTTP
# binding's structured mode, so any CloudEvents SDK reads it as it reads the record.
CLOUDEVENT_JSON = "application/cloudevents+json; charset=UTF-8"
MAX_ID_CHARS = 128  # ids in messages (schemas/common.schema.json#/$defs/id)

PatientHandler = Callable[[Request, Identity], Awaitable[Response]]


def bearer_token(headers: dict[str, str]) -> str | None:
    """The token of an `Authorization: Bearer <token>` header (scheme case-insensitive)."""
    scheme, _, token = headers.get("authorization", "").strip().partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def unauthorized(reason: str | None) -> Response:
    """401 with the RFC 6750 challenge: no error code when no token came, else
    `invalid_token` and why (a fixed phrase, never the token's content)."""
    if reason is None:
        return Response.json(
            401, {"error": "bearer token required"}, headers=(("WWW-Authenticate", "Bearer"),)
        )
    description = re.sub(r"[^A-Za-z0-9 _.-]", "", reason)[:100]
    challenge = f'Bearer error="invalid_token", error_description="{description}"'
    return Response.json(
        401,
        {"error": "invalid_token", "error_description": description},
        headers=(("WWW-Authenticate", challenge),),
    )


def build_routes(service: GroupsService) -> list[tuple[str, ASGIApp]]:
    def patient_data(
        path: str, handler: PatientHandler
    ) -> Callable[[Request], Awaitable[Response]]:
        async def guarded(request: Request) -> Response:
            token = bearer_token(request.headers)
            if token is None:
                return unauthorized(None)
            if service.access_tokens is None:
                return unauthorized("no identity provider configured")
            try:
                identity = await service.access_tokens.verify(token)
            except InvalidToken as error:
                log.info("%s refused: %s", path, error)
                return unauthorized(str(error))
            try:
                service.authorization.check(identity.unit_id)
            except Unauthorized:
                async with service.new_uow() as uow:
                    await views.access_refused(
                        uow, user_id=identity.user_id, unit_id=identity.unit_id, route=path
                    )
                    await uow.commit()
                return Response.json(403, {"error": "the unit may not read patient data"})
            return await handler(request, identity)

        return guarded

    async def parked_rows() -> int | None:
        try:
            async with service.engine.connect() as connection:
                return await outbox_parking.count_parked(connection)
        except Exception:  # the database check says why
            return None

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
        # Details for the operator, not the status: a parked row waits for `outbox retry`
        # while everything else flows; a refused topic is an alert of its own (metrics).
        outbox = {
            "relay": service.relay.state(),
            "parked_rows": await parked_rows(),
            "alert": service.relay.alert,
        }
        return Response.json(
            200 if healthy else 503,
            {"status": "ok" if healthy else "degraded", "checks": checks, "outbox": outbox},
        )

    async def readyz(_request: Request) -> Response:
        # `started`: topics, schema and catalog in place, background tasks running.
        return readiness(
            {
                "started": service.ready,
                "consumer": bool(running_consumers(service.broker)),
                "inbound": service.pipeline.failure is None,
            }
        )

    async def metrics(_request: Request) -> Response:
        m = service.metrics
        m.relay_leader.set(1 if service.relay.is_leader else 0)
        backlog = await read_backlog(service.engine)
        nan = float("nan")
        m.backlog_rows.set(backlog.outbox_rows if backlog else nan)
        m.oldest_age.set(backlog.oldest_age_seconds if backlog else nan)
        m.parked_rows.set(backlog.parked_rows if backlog else nan)
        m.dead_letters_pending.set(backlog.dead_letters_pending if backlog else nan)
        await observe_consumer_lag(m.consumer_lag, running_consumers(service.broker))
        return Response(200, generate_latest(m.registry), CONTENT_TYPE_LATEST)

    document = openapi_document()

    async def openapi(_request: Request) -> Response:
        return Response.json(200, document)

    async def catalog(_request: Request) -> Response:
        # The catalog in force (reloaded from the tables), no patient data: no token.
        return Response.json(200, messages.catalog_document(service.catalog.current))

    async def customer_card(request: Request, identity: Identity) -> Response:
        try:
            payload = request.json()
        except ValueError:
            return Response.json(400, {"error": "body must be JSON"})
        if not isinstance(payload, dict) or not isinstance(payload.get("personnummer"), str):
            return Response.json(400, {"error": "personnummer is required"})
        try:
            personnummer = Personnummer.parse(payload["personnummer"])
        except DomainError as error:
            return Response.json(422, {"reason_code": error.reason_code, "message": str(error)})
        async with service.new_uow() as uow:
            card = await views.customer_card(
                uow,
                service.catalog.current,
                personnummer,
                user_id=identity.user_id,
                unit_id=identity.unit_id,
            )
            await uow.commit()
        return Response.json(200, card)

    async def booking(request: Request, identity: Identity) -> Response:
        booking_id = request.query.get("booking_id")
        if not booking_id:
            return Response.json(400, {"error": "booking_id is required"})
        async with service.new_uow() as uow:
            card = await views.booking_card(
                uow,
                service.catalog.current,
                booking_id[:128],
                user_id=identity.user_id,
                unit_id=identity.unit_id,
            )
            await uow.commit()
        if card is None:
            return Response.json(404, {"error": "booking not found"})
        return Response.json(200, card)

    async def prompt(request: Request, identity: Identity) -> Response:
        vaccination_id = request.query.get("vaccination_id")
        if not vaccination_id:
            return Response.json(400, {"error": "vaccination_id is required"})
        event = None
        if len(vaccination_id) <= MAX_ID_CHARS:  # a longer one was never a vaccination's
            async with service.new_uow() as uow:
                event = await views.stored_prompt(
                    uow, vaccination_id, user_id=identity.user_id, unit_id=identity.unit_id
                )
                await uow.commit()
        if event is None:
            return Response.json(404, {"error": "no prompt for this vaccination at your unit"})
        return Response(200, event, CLOUDEVENT_JSON)

    return [
        ("/livez", route(livez)),
        ("/healthz", route(healthz)),
        ("/readyz", route(readyz)),
        ("/metrics", route(metrics)),
        ("/openapi.json", route(openapi)),
        ("/catalog", route(catalog)),
        (
            "/customer-card",
            route(patient_data("/customer-card", customer_card), methods=("POST",)),
        ),
        ("/booking", route(patient_data("/booking", booking))),
        ("/prompt", route(patient_data("/prompt", prompt))),
    ]
