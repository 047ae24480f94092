"""Development and test infrastructure: a real Kafka broker and PostgreSQL server without
Docker (see `provider.provide_infrastructure` for how each is chosen)."""

from devinfra.kafka import LocalKafka, resolve_jars
from devinfra.postgres import LocalPostgres
from devinfra.provider import Infrastructure, provide_infrastructure

__all__ = [
    "Infrastructure",
    "LocalKafka",
    "LocalPostgres",
    "provide_infrastructure",
    "resolve_jars",
]
