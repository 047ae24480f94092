"""Security checks: the unit allowlist, Kafka SASL/SSL and PostgreSQL TLS configuration,
and secrets kept out of logs and reprs. (The input size limit is checked with the bad
input, the default export's personnummer in the export fault tests, the logs by
test_zz_log_scan.)"""

from __future__ import annotations

import asyncio
import json
import random
import ssl
import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from pydantic import SecretStr
from sqlalchemy import text

from devinfra.provider import Infrastructure
from devinfra.services import ServiceProcess, free_port
from services.common.db import create_engine
from services.common.kafka import build_security, client_kwargs
from services.common.settings import DatabaseSettings, KafkaSettings
from tests.reliability.conftest import Check
from tests.reliability.harness import (
    LOG_DIR,
    REPO,
    Stack,
    StreamProducer,
    caught_up,
    read_topic,
    settle,
)
from tests.reliability.model import cloudevent_bytes, make_personnummer

PASSWORD = "pa55-Wörd-" + uuid.uuid4().hex  # unique, so any occurrence is a leak


def test_sasl_ssl_scram_gives_aiokafka_the_right_kwargs(tmp_path: Path, check: Check) -> None:
    settings = KafkaSettings(
        bootstrap_servers="broker-1:9093,broker-2:9093",
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="customer-groups",
        sasl_password=SecretStr(PASSWORD),
    )
    kwargs = client_kwargs(settings)
    assert kwargs["bootstrap_servers"] == "broker-1:9093,broker-2:9093"
    assert kwargs["security_protocol"] == "SASL_SSL"
    assert kwargs["sasl_mechanism"] == "SCRAM-SHA-512"
    assert kwargs["sasl_plain_username"] == "customer-groups"
    assert kwargs["sasl_plain_password"] == PASSWORD
    assert isinstance(kwargs["ssl_context"], ssl.SSLContext)
    assert kwargs["ssl_context"].verify_mode == ssl.CERT_REQUIRED
    assert kwargs["ssl_context"].check_hostname

    variants = {
        ("SASL_SSL", "SCRAM-SHA-256"): ("SASL_SSL", "SCRAM-SHA-256"),
        ("SASL_PLAINTEXT", "PLAIN"): ("SASL_PLAINTEXT", "PLAIN"),
        ("sasl_ssl", "plain"): ("SASL_SSL", "PLAIN"),
    }
    for (protocol, mechanism), (want_protocol, want_mechanism) in variants.items():
        got = client_kwargs(
            KafkaSettings(
                security_protocol=protocol,
                sasl_mechanism=mechanism,
                sasl_username="u",
                sasl_password=SecretStr(PASSWORD),
            )
        )
        assert (got["security_protocol"], got["sasl_mechanism"]) == (
            want_protocol,
            want_mechanism,
        )
    tls = client_kwargs(KafkaSettings(security_protocol="SSL"))
    assert tls["security_protocol"] == "SSL" and isinstance(tls["ssl_context"], ssl.SSLContext)
    assert "sasl_mechanism" not in tls or tls["sasl_mechanism"] in (None, "PLAIN")
    assert client_kwargs(KafkaSettings()) == {"bootstrap_servers": "127.0.0.1:9092"}
    with pytest.raises(ValueError):
        build_security(KafkaSettings(security_protocol="SASL_SSL", sasl_mechanism="GSSAPI"))

    # The password is in no repr, str or dump of the settings or the security object.
    security = build_security(settings)
    shown = [
        repr(settings),
        str(settings),
        settings.model_dump_json(),
        json.dumps(settings.model_dump(), default=str),
        repr(security),
        str(security),
        repr(settings.sasl_password),
    ]
    leaks = [s for s in shown if PASSWORD in s]
    check.record(
        "security_configuration",
        "Kafka SASL/SSL and PostgreSQL TLS configuration, secrets",
        summary={"personnummer_found": 0},
        sasl_ssl_scram_kwargs="security_protocol, sasl_mechanism, user, password, "
        "verifying SSL context: as configured",
        password_in_repr_or_dumps=len(leaks),
    )
    assert leaks == [], leaks


