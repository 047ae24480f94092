"""Prometheus metrics of the groups service (served at /metrics)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from services.common.metrics import consumer_lag_gauge, service_registry

# Fine where BENCHMARKS.md measures prompt latency (issue 17's targets are 5, 15 and 40
# ms), coarse up to an outage's minutes.
PROMPT_LATENCY_BUCKETS = (
    0.005,
    0.01,
    0.015,
    0.025,
    0.04,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
    300,
)


class GroupsMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or service_registry("groups")
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
        self.backlog_rows = Gauge(
            "groups_outbox_backlog_rows",
            "Outbox rows waiting to be published (read when scraped; NaN: no answer in time)",
            registry=r,
        )
        self.oldest_age = Gauge(
            "groups_outbox_oldest_age_seconds",
            "Age of the outbox row next in line, 0 when the outbox is empty (read when "
            "scraped; NaN: no answer in time)",
            registry=r,
        )
        self.dead_letters_pending = Gauge(
            "groups_dead_letters_pending_rows",
            "Dead letters not replayed (read when scraped; NaN: no answer in time)",
            registry=r,
        )
        self.consumer_lag = consumer_lag_gauge("groups", r)
        self.prompt_latency = Histogram(
            "groups_prompt_latency_seconds",
            "From a vaccination start received by the service to its prompt committed on "
            "the prompts topic (observed by the relay that published it)",
            registry=r,
            buckets=PROMPT_LATENCY_BUCKETS,
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
