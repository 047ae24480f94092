"""Record building (pure): pseudonyms, instants, the row mapping, and that an event and a
database row of the same state give the same bytes."""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from services.common.envelope import PoisonRecord, decode_cloudevent, new_event
from services.export.domain.records import (
    EXPORT_SOURCE,
    MEMBERSHIP_FIELDS,
    MEMBERSHIP_RECORD,
    VACCINATION_RECORD,
    Pseudonymizer,
    RecordBuilder,
    local_instant,
    membership_from_row,
    membership_record,
    record_uuid5,
)
from services.export.service_layer.pipeline import record_value
from services.export.service_layer.translate import records_from_event
from services.groups.adapters import rows
from services.groups.adapters.rows import MembershipWrite
from services.groups.catalog import default_catalog_path
from services.groups.domain.catalog import Catalog
from services.groups.domain.doses import Basis, Dose, DoseStatus, Vaccine
from services.groups.domain.membership import Actor, Membership, MembershipStatus
from services.groups.service_layer import messages

KEY = b"unit-test-pseudonym-key-0123456789"
PNR = "191212121212"
STOCKHOLM = ZoneInfo("Europe/Stockholm")
BUILDER = RecordBuilder(Pseudonymizer(KEY), STOCKHOLM)
CATALOG = Catalog.from_dict(json.loads(default_catalog_path().read_text(encoding="utf-8")))
NOW = datetime(2026, 11, 26, 13, 35, 12, 80_000, tzinfo=STOCKHOLM)
CREATED = datetime(2026, 10, 1, 9, 5, 1, 5, tzinfo=STOCKHOLM)  # summer time: +02:00
MID = "82d0533d-8d51-57d0-be88-dfdc9f37ef80"


def membership(
    group: str = "INFLUENSA", subgroup: str | None = "ALDER_65_PLUS", **changes: Any
) -> Membership:
    fields: dict[str, Any] = {
        "membership_id": MID,
        "group_code": group,
        "subgroup_code": subgroup,
        "reference_code": "REF-1",
        "valid_from": date(2026, 10, 1),
        "valid_to": None,
        "version": 1,
        "status": MembershipStatus.ACTIVE,
        "created_at": CREATED,
        "created_by": Actor("nurse-1", "unit-1"),
        "updated_by": None,
    }
    if changes.get("valid_to") is not None:
        fields["status"] = MembershipStatus.HISTORICAL
    return Membership(**{**fields, **changes})


def row_of(m: Membership, updated_at: datetime = NOW) -> dict[str, Any]:
    """The row the export's query returns: the table's columns plus the catalog names
    its left joins find (None where the code is not in the catalog)."""
    group_name = sub_name = None
    for group in CATALOG.groups:
        if group.code == m.group_code:
            group_name = group.name
            sub_name = next((s.name for s in group.subgroups if s.code == m.subgroup_code), None)
    row = MembershipWrite(PNR, m, new=True, updated_at=updated_at).row()
    return {
        **row,  # the columns as the groups service writes them
        # asyncpg hands out timestamptz in UTC
        "created_at": m.created_at.astimezone(UTC),
        "updated_at": updated_at.astimezone(UTC),
        "catalog_group_name": group_name,
        "catalog_subgroup_name": sub_name,
    }


# -- pseudonyms -----------------------------------------------------------------


def test_subject_id_is_the_keyed_hmac_of_the_personnummer() -> None:
    subject = Pseudonymizer(KEY).subject_id(PNR)
    assert subject == hmac.new(KEY, PNR.encode(), hashlib.sha256).hexdigest()
    assert subject == Pseudonymizer(KEY).subject_id(PNR), "stable per key"
    assert subject != Pseudonymizer(KEY + b"x").subject_id(PNR), "another key, another id"
    assert subject != Pseudonymizer(KEY).subject_id("191212121213")
    assert len(subject) == 64 and PNR not in subject and PNR[2:] not in subject