def test_readme_documents_the_security_settings(check: Check) -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    wanted = [
        "KAFKA_SECURITY_PROTOCOL",
        "SASL_SSL",
        "KAFKA_SASL_MECHANISM",
        "SCRAM-SHA-512",
        "KAFKA_SASL_USERNAME",
        "KAFKA_SASL_PASSWORD",
        "KAFKA_SSL_CAFILE",
        "KAFKA_SSL_CERTFILE",
        "KAFKA_SSL_KEYFILE",
        "ssl=require",
        "GROUPS_ALLOWED_UNITS",
        "KAFKA_MAX_MESSAGE_BYTES",
        "EXPORT_PSEUDONYM_KEY",
        "EXPORT_INCLUDE_PERSONNUMMER",
    ]
    missing = [w for w in wanted if w not in readme]
    assert missing == [], f"README does not document {missing}"


async def test_postgres_tls_setting_reaches_the_driver(database_url: str) -> None:
    """`?ssl=require` in DATABASE_URL makes the driver insist on TLS: against a server
    without TLS the connection is refused; against one with TLS the session is encrypted."""
    separator = "&" if "?" in database_url else "?"
    engine = create_engine(DatabaseSettings(database_url=f"{database_url}{separator}ssl=require"))
    try:
        try:
            async with engine.connect() as connection:
                encrypted = await connection.scalar(
                    text("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
                )
        except Exception as error:  # a server without TLS: the driver refuses to go on
            assert "ssl" in f"{type(error).__name__} {error}".lower(), repr(error)
        else:
            assert encrypted is True
    finally:
        await engine.dispose()


async def test_password_never_logged_by_a_service(
    infra: Infrastructure, database_url: str, check: Check
) -> None:
    """The groups service configured for SASL against a broker that does not speak it:
    it retries and logs why, and the password appears nowhere in what it writes."""
    log_path = LOG_DIR / "test_password_never_logged" / "groups.log"
    port = free_port()
    env = {
        "APP_ENV": "test",
        "KAFKA_BOOTSTRAP_SERVERS": infra.kafka_bootstrap,
        "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "KAFKA_SASL_MECHANISM": "SCRAM-SHA-256",
        "KAFKA_SASL_USERNAME": "customer-groups",
        "KAFKA_SASL_PASSWORD": PASSWORD,
        "DATABASE_URL": database_url,
        "GROUPS_HTTP_PORT": str(port),
        "LOG_LEVEL": "DEBUG",
    }
    process = ServiceProcess("services.groups", env, port=port, log_path=log_path)
    try:
        with pytest.raises((TimeoutError, RuntimeError)):
            await asyncio.to_thread(process.start, wait=8.0)
    finally:
        process.kill()
    written = log_path.read_text(encoding="utf-8", errors="replace")
    assert written.strip(), "the service wrote nothing"
    leaks = written.count(PASSWORD)
    check.record(
        "security_configuration",
        "Kafka SASL/SSL and PostgreSQL TLS configuration, secrets",
        summary={"personnummer_found": 0},
        password_occurrences_in_a_SASL_service_log_at_DEBUG=leaks,
        log_lines_written_by_it=len(written.splitlines()),
    )
    assert leaks == 0


async def test_commands_from_units_off_the_allowlist_are_all_rejected(
    stack: Stack, today: date, check: Check
) -> None:
    await stack.start_groups({"GROUPS_ALLOWED_UNITS": "unit-1,unit-2"})
    foreign = [
        "unit-3",
        "UNIT-1",
        " unit-1",
        "unit-1 ",
        "unit-1\u200b",
        "unit-1,unit-2",
        "*",
        "",
        "x'); DROP TABLE memberships; --",
        "🏥",
    ]
    people = [make_personnummer(random.Random(900 + i)) for i in range(40)]
    items: list[tuple[str, bytes | None, bytes | None]] = []
    expected: dict[str, str] = {}
    groups = ["COVID_19", "INFLUENSA", "PNEUMOKOCK", "OVRIGT"]
    for n, person in enumerate(people):
        for m, unit in enumerate([*foreign, "unit-1"]):
            event_id = f"auth-{n}-{m}"
            data = {
                "personnummer": person,
                "actor": {"user_id": "nurse-1", "unit_id": unit},
                "group_code": groups[m % len(groups)],
                "valid_from": (today - timedelta(days=1)).isoformat(),
            }
            value = cloudevent_bytes("customer_group.add", data, event_id, _now())
            items.append((stack.topics.commands, person.encode(), value))
            expected[event_id] = "allowed" if unit == "unit-1" else "foreign"
    async with StreamProducer(stack.bootstrap) as producer:
        await producer.send(items)
    await settle(stack, len(items))
    await caught_up(stack, stack.groups_group, stack.topics.inbound)
    events = [json.loads(r.value) for r in await read_topic(stack.bootstrap, stack.topics.events)]
    answers = {e["data"]["command_id"]: e for e in events}
    foreign_ids = [i for i, kind in expected.items() if kind == "foreign"]
    rejected = [
        i
        for i in foreign_ids
        if answers.get(i, {}).get("data", {}).get("reason_code") == "UNAUTHORIZED"
    ]
    # The unit is checked before anything else, so an empty unit id is UNAUTHORIZED too.
    refused = [
        i
        for i in foreign_ids
        if answers.get(i, {}).get("type") == "customer_group.command_rejected"
    ]
    allowed_ok = [
        i
        for i, kind in expected.items()
        if kind == "allowed" and answers.get(i, {}).get("type") == "customer_group.added"
    ]
    memberships = await stack.rows("SELECT created_by_unit, count(*) FROM memberships GROUP BY 1")
    check.record(
        "allowlist",
        "Commands from units off GROUPS_ALLOWED_UNITS",
        summary={
            "inputs": len(items),
            "bad_inputs": len(foreign_ids),
            "lost": len(expected) - len(answers),
            "duplicated_effects": sum(n for unit, n in memberships if unit != "unit-1"),
        },
        commands_from_other_units=len(foreign_ids),
        rejected=f"{len(refused)} ({len(refused) / len(foreign_ids):.0%}); "
        f"UNAUTHORIZED {len(rejected)}",
        refusals_carrying_a_personnummer=sum(
            1 for i in refused if answers[i]["data"]["personnummer"] is not None
        ),
        commands_from_an_allowed_unit_accepted=f"{len(allowed_ok)} of {len(people)}",
        unit_spellings_tried=len(foreign),
    )
    assert len(refused) == len(foreign_ids), "every command from another unit is rejected"
    assert len(rejected) == len(foreign_ids), "checked first: every one UNAUTHORIZED"
    assert all(answers[i]["data"]["personnummer"] is None for i in refused), "no patient data"
    assert len(allowed_ok) == len(people)
    assert [u for u, _ in memberships] == ["unit-1"]


def test_an_empty_allowlist_outside_dev_mode_refuses_to_start(
    infra: Infrastructure, database_url: str, tmp_path: Path
) -> None:
    port = free_port()
    env = {
        "APP_ENV": "prod",
        "GROUPS_ALLOWED_UNITS": "",
        "KAFKA_BOOTSTRAP_SERVERS": infra.kafka_bootstrap,
        "DATABASE_URL": database_url,
        "GROUPS_HTTP_PORT": str(port),
    }
    process = ServiceProcess("services.groups", env, port=port, log_path=tmp_path / "g.log")
    try:
        with pytest.raises(RuntimeError, match="exited"):
            process.start(wait=30.0)
    finally:
        process.kill()
    assert "GROUPS_ALLOWED_UNITS" in (tmp_path / "g.log").read_text()


def _now() -> datetime:
    return datetime.now(UTC)
