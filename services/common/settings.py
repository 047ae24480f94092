"""Configuration from the environment (pydantic-settings).

Every variable is documented in the README; `docker-compose.yml` wires the same names.
Any of them may also come from a file named like the variable in the directory
`SETTINGS_SECRETS_DIR` (a Kubernetes secret mounted there, say: `deploy/`); a variable
set in the environment wins over its file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

SECRETS_DIR_VARIABLE = "SETTINGS_SECRETS_DIR"


class EnvSettings(BaseSettings):
    """Settings from the environment, then from the files in `SETTINGS_SECRETS_DIR` (so
    secrets need not be environment variables, which child processes and crash dumps
    inherit)."""

    def __init__(self, **values: Any) -> None:
        directory = os.environ.get(SECRETS_DIR_VARIABLE)
        if directory and "_secrets_dir" not in values:
            values["_secrets_dir"] = directory
        super().__init__(**values)


class TopicSettings(EnvSettings):
    """Topic names; the defaults are the contract's."""

    model_config = SettingsConfigDict(env_prefix="TOPIC_", extra="ignore")

    bookings: str = "vaccination.bookings.v1"
    started: str = "vaccination.started.v1"
    registered: str = "vaccination.registered.v1"
    commands: str = "customer-groups.commands.v1"
    prompts: str = "customer-groups.prompts.v1"
    events: str = "customer-groups.events.v1"
    export: str = "customer-groups.export.v1"
    dlq: str = "customer-groups.dlq.v1"
    catalog: str = "customer-groups.catalog.v1"

    @property
    def inbound(self) -> tuple[str, ...]:
        return (self.bookings, self.started, self.registered, self.commands)


class KafkaSettings(EnvSettings):
    """Broker connection. SASL/SSL are optional; secrets are never logged."""

    model_config = SettingsConfigDict(env_prefix="KAFKA_", extra="ignore")

    bootstrap_servers: str = "127.0.0.1:9092"
    security_protocol: str = "PLAINTEXT"  # PLAINTEXT | SSL | SASL_PLAINTEXT | SASL_SSL
    sasl_mechanism: str | None = None  # PLAIN | SCRAM-SHA-256 | SCRAM-SHA-512
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    inbound_partitions: int = Field(default=6, ge=3)
    replication_factor: int = Field(default=1, ge=1)
    max_message_bytes: int = 1_048_576
    # What the broker gathers for a consumer's fetch before it answers (or the fetch wait
    # passes). 1: a lone record at once; batches grow under load anyway, from what gathers
    # while earlier ones are applied (BENCHMARKS.md, issue 17; fix 17 had 3 KiB).
    fetch_min_bytes: int = Field(default=1, ge=1)
    # Retention (`retention.ms`) of the topics the service creates that hold personnummer
    # (README, "Retention"). The inbox must outlive what the inbound topics keep
    # (`inbox_problems`).
    inbound_retention_days: int = Field(default=7, ge=1)
    prompts_retention_days: int = Field(default=7, ge=1)
    events_retention_days: int = Field(default=14, ge=1)
    dlq_retention_days: int = Field(default=30, ge=1)


class DatabaseSettings(EnvSettings):
    model_config = SettingsConfigDict(extra="ignore")

    # postgresql+asyncpg://user:password@host:port/db ; add ?ssl=require for TLS
    database_url: str = "postgresql+asyncpg://postgres@127.0.0.1:5432/customer_groups"
    # Per process: inbound parts in flight (up to 3 per batch), the relay, the audit
    # sealer, the retention pruner now and then, HTTP reads.
    database_pool_size: int = 10
    # Only the `migrate` step uses it (DDL, grants); the service runs as DATABASE_URL.
    database_migration_url: str | None = None
    # The role DATABASE_URL logs in as: `migrate` grants it the DML it needs, and only
    # INSERT and SELECT on the audit tables. Unset: no grants (one role, as in dev).
    database_service_role: str | None = Field(default=None, pattern=r"^[a-z_][a-z0-9_]{0,62}$")

    @property
    def migration_url(self) -> str:
        return self.database_migration_url or self.database_url


