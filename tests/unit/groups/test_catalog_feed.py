"""The catalog feed (`customer_group.catalog_group`): one record per group, every group
and subgroup with its validity, ids that repeat with the content."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from services.groups.domain.catalog import Catalog
from services.groups.service_layer import messages
from services.groups.service_layer.outgoing import publish_catalog
from tests.schema_validation import validate_data, validate_event
from tests.unit.groups.fakes import FakeOutbox

NOW = datetime(2026, 11, 30, 8, 0, tzinfo=ZoneInfo("Europe/Stockholm"))
TOPIC = "customer-groups.catalog.v1"


async def published(catalog: Catalog, now: datetime = NOW) -> dict[bytes, dict[str, Any]]:
    outbox = FakeOutbox()
    await publish_catalog(outbox, catalog, topic=TOPIC, now=now)
    assert {topic for topic, _, _ in outbox.records} == {TOPIC}
    return {key or b"": json.loads(value or b"") for _, key, value in outbox.records}


async def test_every_group_is_published_keyed_by_its_code(catalog: Catalog) -> None:
    records = await published(catalog)
    assert list(records) == [g.code.encode() for g in catalog.groups]
    for event in records.values():
        validate_event(event)
        assert event["type"] == messages.CATALOG_GROUP
    covid = records[b"COVID"]["data"]
    assert covid == {
        "group_code": "COVID",
        "name": "Covid",
        "valid_from": "1901-01-01",
        "valid_to": "2023-09-27",
        "subgroups": [
            {
                "subgroup_code": "OVRIG_ALLMANHET_18_64",
                "name": "08. Övrig allmänhet 18-64 år",
                "valid_from": "1901-01-01",
                "valid_to": "2023-09-27",
            }
        ],
        "catalog_version": catalog.version,
    }
    assert records[b"HAR_HEMSJUKVARD_HEMTJANST"]["data"]["subgroups"] == []
    assert records[b"INFLUENSA"]["data"]["valid_to"] is None


async def test_the_same_content_gets_the_same_id_and_a_change_a_new_one(catalog: Catalog) -> None:
    first = await published(catalog)
    again = await published(catalog, NOW + timedelta(days=3))
    assert {k: e["id"] for k, e in first.items()} == {k: e["id"] for k, e in again.items()}
    groups = [
        replace(g, name="Pneumokock") if g.code == "PNEUMOKOCK" else g for g in catalog.groups
    ]
    changed = await published(replace(catalog, groups=tuple(groups)))
    assert [k for k in first if first[k]["id"] != changed[k]["id"]] == [b"PNEUMOKOCK"]
    newer = await published(replace(catalog, version="2026-11-30.2"))
    assert all(first[k]["id"] != newer[k]["id"] for k in first), "the version is content"


def test_the_catalog_document_lists_every_group(example_catalog: Catalog) -> None:
    document = messages.catalog_document(example_catalog)
    assert document["catalog_version"] == example_catalog.version
    assert [g["group_code"] for g in document["groups"]] == [g.code for g in example_catalog.groups]
    for group in document["groups"]:
        validate_data(messages.CATALOG_GROUP, group)
