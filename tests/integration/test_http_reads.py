"""Patient-data reads through the groups service's HTTP routes, against the real database:
real signed tokens, keys from a JWKS URL on 127.0.0.1, audit rows read back."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from sqlalchemy import select

from devinfra.provider import Infrastructure
from devinfra.tokens import TokenIssuer, bearer
from services.common.asgi import ASGIApp
from services.common.settings import AuthSettings, GroupsSettings
from services.groups.adapters.orm import audit_log
from services.groups.bootstrap import GroupsService, GroupsSettingsBundle
from services.groups.entrypoints.http import build_routes
from tests.http_tools import JwksServer, call, forged_tokens
from tests.integration.conftest import (
    ACTOR,
    NurseClient,
    running_groups_service,
    wait_until_booked,
)
from tests.kafka_tools import KafkaTestClient, TopicCollector, cloudevent

PNR = "191212121212"
BOOKING = "http-b1"


@pytest.fixture
def issuer() -> TokenIssuer:
    return TokenIssuer(issuer="https://idp.region.test/oidc", audience="customer-groups")


@pytest.fixture
def jwks_server(issuer: TokenIssuer) -> Iterator[JwksServer]:
    server = JwksServer(issuer.jwks())
    yield server
    server.close()


@pytest.fixture
async def service(
    groups_settings: GroupsSettingsBundle,
    issuer: TokenIssuer,
    jwks_server: JwksServer,
    kafka: KafkaTestClient,
) -> AsyncIterator[GroupsService]:
    settings = dataclasses.replace(
        groups_settings,
        groups=GroupsSettings(
            consumer_group=groups_settings.groups.consumer_group, allowed_units="unit-1,unit-3"
        ),
        auth=AuthSettings(
            issuer=issuer.issuer,
            audience=issuer.audience,
            jwks_url=jwks_server.url,
            jwks_file=None,
            leeway_seconds=30,
        ),
    )
    async with running_groups_service(settings) as service:
        booking = cloudevent(
            "booking.created",
            {
                "booking_id": BOOKING,
                "unit_id": "unit-1",
                "start_time": "2026-11-26T14:20:00+01:00",
                "customer": {"personnummer": PNR, "first_name": "Test", "last_name": "Testsson"},
            },
        )
        await kafka.send_event(settings.topics.bookings, booking, key=PNR)
        await wait_until_booked(service, BOOKING)
        yield service


@pytest.fixture
def routes(service: GroupsService) -> dict[str, ASGIApp]:
    return dict(build_routes(service))


async def _audit_rows(service: GroupsService) -> list[dict[str, Any]]:
    async with service.engine.connect() as connection:
        rows = await connection.execute(select(audit_log).order_by(audit_log.c.id))
        return [dict(row._mapping) for row in rows]


async def _card(routes: dict[str, ASGIApp], headers: dict[str, str], **body: Any) -> int:
    status, _, _ = await call(
        routes["/customer-card"], "POST", headers=headers, json_body={"personnummer": PNR, **body}
    )
    return status


async def _booking(routes: dict[str, ASGIApp], headers: dict[str, str], **query: str) -> int:
    status, _, _ = await call(
        routes["/booking"], headers=headers, query={"booking_id": BOOKING, **query}
    )
    return status


async def test_each_answer_is_audited_once_with_the_tokens_identity(
    service: GroupsService, routes: dict[str, ASGIApp], issuer: TokenIssuer
) -> None:
    token = bearer(issuer.token("SE-HSA-nurse-1", "unit-1"))
    # What the request says about user and unit is ignored.
    status, _, card = await call(
        routes["/customer-card"],
        "POST",
        headers=token,
        json_body={"personnummer": PNR, "user_id": "someone-else", "unit_id": "unit-9"},
    )
    assert status == 200
    assert card["personnummer"] == PNR
    status, _, found = await call(
        routes["/booking"],
        headers=bearer(issuer.token("SE-HSA-nurse-3", "unit-3")),
        query={"booking_id": BOOKING, "user_id": "someone-else", "unit_id": "unit-9"},
    )
    assert status == 200
    assert found["booking"]["booking_id"] == BOOKING

    rows = await _audit_rows(service)
    assert [(r["action"], r["user_id"], r["unit_id"], r["personnummer"]) for r in rows] == [
        ("read_customer_groups", "SE-HSA-nurse-1", "unit-1", PNR),
        ("read_customer_groups", "SE-HSA-nurse-3", "unit-3", PNR),
    ]


async def test_invalid_tokens_get_401_and_leave_no_audit_row(
    service: GroupsService, routes: dict[str, ASGIApp], issuer: TokenIssuer
) -> None:
    refused = forged_tokens(issuer, "nurse-1", "unit-1")
    for what, token in refused.items():
        for read in (_card, _booking):
            assert await read(routes, bearer(token)) == 401, what
    assert await _card(routes, {}, user_id="nurse-1", unit_id="unit-1") == 401
    assert await _booking(routes, {}, user_id="nurse-1", unit_id="unit-1") == 401
    assert await _audit_rows(service) == []


async def test_a_unit_off_the_allowlist_gets_403_audited_without_patient_data(
    service: GroupsService, routes: dict[str, ASGIApp], issuer: TokenIssuer
) -> None:
    token = bearer(issuer.token("SE-HSA-nurse-2", "unit-2"))
    status, _, body = await call(
        routes["/customer-card"], "POST", headers=token, json_body={"personnummer": PNR}
    )
    assert status == 403
    assert PNR not in json.dumps(body)
    assert await _booking(routes, token) == 403

    rows = await _audit_rows(service)
    assert [
        (r["action"], r["user_id"], r["unit_id"], r["personnummer"], r["detail"]["route"])
        for r in rows
    ] == [
        ("access_refused", "SE-HSA-nurse-2", "unit-2", None, "/customer-card"),
        ("access_refused", "SE-HSA-nurse-2", "unit-2", None, "/booking"),
    ]


async def test_the_card_shows_who_added_and_changed_a_group_and_not_one_entered_in_error(
    service: GroupsService,
    routes: dict[str, ASGIApp],
    issuer: TokenIssuer,
    kafka: KafkaTestClient,
    infra: Infrastructure,
) -> None:
    topics = service.settings.topics
    async with TopicCollector(infra.kafka_bootstrap, topics.events) as events:
        nurse = NurseClient(kafka, topics, events, events)
        kept = await nurse.command("add", PNR, group_code="COVID_19")
        membership_id = kept["data"]["membership"]["membership_id"]
        other = {"user_id": "nurse-3", "unit_id": "unit-3"}
        await nurse.command("update", PNR, other, membership_id=membership_id, reference_code="R")
        ended = await nurse.command("add", PNR, group_code="PNEUMOKOCK")
        await nurse.command(
            "remove", PNR, membership_id=ended["data"]["membership"]["membership_id"]
        )
        mistake = await nurse.command("add", PNR, group_code="INFLUENSA")
        voided = await nurse.command(
            "remove",
            PNR,
            membership_id=mistake["data"]["membership"]["membership_id"],
            reason="entered_in_error",
        )
        assert voided["data"]["membership"]["status"] == "entered_in_error"
    token = bearer(issuer.token("SE-HSA-nurse-1", "unit-1"))
    status, _, card = await call(
        routes["/customer-card"], "POST", headers=token, json_body={"personnummer": PNR}
    )
    assert status == 200
    [active] = card["active"]
    assert (active["membership_id"], active["reference_code"]) == (membership_id, "R")
    assert (active["created_by"], active["updated_by"]) == (ACTOR, other)
    assert active["created_at"] == kept["data"]["membership"]["created_at"]
    assert [m["group_code"] for m in card["historical"]] == ["PNEUMOKOCK"]
    assert "INFLUENSA" not in json.dumps(card), "entered in error: in neither list"


async def test_a_missed_prompt_is_served_as_the_topic_got_it_to_its_own_unit_only(
    service: GroupsService,
    routes: dict[str, ASGIApp],
    issuer: TokenIssuer,
    kafka: KafkaTestClient,
    infra: Infrastructure,
) -> None:
    topics = service.settings.topics
    async with (
        TopicCollector(infra.kafka_bootstrap, topics.events) as events,
        TopicCollector(infra.kafka_bootstrap, topics.prompts) as prompts,
    ):
        nurse = NurseClient(kafka, topics, events, prompts)
        sent = await nurse.start("v-http-1", PNR, booking_id=BOOKING)
        [record] = [r for r in prompts.records if json.loads(r.value)["id"] == sent["id"]]

        async def read(unit: str, vaccination_id: str = "v-http-1") -> tuple[int, Any, Any]:
            return await call(
                routes["/prompt"],
                headers=bearer(issuer.token(f"SE-HSA-{unit}", unit)),
                query={"vaccination_id": vaccination_id},
            )

        # Its own unit (another nurse there) gets the very event the topic got.
        status, headers, body = await read("unit-1")
        assert status == 200
        assert headers["content-type"] == "application/cloudevents+json; charset=UTF-8"
        assert body == json.loads(record.value)
        # Another allowed unit learns no more than for an id never started.
        other = await read("unit-3")
        unknown = await read("unit-1", "v-http-unknown")
        assert other[0] == unknown[0] == 404 and other[2] == unknown[2]
        # A unit off the allowlist is refused before any lookup.
        status, _, body = await read("unit-2")
        assert status == 403 and PNR not in json.dumps(body)
        # After the popup is closed the prompt is still there, unchanged.
        await nurse.command(
            "prompt_close", PNR, prompt_id=sent["data"]["prompt_id"], vaccination_id="v-http-1"
        )
        status, _, body = await read("unit-1")
        assert status == 200 and body == json.loads(record.value)

    rows = [r for r in await _audit_rows(service) if r["action"] != "customer_group.prompt_close"]
    prompt_id = sent["data"]["prompt_id"]
    prompt_read = (
        "prompt_read",
        "SE-HSA-unit-1",
        "unit-1",
        PNR,
        {"vaccination_id": "v-http-1", "prompt_id": prompt_id},
    )
    assert [
        (r["action"], r["user_id"], r["unit_id"], r["personnummer"], r["detail"]) for r in rows
    ] == [
        ("prompt_shown", ACTOR["user_id"], "unit-1", PNR, {"vaccination_id": "v-http-1"}),
        prompt_read,
        (
            "access_refused",
            "SE-HSA-unit-3",
            "unit-3",
            PNR,
            {
                "route": "/prompt",
                "reason": "other_unit",
                "vaccination_id": "v-http-1",
                "prompt_id": prompt_id,
            },
        ),
        (
            "access_refused",
            "SE-HSA-unit-2",
            "unit-2",
            None,
            {"route": "/prompt", "reason": "unit_not_allowed"},
        ),
        prompt_read,
    ]