# The contract's idempotency window: a repeated id is recognised for at least this long.
IDEMPOTENCY_WINDOW_MIN = timedelta(days=7)
# `segment.ms` of the topics created with a retention: the broker deletes a whole segment
# once its newest record is past the retention, so a record outlives its retention by up
# to one segment's span, plus the broker's retention check (5 minutes by default).
TOPIC_SEGMENT = timedelta(days=1)
RETENTION_CHECK_MARGIN = timedelta(hours=1)


def record_lifetime(retention: timedelta, segment: timedelta) -> timedelta:
    """The longest a record stays on a topic with this `retention.ms` and `segment.ms`."""
    return retention + segment + RETENTION_CHECK_MARGIN


def inbound_record_lifetime(kafka: KafkaSettings) -> timedelta:
    """The longest an inbound record stays on the topics the service creates, i.e. how
    late a redelivery (a consumer group re-reading from the start) can come."""
    return record_lifetime(timedelta(days=kafka.inbound_retention_days), TOPIC_SEGMENT)


def relay_transactional_id(consumer_group: str) -> str:
    """The outbox relay's default `transactional.id` (the ACLs name it too)."""
    return f"{consumer_group}-outbox-relay"


class GroupsSettings(EnvSettings):
    """The groups service."""

    model_config = SettingsConfigDict(env_prefix="GROUPS_", extra="ignore")

    consumer_group: str = "customer-groups"
    http_host: str = "127.0.0.1"
    http_port: int = 8080
    # Comma-separated unit ids allowed to send commands; empty = open (dev only).
    allowed_units: str = ""
    catalog_file: str | None = None  # default: the catalog shipped with the service
    timezone: str = "Europe/Stockholm"
    # Inbound batches applied at once (one database connection each); 1 = strictly serial.
    batches_in_flight: int = Field(default=2, ge=1, le=8)
    # The retirement sweep also runs on start, on a new catalog and on a new day.
    retirement_sweep_seconds: float = Field(default=3600.0, gt=0)
    # The outbox relay's Kafka transactional.id: one per deployment, the same in every
    # process (a new leader fences the old one by it); default: derived from the group.
    relay_transactional_id: str | None = Field(default=None, min_length=1, max_length=200)
    # How long the relay's leader keeps its lease without progress before a standby
    # process takes over.
    relay_lease_seconds: float = Field(default=10.0, ge=1.0, le=300.0)
    # Retention of the tables pruned by age (README, "Retention"). The inbox is the
    # idempotency window: at least the contract's 7 days and longer than an inbound record
    # can stay on its topic (`inbox_problems`).
    inbox_retention_days: int = Field(default=15, ge=1)
    dead_letter_retention_days: int = Field(default=30, ge=1)
    parked_retention_days: int = Field(default=30, ge=1)
    # Pruning: a pass every interval in every process, in batches of this many rows with
    # a pause between them, so it never holds locks or the disk for long.
    prune_interval_seconds: float = Field(default=3600.0, gt=0)
    prune_batch_size: int = Field(default=1000, ge=1, le=100_000)
    prune_pause_seconds: float = Field(default=0.2, ge=0)

    @property
    def inbox_retention(self) -> timedelta:
        return timedelta(days=self.inbox_retention_days)

    @property
    def transactional_id(self) -> str:
        return self.relay_transactional_id or relay_transactional_id(self.consumer_group)

    @property
    def allowed_unit_set(self) -> frozenset[str]:
        return frozenset(u.strip() for u in self.allowed_units.split(",") if u.strip())


