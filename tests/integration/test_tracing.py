"""Tracing: with an OTLP endpoint configured, spans reach it, without any personnummer."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from services.common.settings import AppSettings
from services.groups.bootstrap import GroupsSettingsBundle
from tests.integration.conftest import running_groups_service
from tests.kafka_tools import KafkaTestClient, cloudevent

PNR = "191212121212"


class Collector(ThreadingHTTPServer):
    bodies: list[bytes]


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        length = int(self.headers.get("content-length", "0"))
        self.server.bodies.append(self.rfile.read(length))  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.end_headers()

    def log_message(self, *_args: object) -> None:
        pass


@pytest.fixture
def otlp_collector() -> Iterator[Collector]:
    server = Collector(("127.0.0.1", 0), _Handler)
    server.bodies = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()


async def test_spans_are_exported_without_personnummer(
    groups_settings: GroupsSettingsBundle, kafka: KafkaTestClient, otlp_collector: Collector
) -> None:
    host, port = otlp_collector.server_address[:2]
    groups_settings.app = AppSettings(
        app_env="test", otel_exporter_otlp_endpoint=f"http://{host!s}:{port}"
    )
    async with running_groups_service(groups_settings) as service:
        booking = cloudevent(
            "booking.created",
            {
                "booking_id": "b-trace",
                "unit_id": "u",
                "start_time": "2026-11-26T10:00:00Z",
                "customer": {"personnummer": PNR},
            },
        )
        await kafka.send_event(service.settings.topics.bookings, booking, key=PNR)
        for _ in range(100):
            if otlp_collector.bodies:
                break
            await asyncio.sleep(0.1)
    assert otlp_collector.bodies, "no spans reached the OTLP endpoint"
    payload = b"".join(otlp_collector.bodies)
    assert service.settings.topics.bookings.encode() in payload
    assert PNR.encode() not in payload
    assert PNR[2:].encode() not in payload