def test_a_short_pseudonym_key_is_refused() -> None:
    with pytest.raises(ValueError, match="16 bytes"):
        Pseudonymizer(b"too-short")


# -- instants -----------------------------------------------------------------


def test_one_instant_gives_one_text_whatever_offset_it_came_with() -> None:
    as_utc = NOW.astimezone(UTC)
    as_text = datetime.fromisoformat(NOW.isoformat())  # fixed +01:00, as parsed from JSON
    assert local_instant(as_utc, STOCKHOLM) == local_instant(as_text, STOCKHOLM)
    assert local_instant(as_utc, STOCKHOLM) == "2026-11-26T13:35:12.080000+01:00"
    summer = datetime(2026, 7, 1, 10, 0, tzinfo=UTC)
    assert local_instant(summer, STOCKHOLM) == "2026-07-01T12:00:00+02:00"


def test_a_naive_instant_is_refused() -> None:
    with pytest.raises(ValueError):
        local_instant(datetime(2026, 11, 26, 12, 0), STOCKHOLM)


# -- database rows as the groups service shows memberships ---------------------


@pytest.mark.parametrize(
    ("group", "subgroup", "valid_to"),
    [
        ("INFLUENSA", "ALDER_65_PLUS", None),
        ("PNEUMOKOCK", None, None),
        ("COVID", "OVRIG_ALLMANHET_18_64", date(2026, 10, 27)),  # retired, still named
        ("INFLUENSA", "NOT_IN_CATALOG", None),
        ("NOT_IN_CATALOG", "X", date(2026, 11, 1)),
        ("NOT_IN_CATALOG", None, None),
    ],
)
def test_row_mapping_equals_the_groups_service_view(
    group: str, subgroup: str | None, valid_to: date | None
) -> None:
    m = membership(group, subgroup, valid_to=valid_to, version=3)
    assert membership_from_row(row_of(m), STOCKHOLM) == messages.membership_view(m, CATALOG)


def test_row_mapping_of_provenance_and_a_stored_status() -> None:
    nurse, other = Actor("nurse-1", "unit-1"), Actor("nurse-2", "unit-2")
    m = membership(status=MembershipStatus.ENTERED_IN_ERROR, version=2, updated_by=other)
    view = membership_from_row(row_of(m), STOCKHOLM)
    assert view == messages.membership_view(m, CATALOG)
    assert (view["status"], view["valid_to"]) == ("entered_in_error", None)
    assert (view["created_at"], view["created_by"], view["updated_by"]) == (
        "2026-10-01T09:05:01.000005+02:00",
        {"user_id": nurse.user_id, "unit_id": nurse.unit_id},
        {"user_id": other.user_id, "unit_id": other.unit_id},
    )
    by_service = membership(created_by=None)
    assert membership_from_row(row_of(by_service), STOCKHOLM)["created_by"] is None


# -- the live path and the row path give the same bytes -------------------------


def _through_the_wire(type_: str, data: dict[str, Any], time: datetime) -> Any:
    """An event as the groups service sends it and the export decodes it."""
    return decode_cloudevent(new_event(type_, messages.EVENT_SOURCE, data, time=time).to_bytes())


@pytest.mark.parametrize("status", ["historical", "entered_in_error"])
def test_a_membership_event_and_its_row_give_the_same_record(status: str) -> None:
    m = membership(
        valid_to=date(2026, 11, 20),
        version=2,
        status=MembershipStatus(status),
        updated_by=Actor("u", "unit-1"),
    )
    data = {
        "command_id": "c-1",
        "personnummer": PNR,
        "actor": {"user_id": "u", "unit_id": "unit-1"},
        "reason": "ended" if status == "historical" else status,
        "membership": messages.membership_view(m, CATALOG),
    }
    [live] = records_from_event(_through_the_wire(messages.REMOVED, data, NOW), BUILDER)
    from_row = BUILDER.membership_from_row(row_of(m))
    assert record_value(live) == record_value(from_row)
    assert live.key == MID and live.data["status"] == status
    assert live.data["created_at"] == "2026-10-01T09:05:01.000005+02:00"
    assert live.data["updated_by"] == {"user_id": "u", "unit_id": "unit-1"}


