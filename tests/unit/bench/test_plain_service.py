"""The plain FastStream baseline's pure parts: the catalog check, the prompt it builds
from the memberships it read, and that the benchmark's client can match what it sends."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from fast_depends.pydantic import PydanticSerializer
from faststream.message.utils import encode_message
from pydantic import ValidationError

import services.groups.catalog
from bench.plain_service.messages import (
    Add,
    Catalog,
    Group,
    Period,
    PromptEvent,
    Started,
    StartedData,
    prompt_data,
)
from bench.plain_service.tables import Membership
from bench.workload import Workload

TODAY = date(2026, 11, 30)
NOW = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)
SHIPPED = Path(services.groups.catalog.__file__).with_name("catalog.json")


def _catalog() -> Catalog:
    return Catalog(
        [
            Group(
                "COVID_19",
                "Covid-19",
                date(2020, 1, 1),
                None,
                (
                    Period("REKOMMENDERAD", "Rekommenderad", date(2020, 1, 1), None),
                    Period("GAMMAL", "Ended", date(2020, 1, 1), date(2024, 1, 1)),
                ),
            ),
            Group("ENDED", "Ended group", date(2020, 1, 1), date(2023, 9, 27), ()),
            Group("FLAT", "No subgroups", date(2020, 1, 1), None, ()),
        ]
    )


def _membership(status: str, valid_from: date, valid_to: date | None, n: int) -> Membership:
    return Membership(
        membership_id=str(uuid.UUID(int=n)),
        personnummer="191212121212",
        group_code="COVID_19",
        subgroup_code="GAMMAL",
        reference_code=None,
        valid_from=valid_from,
        valid_to=valid_to,
        version=1,
        status=status,
        created_at=NOW,
        updated_at=NOW,
        created_by_user="nurse-1",
        created_by_unit="unit-1",
        updated_by_user=None,
        updated_by_unit=None,
    )


def _start() -> StartedData:
    return StartedData(
        vaccination_id="v-1", unit_id="unit-1", user_id="nurse-1", personnummer="191212121212"
    )


def test_the_catalog_check_refuses_what_is_not_selectable_today() -> None:
    catalog = _catalog()
    catalog.check("COVID_19", "REKOMMENDERAD", TODAY)
    catalog.check("FLAT", None, TODAY)
    for group, subgroup in [
        ("NOPE", None),
        ("ENDED", None),
        ("COVID_19", None),  # a group with subgroups needs one
        ("COVID_19", "GAMMAL"),  # ended
        ("COVID_19", "NOPE"),
    ]:
        with pytest.raises(ValueError):
            catalog.check(group, subgroup, TODAY)


def test_the_prompt_lists_only_what_is_selectable_today() -> None:
    selectable = _catalog().selectable(TODAY)
    assert [(g.group_code, [s.subgroup_code for s in g.subgroups]) for g in selectable] == [
        ("COVID_19", ["REKOMMENDERAD"]),
        ("FLAT", []),
    ]


def test_the_shipped_catalog_loads_with_the_workloads_addable_groups() -> None:
    catalog = Catalog.load(SHIPPED)
    for group, subgroup in [("COVID_19", "REKOMMENDERAD"), ("PNEUMOKOCK", "ALDER_65_PLUS")]:
        catalog.check(group, subgroup, TODAY)
    historical = ("Covid", "08. Övrig allmänhet 18-64 år")
    assert catalog.names("COVID", "OVRIG_ALLMANHET_18_64") == historical
    assert catalog.names("GONE", "X") == ("GONE", "X")


def test_prompt_data_sorts_history_latest_ended_first_and_needs_a_group_without_active() -> None:
    rows = [
        _membership("historical", date(2020, 1, 1), date(2021, 1, 1), 1),
        _membership("historical", date(2022, 1, 1), date(2023, 1, 1), 2),
        _membership("historical", date(2021, 1, 1), date(2022, 1, 1), 3),
    ]
    data = prompt_data(_start(), rows, _catalog(), TODAY)
    assert [m.valid_to for m in data.historical] == [
        date(2023, 1, 1),
        date(2022, 1, 1),
        date(2021, 1, 1),
    ]
    assert data.historical_total == 3
    assert data.active == []
    assert data.required is True
    assert data.historical[0].subgroup_name == "Ended"
    assert data.historical[0].updated_by is None


def test_prompt_data_cuts_history_at_fifty_and_counts_all() -> None:
    rows = [_membership("active", date(2025, 1, 1), None, 0)] + [
        _membership("historical", date(2000, 1, 1), date(2000, 1, 2 + n % 27), n + 1)
        for n in range(60)
    ]
    data = prompt_data(_start(), rows, _catalog(), TODAY)
    assert len(data.historical) == 50
    assert data.historical_total == 60
    assert data.required is False
    assert [m.status for m in data.active] == ["active"]


def test_the_benchmark_client_matches_the_prompt_it_sends() -> None:
    """bench.groups reads the vaccination_id and the envelope's time out of the raw value,
    as FastStream serialises the returned model."""
    from bench.groups import _EVENT_TIME, _VACCINATION_ID

    event = PromptEvent(data=prompt_data(_start(), [], _catalog(), TODAY))
    raw, _content_type = encode_message(event, PydanticSerializer(use_fastdepends_errors=False))
    match = _VACCINATION_ID.search(raw)
    assert match is not None and match.group(1) == b"v-1"
    time = _EVENT_TIME.search(raw)
    assert time is not None
    parsed = datetime.fromisoformat(time.group(1).decode().replace("Z", "+00:00"))
    assert parsed == event.time
    envelope = json.loads(raw)
    assert list(envelope) == [
        "specversion", "id", "source", "type", "datacontenttype", "dataschema", "time", "data",
    ]  # fmt: skip
    assert envelope["type"] == "customer_group.prompt"
    assert envelope["dataschema"].endswith("/customer_group.prompt.schema.json")


def test_it_validates_the_records_the_workload_produces_and_refuses_other_commands() -> None:
    workload = Workload(50)
    start = Started.model_validate_json(workload.start("v-9").value)
    assert start.data.vaccination_id == "v-9"
    add = Add.model_validate_json(workload.add().value)
    assert add.data.group_code
    with pytest.raises(ValidationError):
        Add.model_validate_json(workload.remove().value)
