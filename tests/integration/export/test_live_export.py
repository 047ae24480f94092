"""The export service in-process over the real broker and database: what the groups
service's events become on the export topic, and that the topic's last value per key is
the database's state (compaction equivalence; with a SIGKILLed real process in
test_compaction.py)."""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import timedelta

from services.export.domain.records import MEMBERSHIP_RECORD, VACCINATION_RECORD
from services.groups.bootstrap import GroupsSettingsBundle
from tests.integration.conftest import ACTOR, NurseClient
from tests.integration.export.conftest import (
    PNR_A,
    PNR_B,
    PNR_C,
    PNR_D,
    PSEUDONYM_KEY,
    SCENARIO_PNRS,
    assert_live_matches_db,
    db_records,
    export_settings,
    last_values,
    leaks,
    mixed_scenario,
    record_bytes,
    running_export_service,
    stockholm_today,
    wait_for_state,
)
from tests.kafka_tools import KafkaTestClient
from tests.schema_validation import validate_event


def subject(pnr: str) -> str:
    return hmac.new(PSEUDONYM_KEY.encode(), pnr.encode(), hashlib.sha256).hexdigest()


async def test_adds_corrections_removals_and_doses_become_records(
    nurse: NurseClient, groups_settings: GroupsSettingsBundle, kafka: KafkaTestClient
) -> None:
    settings = export_settings(groups_settings)
    today = stockholm_today(settings)
    async with running_export_service(settings):
        scenario = await mixed_scenario(nurse, today)
        expected = await db_records(settings)
        records = await wait_for_state(kafka, settings.topics.export, expected)

    state = {key: json.loads(value) for key, value in last_values(records).items()}
    m = {label: state[mid]["data"] for label, mid in scenario.memberships.items()}
    # Only memberships and doses are exported; the two rejected commands are not.
    assert set(state) == {*scenario.memberships.values(), *scenario.vaccinations}
    assert {e["type"] for k, e in state.items() if k in scenario.vaccinations} == {
        VACCINATION_RECORD
    }
    assert {e["type"] for k, e in state.items() if k not in scenario.vaccinations} == {
        MEMBERSHIP_RECORD
    }
    # A correction in place: same key, next version, new subgroup and reference.
    assert m["a_flu"]["version"] == 2
    assert (m["a_flu"]["subgroup_code"], m["a_flu"]["subgroup_name"]) == (
        "ALDER_65_PLUS",
        "11. 65 år och äldre",
    )
    assert m["a_flu"]["reference_code"] == "R-2" and m["a_flu"]["status"] == "active"
    # A removal: historical with its period, never deleted.
    assert m["a_covid"]["status"] == "historical" and m["a_covid"]["version"] == 2
    assert m["a_covid"]["valid_to"] == today.isoformat()
    assert m["b_pneumo"]["status"] == "historical"
    assert m["b_pneumo"]["valid_from"] == (today - timedelta(days=30)).isoformat()
    assert m["b_pneumo"]["valid_to"] == (today - timedelta(days=10)).isoformat()
    assert m["b_pneumo"]["subgroup_code"] is None and m["b_pneumo"]["subgroup_name"] is None
    # The same group again after removal is a new membership, active.
    assert m["a_covid_again"]["status"] == "active" and m["a_covid_again"]["version"] == 1
    assert m["a_covid_again"]["subgroup_name"] == "Rekommenderad"
    # Added by mistake: the period stays, the status tells the warehouse to drop it.
    assert (m["b_mistake"]["status"], m["b_mistake"]["version"]) == ("entered_in_error", 2)
    assert (m["b_mistake"]["valid_from"], m["b_mistake"]["valid_to"]) == (today.isoformat(), None)
    # A correction of the group: the same key, now in the other group.
    assert (m["c_moved"]["group_code"], m["c_moved"]["group_name"]) == ("INFLUENSA", "Influensa")
    assert (m["c_moved"]["version"], m["c_moved"]["status"]) == (2, "active")
    # Provenance: who added it and who changed it last (null until a change).
    nurse_1, nurse_2 = ACTOR, {"user_id": "nurse-2", "unit_id": "unit-2"}
    assert (m["c_moved"]["created_by"], m["c_moved"]["updated_by"]) == (nurse_1, nurse_2)
    assert (m["c_travel"]["created_by"], m["c_travel"]["updated_by"]) == (nurse_1, None)
    assert m["c_travel"]["created_at"] == m["c_travel"]["updated_at"], "never changed"
    assert m["a_flu"]["created_at"] < m["a_flu"]["updated_at"]
    assert m["d_flu"]["version"] == 3 and m["d_flu"]["reference_code"] is None
    assert m["d_flu"]["subgroup_code"] == "ALDER_65_PLUS"
    for label, pnr in (
        ("a_flu", PNR_A),
        ("b_pneumo", PNR_B),
        ("c_travel", PNR_C),
        ("d_flu", PNR_D),
    ):
        assert m[label]["subject_id"] == subject(pnr)
        assert "personnummer" not in m[label]
    # Doses: the groups covering the day the popup closed (today). v-a1: closed (1),
    # confirmed again when COVID_19 was added again the same day (2), closed again (3).
    v_a1 = state["v-a1"]["data"]
    assert v_a1["version"] == 3 and v_a1["subject_id"] == subject(PNR_A)
    assert (v_a1["basis"], v_a1["status"], v_a1["missing_group"]) == ("popup", "completed", False)
    assert v_a1["administered_at"] is None and v_a1["vaccine"] is None
    assert sorted(
        (g["group_code"], g["subgroup_code"], g["reference_code"] or "") for g in v_a1["groups"]
    ) == [
        ("COVID_19", "REKOMMENDERAD", ""),
        ("COVID_19", "REKOMMENDERAD", "R-1"),  # ended today: it still applied today
        ("INFLUENSA", "ALDER_65_PLUS", "R-2"),
    ]
    assert {g["membership_id"] for g in v_a1["groups"]} == {
        scenario.memberships[label] for label in ("a_covid", "a_flu", "a_covid_again")
    }
    travel = [
        {
            "membership_id": scenario.memberships["c_travel"],
            "group_code": "OVRIGT",
            "group_name": m["c_travel"]["group_name"],
            "subgroup_code": "RESEVACCINATIONER",
            "subgroup_name": m["c_travel"]["subgroup_name"],
            "reference_code": None,
        }
    ]
    # c_moved, added later the same day, covers the day of both doses: confirmed again.
    moved = {
        "membership_id": scenario.memberships["c_moved"],
        "group_code": "INFLUENSA",
        "group_name": "Influensa",
        "subgroup_code": "ALDER_65_PLUS",
        "subgroup_name": "11. 65 år och äldre",
        "reference_code": None,
    }
    for dose in ("v-c1", "v-c2"):
        groups = sorted(state[dose]["data"]["groups"], key=lambda g: g["group_code"])
        assert groups == [moved, *travel]
    assert state["v-c1"]["data"]["unit_id"] == "unit-1"
    for record in records:  # every record ever sent, not only the last per key
        validate_event(json.loads(record.value))
        assert not leaks(record_bytes(record), SCENARIO_PNRS)
    # Compaction equivalence: the topic read from the start, last value per key, is what
    # the database's rows give through the same builder.
    assert_live_matches_db(last_values(records), expected)
