"""Where the broker is, how to log in to it, and the topic names."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from aiokafka.helpers import create_ssl_context

SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


@dataclass(frozen=True)
class Topics:
    """The contract's default topic names; a deployment may rename them."""

    bookings: str = "vaccination.bookings.v1"
    started: str = "vaccination.started.v1"
    registered: str = "vaccination.registered.v1"
    commands: str = "customer-groups.commands.v1"
    prompts: str = "customer-groups.prompts.v1"
    events: str = "customer-groups.events.v1"
    catalog: str = "customer-groups.catalog.v1"


@dataclass(frozen=True)
class KafkaConfig:
    """Connection settings. SASL needs `sasl_mechanism`, `sasl_username` and
    `sasl_password` (SCRAM as well as PLAIN); `SSL` / `SASL_SSL` use `ssl_cafile` (the
    system's CAs when unset) and, for client certificates, `ssl_certfile` / `ssl_keyfile`.
    The password is left out of `repr`, so a logged config does not show it."""

    bootstrap_servers: str
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    client_id: str = "customer-groups-client"

    def __post_init__(self) -> None:
        protocol = self.security_protocol.upper()
        if protocol not in SECURITY_PROTOCOLS:
            raise ValueError(f"security_protocol must be one of {', '.join(SECURITY_PROTOCOLS)}")
        if protocol.startswith("SASL_"):
            if (self.sasl_mechanism or "").upper() not in SASL_MECHANISMS:
                raise ValueError(f"sasl_mechanism must be one of {', '.join(SASL_MECHANISMS)}")
            if not self.sasl_username or self.sasl_password is None:
                raise ValueError("SASL needs sasl_username and sasl_password")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> KafkaConfig:
        """From the variables the service itself reads: `KAFKA_BOOTSTRAP_SERVERS`,
        `KAFKA_SECURITY_PROTOCOL`, `KAFKA_SASL_MECHANISM`, `KAFKA_SASL_USERNAME`,
        `KAFKA_SASL_PASSWORD`, `KAFKA_SSL_CAFILE`, `KAFKA_SSL_CERTFILE`,
        `KAFKA_SSL_KEYFILE`, plus `KAFKA_CLIENT_ID`."""
        values = os.environ if env is None else env

        def get(name: str) -> str | None:
            return values.get(f"KAFKA_{name}") or None

        return cls(
            bootstrap_servers=get("BOOTSTRAP_SERVERS") or "127.0.0.1:9092",
            security_protocol=get("SECURITY_PROTOCOL") or "PLAINTEXT",
            sasl_mechanism=get("SASL_MECHANISM"),
            sasl_username=get("SASL_USERNAME"),
            sasl_password=get("SASL_PASSWORD"),
            ssl_cafile=get("SSL_CAFILE"),
            ssl_certfile=get("SSL_CERTFILE"),
            ssl_keyfile=get("SSL_KEYFILE"),
            client_id=get("CLIENT_ID") or "customer-groups-client",
        )

    def aiokafka_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for aiokafka's producer and consumer."""
        protocol = self.security_protocol.upper()
        kwargs: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers,
            "client_id": self.client_id,
            "security_protocol": protocol,
        }
        if protocol in ("SSL", "SASL_SSL"):
            kwargs["ssl_context"] = create_ssl_context(
                cafile=self.ssl_cafile, certfile=self.ssl_certfile, keyfile=self.ssl_keyfile
            )
        if protocol.startswith("SASL_"):
            kwargs.update(
                sasl_mechanism=(self.sasl_mechanism or "").upper(),
                sasl_plain_username=self.sasl_username,
                sasl_plain_password=self.sasl_password,
            )
        return kwargs
