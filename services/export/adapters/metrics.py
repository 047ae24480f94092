"""Prometheus metrics of the export service (served at /metrics)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

from services.common.metrics import consumer_lag_gauge, service_registry


class ExportMetrics:
    def __init__(self) -> None:
        self.registry = service_registry("export")
        r = self.registry
        self.records = Counter(
            "export_records_total", "Export records published, by type", ["type"], registry=r
        )
        self.dead_letters = Counter(
            "export_dead_letters_total", "Events dead-lettered by the export", registry=r
        )
        self.retries = Counter(
            "export_batch_retries_total", "Batches retried after a broker error", registry=r
        )
        self.batches = Histogram(
            "export_batch_seconds",
            "Time from batch received to all records acknowledged",
            registry=r,
        )
        self.consumer_lag = consumer_lag_gauge("export", r)
