from __future__ import annotations

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from services.common.settings import AppSettings
from services.common.telemetry import RedactingSpanProcessor, telemetry_middlewares


def test_span_attributes_lose_the_record_key_and_personnummer() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(RedactingSpanProcessor())
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span(
        "consume",
        attributes={
            "messaging.kafka.message.key": "191212121212",
            "messaging.destination.name": "vaccination.started.v1",
            "note": "patient 19121212-1212 seen",
        },
    ):
        pass
    (span,) = exporter.get_finished_spans()
    attributes = dict(span.attributes or {})
    assert attributes["messaging.kafka.message.key"] == "<redacted>"
    assert attributes["messaging.destination.name"] == "vaccination.started.v1"
    assert "1212" not in str(attributes["note"])


def test_tracing_is_off_without_an_endpoint() -> None:
    assert telemetry_middlewares(AppSettings(otel_exporter_otlp_endpoint=None), "svc") == []
    assert (
        len(
            telemetry_middlewares(
                AppSettings(otel_exporter_otlp_endpoint="http://127.0.0.1:4318"), "svc"
            )
        )
        == 1
    )
