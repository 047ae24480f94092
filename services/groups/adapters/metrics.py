"""Prometheus metrics of the groups service (served at /metrics)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class GroupsMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.records = Counter(
            "groups_records_total", "Inbound records by outcome", ["outcome"], registry=r
        )
        self.batches = Histogram(
            "groups_batch_seconds",
            "Time to apply a batch, from its first transaction to its last commit",
            registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.batch_retries = Counter(
            "groups_batch_retries_total",
            "Batch transactions retried after an error",
            ["error"],
            registry=r,
        )
        self.published = Counter(
            "groups_outbox_published_total", "Outbox records published to Kafka", registry=r
        )
        self.relay_leader = Gauge(
            "groups_outbox_relay_leader", "1 when this process's relay is publishing", registry=r
        )
        self.retired = Counter(
            "groups_memberships_retired_total",
            "Active memberships the retirement sweep ended because the catalog ended their group",
            registry=r,
        )
        self.relay_retries = Counter(
            "groups_outbox_relay_retries_total",
            "Outbox relay rounds that failed and were retried after a backoff",
            ["error"],
            registry=r,
        )
        self.parked = Counter(
            "groups_outbox_parked_total",
            "Outbox rows parked: refused by the broker for good (too large, invalid)",
            registry=r,
        )
        self.parked_rows = Gauge(
            "groups_outbox_parked_rows", "Outbox rows parked now (read when scraped)", registry=r
        )
        self.topic_refusals = Counter(
            "groups_outbox_topic_refusals_total",
            "Outbox relay rounds refused for a topic (authorization, unknown topic): alert",
            ["topic", "error"],
            registry=r,
        )
        self.pruned = Counter(
            "groups_retention_pruned_rows_total",
            "Rows deleted by the retention pruner, per table, for being older than its retention",
            ["table"],
            registry=r,
        )
        self.prune_retries = Counter(
            "groups_retention_prune_retries_total",
            "Retention pruning passes that failed and were retried after a backoff",
            ["error"],
            registry=r,
        )
