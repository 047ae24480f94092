"""The dose-level export record over the real broker and database: a dose registered
without a popup becomes a `vaccination_record` with every field of the contract, and the
record follows every new version (a correction of its group after the dose, a dose
entered in error), byte for byte what the database's rows give."""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from services.export.domain.records import VACCINATION_RECORD
from services.groups.bootstrap import GroupsSettingsBundle
from tests.integration.conftest import NurseClient
from tests.integration.export.conftest import (
    PNR_A,
    PNR_B,
    PSEUDONYM_KEY,
    assert_live_matches_db,
    db_records,
    export_settings,
    last_values,
    leaks,
    record_bytes,
    running_export_service,
    stockholm_today,
    wait_for_state,
)
from tests.kafka_tools import KafkaTestClient
from tests.schema_validation import validate_event


async def test_a_registered_dose_is_exported_and_follows_every_version(
    nurse: NurseClient, groups_settings: GroupsSettingsBundle, kafka: KafkaTestClient
) -> None:
    settings = export_settings(groups_settings)
    zone = ZoneInfo(settings.timezone)
    today = stockholm_today(settings)
    week_ago = today - timedelta(days=7)
    given = datetime(week_ago.year, week_ago.month, week_ago.day, 0, 20, tzinfo=zone)
    async with running_export_service(settings):
        added = await nurse.command(
            "add",
            PNR_A,
            group_code="INFLUENSA",
            subgroup_code="ALDER_65_PLUS",
            reference_code="R-1",
            valid_from=week_ago.isoformat(),
        )
        membership = added["data"]["membership"]
        registration = await nurse.register(
            "v-export",
            PNR_A,
            administered_at=given.astimezone(ZoneInfo("UTC")).isoformat(),  # the day before in UTC
            vaccine={"code": "J07BB02", "name": "Influvac Tetra", "dose_number": 2},
        )
        await nurse.answer(registration)
        first = await db_records(settings)
        records = await wait_for_state(kafka, settings.topics.export, first)
        v1 = json.loads(last_values(records)["v-export"])

        # The pencil after the dose, on the group itself: the record follows.
        await nurse.command(
            "update",
            PNR_A,
            membership_id=membership["membership_id"],
            group_code="PNEUMOKOCK",
            subgroup_code="ALDER_65_PLUS",
        )
        # A dose registered by mistake, for another customer with no group at all.
        await nurse.answer(await nurse.register("v-missing", PNR_B))
        wrong = await nurse.register("v-missing", PNR_B, status="entered_in_error")
        await nurse.answer(wrong)
        await nurse.events.wait_for(
            lambda e: e["data"].get("vaccination_id") == "v-export" and e["data"]["version"] == 2
        )
        expected = await db_records(settings)
        records = await wait_for_state(kafka, settings.topics.export, expected)

    assert v1["type"] == VACCINATION_RECORD
    subject = hmac.new(PSEUDONYM_KEY.encode(), PNR_A.encode(), hashlib.sha256).hexdigest()
    group: dict[str, Any] = {
        "membership_id": membership["membership_id"],
        "group_code": "INFLUENSA",
        "group_name": membership["group_name"],
        "subgroup_code": "ALDER_65_PLUS",
        "subgroup_name": membership["subgroup_name"],
        "reference_code": "R-1",
    }
    assert v1["data"] == {
        "vaccination_id": "v-export",
        "subject_id": subject,
        "key_id": v1["data"]["key_id"],
        "unit_id": "unit-1",
        "administered_at": given.isoformat(),  # in the clinics' zone
        "vaccine": {"code": "J07BB02", "name": "Influvac Tetra", "dose_number": 2},
        "confirmed_at": None,
        "basis": "registration",
        "groups": [group],
        "missing_group": False,
        "status": "completed",
        "version": 1,
    }
    assert v1["data"]["key_id"].startswith("k-")

    state = {key: json.loads(value) for key, value in last_values(records).items()}
    v2 = state["v-export"]["data"]
    assert v2["version"] == 2
    assert v2["groups"] == [
        {
            **group,
            "group_code": "PNEUMOKOCK",
            "group_name": "Pneumokockvaccin",
            "subgroup_name": "65 år och äldre",
        }
    ]
    assert {k: v for k, v in v2.items() if k not in ("groups", "version")} == {
        k: v for k, v in v1["data"].items() if k not in ("groups", "version")
    }
    missing = state["v-missing"]["data"]
    assert (missing["status"], missing["version"], missing["groups"]) == (
        "entered_in_error",
        2,
        [],
    )
    assert missing["missing_group"] is False, "a dose never given misses no group"
    versions = [
        json.loads(r.value)["data"]["version"]
        for r in records
        if r.key == b"v-missing" and json.loads(r.value)["type"] == VACCINATION_RECORD
    ]
    assert versions[:2] == [1, 2]
    first_missing = next(r for r in records if r.key == b"v-missing")
    assert json.loads(first_missing.value)["data"]["missing_group"] is True
    for record in records:
        validate_event(json.loads(record.value))
        assert not leaks(record_bytes(record), (PNR_A, PNR_B))
    assert_live_matches_db(last_values(records), expected)
