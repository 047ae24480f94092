"""OpenTelemetry tracing through FastStream's Kafka middleware, on when an OTLP endpoint
is configured (OTEL_EXPORTER_OTLP_ENDPOINT).

The record key is the personnummer, and FastStream records the key as a span
attribute; a span processor blanks it (and masks any personnummer-like value) before a
span can be exported.
"""

from __future__ import annotations

from typing import Any

from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.semconv.trace import SpanAttributes

from services.common.logs import redact_personnummer
from services.common.settings import AppSettings

_KEY_ATTRIBUTES = (SpanAttributes.MESSAGING_KAFKA_MESSAGE_KEY, "messaging.kafka.message.key")


class RedactingSpanProcessor(SpanProcessor):
    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        attributes = dict(span.attributes or {})
        for name in _KEY_ATTRIBUTES:
            if name in attributes:
                span.set_attribute(name, "<redacted>")
        for name, value in attributes.items():
            if isinstance(value, str) and name not in _KEY_ATTRIBUTES:
                cleaned = redact_personnummer(value)
                if cleaned != value:
                    span.set_attribute(name, cleaned)


def telemetry_middlewares(settings: AppSettings, service_name: str) -> list[Any]:
    """FastStream broker middlewares: tracing when an endpoint is set, else none."""
    if not settings.otel_exporter_otlp_endpoint:
        return []
    from faststream.kafka.opentelemetry import KafkaTelemetryMiddleware
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    provider.add_span_processor(RedactingSpanProcessor())
    endpoint = settings.otel_exporter_otlp_endpoint.rstrip("/") + "/v1/traces"
    provider.add_span_processor(
        BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint), schedule_delay_millis=1000)
    )
    return [KafkaTelemetryMiddleware(tracer_provider=provider)]
