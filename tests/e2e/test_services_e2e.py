"""Through the real entrypoints: two OS processes, the real broker, the real database."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from devinfra.services import ServiceProcess, free_port, http_json
from devinfra.tokens import bearer
from tests.e2e.conftest import Stack
from tests.kafka_tools import KafkaTestClient, cloudevent

PNR = "191212121212"
ACTOR = {"user_id": "nurse-1", "unit_id": "unit-1"}


def of_type(type_: str):  # type: ignore[no-untyped-def]
    return lambda events: any(e["type"] == type_ for e in events)


async def test_popup_flow_through_both_services(stack: Stack, kafka: KafkaTestClient) -> None:
    t = stack.topics
    booking = cloudevent(
        "booking.created",
        {
            "booking_id": "e2e-b1",
            "unit_id": "unit-1",
            "start_time": "2026-11-26T14:20:00+01:00",
            "customer": {"personnummer": PNR, "first_name": "Test", "last_name": "Testsson"},
            "vaccine": {"code": "J07BB02", "name": "Influvac", "dose": 1},
            "requested_group": {"group_code": "INFLUENSA", "subgroup_code": "ALDER_65_PLUS"},
        },
    )
    await kafka.send_event(t.bookings, booking, key=PNR)
    # Topics are not ordered with each other: let the booking land before the start.
    token = bearer(stack.issuer.token(ACTOR["user_id"], ACTOR["unit_id"]))
    booking_url = f"{stack.groups.url}/booking?booking_id=e2e-b1"
    for _ in range(300):
        status, _found = await asyncio.to_thread(http_json, booking_url, headers=token)
        if status == 200:
            break
        await asyncio.sleep(0.1)
    start = cloudevent(
        "vaccination.started",
        {
            "vaccination_id": "e2e-v1",
            "unit_id": "unit-1",
            "user_id": "nurse-1",
            "personnummer": PNR,
            "booking_id": "e2e-b1",
            "vaccine": {"code": "J07BB02", "name": "Influvac"},
        },
    )
    await kafka.send_event(t.started, start, key=PNR)

    prompts = await kafka.events(t.prompts, lambda es: len(es) >= 1)
    prompt = prompts[0]["data"]
    assert prompt["vaccination_id"] == "e2e-v1"
    assert prompt["required"] is True
    assert {
        "group_code": "INFLUENSA",
        "subgroup_code": "ALDER_65_PLUS",
        "reason": "REQUESTED_AT_BOOKING",
    } in prompt["suggestions"]

    add = cloudevent(
        "customer_group.add",
        {
            "personnummer": PNR,
            "actor": ACTOR,
            "group_code": "INFLUENSA",
            "subgroup_code": "ALDER_65_PLUS",
            "prompt_id": prompt["prompt_id"],
        },
    )
    await kafka.send_event(t.commands, add, key=PNR)
    events = await kafka.events(t.events, of_type("customer_group.added"))
    added = next(e for e in events if e["type"] == "customer_group.added")["data"]
    assert added["command_id"] == add["id"]
    assert added["membership"]["group_name"] == "Influensa"

    close = cloudevent(
        "customer_group.prompt_close",
        {
            "personnummer": PNR,
            "actor": ACTOR,
            "prompt_id": prompt["prompt_id"],
            "vaccination_id": "e2e-v1",
        },
    )
    await kafka.send_event(t.commands, close, key=PNR)
    await kafka.events(t.events, of_type("customer_group.vaccination_groups_confirmed"))

    # Generous: the export process may still be joining its consumer group on a cold start.
    exported = await kafka.read_until(t.export, lambda rs: len(rs) >= 2, timeout=90)
    values = [json.loads(r.value) for r in exported]
    types = {v["type"] for v in values}
    assert types == {"customer_group.membership_record", "customer_group.vaccination_record"}
    for record in exported:
        assert PNR.encode() not in record.value
        assert record.key is not None and PNR.encode() not in record.key

    card_url = f"{stack.groups.url}/customer-card"
    status, card = await asyncio.to_thread(
        http_json, card_url, {"personnummer": PNR}, headers=token
    )
    assert status == 200
    assert [m["group_code"] for m in card["active"]] == ["INFLUENSA"]

    status, found = await asyncio.to_thread(http_json, booking_url, headers=token)
    assert status == 200
    assert found["booking"]["requested_group"]["group_code"] == "INFLUENSA"
    assert [m["group_code"] for m in found["customer"]["active"]] == ["INFLUENSA"]
    status, _ = await asyncio.to_thread(http_json, booking_url)
    assert status == 401, "reads need a token naming the user and unit (PDL)"
    status, _ = await asyncio.to_thread(
        http_json, booking_url, headers=bearer(stack.issuer.token("nurse-2", "unit-2"))
    )
    assert status == 403, "a unit off the allowlist reads nothing"
    status, error = await asyncio.to_thread(
        http_json, card_url, {"personnummer": "191212121213"}, headers=token
    )
    assert (status, error["reason_code"]) == (422, "INVALID_PERSONNUMMER")
    status, openapi = await asyncio.to_thread(http_json, f"{stack.groups.url}/openapi.json")
    assert status == 200 and "/customer-card" in openapi["paths"]

    status, health = await asyncio.to_thread(http_json, f"{stack.groups.url}/healthz")
    assert status == 200, health
    status, health = await asyncio.to_thread(http_json, f"{stack.export.url}/healthz")
    assert status == 200, health
    status, metrics = await asyncio.to_thread(http_json, f"{stack.groups.url}/metrics")
    assert status == 200 and "groups_records_total" in metrics
    status, asyncapi = await asyncio.to_thread(http_json, f"{stack.groups.url}/asyncapi.json")
    assert status == 200 and asyncapi["info"]["title"] == "Customer groups (kundgrupper)"
    addresses = {channel["address"] for channel in asyncapi["channels"].values()}
    assert {stack.topics.bookings, stack.topics.prompts, stack.topics.export} <= addresses
    for path in ("/asyncapi.yaml", "/asyncapi"):
        status, text = await asyncio.to_thread(http_json, f"{stack.groups.url}{path}")
        assert status == 200 and "Customer groups (kundgrupper)" in text, path
    status, exported = await asyncio.to_thread(http_json, f"{stack.export.url}/asyncapi.json")
    assert (status, exported) == (200, asyncapi), "both services serve the one document"
    status, _ = await asyncio.to_thread(http_json, f"{stack.groups.url}/asyncapi/try")
    assert status == 404, "no publish route over HTTP"


def test_outside_dev_mode_the_groups_service_needs_the_identity_provider(tmp_path: Path) -> None:
    """Safe by default: `APP_ENV=prod` without `AUTH_*` stops the start, naming what is
    missing (before any connection is made, so no infrastructure is needed)."""
    port = free_port()
    env = {
        "APP_ENV": "prod",
        "GROUPS_ALLOWED_UNITS": "unit-1",
        "GROUPS_HTTP_PORT": str(port),
        "AUTH_ISSUER": "",
        "AUTH_AUDIENCE": "",
        "AUTH_JWKS_URL": "",
        "AUTH_JWKS_FILE": "",
    }
    process = ServiceProcess("services.groups", env, port=port, log_path=tmp_path / "g.log")
    try:
        with pytest.raises(RuntimeError, match="exited"):
            process.start(wait=60.0)
    finally:
        process.kill()
    written = (tmp_path / "g.log").read_text()
    for name in ("AUTH_ISSUER", "AUTH_AUDIENCE", "AUTH_JWKS_URL or AUTH_JWKS_FILE"):
        assert name in written
