"""Every reason code of the contract, each produced by a real command over the broker."""

from __future__ import annotations

import datetime as dt
import uuid

from devinfra.provider import Infrastructure
from services.common.settings import GroupsSettings
from services.groups.bootstrap import GroupsSettingsBundle
from tests.integration.conftest import NurseClient, running_groups_service
from tests.kafka_tools import KafkaTestClient, TopicCollector

PNR = "191212121212"


def rejected(event: dict[str, object], reason: str) -> dict[str, object]:
    assert event["type"] == "customer_group.command_rejected", event
    data = event["data"]
    assert isinstance(data, dict)
    assert data["reason_code"] == reason, data
    assert data["message"], "a human-readable message"
    assert PNR not in str(data["message"]), "never the personnummer in a message"
    return data


async def test_business_rule_reason_codes(nurse: NurseClient) -> None:
    today = dt.date.today()
    data = rejected(
        await nurse.command("add", "191212121213", group_code="COVID_19"), "INVALID_PERSONNUMMER"
    )
    assert data["personnummer"] is None
    rejected(
        await nurse.command("add", "19121212121", group_code="COVID_19"), "INVALID_PERSONNUMMER"
    )
    rejected(await nurse.command("add", PNR), "INVALID_COMMAND")  # group_code missing
    rejected(
        await nurse.command("add", PNR, group_code="COVID_19", reference_code="x" * 65),
        "INVALID_COMMAND",
    )
    data = rejected(await nurse.command("add", PNR, group_code="NO_SUCH_GROUP"), "UNKNOWN_GROUP")
    assert data["personnummer"] == PNR
    rejected(
        await nurse.command("add", PNR, group_code="COVID_19", subgroup_code="NOPE"),
        "UNKNOWN_SUBGROUP",
    )
    rejected(await nurse.command("add", PNR, group_code="COVID"), "GROUP_NOT_SELECTABLE")
    rejected(
        await nurse.command(
            "add", PNR, group_code="COVID_19", valid_from=(today + dt.timedelta(days=1)).isoformat()
        ),
        "INVALID_PERIOD",
    )
    rejected(
        await nurse.command("add", PNR, group_code="COVID_19", prompt_id=str(uuid.uuid4())),
        "PROMPT_NOT_FOUND",
    )

    added = await nurse.command(
        "add",
        PNR,
        group_code="COVID_19",
        subgroup_code="REKOMMENDERAD",
        valid_from=(today - dt.timedelta(days=10)).isoformat(),
    )
    membership_id = added["data"]["membership"]["membership_id"]
    rejected(await nurse.command("add", PNR, group_code="COVID_19"), "ALREADY_ACTIVE")
    rejected(await nurse.command("update", PNR, membership_id=membership_id), "INVALID_COMMAND")
    rejected(
        await nurse.command("update", PNR, membership_id=str(uuid.uuid4()), reference_code="A"),
        "MEMBERSHIP_NOT_FOUND",
    )
    rejected(
        await nurse.command("update", PNR, membership_id="not-a-uuid", reference_code="A"),
        "MEMBERSHIP_NOT_FOUND",
    )
    # Another customer's membership is not found for this one.
    other = "200001012384"
    rejected(
        await nurse.command("remove", other, membership_id=membership_id), "MEMBERSHIP_NOT_FOUND"
    )
    rejected(
        await nurse.command(
            "remove",
            PNR,
            membership_id=membership_id,
            valid_to=(today - dt.timedelta(days=11)).isoformat(),
        ),
        "INVALID_PERIOD",
    )
    removed = await nurse.command("remove", PNR, membership_id=membership_id)
    assert removed["type"] == "customer_group.removed"
    rejected(await nurse.command("remove", PNR, membership_id=membership_id), "ALREADY_HISTORICAL")
    rejected(
        await nurse.command("update", PNR, membership_id=membership_id, reference_code="B"),
        "ALREADY_HISTORICAL",
    )
    rejected(
        await nurse.command(
            "prompt_close", PNR, prompt_id=str(uuid.uuid4()), vaccination_id="v-none"
        ),
        "PROMPT_NOT_FOUND",
    )
    prompt = (await nurse.start("v-rc", PNR))["data"]
    rejected(
        await nurse.command(
            "prompt_close", PNR, prompt_id=prompt["prompt_id"], vaccination_id="v-other"
        ),
        "PROMPT_NOT_FOUND",
    )
    rejected(
        await nurse.command(
            "prompt_close", other, prompt_id=prompt["prompt_id"], vaccination_id="v-rc"
        ),
        "PROMPT_NOT_FOUND",
    )


async def test_unit_not_on_the_allowlist_is_unauthorized(
    groups_settings: GroupsSettingsBundle, kafka: KafkaTestClient, infra: Infrastructure
) -> None:
    groups_settings.groups = GroupsSettings(
        consumer_group=groups_settings.groups.consumer_group, allowed_units="unit-1,unit-9"
    )
    async with running_groups_service(groups_settings) as service:
        topics = service.settings.topics
        async with (
            TopicCollector(infra.kafka_bootstrap, topics.events) as events,
            TopicCollector(infra.kafka_bootstrap, topics.prompts) as prompts,
        ):
            nurse = NurseClient(kafka, topics, events, prompts)
            outsider = {"user_id": "someone", "unit_id": "unit-2"}
            for type_, fields in [
                ("add", {"group_code": "COVID_19"}),
                ("update", {"membership_id": str(uuid.uuid4()), "reference_code": "X"}),
                ("remove", {"membership_id": str(uuid.uuid4())}),
                ("prompt_close", {"prompt_id": str(uuid.uuid4()), "vaccination_id": "v"}),
            ]:
                rejected(await nurse.command(type_, PNR, outsider, **fields), "UNAUTHORIZED")
            allowed = await nurse.command("add", PNR, group_code="COVID_19")
            assert allowed["type"] == "customer_group.added"
