"""Trust, tried from outside: forged tokens against the running service's patient-data
routes, writes by principals the broker's ACLs do not allow, and tampering with the PDL
audit log. Each check records a row of RELIABILITY.md's security table."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from aiokafka.errors import TopicAuthorizationFailedError
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from devinfra.acls import Principals
from devinfra.services import http_json
from devinfra.tokens import TokenIssuer, bearer
from services.common.db import create_engine
from services.common.settings import DatabaseSettings
from services.groups.adapters import migrate
from services.groups.service_layer import operations
from services.groups.service_layer.unit_of_work import UnitOfWork
from tests.acl_broker import producer_as, read_all, running_acl_broker
from tests.http_tools import forged_tokens
from tests.reliability.conftest import Check
from tests.reliability.harness import Stack, StreamProducer, wait_until
from tests.reliability.model import cloudevent_bytes

PNR = "191212121212"
BOOKING = "trust-booking-1"


async def test_forged_tokens_are_refused_and_every_answer_is_audited(
    stack: Stack, check: Check
) -> None:
    issuer = TokenIssuer(issuer="https://idp.region.test/oidc", audience="customer-groups")
    jwks = issuer.write_jwks(stack.log_dir / "jwks.json")
    groups = await stack.start_groups({"GROUPS_ALLOWED_UNITS": "unit-1", **issuer.env(jwks)})
    booking = {
        "booking_id": BOOKING,
        "unit_id": "unit-1",
        "start_time": datetime.now(UTC).isoformat(),
        "customer": {"personnummer": PNR},
    }
    value = cloudevent_bytes("booking.created", booking, str(uuid.uuid4()), datetime.now(UTC))
    async with StreamProducer(stack.bootstrap) as producer:
        await producer.send([(stack.topics.bookings, PNR.encode(), value)])

    async def booked() -> bool:
        return bool(await stack.rows(f"SELECT 1 FROM bookings WHERE booking_id = '{BOOKING}'"))

    await wait_until(booked, timeout=60, what="the booking stored")
    url = groups.process.url

    async def read(headers: dict[str, str]) -> list[int]:
        card, _ = await asyncio.to_thread(
            http_json, f"{url}/customer-card", {"personnummer": PNR}, headers=headers
        )
        found, _ = await asyncio.to_thread(
            http_json, f"{url}/booking?booking_id={BOOKING}", headers=headers
        )
        return [card, found]

    forged = forged_tokens(issuer, "SE-HSA-nurse-1", "unit-1")
    unauthenticated = [
        *[s for token in forged.values() for s in await read(bearer(token))],
        *await read({}),
        *await read({"authorization": "Basic bnVyc2U6cGFzcw=="}),
    ]
    off_list = await read(bearer(issuer.token("SE-HSA-nurse-2", "unit-2")))
    answered = await read(bearer(issuer.token("SE-HSA-nurse-1", "unit-1")))
    rows = await stack.rows("SELECT action, user_id, unit_id, personnummer FROM audit_log")
    reads = [r for r in rows if r.action == "read_customer_groups"]
    refusals = [r for r in rows if r.action == "access_refused"]
    check.record(
        "tokens",
        "Forged and missing tokens on the patient-data routes",
        summary={"inputs": len(unauthenticated) + 4, "bad_inputs": len(unauthenticated) + 2},
        trust=[
            (
                "forged, expired or missing tokens on the patient-data routes",
                len(unauthenticated),
                unauthenticated.count(401),
                len(unauthenticated) - unauthenticated.count(401),
            ),
            (
                "valid tokens of a unit off the allowlist",
                len(off_list),
                off_list.count(403),
                len(off_list) - off_list.count(403),
            ),
        ],
        kinds_of_forged_token=len(forged),
        answers_to_forged_or_missing_tokens={
            str(s): unauthenticated.count(s) for s in sorted(set(unauthenticated))
        },
        answers_to_a_unit_off_the_allowlist=off_list,
        answers_to_a_valid_token=answered,
        audit_rows_for_answers=len(reads),
        audit_rows_for_refusals_with_a_known_identity=len(refusals),
        audit_rows_naming_a_patient_for_a_refusal=sum(r.personnummer is not None for r in refusals),
    )
    assert unauthenticated == [401] * len(unauthenticated)
    assert off_list == [403, 403] and answered == [200, 200]
    assert [(r.user_id, r.unit_id) for r in reads] == [("SE-HSA-nurse-1", "unit-1")] * 2
    assert [(r.user_id, r.unit_id, r.personnummer) for r in refusals] == [
        ("SE-HSA-nurse-2", "unit-2", None)
    ] * 2
    assert len(rows) == len(reads) + len(refusals), "a 401 writes nothing"


async def test_writes_the_acls_do_not_allow_are_refused_and_reach_nothing(check: Check) -> None:
    principals = Principals()
    async with running_acl_broker() as broker:
        topics = broker.topics
        inbound = set(topics.inbound)
        allowed = {
            principals.booking_system: {topics.bookings},
            principals.vaccination_client: {topics.started, topics.registered, topics.commands},
            principals.groups: {topics.prompts, topics.events, topics.dlq} | inbound,
            principals.export: {topics.export, topics.dlq},
        }
        every = inbound | {topics.prompts}
        every |= {topics.events, topics.export, topics.dlq}
        tried = refused = 0
        for user, may_write in allowed.items():
            async with producer_as(broker, user) as producer:
                for topic in sorted(every - may_write):
                    tried += 1
                    with contextlib.suppress(TopicAuthorizationFailedError):
                        await producer.send_and_wait(topic, b'{"forged": true}', key=PNR.encode())
                        continue
                    refused += 1
        on_topics = {topic: len(await read_all(broker, topic)) for topic in sorted(every)}
    through = sum(on_topics.values())
    check.record(
        "kafka_acls",
        "Writes by principals the broker's ACLs do not allow (SASL/SCRAM, StandardAuthorizer)",
        summary={"inputs": tried, "bad_inputs": tried, "lost": 0},
        trust=[("writes to a topic the principal has no WRITE ACL on", tried, refused, through)],
        principals_tried=len(allowed),
        writes_tried=tried,
        refused_with_topic_authorization_failed=refused,
        records_found_on_the_topics_afterwards=through,
    )
    assert tried >= 15 and refused == tried and through == 0


async def _verify(database_url: str) -> dict[str, Any]:
    engine = create_engine(DatabaseSettings(database_url=database_url))
    try:
        async with UnitOfWork(engine, dlq_topic="unused", service="trust-check") as uow:
            report = await operations.audit_verify(
                uow, now=datetime.now(UTC), grace=timedelta(minutes=5)
            )
        return report.summary()
    finally:
        await engine.dispose()


async def test_tampering_with_the_audit_log_is_refused_or_detected(
    stack: Stack, check: Check
) -> None:
    groups = await stack.start_groups({"GROUPS_ALLOWED_UNITS": "*"})
    actor = {"user_id": "nurse-1", "unit_id": "unit-1"}
    inputs = [
        (
            stack.topics.commands,
            PNR.encode(),
            cloudevent_bytes(
                "customer_group.add",
                {"personnummer": PNR, "actor": actor, "group_code": code},
                f"trust-add-{code}",
                datetime.now(UTC),
            ),
        )
        for code in ("COVID_19", "INFLUENSA", "PNEUMOKOCK", "OVRIGT")
    ]
    async with StreamProducer(stack.bootstrap) as producer:
        await producer.send(inputs)

    async def sealed() -> bool:
        rows = await stack.rows("SELECT count(*) FROM audit_chain")
        return int(rows[0][0]) >= len(inputs)

    await wait_until(sealed, timeout=60, what="the audit rows sealed")
    await groups.stop()  # nothing else writes while rows are tampered with
    assert (await _verify(stack.database_url))["ok"]
    ids = [r.id for r in await stack.rows("SELECT id FROM audit_log ORDER BY id")]

    role = f"svc_{uuid.uuid4().hex[:8]}"
    await migrate.grant_service_role(stack.engine, role)
    as_service: list[str] = []
    for statement in (
        "UPDATE audit_log SET user_id = 'someone-else'",
        "DELETE FROM audit_log",
        "TRUNCATE audit_log",
        "UPDATE audit_chain SET hash = hash",
        "DELETE FROM audit_chain",
    ):
        try:
            async with stack.engine.begin() as connection:
                await connection.execute(text(f"SET LOCAL ROLE {role}"))
                await connection.execute(text(statement))
        except DBAPIError:
            as_service.append(statement)

    detected: dict[str, Any] = {}

    async def as_superuser(*statements: str) -> None:
        async with stack.engine.begin() as connection:
            await connection.execute(text("SET LOCAL session_replication_role = replica"))
            for statement in statements:
                await connection.execute(text(statement))

    await as_superuser(f"UPDATE audit_log SET unit_id = 'unit-9' WHERE id = {ids[1]}")
    detected["changed"] = (await _verify(stack.database_url))["break"]
    await as_superuser(f"UPDATE audit_log SET unit_id = 'unit-1' WHERE id = {ids[1]}")
    await as_superuser(
        "UPDATE audit_chain SET prev_hash = hash WHERE position = 3",
    )
    detected["relinked"] = (await _verify(stack.database_url))["break"]
    await as_superuser(
        "UPDATE audit_chain c SET prev_hash = p.hash FROM audit_chain p"
        " WHERE c.position = 3 AND p.position = 2"
    )
    assert (await _verify(stack.database_url))["ok"], "restored"
    await as_superuser(f"DELETE FROM audit_log WHERE id = {ids[2]}")
    detected["removed"] = (await _verify(stack.database_url))["break"]
    found = {kind: json.dumps(found) for kind, found in detected.items() if found is not None}
    check.record(
        "audit_tamper",
        "Tampering with the PDL audit log",
        summary={"inputs": len(inputs), "bad_inputs": 5 + len(detected)},
        trust=[
            (
                "UPDATE, DELETE or TRUNCATE of the audit tables as the service role",
                5,
                len(as_service),
                5 - len(as_service),
            ),
            (
                "rows changed, relinked or removed as superuser, triggers off",
                len(detected),
                len(found),
                len(detected) - len(found),
            ),
        ],
        statements_refused_for_the_service_role=len(as_service),
        tampering_found_by_audit_verify={k: json.loads(v)["kind"] for k, v in found.items()},
    )
    assert len(as_service) == 5
    assert {k: json.loads(v)["kind"] for k, v in found.items()} == {
        "changed": "changed",
        "relinked": "relinked",
        "removed": "removed",
    }
    assert json.loads(found["changed"])["audit_id"] == ids[1]
    assert json.loads(found["removed"])["audit_id"] == ids[2]