def test_created_at_is_written_in_the_export_zone_whatever_offset_it_came_with() -> None:
    view = messages.membership_view(membership(), CATALOG)
    as_utc = {**view, "created_at": CREATED.astimezone(UTC).isoformat()}
    assert BUILDER.membership(as_utc, PNR, NOW).data == BUILDER.membership(view, PNR, NOW).data


@pytest.mark.parametrize("created_at", [None, "", "yesterday", "2026-10-01T09:05:01"])
def test_a_membership_event_without_an_instant_of_creation_is_poison(created_at: Any) -> None:
    """An event from before contract revision 2 (no created_at), or a broken one: the
    backfill republishes the membership from the database instead."""
    view = {**messages.membership_view(membership(), CATALOG), "created_at": created_at}
    data = {"command_id": "c", "personnummer": PNR, "actor": None, "membership": view}
    with pytest.raises(PoisonRecord) as raised:
        records_from_event(_through_the_wire(messages.ADDED, data, NOW), BUILDER)
    assert raised.value.error_code == "SCHEMA_VIOLATION"


def _dose(**changes: Any) -> Dose:
    fields: dict[str, Any] = {
        "vaccination_id": "v-1",
        "personnummer": PNR,
        "unit_id": "unit-1",
        "basis": Basis.REGISTRATION,
        "status": DoseStatus.COMPLETED,
        "prompt_id": None,
        "confirmed_at": NOW - timedelta(minutes=3),
        # Given just after midnight in Stockholm: still the 26th there.
        "administered_at": datetime(2026, 11, 25, 23, 5, tzinfo=UTC),
        "vaccine": Vaccine("J07BN01", "Comirnaty", 3),
        "actor": Actor("u", "unit-1"),
        "memberships": (messages.membership_view(membership(), CATALOG),),
        "version": 2,
        "command_id": "c-2",
        "updated_at": NOW,
    }
    return Dose(**{**fields, **changes})


def _row_of(dose: Dose) -> dict[str, Any]:
    """What the export's query returns for the groups service's row of `dose`: JSONB
    decoded, timestamptz in UTC."""
    row = rows.dose_row(dose)
    for name in ("memberships", "vaccine"):
        row[name] = json.loads(row[name]) if row[name] is not None else None
    for name in ("confirmed_at", "administered_at", "updated_at"):
        row[name] = row[name].astimezone(UTC) if row[name] is not None else None
    return row


@pytest.mark.parametrize(
    "dose",
    [
        _dose(),
        _dose(
            basis=Basis.POPUP,
            administered_at=None,
            vaccine=None,
            memberships=(),
            prompt_id="p",
            actor=None,
            command_id=None,
        ),
        _dose(status=DoseStatus.ENTERED_IN_ERROR, memberships=(), confirmed_at=None),
    ],
    ids=["registered", "popup only", "entered in error"],
)
def test_a_confirmation_event_and_its_row_give_the_same_record(dose: Dose) -> None:
    data = messages.confirmation_data(dose)
    [live] = records_from_event(_through_the_wire(messages.CONFIRMED, data, NOW), BUILDER)
    assert record_value(live) == record_value(BUILDER.vaccination_from_row(_row_of(dose)))
    assert live.key == "v-1" and live.updated_at == NOW.isoformat()
    assert live.data["missing_group"] is dose.missing_group
    assert live.data["status"] == dose.status.value and live.data["basis"] == dose.basis.value


