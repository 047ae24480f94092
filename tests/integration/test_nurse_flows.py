"""The two flows of the user guide "Ange kundgrupp", over the real broker and database."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

from sqlalchemy import select

from devinfra.provider import Infrastructure
from services.common.settings import GroupsSettings
from services.groups.adapters.orm import memberships
from services.groups.bootstrap import GroupsService, GroupsSettingsBundle
from services.groups.domain.personnummer import Personnummer
from services.groups.service_layer import views
from services.groups.service_layer.outgoing import membership_id_for
from tests.integration.conftest import (
    ACTOR,
    NurseClient,
    nurse_client,
    running_groups_service,
    wait_until_booked,
)
from tests.kafka_tools import KafkaTestClient, cloudevent

PNR = "191212121212"


async def _card(service: GroupsService, personnummer: str = PNR) -> dict[str, Any]:
    async with service.new_uow() as uow:
        card = await views.customer_card(
            uow,
            service.catalog.current,
            Personnummer.parse(personnummer),
            user_id="nurse-1",
            unit_id="unit-1",
        )
        await uow.commit()
    return card


async def test_with_popup_start_prompt_add_remove_close(
    nurse: NurseClient, groups_service: GroupsService
) -> None:
    await nurse.book(
        "b-popup",
        PNR,
        vaccine={"code": "J07BN01", "name": "Comirnaty", "dose": 10},
        requested_group={"group_code": "COVID_19", "subgroup_code": "REKOMMENDERAD"},
    )
    await wait_until_booked(groups_service, "b-popup")
    # 1-3: start the vaccination; the popup opens with the prompt.
    prompt = (
        await nurse.start(
            "v-popup", PNR, booking_id="b-popup", vaccine={"code": "J07BN01", "name": "Comirnaty"}
        )
    )["data"]
    assert prompt["required"] is True
    assert prompt["active"] == [] and prompt["historical"] == []
    codes = [g["group_code"] for g in prompt["catalog"]]
    assert {"COVID_19", "INFLUENSA", "PNEUMOKOCK", "OVRIGT"} <= set(codes)
    assert "COVID" not in codes, "retired groups are not selectable"
    covid = next(g for g in prompt["catalog"] if g["group_code"] == "COVID_19")
    assert {"subgroup_code": "REKOMMENDERAD", "name": "Rekommenderad"} in covid["subgroups"]
    assert prompt["suggestions"][0] == {
        "group_code": "COVID_19",
        "subgroup_code": "REKOMMENDERAD",
        "reason": "REQUESTED_AT_BOOKING",
    }
    # 4: the nurse adds groups in the popup ("Lägg till") — a customer may have several.
    covid_added = await nurse.command(
        "add",
        PNR,
        group_code="COVID_19",
        subgroup_code="REKOMMENDERAD",
        prompt_id=prompt["prompt_id"],
    )
    assert covid_added["type"] == "customer_group.added"
    flu_added = await nurse.command(
        "add",
        PNR,
        group_code="INFLUENSA",
        subgroup_code="ALDER_65_PLUS",
        prompt_id=prompt["prompt_id"],
    )
    flu = flu_added["data"]["membership"]
    assert flu["group_name"] == "Influensa" and flu["subgroup_name"] == "11. 65 år och äldre"
    # ... and removes a wrong one with the red ball.
    removed = await nurse.command("remove", PNR, membership_id=flu["membership_id"])
    assert removed["type"] == "customer_group.removed"
    assert removed["data"]["membership"]["status"] == "historical"
    # 5: closing the popup records the groups covering the day of this dose: the group
    # ended today still applied today (periods are inclusive).
    confirmed = await nurse.command(
        "prompt_close", PNR, prompt_id=prompt["prompt_id"], vaccination_id="v-popup"
    )
    assert confirmed["type"] == "customer_group.vaccination_groups_confirmed"
    data = confirmed["data"]
    assert data["vaccination_id"] == "v-popup" and data["prompt_id"] == prompt["prompt_id"]
    assert [m["group_code"] for m in data["memberships"]] == ["COVID_19", "INFLUENSA"]
    assert data["actor"] == ACTOR

    # The next vaccination's popup shows the active and the historical group.
    second = (await nurse.start("v-popup-2", PNR))["data"]
    assert second["required"] is False
    assert [m["group_code"] for m in second["active"]] == ["COVID_19"]
    assert [m["group_code"] for m in second["historical"]] == ["INFLUENSA"]
    assert all(s["group_code"] != "COVID_19" for s in second["suggestions"])


async def test_without_popup_add_correct_remove_history(
    nurse: NurseClient, groups_service: GroupsService
) -> None:
    today = dt.date.today()
    back_dated = (today - dt.timedelta(days=30)).isoformat()
    # After-registration (efterregistrering): add with a back-dated valid_from.
    added = await nurse.command(
        "add",
        PNR,
        group_code="PNEUMOKOCK",
        reference_code="REF-1",
        valid_from=back_dated,
    )
    membership = added["data"]["membership"]
    assert membership["valid_from"] == back_dated and membership["version"] == 1
    # Subgroup missing: correct it in place (the pen).
    updated = await nurse.command(
        "update", PNR, membership_id=membership["membership_id"], subgroup_code="ALDER_65_PLUS"
    )
    assert updated["type"] == "customer_group.updated"
    assert updated["data"]["previous"]["subgroup_code"] is None
    assert updated["data"]["membership"]["subgroup_code"] == "ALDER_65_PLUS"
    assert updated["data"]["membership"]["reference_code"] == "REF-1", "absent field unchanged"
    assert updated["data"]["membership"]["version"] == 2
    cleared = await nurse.command(
        "update", PNR, membership_id=membership["membership_id"], reference_code=None
    )
    assert cleared["data"]["membership"]["reference_code"] is None, "null clears"
    # Remove: the group becomes historical with its period; nothing is deleted.
    ended = (today - dt.timedelta(days=1)).isoformat()
    removed = await nurse.command(
        "remove", PNR, membership_id=membership["membership_id"], valid_to=ended
    )
    after = removed["data"]["membership"]
    assert (after["status"], after["valid_from"], after["valid_to"], after["version"]) == (
        "historical",
        back_dated,
        ended,
        4,
    )

    card = await _card(groups_service)
    assert card["active"] == []
    assert [(m["group_code"], m["valid_from"], m["valid_to"]) for m in card["historical"]] == [
        ("PNEUMOKOCK", back_dated, ended)
    ]


# -- contract revision 2: memberships ----------------------------------------------------

OTHER_NURSE = {"user_id": "nurse-2", "unit_id": "unit-2"}


async def _stored(service: GroupsService, membership_id: str) -> Any:
    async with service.engine.connect() as connection:
        return (
            await connection.execute(
                select(memberships).where(memberships.c.membership_id == membership_id)
            )
        ).one()


async def test_the_pencil_changes_the_group_of_the_same_membership(
    nurse: NurseClient, groups_service: GroupsService
) -> None:
    added = await nurse.command(
        "add", PNR, group_code="PNEUMOKOCK", subgroup_code="ALDER_65_PLUS", reference_code="R-1"
    )
    membership = added["data"]["membership"]
    assert (membership["created_by"], membership["updated_by"]) == (ACTOR, None)
    updated = await nurse.command(
        "update",
        PNR,
        OTHER_NURSE,
        membership_id=membership["membership_id"],
        group_code="INFLUENSA",
        subgroup_code="ALDER_65_PLUS",
    )
    assert updated["type"] == "customer_group.updated"
    after, before = updated["data"]["membership"], updated["data"]["previous"]
    assert (before["group_code"], before["version"], before["updated_by"]) == (
        "PNEUMOKOCK",
        1,
        None,
    )
    assert (after["membership_id"], after["group_code"], after["group_name"]) == (
        membership["membership_id"],
        "INFLUENSA",
        "Influensa",
    )
    assert (after["subgroup_code"], after["reference_code"], after["version"]) == (
        "ALDER_65_PLUS",
        "R-1",
        2,
    )
    assert (after["created_at"], after["created_by"], after["updated_by"]) == (
        membership["created_at"],
        ACTOR,
        OTHER_NURSE,
    )
    # The card and the next popup show the corrected membership with who did what.
    card = await _card(groups_service)
    assert card["active"] == [after] and card["historical"] == []
    prompt = (await nurse.start("v-pencil", PNR))["data"]
    assert prompt["active"] == [after]
    row = await _stored(groups_service, membership["membership_id"])
    assert (row.group_code, row.version, row.status) == ("INFLUENSA", 2, "active")
    assert (row.created_by_user, row.updated_by_user, row.updated_by_unit) == (
        "nurse-1",
        "nurse-2",
        "unit-2",
    )


async def test_a_group_entered_in_error_is_gone_from_the_card_and_the_popup(
    nurse: NurseClient, groups_service: GroupsService
) -> None:
    today = dt.date.today()
    covid = (await nurse.command("add", PNR, group_code="COVID_19", subgroup_code="REKOMMENDERAD"))[
        "data"
    ]["membership"]
    flu = (
        await nurse.command(
            "add",
            PNR,
            group_code="INFLUENSA",
            valid_from=(today - dt.timedelta(days=30)).isoformat(),
        )
    )["data"]["membership"]
    ended = (today - dt.timedelta(days=10)).isoformat()
    await nurse.command("remove", PNR, membership_id=flu["membership_id"], valid_to=ended)
    # A historical one and an active one, both added by mistake.
    for membership, valid_to in ((flu, ended), (covid, None)):
        removed = await nurse.command(
            "remove", PNR, membership_id=membership["membership_id"], reason="entered_in_error"
        )
        assert removed["type"] == "customer_group.removed"
        data = removed["data"]
        assert (data["reason"], data["actor"], data["membership"]["status"]) == (
            "entered_in_error",
            ACTOR,
            "entered_in_error",
        )
        assert data["membership"]["valid_to"] == valid_to, "the period is kept"
        row = await _stored(groups_service, membership["membership_id"])
        assert row.status == "entered_in_error" and row.valid_to == (
            dt.date.fromisoformat(valid_to) if valid_to else None
        )
    card = await _card(groups_service)
    assert (card["active"], card["historical"]) == ([], [])
    prompt = (await nurse.start("v-in-error", PNR))["data"]
    assert (prompt["active"], prompt["historical"], prompt["historical_total"]) == ([], [], 0)
    assert prompt["required"] is True
    # The group is free again.
    again = await nurse.command("add", PNR, group_code="COVID_19")
    assert again["type"] == "customer_group.added"


async def test_a_popup_lists_the_50_latest_ended_groups_and_the_card_all(
    nurse: NurseClient, groups_service: GroupsService
) -> None:
    first_day = dt.date.today() - dt.timedelta(days=200)
    sent: list[str] = []
    for n in range(56):
        day = (first_day + dt.timedelta(days=n)).isoformat()
        add = cloudevent(
            "customer_group.add",
            {"personnummer": PNR, "actor": ACTOR, "group_code": "INFLUENSA", "valid_from": day},
        )
        membership_id = membership_id_for(add["id"])
        remove = {"personnummer": PNR, "actor": ACTOR, "membership_id": membership_id}
        # The latest of them was added by mistake: counted nowhere.
        remove |= {"reason": "entered_in_error"} if n == 55 else {"valid_to": day}
        for event in (add, cloudevent("customer_group.remove", remove)):
            await nurse.kafka.send_event(nurse.topics.commands, event, key=PNR)
            sent.append(event["id"])
    answers = await nurse.events.wait_for(
        lambda e: e["data"].get("command_id") in sent, count=len(sent), timeout=120
    )
    assert {e["type"] for e in answers} == {"customer_group.added", "customer_group.removed"}
    prompt = (await nurse.start("v-history", PNR))["data"]
    assert prompt["historical_total"] == 55
    valid_to = [m["valid_to"] for m in prompt["historical"]]
    expected = [(first_day + dt.timedelta(days=n)).isoformat() for n in range(54, 4, -1)]
    assert valid_to == expected, "the 50 most recently ended, latest first"
    card = await _card(groups_service)
    assert len(card["historical"]) == 55 and "historical_total" not in card


def _catalog_with_a_group_ended_since(today: dt.date) -> dict[str, Any]:
    """INFLUENSA as shipped, and SASONG, a group that applied from 90 to 7 days ago."""
    return {
        "version": "2026-11-30.1",
        "groups": [
            {
                "code": "INFLUENSA",
                "name": "Influensa",
                "valid_from": "2000-01-01",
                "valid_to": None,
                "subgroups": [
                    {"code": "ALDER_65_PLUS", "name": "11. 65 år och äldre",
                     "valid_from": "2000-01-01", "valid_to": None, "rule": None},
                ],
            },
            {
                "code": "SASONG",
                "name": "Säsong",
                "valid_from": (today - dt.timedelta(days=90)).isoformat(),
                "valid_to": (today - dt.timedelta(days=7)).isoformat(),
                "subgroups": [],
            },
        ],
    }  # fmt: skip


async def test_an_after_registration_three_weeks_back_into_a_group_retired_since(
    groups_settings: GroupsSettingsBundle,
    kafka: KafkaTestClient,
    infra: Infrastructure,
    tmp_path: Path,
) -> None:
    today = dt.date.today()
    catalog_file = tmp_path / "catalog.json"
    catalog_file.write_text(json.dumps(_catalog_with_a_group_ended_since(today)), "utf-8")
    groups_settings.groups = GroupsSettings(
        consumer_group=groups_settings.groups.consumer_group, catalog_file=str(catalog_file)
    )
    three_weeks_back = (today - dt.timedelta(days=21)).isoformat()
    last_day = (today - dt.timedelta(days=7)).isoformat()
    async with (
        running_groups_service(groups_settings) as service,
        nurse_client(service, kafka, infra) as nurse,
    ):
        added = await nurse.command("add", PNR, group_code="SASONG", valid_from=three_weeks_back)
        assert added["type"] == "customer_group.added", added["data"]
        stored = added["data"]["membership"]
        assert (stored["status"], stored["valid_from"], stored["valid_to"]) == (
            "historical",
            three_weeks_back,
            last_day,
        )
        assert (stored["version"], stored["created_by"]) == (1, ACTOR)
        # Not on a day it did not apply: today, or before it began.
        for day in (today, today - dt.timedelta(days=91)):
            refused = await nurse.command(
                "add", PNR, group_code="SASONG", valid_from=day.isoformat()
            )
            assert refused["data"]["reason_code"] == "GROUP_NOT_SELECTABLE"
        # A correction of an active membership into it ends it on that day too.
        flu = await nurse.command("add", PNR, group_code="INFLUENSA", valid_from=three_weeks_back)
        corrected = await nurse.command(
            "update", PNR, membership_id=flu["data"]["membership"]["membership_id"],
            group_code="SASONG",
        )  # fmt: skip
        assert corrected["data"]["previous"]["status"] == "active"
        after = corrected["data"]["membership"]
        assert (after["group_code"], after["status"], after["valid_to"]) == (
            "SASONG",
            "historical",
            last_day,
        )
        card = await _card(service)
        assert card["active"] == []
        assert [m["group_code"] for m in card["historical"]] == ["SASONG", "SASONG"]