def inbox_problems(groups: GroupsSettings, kafka: KafkaSettings) -> list[str]:
    """Why the inbox could forget an id it must still recognise: shorter than the
    contract's window, or than an inbound record can stay on its topic (a consumer group
    that re-reads from the start would then apply that record twice)."""
    window = groups.inbox_retention
    problems = []
    if window < IDEMPOTENCY_WINDOW_MIN:
        problems.append(
            f"GROUPS_INBOX_RETENTION_DAYS is {groups.inbox_retention_days}: the contract's "
            f"idempotency window is at least {IDEMPOTENCY_WINDOW_MIN.days} days"
        )
    lifetime = inbound_record_lifetime(kafka)
    if window < lifetime:
        problems.append(
            f"GROUPS_INBOX_RETENTION_DAYS is {groups.inbox_retention_days}: an inbound record "
            f"may stay on its topic for up to {_span(lifetime)} "
            f"(KAFKA_INBOUND_RETENTION_DAYS {kafka.inbound_retention_days} plus one "
            "segment and the broker's check), so the inbox must keep its id at least as long"
        )
    return problems


def _span(span: timedelta) -> str:
    hours = span.seconds // 3600
    return f"{span.days} days" + (f" {hours} h" if hours else "")


class AuthSettings(EnvSettings):
    """Who may read patient data over HTTP: OIDC access tokens from one issuer.

    The keys come from `jwks_url` (fetched, cached, refetched on an unknown key id) or
    from `jwks_file`; user and unit are read from the claims named here.
    """

    model_config = SettingsConfigDict(env_prefix="AUTH_", extra="ignore")

    issuer: str | None = None  # the token's `iss`, exactly as the provider writes it
    audience: str | None = None  # the `aud` the provider issues for this service
    jwks_url: str | None = None
    jwks_file: str | None = None
    user_claim: str = "hsa_id"  # the user's HSA-id
    unit_claim: str = "unit_id"  # the unit (vårdenhet) the user acts for
    # Clock skew allowed on exp / nbf / iat.
    leeway_seconds: int = Field(default=30, ge=0, le=300)

    def missing(self) -> list[str]:
        """The variables still to set before tokens can be checked (empty = complete)."""
        missing = [
            name
            for name, value in (("AUTH_ISSUER", self.issuer), ("AUTH_AUDIENCE", self.audience))
            if not value
        ]
        if not (self.jwks_url or self.jwks_file):
            missing.append("AUTH_JWKS_URL or AUTH_JWKS_FILE")
        return missing


class ExportSettings(EnvSettings):
    """The export service."""

    model_config = SettingsConfigDict(env_prefix="EXPORT_", extra="ignore")

    consumer_group: str = "customer-groups-export"
    http_host: str = "127.0.0.1"
    http_port: int = 8081
    pseudonym_key: SecretStr | None = None
    # Names the key in every record (`key_id`), so a rotation is visible downstream;
    # default: derived from the key itself, never revealing it.
    pseudonym_key_id: str | None = Field(default=None, min_length=1, max_length=64)
    include_personnummer: bool = False


class AppSettings(EnvSettings):
    """Process-wide switches."""

    model_config = SettingsConfigDict(extra="ignore")

    # Production unless told otherwise: dev conveniences must be asked for.
    app_env: Literal["dev", "test", "prod"] = "prod"
    log_level: str = "INFO"
    otel_exporter_otlp_endpoint: str | None = None

    @property
    def dev_mode(self) -> bool:
        return self.app_env in ("dev", "test")


class UnsafeSettings(RuntimeError):
    """Settings a production process must not run with; names every one of them."""

    def __init__(self, service: str, problems: list[str]) -> None:
        self.problems = problems
        super().__init__(f"{service} refuses to start: " + "; ".join(problems))


def refuse_unsafe(service: str, problems: list[str]) -> None:
    if problems:
        raise UnsafeSettings(service, problems)


@dataclass
class ServiceSettings:
    """What every service process reads: its mode, the broker, the topics, the database.
    Each service's bundle adds its own sections."""

    app: AppSettings = field(default_factory=AppSettings)
    kafka: KafkaSettings = field(default_factory=KafkaSettings)
    topics: TopicSettings = field(default_factory=TopicSettings)
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
