"""The two flows of the user guide "Ange kundgrupp", over the real broker and database."""

from __future__ import annotations

import datetime as dt

from services.groups.bootstrap import GroupsService
from services.groups.domain.personnummer import Personnummer
from services.groups.service_layer import views
from tests.integration.conftest import ACTOR, NurseClient, wait_until_booked

PNR = "191212121212"


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
        subgroup_code="RISKGRUPP",
        reference_code="REF-1",
        valid_from=back_dated,
    )
    membership = added["data"]["membership"]
    assert membership["valid_from"] == back_dated and membership["version"] == 1
    # Wrong subgroup: correct it in place (the pen).
    updated = await nurse.command(
        "update", PNR, membership_id=membership["membership_id"], subgroup_code="ALDER_65_PLUS"
    )
    assert updated["type"] == "customer_group.updated"
    assert updated["data"]["previous"]["subgroup_code"] == "RISKGRUPP"
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

    async with groups_service.new_uow() as uow:
        card = await views.customer_card(
            uow,
            groups_service.catalog.current,
            Personnummer.parse(PNR),
            user_id="nurse-1",
            unit_id="unit-1",
        )
        await uow.commit()
    assert card["active"] == []
    assert [(m["group_code"], m["valid_from"], m["valid_to"]) for m in card["historical"]] == [
        ("PNEUMOKOCK", back_dated, ended)
    ]