def test_the_vaccination_record_has_the_contracts_fields() -> None:
    [live] = records_from_event(
        _through_the_wire(messages.CONFIRMED, messages.confirmation_data(_dose()), NOW), BUILDER
    )
    assert live.data == {
        "vaccination_id": "v-1",
        "subject_id": hmac.new(KEY, PNR.encode(), hashlib.sha256).hexdigest(),
        "key_id": BUILDER.pseudonymizer.key_id,
        "unit_id": "unit-1",
        "administered_at": "2026-11-26T00:05:00+01:00",
        "vaccine": {"code": "J07BN01", "name": "Comirnaty", "dose_number": 3},
        "confirmed_at": (NOW - timedelta(minutes=3)).isoformat(),
        "basis": "registration",
        "groups": [
            {
                "membership_id": MID,
                "group_code": "INFLUENSA",
                "group_name": "Influensa",
                "subgroup_code": "ALDER_65_PLUS",
                "subgroup_name": "11. 65 år och äldre",
                "reference_code": "REF-1",
            }
        ],
        "missing_group": False,
        "status": "completed",
        "version": 2,
    }


def test_a_confirmation_of_revision_1_is_a_completed_popup_dose() -> None:
    """Events written before registrations existed are still exported."""
    data = {
        "command_id": "c-1",
        "prompt_id": "p",
        "vaccination_id": "v-1",
        "personnummer": PNR,
        "actor": {"user_id": "u", "unit_id": "unit-1"},
        "unit_id": "unit-1",
        "memberships": [],
        "confirmed_at": NOW.isoformat(),
        "version": 1,
    }
    [live] = records_from_event(_through_the_wire(messages.CONFIRMED, data, NOW), BUILDER)
    assert (live.data["basis"], live.data["status"], live.data["missing_group"]) == (
        "popup",
        "completed",
        True,
    )
    assert live.data["administered_at"] is None and live.data["vaccine"] is None


# -- record shape -------------------------------------------------------------


def test_membership_record_has_no_personnummer_unless_asked() -> None:
    view = messages.membership_view(membership(), CATALOG)
    record = membership_record(view, PNR, NOW.isoformat(), Pseudonymizer(KEY))
    assert set(record.data) == {*MEMBERSHIP_FIELDS, "subject_id", "key_id", "updated_at"}
    assert record.type == MEMBERSHIP_RECORD and PNR.encode() not in record_value(record)
    opted_in = RecordBuilder(Pseudonymizer(KEY), STOCKHOLM, include_personnummer=True)
    assert opted_in.membership(view, PNR, NOW).data["personnummer"] == PNR
    confirmed = opted_in.vaccination(
        vaccination_id="v",
        personnummer=PNR,
        unit_id="u",
        administered_at=None,
        vaccine=None,
        confirmed_at=NOW,
        basis="popup",
        memberships=[],
        missing_group=True,
        status="completed",
        version=1,
        updated_at=NOW,
    )
    assert confirmed.type == VACCINATION_RECORD and confirmed.data["personnummer"] == PNR


def test_event_id_is_the_same_for_the_same_state_only() -> None:
    view = messages.membership_view(membership(), CATALOG)
    first = BUILDER.membership(view, PNR, NOW)
    assert first.event_id == BUILDER.membership(view, PNR, NOW.astimezone(UTC)).event_id
    assert first.event_id != BUILDER.membership({**view, "version": 2}, PNR, NOW).event_id
    later = NOW + timedelta(microseconds=1)
    assert first.event_id != BUILDER.membership(view, PNR, later).event_id


# -- events that are not exported, or not well-formed -----------------------------


def test_rejections_are_not_exported() -> None:
    event = _through_the_wire(messages.REJECTED, {"command_id": "c"}, NOW)
    assert records_from_event(event, BUILDER) == []


