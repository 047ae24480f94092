"""Configuration from the environment (pydantic-settings).

Every variable is documented in the README; `docker-compose.yml` wires the same names.
"""

from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class TopicSettings(BaseSettings):
    """Topic names; the defaults are the contract's."""

    model_config = SettingsConfigDict(env_prefix="TOPIC_", extra="ignore")

    bookings: str = "vaccination.bookings.v1"
    started: str = "vaccination.started.v1"
    commands: str = "customer-groups.commands.v1"
    prompts: str = "customer-groups.prompts.v1"
    events: str = "customer-groups.events.v1"
    export: str = "customer-groups.export.v1"
    dlq: str = "customer-groups.dlq.v1"

    @property
    def inbound(self) -> tuple[str, str, str]:
        return (self.bookings, self.started, self.commands)


class KafkaSettings(BaseSettings):
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
    # What the broker gathers for a consumer's fetch before it answers (or 20 ms pass):
    # about 8 records of ~390 bytes. Fewer, larger inbound batches under load; a record
    # arriving alone waits up to 20 ms (see `manual_batch_subscriber`).
    fetch_min_bytes: int = Field(default=3072, ge=1)


class DatabaseSettings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore")

    # postgresql+asyncpg://user:password@host:port/db ; add ?ssl=require for TLS
    database_url: str = "postgresql+asyncpg://postgres@127.0.0.1:5432/customer_groups"
    # Per process: inbound parts in flight (up to 3 per batch), the relay, the audit
    # sealer, HTTP reads.
    database_pool_size: int = 8
    # Only the `migrate` step uses it (DDL, grants); the service runs as DATABASE_URL.
    database_migration_url: str | None = None
    # The role DATABASE_URL logs in as: `migrate` grants it the DML it needs, and only
    # INSERT and SELECT on the audit tables. Unset: no grants (one role, as in dev).
    database_service_role: str | None = Field(default=None, pattern=r"^[a-z_][a-z0-9_]{0,62}$")

    @property
    def migration_url(self) -> str:
        return self.database_migration_url or self.database_url


class GroupsSettings(BaseSettings):
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

    @property
    def allowed_unit_set(self) -> frozenset[str]:
        return frozenset(u.strip() for u in self.allowed_units.split(",") if u.strip())


class ExportSettings(BaseSettings):
    """The export service."""

    model_config = SettingsConfigDict(env_prefix="EXPORT_", extra="ignore")

    consumer_group: str = "customer-groups-export"
    http_host: str = "127.0.0.1"
    http_port: int = 8081
    pseudonym_key: SecretStr | None = None
    include_personnummer: bool = False


class AppSettings(BaseSettings):
    """Process-wide switches."""

    model_config = SettingsConfigDict(extra="ignore")

    app_env: str = "dev"  # dev | test | prod
    log_level: str = "INFO"
    otel_exporter_otlp_endpoint: str | None = None

    @property
    def dev_mode(self) -> bool:
        return self.app_env in ("dev", "test")
