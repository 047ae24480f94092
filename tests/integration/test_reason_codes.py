"""Every reason code of the contract, each produced by a real command over the broker."""

from __future__ import annotations

import datetime as dt
import json
import uuid

from devinfra.provider import Infrastructure
from services.common.settings import GroupsSettings
from services.groups.bootstrap import GroupsSettingsBundle
from services.groups.domain.authorization import UNAUTHORIZED_MESSAGE
from tests.integration.conftest import NurseClient, nurse_client, running_groups_service
from tests.kafka_tools import KafkaTestClient, cloudevent

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
    for identity in ("intyg 19121212-1212", "121212+1212", "ref200001012384"):
        data = rejected(
            await nurse.command("add", PNR, group_code="COVID_19", reference_code=identity),
            "INVALID_COMMAND",
        )
        assert "personnummer" in str(data["message"]) and identity not in str(data["message"])
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
    # 191212121212 was born on 1912-12-12: no membership before that.
    rejected(
        await nurse.command("add", PNR, group_code="INFLUENSA", valid_from="1912-12-11"),
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
    corrected = await nurse.command("update", PNR, membership_id=membership_id, reference_code="B")
    assert corrected["type"] == "customer_group.updated", "a historical one can be corrected"
    # The group of a correction follows the rules of add, on the membership's valid_from.
    flu = await nurse.command("add", PNR, group_code="INFLUENSA")
    flu_id = flu["data"]["membership"]["membership_id"]
    await nurse.command("add", PNR, group_code="PNEUMOKOCK")
    rejected(
        await nurse.command("update", PNR, membership_id=flu_id, group_code="PNEUMOKOCK"),
        "ALREADY_ACTIVE",
    )
    rejected(
        await nurse.command("update", PNR, membership_id=flu_id, group_code="COVID"),
        "GROUP_NOT_SELECTABLE",
    )
    rejected(
        await nurse.command("update", PNR, membership_id=flu_id, group_code="NOPE"),
        "UNKNOWN_GROUP",
    )
    rejected(
        await nurse.command("update", PNR, membership_id=flu_id, group_code=None),
        "INVALID_COMMAND",
    )
    rejected(
        await nurse.command("remove", PNR, membership_id=flu_id, reason="deleted"),
        "INVALID_COMMAND",
    )
    rejected(
        await nurse.command(
            "remove", PNR, membership_id=flu_id, reason="entered_in_error", valid_to=str(today)
        ),
        "INVALID_COMMAND",
    )
    # Entered in error: never again removed, nor corrected.
    for removable in (membership_id, flu_id):  # a historical one and an active one
        voided = await nurse.command(
            "remove", PNR, membership_id=removable, reason="entered_in_error"
        )
        assert voided["data"]["membership"]["status"] == "entered_in_error"
    for reason in ("entered_in_error", "ended"):
        rejected(
            await nurse.command("remove", PNR, membership_id=flu_id, reason=reason),
            "ALREADY_HISTORICAL",
        )
    data = rejected(
        await nurse.command("update", PNR, membership_id=flu_id, reference_code="C"),
        "INVALID_COMMAND",
    )
    assert "entered in error" in str(data["message"])
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
    async with (
        running_groups_service(groups_settings) as service,
        nurse_client(service, kafka, infra) as nurse,
    ):
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

        # A start from a unit off the list: refused before anything else, no prompt.
        start = cloudevent(
            "vaccination.started",
            {"vaccination_id": "v-outsider", "user_id": "someone", "unit_id": "unit-2",
             "personnummer": PNR},
        )  # fmt: skip
        await kafka.send_event(nurse.topics.started, start, key="start-key")
        [refusal] = await nurse.events.wait_for(
            lambda e: e["data"].get("command_id") == start["id"]
        )
        rejected(refusal, "UNAUTHORIZED")
        # A popup is closed only by its own unit, even an allowed one.
        prompt = (await nurse.start("v-unit-1", PNR))["data"]
        close = await nurse.command(
            "prompt_close",
            PNR,
            {"user_id": "nurse-9", "unit_id": "unit-9"},
            prompt_id=prompt["prompt_id"],
            vaccination_id="v-unit-1",
        )
        rejected(close, "UNAUTHORIZED")

        refusals = {
            e["data"]["command_id"]: r
            for r, e in zip(nurse.events.records, nurse.events.events, strict=True)
            if e["data"].get("reason_code") == "UNAUTHORIZED"
        }
        assert len(refusals) == 6
        for record in refusals.values():
            data = json.loads(record.value)["data"]
            assert data["personnummer"] is None, "no patient data back"
            assert data["message"] == UNAUTHORIZED_MESSAGE
        assert refusals[start["id"]].key == b"start-key", "keyed as the refused record"
        assert not [p for p in nurse.prompts.events if p["data"]["vaccination_id"] == "v-outsider"]


async def test_a_reused_vaccination_id_re_sends_nothing(nurse: NurseClient) -> None:
    other = "200001012384"
    first = await nurse.start("v-reused", PNR)
    for personnummer, unit in ((other, "unit-1"), (PNR, "unit-2")):
        start = cloudevent(
            "vaccination.started",
            {"vaccination_id": "v-reused", "user_id": "u", "unit_id": unit,
             "personnummer": personnummer},
        )  # fmt: skip
        await nurse.kafka.send_event(nurse.topics.started, start, key=personnummer)
        [answer] = await nurse.events.wait_for(
            lambda e, start=start: e["data"].get("command_id") == start["id"]
        )
        data = rejected(answer, "INVALID_COMMAND")
        assert data["personnummer"] == personnummer, "the start's own personnummer only"
    # The same start again (same patient and unit) still gets its prompt back.
    await nurse.start("v-reused", PNR)
    prompts = await nurse.prompts.wait_for(
        lambda p: p["data"]["vaccination_id"] == "v-reused", count=2
    )
    assert {p["id"] for p in prompts} == {first["id"]}
    assert {p["data"]["personnummer"] for p in prompts} == {PNR}
    assert len(prompts) == 2, "the first prompt and the redelivery, never one for the reuse"
