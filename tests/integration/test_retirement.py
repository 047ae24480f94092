"""Retirement over the real broker and database: a catalog import ends a group, the
sweep ends the active memberships in it on its last day (once), the doses on later days
are confirmed again without it, and an after-registration into it still works for the
days it applied."""

from __future__ import annotations

import json
from datetime import datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from services.groups.bootstrap import GroupsService
from services.groups.catalog import default_catalog_path
from services.groups.domain.personnummer import luhn_check_digit
from services.groups.service_layer.retirement import retire_ended_memberships
from tests.integration.conftest import NurseClient, groups_cli, topic_env
from tests.schema_validation import validate_event

PNR = "191212121212"
OTHER_PNR = "19800101123" + luhn_check_digit("800101123")[-1]
STOCKHOLM = ZoneInfo("Europe/Stockholm")
REMOVED = "customer_group.removed"
CONFIRMED = "customer_group.vaccination_groups_confirmed"


def ending_pneumokock(tmp_path: Path, last_day: str) -> Path:
    data = json.loads(default_catalog_path().read_text(encoding="utf-8"))
    data["version"] = "2099-02-01.1"
    for group in data["groups"]:
        if group["code"] == "PNEUMOKOCK":
            group["valid_to"] = last_day
    path = tmp_path / "region.json"
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return path


def confirmation(nurse: NurseClient, vaccination_id: str, version: int) -> Any:
    return nurse.events.wait_for(
        lambda e: (
            e["type"] == CONFIRMED
            and e["data"]["vaccination_id"] == vaccination_id
            and e["data"]["version"] == version
        )
    )


def group_codes(event: dict[str, Any]) -> set[tuple[str, str | None]]:
    return {(m["group_code"], m["subgroup_code"]) for m in event["data"]["memberships"]}


async def test_an_import_that_ends_a_group_retires_its_memberships_and_doses_follow(
    nurse: NurseClient, groups_service: GroupsService, tmp_path: Path
) -> None:
    today = groups_service.clock.today()
    three_weeks_ago = today - timedelta(days=21)
    then = datetime.combine(three_weeks_ago, time(10, 0), tzinfo=STOCKHOLM).isoformat()
    pneumo = await nurse.command(
        "add",
        PNR,
        group_code="PNEUMOKOCK",
        subgroup_code="ALDER_65_PLUS",
        valid_from=three_weeks_ago.isoformat(),
    )
    await nurse.command("add", PNR, group_code="INFLUENSA", subgroup_code="ALDER_65_PLUS")
    pneumo_id = pneumo["data"]["membership"]["membership_id"]
    both = {("PNEUMOKOCK", "ALDER_65_PLUS"), ("INFLUENSA", "ALDER_65_PLUS")}
    old_dose = await nurse.answer(await nurse.register("v-then", PNR, administered_at=then))
    assert group_codes(old_dose) == {("PNEUMOKOCK", "ALDER_65_PLUS")}
    new_dose = await nurse.answer(await nurse.register("v-today", PNR))
    assert group_codes(new_dose) == both

    # The region's next catalog: Pneumokockvaccin ended ten days ago.
    last_day = today - timedelta(days=10)
    settings = groups_service.settings
    env = {**topic_env(settings.topics), "GROUPS_TIMEZONE": settings.groups.timezone}
    path = ending_pneumokock(tmp_path, last_day.isoformat())
    dry = await groups_cli(
        settings.database.database_url, "import-catalog", "--dry-run", str(path), env=env
    )
    assert dry.returncode == 0, dry.stderr
    assert json.loads(dry.stdout.splitlines()[0])["membership_id"] == pneumo_id
    result = await groups_cli(settings.database.database_url, "import-catalog", str(path), env=env)
    assert result.returncode == 0, result.stderr

    # What every process's schedule runs after it sees the new catalog.
    await groups_service.reload_catalog()
    await retire_ended_memberships(groups_service.new_uow, groups_service.deps)
    [removed] = await nurse.events.wait_for(
        lambda e: e["type"] == REMOVED and e["data"]["membership"]["membership_id"] == pneumo_id
    )
    validate_event(removed)
    data = removed["data"]
    assert (data["reason"], data["actor"], data["command_id"]) == ("group_retired", None, None)
    assert data["membership"]["valid_to"] == last_day.isoformat()
    assert (data["membership"]["status"], data["membership"]["version"]) == ("historical", 2)
    assert data["membership"]["updated_by"] is None

    # The dose of today loses the group (confirmed again, no command); the one three
    # weeks back keeps it.
    [again] = await confirmation(nurse, "v-today", 2)
    validate_event(again)
    assert again["data"]["command_id"] is None and again["data"]["actor"] is None
    assert group_codes(again) == {("INFLUENSA", "ALDER_65_PLUS")}

    # Another process's sweep (or the next hour's) ends nothing more.
    assert await retire_ended_memberships(groups_service.new_uow, groups_service.deps) == 0
    marker = await nurse.command("add", PNR, group_code="OVRIGT")
    assert marker["type"] == "customer_group.added"
    removals = [
        e
        for e in nurse.events.events
        if e["type"] == REMOVED and e["data"]["membership"]["membership_id"] == pneumo_id
    ]
    assert len(removals) == 1
    assert not [
        e
        for e in nurse.events.events
        if e["type"] == CONFIRMED
        and e["data"]["vaccination_id"] == "v-then"
        and e["data"]["version"] > 1
    ]

    # An after-registration three weeks back still chooses the group that applied then,
    # stored already ended on its last day; a dose of that day has it.
    late = await nurse.command(
        "add",
        OTHER_PNR,
        group_code="PNEUMOKOCK",
        subgroup_code="ALDER_65_PLUS",
        valid_from=three_weeks_ago.isoformat(),
    )
    assert late["type"] == "customer_group.added", late["data"]
    membership = late["data"]["membership"]
    assert (membership["status"], membership["valid_to"]) == ("historical", last_day.isoformat())
    dose_then = await nurse.answer(await nurse.register("v-late", OTHER_PNR, administered_at=then))
    assert dose_then["data"]["basis"] == "registration"
    assert group_codes(dose_then) == {("PNEUMOKOCK", "ALDER_65_PLUS")}
    assert dose_then["data"]["missing_group"] is False
    dose_now = await nurse.answer(await nurse.register("v-late-today", OTHER_PNR))
    assert dose_now["data"]["memberships"] == [] and dose_now["data"]["missing_group"] is True