@pytest.mark.parametrize(
    "change",
    [
        {"version": "two"},
        {"version": 0},
        {"confirmed_at": "yesterday"},
        {"confirmed_at": "2026-11-26T12:00:00"},  # no offset
        {"administered_at": "2026-11-26"},
        {"vaccine": "Comirnaty"},
        {"memberships": "INFLUENSA"},
        {"unit_id": ""},
    ],
)
def test_a_malformed_confirmation_is_poison_not_an_endless_retry(change: dict[str, Any]) -> None:
    data = {"vaccination_id": "v", "personnummer": PNR, "unit_id": "u", **change}
    with pytest.raises(PoisonRecord):
        records_from_event(_through_the_wire(messages.CONFIRMED, data, NOW), BUILDER)


def test_an_unknown_type_is_poison() -> None:
    with pytest.raises(PoisonRecord) as raised:
        records_from_event(_through_the_wire("customer_group.other", {}, NOW), BUILDER)
    assert raised.value.error_code == "UNKNOWN_TYPE"


# -- the cheaper ways to the same bytes --------------------------------------------


def test_record_ids_are_uuid5_of_type_key_version_time_and_key_id() -> None:
    namespace = uuid.UUID("3d5c2b8e-4f61-4a0e-9e7d-2c1b0a9f8e07")  # schemas/README.md
    record = BUILDER.membership(messages.membership_view(membership(), CATALOG), PNR, NOW)
    key_id = BUILDER.pseudonymizer.key_id
    name = f"{MEMBERSHIP_RECORD}|{MID}|1|2026-11-26T13:35:12.080000+01:00|{key_id}"
    assert record.event_id == str(uuid.uuid5(namespace, name))
    for text in ("", "åäö|x", "v-1|" * 40):
        assert record_uuid5(text) == str(uuid.uuid5(namespace, text))


@pytest.mark.parametrize(
    "group_name",
    ["Influensa", "Äldre 65+ \u2028 \x7f", 'quote " back \\ slash', "\x00\x1f\n\t", None, 7],
)
def test_record_value_is_the_cloudevent_envelopes_bytes(group_name: Any) -> None:
    view = {**messages.membership_view(membership(), CATALOG), "group_name": group_name}
    for at in (NOW, NOW.replace(microsecond=0), NOW.astimezone(UTC)):
        record = RecordBuilder(Pseudonymizer(KEY), at.tzinfo or UTC).membership(view, PNR, at)
        event = new_event(
            record.type,
            EXPORT_SOURCE,
            record.data,
            event_id=record.event_id,
            time=datetime.fromisoformat(record.updated_at),
        )
        stdlib = json.dumps(event.to_dict(), ensure_ascii=False, separators=(",", ":"))
        assert record_value(record) == stdlib.encode()


def test_an_integer_orjson_refuses_is_still_exported() -> None:
    view = {**messages.membership_view(membership(), CATALOG), "version": 2**70}
    record = BUILDER.membership(view, PNR, NOW)
    assert json.loads(record_value(record))["data"]["version"] == 2**70


def test_key_id_names_the_key_without_revealing_it() -> None:
    derived = Pseudonymizer(KEY).key_id
    assert derived == Pseudonymizer(KEY).key_id, "stable for one key"
    assert derived != Pseudonymizer(KEY + b"-rotated").key_id
    assert KEY.hex()[:8] not in derived and derived.startswith("k-")
    assert Pseudonymizer(KEY, key_id="2026-11").key_id == "2026-11"


def test_a_re_keyed_record_gets_a_new_event_id() -> None:
    view = messages.membership_view(membership(), CATALOG)
    old = membership_record(view, PNR, NOW.isoformat(), Pseudonymizer(KEY, key_id="old"))
    new = membership_record(view, PNR, NOW.isoformat(), Pseudonymizer(KEY, key_id="new"))
    assert (old.data["key_id"], new.data["key_id"]) == ("old", "new")
    assert old.event_id != new.event_id, "a consumer dropping repeated ids keeps the new one"
    again = membership_record(view, PNR, NOW.isoformat(), Pseudonymizer(KEY, key_id="old"))
    assert again.event_id == old.event_id
