"""Tiny JSON-over-ASGI helpers for the services' operational and read routes."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from faststream.asgi import AsgiFastStream
from faststream.kafka import KafkaBroker

from services.common.asyncapi import for_deployment, render_yaml
from services.common.asyncapi_page import render_html
from services.common.settings import ServiceSettings

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

MAX_BODY_BYTES = 64 * 1024


@dataclass(frozen=True)
class Request:
    method: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body or b"null")


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()  # beyond content-type, e.g. WWW-Authenticate

    @classmethod
    def json(
        cls, status: int, payload: Any, *, headers: tuple[tuple[str, str], ...] = ()
    ) -> Response:
        body = json.dumps(payload, ensure_ascii=False, default=str).encode()
        return cls(status, body, headers=headers)


class BodyTooLarge(Exception):
    pass


async def _read_body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise BodyTooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def route(
    handler: Callable[[Request], Awaitable[Response]], *, methods: tuple[str, ...] = ("GET",)
) -> ASGIApp:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] not in methods:
            response = Response.json(405, {"error": "method not allowed"})
        else:
            try:
                body = await _read_body(receive)
            except BodyTooLarge:
                response = Response.json(413, {"error": "request body too large"})
            else:
                query = {
                    k: v[0] for k, v in parse_qs(scope.get("query_string", b"").decode()).items()
                }
                headers = {k.decode().lower(): v.decode() for k, v in scope.get("headers", [])}
                response = await handler(Request(scope["method"], query, headers, body))
        await send(
            {
                "type": "http.response.start",
                "status": response.status,
                "headers": [
                    (b"content-type", response.content_type.encode()),
                    *((k.lower().encode(), v.encode()) for k, v in response.headers),
                ],
            }
        )
        await send({"type": "http.response.body", "body": response.body})

    return app


def _constant(response: Response) -> ASGIApp:
    async def handler(_request: Request) -> Response:
        return response

    return route(handler)


def asyncapi_routes(settings: ServiceSettings) -> list[tuple[str, ASGIApp]]:
    """The contract's AsyncAPI document (`services.common.asyncapi`) with this deployment's
    topics, as JSON, YAML and a page that loads nothing from elsewhere (it works on a
    closed network). They replace FastStream's document, which knew only the consumers
    (no payloads, no outgoing topics), and its page, which loaded its script from a CDN."""
    document = for_deployment(settings.topics, settings.kafka)
    page = Response(
        200,
        render_html(document).encode(),
        "text/html; charset=utf-8",
        headers=(("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'"),),
    )
    return [
        ("/asyncapi.json", _constant(Response.json(200, document))),
        ("/asyncapi.yaml", _constant(Response(200, render_yaml(document).encode(), _YAML))),
        ("/asyncapi", _constant(page)),
    ]


_YAML = "application/yaml; charset=utf-8"


async def livez(_request: Request) -> Response:
    """Liveness: answering at all shows the event loop runs. Nothing else is checked
    here (a database or broker outage is no reason to restart the process); /readyz
    says whether it can serve."""
    return Response.json(200, {"live": True})


def readiness(checks: dict[str, bool]) -> Response:
    """/readyz: 200 when every check holds, else 503 naming them."""
    ready = all(checks.values())
    return Response.json(200 if ready else 503, {"ready": ready, "checks": checks})


Hook = Callable[[], Awaitable[None]]


def service_app(
    broker: KafkaBroker,
    routes: Sequence[tuple[str, ASGIApp]],
    *,
    settings: ServiceSettings,
    on_startup: Sequence[Hook],
    after_startup: Sequence[Hook],
    on_shutdown: Sequence[Hook],
    after_shutdown: Sequence[Hook],
) -> AsgiFastStream:
    """A service process: its consumer and its HTTP routes in one ASGI app, with the
    contract's AsyncAPI document (see `asyncapi_routes`)."""
    return AsgiFastStream(
        broker,
        asgi_routes=[*routes, *asyncapi_routes(settings)],
        asyncapi_path=None,
        logger=logging.getLogger("services.faststream.app"),
        on_startup=list(on_startup),
        after_startup=list(after_startup),
        on_shutdown=list(on_shutdown),
        after_shutdown=list(after_shutdown),
    )
